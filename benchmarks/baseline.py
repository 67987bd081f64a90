"""How the benchmark feeds changes: the shared workload in batches, and the baselines' encoding.

The changes are those of ``livesync demo``: :func:`livesync.workload.iter_changes`, which
streams a backlog of millions of changes in one byte of state per object. The baselines
store every change as one msgpack member ``[seq, ts, type, id, flags]`` (flags as
livesync's bit mask), so their members are unique and as large as livesync's data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgpack

from livesync.changes import ChangeTuple
from livesync.workload import flags_mask

__all__ = ["encode_change", "iter_batches"]


def iter_batches(items: Iterable[ChangeTuple], size: int) -> Iterator[list[ChangeTuple]]:
    """Group ``items`` into lists of ``size``."""
    batch: list[ChangeTuple] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_change(seq: int, ts: int, item: ChangeTuple) -> bytes:
    """One baseline member: ``msgpack([seq, ts, type, id, flags])`` (unique by its seq)."""
    member: bytes = msgpack.packb([seq, ts, item[0], item[1], flags_mask(item[2])])
    return member
