"""One runner per (agent, partition): the run lock and the fenced ack (invariant 3)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from support.backends import BLOCK_TIMEOUT, BlockingBackend, RecordingBackend, RunInThread
from support.waiting import holds_within

from livesync import Publisher
from livesync.errors import AgentBusy, LockLost
from livesync.keys import namespace_keys
from livesync.lock import RunLock
from livesync.lua import scripts_for
from livesync.manager import SyncManager
from livesync.runner import run_agent
from livesync.track import Track


@pytest.fixture
def locks() -> Iterator[list[RunLock]]:
    """Locks a test took; their renewal threads are stopped afterwards."""
    taken: list[RunLock] = []
    yield taken
    for lock in taken:
        lock.release()


# The lock at run level


def test_second_run_while_the_first_holds_the_lock_raises_agent_busy(
    search_manager: SyncManager, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a run blocked in its first upload, holding the lock
    seqs = Publisher(real_redis, namespace).emit_many([("event", i, ["created"]) for i in range(3)])
    blocked = BlockingBackend()
    first = RunInThread(search_manager, blocked)
    assert blocked.entered.wait(BLOCK_TIMEOUT)

    # When a second run of the same agent and partition starts
    second = RecordingBackend()
    try:
        with pytest.raises(AgentBusy, match="search"):
            run_agent(search_manager, "search", backend=second)
    finally:
        blocked.proceed.set()
        first.join()

    # Then the second run uploaded nothing and the first one finished normally
    assert second.opened == 0
    assert first.error is None and first.result is not None
    assert search_manager.pointers("search") == [seqs[-1]]


def test_runner_whose_lock_was_taken_over_cannot_move_the_pointer(
    search_manager: SyncManager, search_track: Track, real_redis: redis.Redis, namespace: str
) -> None:
    # Given run A blocked in its upload
    Publisher(real_redis, namespace).emit_many([("event", i, ["created"]) for i in range(3)])
    blocked = BlockingBackend()
    run_a = RunInThread(search_manager, blocked)
    assert blocked.entered.wait(BLOCK_TIMEOUT)

    # When its lock expires and runner B takes it, then A's upload returns
    lock_key = search_track.keys.lock("search")
    real_redis.delete(lock_key)
    real_redis.set(lock_key, "token-of-runner-b", px=30_000)
    blocked.proceed.set()
    run_a.join()

    # Then A fails with LockLost saying the pointer was not moved, and B's lock is intact
    assert isinstance(run_a.error, LockLost)
    assert "not moved" in str(run_a.error)
    assert search_manager.pointers("search") == [0]
    assert real_redis.get(lock_key) == b"token-of-runner-b"
    assert search_manager.get_agent("search").last_error.startswith("LockLost: ")  # type: ignore[union-attr]


# RunLock itself


def test_acquire_sets_a_token_with_a_ttl(search_track: Track, real_redis: redis.Redis, locks: list[RunLock]) -> None:
    # When a lock is acquired
    lock = RunLock(search_track, "search", ttl=5, renew=False).acquire()
    locks.append(lock)

    # Then the key holds its token and expires within the TTL
    assert real_redis.get(lock.key) == lock.token.encode()
    assert 0 < real_redis.pttl(lock.key) <= 5000


def test_acquire_while_held_raises_agent_busy(search_track: Track, locks: list[RunLock]) -> None:
    # Given a held lock
    locks.append(RunLock(search_track, "search", ttl=5, renew=False).acquire())

    # When another runner tries to take it
    with pytest.raises(AgentBusy, match="another runner"):
        RunLock(search_track, "search", ttl=5, renew=False).acquire()


def test_renew_extends_the_ttl(search_track: Track, real_redis: redis.Redis, locks: list[RunLock]) -> None:
    # Given a held lock whose TTL has nearly run out
    lock = RunLock(search_track, "search", ttl=30, renew=False).acquire()
    locks.append(lock)
    real_redis.pexpire(lock.key, 100)

    # When it is renewed
    renewed = lock.renew()

    # Then the full TTL is back
    assert renewed is True
    assert real_redis.pttl(lock.key) > 20_000
    assert not lock.lost


def test_release_deletes_the_own_lock(search_track: Track, real_redis: redis.Redis) -> None:
    # Given a held lock
    lock = RunLock(search_track, "search", ttl=5, renew=False).acquire()

    # When it is released
    lock.release()

    # Then the key is gone and another runner can take it
    assert not real_redis.exists(lock.key)
    RunLock(search_track, "search", ttl=5, renew=False).acquire().release()


def test_context_manager_acquires_and_releases(search_track: Track, real_redis: redis.Redis) -> None:
    # When a lock is used as a context manager
    with RunLock(search_track, "search", ttl=5, renew=False) as lock:
        held = real_redis.get(lock.key)

    # Then it was held inside and is gone after
    assert held == lock.token.encode()
    assert not real_redis.exists(lock.key)


def test_renew_after_takeover_returns_false_and_marks_the_lock_lost(
    search_track: Track, real_redis: redis.Redis
) -> None:
    # Given a lock that expired and was taken by another runner
    lock = RunLock(search_track, "search", ttl=5, renew=False).acquire()
    real_redis.set(lock.key, "someone-else")

    # When it is renewed
    renewed = lock.renew()

    # Then renewal fails, the lock is lost, and the other runner's TTL is untouched
    assert renewed is False
    assert lock.lost
    assert real_redis.get(lock.key) == b"someone-else"
    assert real_redis.pttl(lock.key) == -1


def test_check_raises_lock_lost_once_the_lock_is_lost(search_track: Track, real_redis: redis.Redis) -> None:
    # Given a lock that was found taken over
    lock = RunLock(search_track, "search", ttl=5, renew=False).acquire()
    lock.check()
    real_redis.set(lock.key, "someone-else")
    lock.renew()

    # When / Then check raises, saying the pointer will not move
    with pytest.raises(LockLost, match="without moving the pointer"):
        lock.check()


def test_release_does_not_delete_someone_elses_lock(search_track: Track, real_redis: redis.Redis) -> None:
    # Given a lock that expired and was taken by another runner
    lock = RunLock(search_track, "search", ttl=5, renew=False).acquire()
    real_redis.set(lock.key, "someone-else", px=5000)

    # When the first runner releases
    lock.release()

    # Then the other runner's lock stays
    assert real_redis.get(lock.key) == b"someone-else"


def test_renewal_thread_keeps_the_lock_alive_past_its_ttl(
    search_track: Track, real_redis: redis.Redis, locks: list[RunLock]
) -> None:
    # Given a lock with a 1 s TTL and renewal on
    lock = RunLock(search_track, "search", ttl=1.0).acquire()
    locks.append(lock)
    started = time.monotonic()

    # When 1.5 TTLs pass (renewal is time-based, so this waits, bounded)
    lost_early = holds_within(lambda: real_redis.get(lock.key) != lock.token.encode(), timeout=1.5)

    # Then the lock is still ours and was renewed
    assert not lost_early
    assert time.monotonic() - started >= 1.5
    assert real_redis.get(lock.key) == lock.token.encode()
    assert real_redis.pttl(lock.key) > 0
    assert not lock.lost


def test_renewal_thread_marks_the_lock_lost_after_a_takeover(
    search_track: Track, real_redis: redis.Redis, locks: list[RunLock]
) -> None:
    # Given a renewed lock with a 1 s TTL
    lock = RunLock(search_track, "search", ttl=1.0).acquire()
    locks.append(lock)

    # When another runner takes it over
    real_redis.set(lock.key, "someone-else", px=30_000)

    # Then the next renewal notices and check raises
    assert holds_within(lambda: lock.lost, timeout=3.0)
    with pytest.raises(LockLost):
        lock.check()
    assert real_redis.get(lock.key) == b"someone-else"


# The lock's scripts, on Redis and on fakeredis


def test_lock_scripts_take_renew_and_release_on_redis_and_on_fakeredis(any_redis: Any, namespace: str) -> None:
    # Given a track on either server
    track = Track(any_redis, namespace_keys(namespace).partition(0), 60)
    first = RunLock(track, "search", ttl=5, renew=False)
    second = RunLock(track, "search", ttl=5, renew=False)

    # When one runner takes the lock, renews it and another tries to take it
    first.acquire()
    renewed = first.renew()
    with pytest.raises(AgentBusy):
        second.acquire()
    first.release()

    # Then the first held it, the second was refused, and once released it is free again
    assert renewed is True
    assert not any_redis.exists(first.key)
    second.acquire().release()


def test_scripts_declare_allow_oom_on_redis_and_drop_the_flags_line_for_fakeredis(
    real_redis: redis.Redis, fake_redis: Any
) -> None:
    # When the scripts are registered on Redis and on fakeredis
    real, fake = scripts_for(real_redis), scripts_for(fake_redis)

    # Then Redis gets every script that frees memory with the flags line, fakeredis the
    # same source with that line as a comment (same line numbers), and publish has no flags
    for name in ("acquire", "renew", "release", "ack", "prune", "record_run"):
        real_source, fake_source = getattr(real, name).script, getattr(fake, name).script
        assert real_source.startswith("#!lua flags=allow-oom\n"), name
        assert fake_source.startswith("-- lua flags=allow-oom"), name
        assert real_source.split("\n")[1:] == fake_source.split("\n")[1:]
    assert not str(real.publish.script).startswith("#!")
