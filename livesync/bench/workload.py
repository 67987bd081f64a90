"""The benchmark's workload: a streaming generator of valid changes and the baselines' encoding.

``livesync.workload.generate`` builds a list; a backlog of 2,000,000 changes needs a
generator that keeps one byte of state per object instead. The baselines store every
change as one msgpack member ``[seq, ts, type, id, flags]`` (flags as livesync's bit
mask), so their members are unique and as large as livesync's data.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

import msgpack

from livesync.workload import MODIFICATIONS, TYPES, flags_mask

Item = tuple[str, int | str, list[str]]

__all__ = ["Item", "encode_change", "flags_mask", "iter_batches", "iter_workload"]

_ABSENT, _LIVE, _DELETED, _UNPUBLISHED = 0, 1, 2, 3
_CREATED = ["created"]
_CREATED_WITH = [["created", name] for name in MODIFICATIONS]
_SINGLE = [[name] for name in MODIFICATIONS]
_PAIRS = [sorted([a, b]) for i, a in enumerate(MODIFICATIONS) for b in MODIFICATIONS[i + 1 :]]


def iter_workload(changes: int, objects: int, seed: int = 42) -> Iterator[Item]:
    """Yield ``changes`` valid changes over ``objects`` objects, streaming, in O(objects) bytes.

    Same shape and mix as ``livesync.workload.generate`` (five types, ``"c-N"`` string ids
    for contributions, int ids otherwise; creates, updates, moves, deletes, undeletes,
    publish/unpublish), but it keeps one byte of state per object and never the list.
    Flag lists are shared between items: treat them as read-only.
    """
    rng = random.Random(seed)
    rand = rng.random
    state = bytearray(objects)
    ntypes = len(TYPES)
    for _ in range(changes):
        number = int(rand() * objects)
        type_ = TYPES[number % ntypes]
        id_: int | str = f"c-{number}" if type_ == "contribution" else number
        current = state[number]
        roll = rand()
        if current == _ABSENT:
            flags = _CREATED_WITH[int(rand() * len(_CREATED_WITH))] if roll < 0.3 else _CREATED
            state[number] = _LIVE
        elif current == _DELETED:
            flags = ["undeleted"] if roll < 0.7 else _CREATED
            state[number] = _LIVE
        elif current == _UNPUBLISHED:
            flags = ["published"]
            state[number] = _LIVE
        elif roll < 0.06:
            flags = ["deleted"]
            state[number] = _DELETED
        elif roll < 0.08 and type_ == "event":
            flags = ["unpublished"]
            state[number] = _UNPUBLISHED
        elif roll < 0.2:
            flags = ["moved"]
        elif roll < 0.8:
            flags = _SINGLE[int(rand() * len(_SINGLE))]
        else:
            flags = _PAIRS[int(rand() * len(_PAIRS))]
        yield (type_, id_, flags)


def iter_batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Group ``items`` into lists of ``size``."""
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def encode_change(seq: int, ts: int, item: Item) -> bytes:
    """One baseline member: ``msgpack([seq, ts, type, id, flags])`` (unique by its seq)."""
    member: bytes = msgpack.packb([seq, ts, item[0], item[1], flags_mask(item[2])])
    return member
