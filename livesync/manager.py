"""The sync manager: agent registry, pointers per partition, query, advance, reset.

The successor of Indico's ``SyncManager``. Agents live in the namespace's hash tag;
their pointers live in each partition's (so the fenced ack touches one slot).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from livesync import defaults
from livesync.agent import STATES, Agent, State, rewound_message
from livesync.backends import check_options, load_backend, prepare_options
from livesync.changes import Change
from livesync.damage import damaged_message, find_keys
from livesync.destroy import destroy_namespace
from livesync.errors import AgentBusy, AgentCorrupt, AgentExists, AgentNotFound, ConfigurationError, NamespaceDamaged
from livesync.expanders import expand, load_expander
from livesync.keys import namespace_keys, reindex_pointer
from livesync.loaders import load_loader
from livesync.lock import RunLock
from livesync.lua import scripts_for
from livesync.namespace import Meta, check_namespace, ensure_meta, read_meta
from livesync.positions import Start, resolve_start
from livesync.track import PRUNE_CHUNK, Track

#: ``Agent``, ``State`` and ``STATES`` live in :mod:`livesync.agent`, ``Start`` in
#: :mod:`livesync.positions`; importable from here too.
__all__ = ["STATES", "Agent", "Start", "State", "SyncManager"]


class SyncManager:
    """Agents and pointers of one namespace."""

    def __init__(
        self,
        redis: Any,
        namespace: str = defaults.NAMESPACE,
        *,
        partitions: int | None = None,
        granularity: int | None = None,
        allowed_imports: Iterable[str] = (),
    ) -> None:
        self.redis = redis
        self.namespace = check_namespace(namespace)
        #: Module prefixes from which this manager (and the runs, exports and requeues it
        #: serves) may import ``module:attribute`` backends and expanders; entry points
        #: always load. From ``Settings.allowed_imports`` where managers are built from settings.
        self.allowed_imports: tuple[str, ...] = tuple(allowed_imports)
        self.keys = namespace_keys(namespace)
        self._wanted = (partitions, granularity)
        self._meta: Meta | None = None

    # -- namespace ----------------------------------------------------------------------

    @property
    def meta(self) -> Meta:
        """Granularity, partitions and epoch of the namespace (created on first use).

        Raises :class:`NamespaceDamaged` instead of creating a meta when other keys of
        the namespace exist (``livesync init --repair`` restores it).
        """
        if self._meta is None:
            partitions, granularity = self._wanted
            self._meta = ensure_meta(self.redis, self.keys, partitions=partitions, granularity=granularity)
        return self._meta

    def exists(self) -> bool:
        """Whether the namespace was ever created (by a publish, an agent or ``init``).

        Never writes. Raises :class:`NamespaceDamaged` when the meta is missing but
        other keys of the namespace exist: "does not exist" would send the operator
        the wrong way.
        """
        if read_meta(self.redis, self.keys) is not None:
            return True
        found = find_keys(self.redis, self.keys)
        if found and read_meta(self.redis, self.keys) is None:  # (not created meanwhile)
            raise NamespaceDamaged(damaged_message(self.keys, found))
        return bool(found)

    @property
    def granularity(self) -> int:
        """Bucket width in seconds, from the namespace meta."""
        return self.meta.granularity

    @property
    def partitions(self) -> int:
        """Number of partitions, from the namespace meta."""
        return self.meta.partitions

    def track(self, partition: int = 0) -> Track:
        """The track of one partition."""
        if not 0 <= partition < self.partitions:
            raise ConfigurationError(f"partition: must be between 0 and {self.partitions - 1}, got {partition}")
        meta = self.meta
        keys = self.keys.partition(partition)
        return Track(self.redis, keys, meta.granularity, meta.epoch, partitions=meta.partitions)

    def tracks(self) -> list[Track]:
        """The tracks of every partition."""
        return [self.track(p) for p in range(self.partitions)]

    # -- registry -------------------------------------------------------------------------

    def add_agent(self, agent: Agent, start: Start = "head") -> Agent:
        """Register ``agent`` with its pointer(s) at ``start``.

        ``start`` is ``"head"`` (only changes published from now on), ``"tail"``
        (everything still stored), a seq (P = 1 only) or a time.
        """
        backend_cls = load_backend(agent.backend, self.allowed_imports)
        check_options(backend_cls, agent.options)
        options = prepare_options(backend_cls, agent.options)
        if agent.expander:
            load_expander(agent.expander, self.allowed_imports)
        if agent.loader:
            load_loader(agent.loader, self.allowed_imports)
        positions = resolve_start(self.tracks(), start)
        key = self.keys.agent(agent.id)
        if not self.redis.sadd(self.keys.agents, agent.id):
            raise AgentExists(agent.id)
        agent = agent.model_copy(update={"created_at": round(time.time(), 3), "options": options})
        # the agent's hash (slot {ns}) first, then its pointers (one slot per partition):
        # on a Redis Cluster no transaction spans both, and an agent without pointers
        # is refused visibly by runs, while pointers without an agent would hold data
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=agent.to_hash())
        pipe.execute()
        for track, seq in zip(self.tracks(), positions, strict=True):
            # an agent of the same id removed before may have left dead letters or a lock
            # (a removal that crashed halfway): the new agent inherits neither, and a runner
            # of the old one still holding a token finds the lock gone, so its acks are refused
            self.redis.delete(track.keys.dlq(agent.id), track.keys.lock(agent.id))
            track.add_pointer(agent.id, seq)
        return agent

    def get_agent(self, agent_id: str) -> Agent:
        """The agent ``agent_id`` or :class:`AgentNotFound`.

        An agent whose hash cannot be decoded comes back in state ``corrupt`` with
        ``last_error`` naming the key and what is wrong (see :meth:`Agent.corrupt`):
        one damaged hash must not stop every reader of the namespace.
        """
        key = self.keys.agent(agent_id)
        raw = self.redis.hgetall(key)
        if b"backend" not in raw:  # missing, or a remnant of a write that raced a removal
            raise AgentNotFound(agent_id)
        try:
            return Agent.from_hash(agent_id, raw)
        except ValueError as exc:
            return Agent.corrupt(agent_id, raw, f"corrupt agent hash {key}: {exc}")

    def list_agents(self) -> list[Agent]:
        """Every agent, sorted by id; corrupt ones in state ``corrupt`` (see :meth:`get_agent`)."""
        ids = sorted(member.decode() for member in self.redis.smembers(self.keys.agents))
        agents = []
        for agent_id in ids:
            try:
                agents.append(self.get_agent(agent_id))
            except AgentNotFound:
                continue
        return agents

    def remove_agent(self, agent_id: str) -> None:
        """Remove an agent, its pointers, locks and dead letters.

        The hash is not decoded: a corrupt agent (or a remnant of one) is removed too.
        """
        if not self.redis.sismember(self.keys.agents, agent_id) and not self.redis.exists(self.keys.agent(agent_id)):
            raise AgentNotFound(agent_id)
        for track in self.tracks():
            # pointer and lock first: a run still going can then no longer write dead letters
            # (they go with its fenced ack, which is refused), so none appear after this delete
            track.remove_pointer(agent_id)
            track.remove_pointer(reindex_pointer(agent_id))  # a reindex in progress: it holds the track
            self.redis.delete(track.keys.dlq(agent_id))
        pipe = self.redis.pipeline(transaction=True)
        pipe.srem(self.keys.agents, agent_id)
        pipe.delete(self.keys.agent(agent_id), self.keys.reindex(agent_id))
        pipe.hdel(self.keys.jobs, *(f"{agent_id}:{p}" for p in range(self.partitions)))
        pipe.execute()

    def update_agent(self, agent_id: str, **fields: Any) -> Agent:
        """Change stored fields of an agent (state, update_time, ...)."""
        agent = self.get_agent(agent_id)
        updated = Agent.model_validate({**agent.model_dump(), **fields})
        data = updated.to_hash()
        cleared = [k for k in fields if k not in data]

        def write(pipe: Any, _state: str) -> None:
            pipe.hset(self.keys.agent(agent_id), mapping={k: data[k] for k in fields if k in data})
            if cleared:
                pipe.hdel(self.keys.agent(agent_id), *cleared)

        if not self._write_if_exists(agent_id, write):
            raise AgentNotFound(agent_id)
        return updated

    def _write_if_exists(self, agent_id: str, write: Any) -> bool:
        """Run ``write(pipe, state)`` in a transaction only while the agent exists.

        ``state`` is the agent's current state. Returns False when the agent does not
        exist: WATCH keeps a write that races a removal from leaving a remnant hash.
        """
        key = self.keys.agent(agent_id)
        written = False

        def transaction(pipe: Any) -> None:
            nonlocal written
            backend, state = pipe.hmget(key, "backend", "state")
            written = backend is not None
            if written:
                pipe.multi()
                write(pipe, (state or b"active").decode())

        self.redis.transaction(transaction, key)
        return written

    def set_state(self, agent_id: str, state: State) -> Agent:
        """Pause, resume or mark an agent."""
        return self.update_agent(agent_id, state=state)

    # -- pointers -------------------------------------------------------------------------

    def pointers(self, agent_id: str) -> list[int]:
        """The agent's pointer in every partition."""
        self.get_agent(agent_id)
        return [track.pointer(agent_id) or 0 for track in self.tracks()]

    def advance(self, agent_id: str, seq: int, partition: int = 0) -> None:
        """Move an agent's pointer to ``seq`` under its run lock (operator use)."""
        self.get_agent(agent_id)
        track = self.track(partition)
        with RunLock(track, agent_id, ttl=30, renew=False) as lock:
            track.move_pointer(agent_id, min(seq, track.head()))
            lock.check()

    def reset_agent(self, agent_id: str, to: Start = "head") -> list[int]:
        """Move every partition's pointer of an agent to ``to``; returns the new pointers.

        Takes each partition's run lock, so it refuses while a run is going on.
        """
        agent = self.get_agent(agent_id)
        if agent.state == "rollback":
            for track in self.tracks():
                track.forget_pruned_beyond_head()  # before positions: they start from what is stored
        positions = resolve_start(self.tracks(), to)
        locks = [RunLock(track, agent_id, ttl=30, renew=False) for track in self.tracks()]
        taken: list[RunLock] = []
        try:
            for lock in locks:
                taken.append(lock.acquire())
            for track, seq in zip(self.tracks(), positions, strict=True):
                track.move_pointer(agent_id, seq)
        finally:
            for lock in taken:
                lock.release()
        if agent.state in ("gap", "rollback"):  # the new pointers are readable again
            self.set_state(agent_id, "active")
        return positions

    # -- maintenance ----------------------------------------------------------------------

    def maintain(self, retention: int | None = None, *, chunk: int = PRUNE_CHUNK) -> dict[str, Any]:
        """Mark rollbacks, prune every partition (with ``retention``, unread changes too) and mark gaps.

        Each prune script call deletes at most ``chunk`` buckets (``LIVESYNC_PRUNE_CHUNK``).
        Returns the buckets deleted, the agents newly marked ``rollback`` and those newly
        marked ``gap``.
        """
        rollbacks = self.mark_rollbacks()
        pruned = sum(track.prune(retention, chunk=chunk) for track in self.tracks())
        return {"pruned_buckets": pruned, "rollbacks": rollbacks, "gaps": self.mark_gaps()}

    def mark_rollbacks(self) -> list[str]:
        """Mark ``rollback`` every agent with a pointer beyond its partition's head; return their ids.

        The scheduler never runs such an agent (it has nothing pending by its pointer), so
        without this only a manual run would notice the rewind; status and metrics show
        it from the next tick on. Two reads per partition find the candidates; each is
        confirmed under its run lock (one that is held is left to its run, which checks
        the same), so a reset racing the tick is never undone.
        """
        candidates: dict[str, Track] = {}
        for track in self.tracks():
            head = track.head()
            for agent_id, pointer in track.pointers().items():
                if pointer > head:
                    candidates.setdefault(agent_id, track)
        marked: list[str] = []
        for agent_id, track in sorted(candidates.items()):
            try:
                agent = self.get_agent(agent_id)
                if agent.state in ("rollback", "corrupt"):  # said already; a corrupt one is never run
                    continue
                with RunLock(track, agent_id, ttl=30, renew=False):
                    now, head = track.pointer(agent_id), track.head()
                    if now is None or now <= head:
                        continue
                    self.update_agent(
                        agent_id, state="rollback", last_error=rewound_message(agent_id, track.partition, now, head)
                    )
            except (AgentBusy, AgentNotFound, AgentCorrupt):
                continue  # a run holds it (and checks itself), or it is gone or shown as corrupt
            marked.append(agent_id)
        return marked

    def mark_gaps(self) -> list[str]:
        """Mark ``gap`` every agent whose pointer is below what was pruned; return their ids.

        Such an agent lost unread changes (to retention): its runs refuse until it is
        reset or re-exported.
        """
        marked: list[str] = []
        tracks = self.tracks()
        lost = [(track, track.pruned_upto()) for track in tracks]
        for agent in self.list_agents():
            # an export covers what was pruned; a rollback says more than a gap would;
            # a corrupt agent is never run, so it has no gap to mark
            if agent.state in ("gap", "needs_export", "rollback", "corrupt"):
                continue
            try:
                message = self.gap_message(agent.id, lost)
            except AgentCorrupt:  # shown as corrupt by status; never run, so no gap to mark
                continue
            if message is not None:
                self.update_agent(agent.id, state="gap", last_error=message)
                marked.append(agent.id)
        return marked

    def gap_message(self, agent_id: str, lost: list[tuple[Track, int]] | None = None) -> str | None:
        """Why the agent has a gap, or ``None`` when its pointers are all readable."""
        for track, pruned in lost if lost is not None else [(t, t.pruned_upto()) for t in self.tracks()]:
            pointer = track.pointer(agent_id)
            if pointer is not None and pointer < pruned:
                return (
                    f"gap: changes {pointer + 1}..{pruned} of partition {track.partition} were pruned by retention "
                    "before this agent read them; reset it (livesync agent reset) or re-export it"
                )
        return None

    # -- reading --------------------------------------------------------------------------

    def query(self, agent_id: str, till: int | None = None, partition: int = 0) -> Iterator[Change]:
        """The agent's pending changes up to ``till``, after its filter and expander."""
        agent = self.get_agent(agent_id)
        return self.agent_view(agent, self.track(partition).pending(agent_id, till))

    def agent_view(self, agent: Agent, changes: Iterable[Change]) -> Iterator[Change]:
        """``changes`` as ``agent`` sees them: expanded, then filtered by object type."""
        if agent.expander:
            changes = expand(changes, load_expander(agent.expander, self.allowed_imports))
        if agent.include_types or agent.exclude_types:
            return (change for change in changes if not agent.object_excluded(change.type))
        return iter(changes)

    # -- run bookkeeping ---------------------------------------------------------------------

    def record_run(
        self,
        agent_id: str,
        *,
        started: float,
        changes: int,
        records: int,
        rejected: int,
        error: str | None,
        state: State | None = None,
        interrupted: bool = False,
    ) -> None:
        """Store the outcome of a run in the agent's hash (counters, times, last error).

        ``state``, when given, is the state the run leaves the agent in (``paused`` by
        the dead-letter limit). One script, run even by a full Redis (``allow-oom``):
        the run that drains it shows in status. Nothing is written when the agent was
        removed meanwhile. An ``interrupted`` run (Ctrl-C) counts its work but is neither a
        success nor a failure: ``last_success_at``, ``failures`` and ``last_error`` stay.
        """
        args: list[str | int] = [f"{started:.3f}", changes, records, rejected, f"{time.time():.3f}"]
        args += [(error or "")[:1000], state or "", "1" if interrupted else ""]
        scripts_for(self.redis).record_run(keys=[self.keys.agent(agent_id)], args=args)

    # -- destruction ------------------------------------------------------------------------

    def destroy(self, *, agents_only: bool = False, track_only: bool = False) -> int:
        """Delete the namespace (``reset`` of the original, ``livesync destroy``); return keys deleted.

        ``agents_only`` keeps the track; ``track_only`` keeps the agents and moves
        their pointers to the head (nothing older is stored any more; the head stays,
        so seqs are never handed out twice).
        """
        deleted = destroy_namespace(self.redis, self.keys, agents_only=agents_only, track_only=track_only)
        self._meta = None
        return deleted
