"""The reindex's swap takes the agent's run locks while runs of several partitions keep overlapping.

A continuous agent's runs of different partitions overlap: one partition's next run often
starts before the other's ends, so there may be no moment when every partition's lock is
free, though each one is free between its own runs. The swap must still get them all
(``ReindexLocks.take_agent_locks``) within its wait (``test_rel_reindex`` found it starved
on a real OpenSearch target, 60 s in vain).

Time is the swap's own clock, advanced by its waits; each wait is time in which the run in
flight ends and the other partition's next run starts first (when its lock is free).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis

from livesync import reindex_state
from livesync.errors import AgentBusy
from livesync.lock import RunLock
from livesync.manager import SyncManager
from livesync.reindex_state import ReindexLocks

AGENT = "search"


class OverlappingRuns:
    """Runs of two partitions, each starting before the other's ends: always one in flight, never none."""

    def __init__(self, manager: SyncManager) -> None:
        self.tracks = manager.tracks()
        self.running: tuple[int, RunLock] | None = (1, RunLock(self.tracks[1], AGENT, ttl=30).acquire())
        self.skipped = 0
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        """Time passes: the other partition's run starts (skipped while its lock is taken), then this one ends."""
        self.now += seconds
        previous = self.running
        partition = 0 if previous is None or previous[0] == 1 else 1
        self.running = None
        try:
            self.running = (partition, RunLock(self.tracks[partition], AGENT, ttl=30).acquire())
        except AgentBusy:
            self.skipped += 1  # what a run job does: skipped, the tick enqueues it again
        if previous is not None:
            previous[1].release()

    def stop(self) -> None:
        if self.running is not None:
            self.running[1].release()


def test_the_swap_gets_every_run_lock_while_runs_of_two_partitions_keep_overlapping(
    real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an agent of two partitions whose runs overlap: one of its locks is always taken, each one now and then free
    manager = SyncManager(real_redis, namespace, partitions=2)
    runs = OverlappingRuns(manager)
    monkeypatch.setattr(reindex_state, "time", SimpleNamespace(monotonic=runs.monotonic, sleep=runs.sleep))
    try:
        # When the swap takes the agent's run locks, waiting up to 60 s
        taken = ReindexLocks(manager.tracks(), AGENT, ttl=30).take_agent_locks(60)

        # Then it has every partition's lock, and no run holds one
        assert [lock.key for lock in taken] == [track.keys.lock(AGENT) for track in manager.tracks()]
        assert all(real_redis.get(lock.key) == lock.token.encode() for lock in taken)
        for lock in taken:
            lock.release()
    finally:
        runs.stop()
