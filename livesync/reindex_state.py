"""What a reindex in progress holds: its state in Redis (so a reindex run again continues) and its locks.

One hash per agent (``keys.reindex``): the generation being filled, the live one it
replaces, the phase, each partition's start position and export version, and how far
the export got (objects done and the last one accepted). Its pointers (one per
partition, ``keys.reindex_pointer``) live beside the agent's own, each with a run lock
of its own (:class:`ReindexLocks`): one reindex of an agent at a time.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from livesync.codec import text
from livesync.errors import AgentBusy, AgentCorrupt
from livesync.keys import reindex_pointer
from livesync.lock import RunLock
from livesync.manager import SyncManager
from livesync.records import ObjectId
from livesync.track import Track

#: ``export``: objects go into the new generation; ``catchup``: the changes since the start
#: follow, then the swap; ``swapped``: the new generation is live, what is left is cleanup.
Phase = Literal["export", "catchup", "swapped"]
PHASES: tuple[Phase, ...] = ("export", "catchup", "swapped")
#: Longest pause between two tries of an agent's run lock at the swap: the gap between two runs is short.
SWAP_POLL = 0.2


def new_token() -> str:
    """A generation's token: the UTC start time and 4 random hex digits, lowercase (index and table names)."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(2)


@dataclass
class ReindexState:
    """A reindex in progress, as stored in its hash."""

    token: str
    source: str
    live: str
    """The live generation when the reindex began (what the swap replaces)."""
    positions: list[int]
    """Each partition's head when the reindex began: the catch-up starts after it."""
    versions: list[int]
    """Each partition's clock when the reindex began: the version of the export's records."""
    started_at: float
    phase: Phase = "export"
    generation: str = ""
    """The new generation's name, once created."""
    exported: int = 0
    """Objects of the source done (accepted, rejected or left out by type) in every run so far."""
    last: tuple[str, ObjectId] | None = None
    """The last object of the last batch accepted: a resumed export goes on after it."""
    retired: str = ""
    """The old generation's name after the swap."""
    rejected: int = 0
    changes: int = 0
    """Changes caught up so far."""

    def to_hash(self) -> dict[str, str]:
        """The hash fields (JSON where a value is not text)."""
        data = asdict(self)
        return {key: value if isinstance(value, str) else json.dumps(value) for key, value in data.items()}

    @classmethod
    def from_hash(cls, key: str, raw: dict[bytes, bytes]) -> ReindexState:
        """Decode a stored state; :class:`AgentCorrupt` names the key when it is not one."""
        fields = {text(k): text(v) for k, v in raw.items()}
        try:
            phase = fields["phase"]
            if phase not in PHASES:
                raise ValueError(f"phase {phase!r}")
            last = json.loads(fields.get("last", "null"))
            return cls(
                token=fields["token"],
                source=fields["source"],
                live=fields["live"],
                positions=[int(p) for p in json.loads(fields["positions"])],
                versions=[int(v) for v in json.loads(fields["versions"])],
                started_at=float(json.loads(fields["started_at"])),
                phase=phase,  # type: ignore[arg-type]
                generation=fields.get("generation", ""),
                exported=int(json.loads(fields.get("exported", "0"))),
                last=None if last is None else (str(last[0]), last[1]),
                retired=fields.get("retired", ""),
                rejected=int(json.loads(fields.get("rejected", "0"))),
                changes=int(json.loads(fields.get("changes", "0"))),
            )
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise AgentCorrupt(
                f"corrupt reindex state {key}: {exc!r}; 'livesync agent reindex ID --abandon' removes it"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["last"] = list(self.last) if self.last is not None else None
        return data


def load_state(manager: SyncManager, agent_id: str) -> ReindexState | None:
    """The agent's reindex in progress, or ``None``."""
    key = manager.keys.reindex(agent_id)
    raw = manager.redis.hgetall(key)
    return ReindexState.from_hash(key, raw) if raw else None


def save_state(manager: SyncManager, agent_id: str, state: ReindexState, *fields: str) -> None:
    """Store ``state`` (only ``fields`` when given: one small write per export batch)."""
    data = state.to_hash()
    if fields:
        data = {name: data[name] for name in fields}
    manager.redis.hset(manager.keys.reindex(agent_id), mapping=data)


def delete_state(manager: SyncManager, agent_id: str) -> None:
    """Forget the agent's reindex (finished or abandoned)."""
    manager.redis.delete(manager.keys.reindex(agent_id))


class ReindexLocks:
    """The reindex's own lock in every partition (``lock:<agent>@reindex``), and the agent's run locks for the swap.

    The reindex's locks fence its acks and dead letters like a run's; ``own[p]`` is
    partition ``p``'s.
    """

    def __init__(self, tracks: list[Track], agent_id: str, ttl: float) -> None:
        self.tracks = tracks
        self.agent_id = agent_id
        self.ttl = ttl
        self.own = [RunLock(track, reindex_pointer(agent_id), ttl=ttl) for track in tracks]

    def take(self) -> None:
        """Take the reindex's lock in every partition; :class:`AgentBusy` when another reindex holds one."""
        try:
            _take_all(self.own)
        except AgentBusy:
            raise AgentBusy(f"a reindex of agent {self.agent_id!r} is running already; wait for it to end") from None

    def release(self) -> None:
        """Release the reindex's locks."""
        for lock in self.own:
            lock.release()

    def check(self) -> None:
        """Raise :class:`~livesync.errors.LockLost` when the reindex lost a lock (it stalled, another took over)."""
        for lock in self.own:
            lock.check()

    def take_agent_locks(self, wait: float) -> list[RunLock]:
        """Every partition's run lock of the agent, polling up to ``wait`` seconds for runs in flight to end.

        The locks are taken in partition order, each kept while the next is waited for: a
        continuous agent's runs of several partitions overlap, so there may be no moment
        with every lock free, but each partition's run ends (its next one, finding the lock
        taken, is skipped). Raises :class:`AgentBusy` naming the partition still held after
        ``wait``; the locks taken are released then.
        """
        deadline = time.monotonic() + wait
        taken: list[RunLock] = []
        try:
            for track in self.tracks:
                taken.append(self._wait_for_lock(RunLock(track, self.agent_id, ttl=self.ttl), wait, deadline))
        except BaseException:
            for lock in taken:
                lock.release()
            raise
        return taken

    def _wait_for_lock(self, lock: RunLock, wait: float, deadline: float) -> RunLock:
        delay = 0.05
        while True:
            try:
                return lock.acquire()
            except AgentBusy as exc:
                if time.monotonic() + delay > deadline:
                    raise AgentBusy(f"runs held the agent's run locks for {wait:g}s ({exc})") from None
                time.sleep(delay)  # a run in flight ends by itself; nothing announces it, so its lock is polled
                delay = min(delay * 2, SWAP_POLL)


def _take_all(locks: list[RunLock]) -> list[RunLock]:
    """Acquire every lock, or none (the ones taken are released when one is busy)."""
    taken: list[RunLock] = []
    try:
        for lock in locks:
            taken.append(lock.acquire())
    except BaseException:
        for lock in taken:
            lock.release()
        raise
    return taken
