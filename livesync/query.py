"""Reading stored changes across partitions (``livesync list``): plan each partition's query, merge them.

Bounds (see :mod:`livesync.positions`) select the interval ``]low, high]``: with
several partitions, seq bounds apply in each partition. Partitions are merged by
version, so the listing follows publish order across them.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import TYPE_CHECKING

from livesync.changes import Change
from livesync.errors import ConfigurationError
from livesync.positions import Bound
from livesync.track import Track

if TYPE_CHECKING:
    from livesync.manager import Agent, SyncManager


def select(track: Track, low: Bound | None, high: Bound | None, after_seq: int) -> Iterator[Change]:
    """Changes of ``track`` in the interval ``]low, high]`` and after ``after_seq``.

    :class:`ConfigurationError` when the bounds are of different kinds.
    """
    kinds = {bound[0] for bound in (low, high) if bound is not None}
    if len(kinds) > 1:
        raise ConfigurationError("--from and --to must be of the same kind (both seq:N, bucket ids or times)")
    kind = kinds.pop() if kinds else "seq"
    lo = low[1] if low else None
    hi = high[1] if high else None
    if kind == "seq":
        changes = track.iter_changes(max(lo or 0, after_seq), hi)
    elif kind == "bucket":
        changes = track.iter_buckets(lo, hi)
    else:
        changes = track.iter_time(lo, hi)
    return (change for change in changes if change.seq > after_seq)


def list_changes(
    manager: SyncManager,
    low: Bound | None = None,
    high: Bound | None = None,
    *,
    agent: Agent | None = None,
    limit: int = 0,
) -> tuple[list[tuple[int, Change]], bool]:
    """``(partition, change)`` pairs in ``]low, high]`` in version order, and whether ``limit`` cut the list.

    With ``agent``, only what it has not acknowledged yet, after its object filter.
    ``limit`` 0 means no limit.
    """
    streams = []
    for track in manager.tracks():
        after = (track.pointer(agent.id) or 0) if agent else 0
        changes = select(track, low, high, after)
        if agent is not None:
            changes = manager.agent_view(agent, changes)
        streams.append(_keyed(changes, track.partition))
    rows: list[tuple[int, Change]] = []
    for _version, partition, _seq, change in heapq.merge(*streams):
        if limit and len(rows) >= limit:
            return rows, True
        rows.append((partition, change))
    return rows, False


def _keyed(changes: Iterator[Change], partition: int) -> Iterator[tuple[int, int, int, Change]]:
    """Changes keyed for merging partitions by version (partition bound now, not at iteration)."""
    return ((change.version, partition, change.seq, change) for change in changes)
