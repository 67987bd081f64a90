"""The run lock of one (agent, partition): random token, TTL, renewed while running.

Acquire is ``SET NX PX`` in a Lua script (so a full Redis still runs it, see
``livesync/lua/__init__.py``); renew and release are Lua scripts that act only while the
token still matches (as in redis-py's ``lock.py``). A background thread renews the
lock every third of its TTL; if a renewal finds the lock gone, the lock is marked
lost and :meth:`RunLock.check` raises :class:`LockLost`. The ack script checks the
token too, so a runner that stalled past its TTL can never move the pointer.

:func:`short_lock` is the same lock without renewal, for short tasks (the tick).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from livesync.errors import AgentBusy, LockLost
from livesync.lua import scripts_for
from livesync.track import Track

log = logging.getLogger(__name__)


class RunLock:
    """The lock a runner holds on ``(agent, partition)`` for the length of a run."""

    def __init__(self, track: Track, agent_id: str, ttl: float, *, renew: bool = True) -> None:
        self.track = track
        self.agent_id = agent_id
        self.key = track.keys.lock(agent_id)
        self.ttl_ms = max(1000, int(ttl * 1000))
        self.token = secrets.token_hex(16)
        self._renew = renew
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`AgentBusy` when another runner holds it."""
        if not int(self.track.scripts.acquire(keys=[self.key], args=[self.token, self.ttl_ms])):
            raise AgentBusy(
                f"agent {self.agent_id!r} partition {self.track.partition} is being run by another runner "
                f"(lock {self.key}); try again when it has finished"
            )
        if self._renew:
            self._thread = threading.Thread(target=self._renew_loop, name=f"livesync-lock-{self.key}", daemon=True)
            self._thread.start()
        return self

    def renew(self) -> bool:
        """Extend the lock now; return False (and mark it lost) when it is not ours any more."""
        ok = bool(self.track.scripts.renew(keys=[self.key], args=[self.token, self.ttl_ms]))
        if not ok:
            self._lost.set()
        return ok

    def check(self) -> None:
        """Raise :class:`LockLost` when a renewal found the lock taken or expired."""
        if self._lost.is_set():
            raise LockLost(f"lock {self.key} was lost (expired or taken over); stopping without moving the pointer")

    @property
    def lost(self) -> bool:
        """True once a renewal found the lock gone."""
        return self._lost.is_set()

    def release(self) -> None:
        """Stop renewing and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.track.scripts.release(keys=[self.key], args=[self.token])
        except Exception:  # best effort: the TTL frees the lock anyway, so this is no failure
            log.info("could not release lock %s; it expires by itself", self.key, exc_info=True)

    def _renew_loop(self) -> None:
        interval = self.ttl_ms / 3000
        while not self._stop.wait(interval):
            try:
                if not self.renew():
                    log.error("lock %s lost; the run will stop before its next ack", self.key)
                    return
            except Exception:  # a blip: keep trying until the TTL runs out
                log.warning("could not renew lock %s", self.key, exc_info=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> Any:
        self.release()


@contextmanager
def short_lock(redis: Any, key: str, ttl: float) -> Iterator[bool]:
    """Hold ``key`` for a short task without renewal; yields whether it was taken.

    Taken and released (only while still ours) by the run lock's scripts, so a full
    Redis (noeviction, at maxmemory) still grants it: the tick that enqueues the runs
    draining such a Redis needs it. When the task outlives ``ttl`` the lock expires
    and another caller may take it; keep the task well within it.
    """
    scripts = scripts_for(redis)
    token = secrets.token_hex(16)
    taken = bool(int(scripts.acquire(keys=[key], args=[token, max(1000, int(ttl * 1000))])))
    try:
        yield taken
    finally:
        if taken:
            try:
                scripts.release(keys=[key], args=[token])
            except Exception:  # best effort: the TTL frees the lock anyway, and the task's own error matters more
                log.info("could not release lock %s; it expires by itself", key, exc_info=True)
