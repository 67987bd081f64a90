"""Zero-downtime reindex: a new generation of an agent's target, filled beside the live one and swapped in.

``livesync agent reindex ID --source NAME`` for a backend with generations
(:class:`~livesync.backends.base.Generations`: ``opensearch``, a new index behind the
alias; ``sql``, a new table renamed into place). Live runs go on writing the live
generation the whole time; readers see it until the swap and the complete new one after.

1. **Start.** Each partition gets a second pointer, ``<agent>@reindex``
   (:func:`~livesync.keys.reindex_pointer`), at its head: prune honours every pointer, so
   the changes published from now on stay on the track until the new generation has
   them. Each partition's clock is read before its head, so every change after the
   start position has a higher version than the export's records.
2. **Export.** Every object of the source goes into the new generation as ``created``
   (documents through the agent's loader, as the initial export), with the start
   version: what changes later outranks it.
3. **Catch-up.** The changes after the start position are reduced and sent into the new
   generation, window by window, moving the reindex pointer (a fenced ack) behind them.
   What the export had read already comes again with a higher version: harmless.
4. **Swap.** Under every partition's run lock of the agent (no live run writes the old
   generation meanwhile), the new generation catches up to the agent's own pointers and
   is swapped in atomically. What the agent has not delivered yet, its next runs deliver
   to the new generation: no update made during the reindex is lost.
5. **Cleanup.** The reindex pointers go; the old generation is dropped with
   ``drop_old``, else kept under the name the result gives.

**Resumable.** The state (generation, start positions and versions, phase, objects
done, the last object accepted) is kept in Redis (:mod:`livesync.reindex_state`); a
reindex run again after a crash or a kill continues in the same generation. A resumed
export skips the source's objects up to the last one accepted, which needs a source that
yields its objects in a **stable order** (``ORDER BY`` a key): objects created meanwhile
come through the catch-up whichever place they take. When that object is not found
again (deleted since, or an unstable order), the whole source is exported again into the
same generation: versions make the repeat harmless, so the fallback costs time, never
correctness.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import asdict, dataclass
from typing import Any

from livesync import deadletters, defaults, upload
from livesync.backends import Backend, load_backend
from livesync.backends.base import Generations
from livesync.errors import AgentBusy, AgentCorrupt, AgentNotRunnable, ConfigurationError
from livesync.export import iter_objects
from livesync.keys import reindex_pointer
from livesync.loaders import NamedLoader
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of
from livesync.records import ObjectId, Record
from livesync.reindex_catchup import CatchUp, Progress
from livesync.reindex_state import ReindexLocks, ReindexState, delete_state, load_state, new_token, save_state

log = logging.getLogger(__name__)

Source = Callable[[], Iterable[Any]]
"""What ``--source`` names: returns the objects, ``(type, id)`` pairs or ``{"type", "id"}`` dicts."""

#: Catch-up passes before the swap takes the agent's locks: each pass shortens what is left to do under them.
CATCH_UP_PASSES = 3


@dataclass
class ReindexResult:
    """What a reindex did; counts cover every run of it (a resumed one included), ``records`` this run's."""

    agent: str
    generation: str = ""
    retired: str = ""
    """The old generation's name now (dropped when ``dropped``)."""
    dropped: bool = False
    resumed: bool = False
    objects: int = 0
    records: int = 0
    rejected: int = 0
    changes: int = 0
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def reindex_agent(
    manager: SyncManager,
    agent_id: str,
    source: Source,
    *,
    source_name: str,
    drop_old: bool = False,
    batch_size: int = defaults.BATCH_SIZE,
    window: int = defaults.WINDOW,
    lock_ttl: float = defaults.LOCK_TTL,
    swap_wait: float = defaults.REINDEX_SWAP_WAIT,
    backend: Backend | None = None,
    progress: Progress | None = None,
) -> ReindexResult:
    """Rebuild the agent's target in a new generation and swap it in; see the module docstring.

    ``source`` is called for the objects (again when a resumed export must start over);
    ``source_name`` (what ``--source`` said) is kept with the state: a reindex in
    progress continues only with the same source. Raises :class:`ConfigurationError`
    for a backend without generations, :class:`AgentBusy` while another reindex of the
    agent runs or when the agent's run locks stay taken for ``swap_wait`` seconds, and
    re-raises the source's, loader's or backend's errors: the reindex then continues
    where it stopped when run again.
    """
    job = Reindex(manager, agent_id, batch_size=batch_size, window=window, lock_ttl=lock_ttl, backend=backend)
    return job.run(source, source_name, drop_old=drop_old, swap_wait=swap_wait, progress=progress)


def check_reindexable(manager: SyncManager, agent: Agent) -> None:
    """Refuse an agent whose backend has no generations, or whose state has no live generation to keep."""
    backend_cls = load_backend(agent.backend, manager.allowed_imports)
    if not issubclass(backend_cls, Generations):
        raise ConfigurationError(
            f"agent {agent.id!r} uses backend {agent.backend!r}, which has no generations: a reindex fills a new "
            "index or table beside the live one and swaps it in (backends opensearch and sql can); "
            f"for {agent.backend!r} reset the agent or export it again instead"
        )
    if agent.state == "corrupt":
        raise AgentCorrupt(f"agent {agent.id!r} is corrupt and is never run: {agent.last_error}")
    if agent.state not in ("active", "paused"):
        raise AgentNotRunnable(
            f"agent {agent.id!r} is {agent.state}: only an active or paused agent is reindexed "
            "(one that needs an export gets 'livesync agent export'; a gap or a rollback needs a reset first)"
        )


def abandon_reindex(
    manager: SyncManager, agent_id: str, *, lock_ttl: float = defaults.LOCK_TTL, backend: Backend | None = None
) -> str | None:
    """Stop the agent's reindex for good: drop its new generation, its pointers and its state.

    Returns the generation dropped, ``None`` when there was none (no reindex, or one that
    swapped already: the new generation is live then, and only the cleanup goes).
    Raises :class:`AgentBusy` while the reindex runs.
    """
    agent = manager.get_agent(agent_id)
    job = Reindex(manager, agent_id, lock_ttl=lock_ttl, backend=backend)
    job.locks.take()
    dropped = None
    try:
        try:
            state = load_state(manager, agent_id)
        except AgentCorrupt:
            state = None
        if state is not None and state.phase != "swapped" and state.generation:
            with upload.backend_for(manager, agent, backend) as uploader:
                if isinstance(uploader, Generations):
                    uploader.drop_generation(state.generation)
                    dropped = state.generation
    finally:
        job.locks.release()
    job.forget()
    return dropped


class Reindex:
    """One reindex of one agent: its tracks, reindex locks, state and result (see :func:`reindex_agent`)."""

    def __init__(
        self,
        manager: SyncManager,
        agent_id: str,
        *,
        batch_size: int = defaults.BATCH_SIZE,
        window: int = defaults.WINDOW,
        lock_ttl: float = defaults.LOCK_TTL,
        backend: Backend | None = None,
    ) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be positive")
        self.manager = manager
        self.agent = manager.get_agent(agent_id)
        self.batch_size, self.window, self.lock_ttl = batch_size, window, lock_ttl
        self.backend = backend
        self.tracks = manager.tracks()
        self.pointer_id = reindex_pointer(agent_id)
        self.locks = ReindexLocks(self.tracks, agent_id, lock_ttl)
        self.result = ReindexResult(agent=agent_id)
        self.progress: Progress = lambda _phase, _done, _total: None
        self._state: ReindexState | None = None
        self._read: tuple[int, tuple[str, ObjectId] | None] = (0, None)

    @property
    def state(self) -> ReindexState:
        """The reindex's state (once begun or loaded)."""
        assert self._state is not None, "the reindex has not begun"
        return self._state

    def run(
        self, source: Source, source_name: str, *, drop_old: bool, swap_wait: float, progress: Progress | None
    ) -> ReindexResult:
        """Begin or resume, export, catch up, swap, clean up; see :func:`reindex_agent`."""
        check_reindexable(self.manager, self.agent)
        if progress is not None:
            self.progress = progress
        clock = time.perf_counter()
        self.locks.take()
        try:
            self._state = load_state(self.manager, self.agent.id)
            if self._state is not None and self._state.source != source_name:
                raise ConfigurationError(
                    f"agent {self.agent.id!r} has a reindex in progress from --source {self._state.source!r}: run "
                    f"it again with that source to continue, or abandon it (agent reindex {self.agent.id} --abandon)"
                )
            with upload.backend_for(self.manager, self.agent, self.backend) as uploader:
                assert isinstance(uploader, Generations)  # check_reindexable: its class has them
                self.advance(uploader, source, source_name, drop_old=drop_old, swap_wait=swap_wait)
        finally:
            self.locks.release()
            self.result.elapsed = time.perf_counter() - clock
        self.forget()
        return self.result

    def advance(self, uploader: Any, source: Source, source_name: str, *, drop_old: bool, swap_wait: float) -> None:
        """Take the reindex from the phase it is in to the end (``uploader`` has :class:`Generations`)."""
        if self._state is None:
            self._state = self.begin(uploader, source_name)
        else:
            self.result.resumed = True
            log.info("reindex of %s: resuming in phase %s", self.agent.id, self._state.phase)
        state = self.state
        if state.phase != "swapped":
            state.generation = uploader.create_generation(state.token)  # kept when it exists
            save_state(self.manager, self.agent.id, state, "generation")
            uploader.write_generation(state.generation)
        self.result.generation = state.generation
        self.catch_up = CatchUp(
            self.manager,
            self.agent,
            self.locks,
            state,
            batch_size=self.batch_size,
            window=self.window,
            progress=self.progress,
        )
        loader = upload.loader_for(self.manager, self.agent)
        if state.phase == "export":
            self.export(uploader, source, loader)
            state.phase = "catchup"
            save_state(self.manager, self.agent.id, state, "phase")
        if state.phase == "catchup":
            for _pass in range(CATCH_UP_PASSES):
                if self.catch_up.run(uploader, loader) <= self.window:
                    break
            self.swap(uploader, loader, swap_wait)
        self.result.retired = state.retired
        if drop_old and state.retired:
            uploader.drop_generation(state.retired)
            self.result.dropped = True
        result = self.result
        result.objects, result.rejected, result.changes = state.exported, state.rejected, state.changes
        result.records += self.catch_up.accepted

    # -- the phases ------------------------------------------------------------------------

    def begin(self, uploader: Any, source_name: str) -> ReindexState:
        """Protect the track from each partition's head on, note where the reindex starts, create the generation."""
        live = uploader.live_generation()
        for track in self.tracks:
            # at 0 first: once in the hash, no prune deletes a change not yet read, so every
            # seq after the head read next is still stored when the pointer moves up to it
            track.add_pointer(self.pointer_id, 0)
        versions, positions = [], []
        for track in self.tracks:
            # at one moment: every change after the head has a higher version than the export's
            version, position = track.clock_and_head()
            versions.append(version)
            positions.append(position)
        for track, position in zip(self.tracks, positions, strict=True):
            track.move_pointer(self.pointer_id, position)
        state = ReindexState(
            token=new_token(),
            source=source_name,
            live=live,
            positions=positions,
            versions=versions,
            started_at=round(time.time(), 3),
        )
        save_state(self.manager, self.agent.id, state)
        log.info("reindex of %s: started from %s, replacing %s", self.agent.id, positions, live)
        return state

    def export(self, uploader: Backend, source: Source, loader: NamedLoader | None) -> None:
        """Send every object of ``source`` (after the last one a previous run accepted) as ``created``."""
        state, agent, partitions = self.state, self.agent, len(self.tracks)
        first = source()
        total = len(first) if isinstance(first, Sized) else None
        # how far the source was read, and its last object (the batches' end, when one is cut)
        self._read = (state.exported, state.last)

        def records() -> Iterator[Record]:
            for key in self.pending_objects(source, first):
                self._read = (self._read[0] + 1, key)
                type_, id_ = key
                if agent.object_excluded(type_):
                    continue
                partition = partition_of(type_, id_, partitions)
                yield Record(type_, id_, "created", ("created",), state.positions[partition], state.versions[partition])

        self.progress("export", state.exported, total)
        for batch in upload.batches(records(), self.batch_size):
            self.locks.check()
            uploaded = upload.send(uploader, batch, loader)
            self.result.records += uploaded.accepted
            self.dead_letter_export(uploaded.rejected)
            self.locks.check()
            # the source is paused right after the batch's last object: what it read is done
            state.exported, state.last = self._read
            save_state(self.manager, agent.id, state, "exported", "last", "rejected")
            self.progress("export", state.exported, total)
        if (state.exported, state.last) != self._read:  # objects read after the last batch (types left out)
            state.exported, state.last = self._read
            save_state(self.manager, agent.id, state, "exported", "last")
            self.progress("export", state.exported, total)

    def pending_objects(self, source: Source, first: Iterable[Any]) -> Iterator[tuple[str, ObjectId]]:
        """``first``'s objects after the last one accepted before (all on a first run); see the module docstring."""
        marker = self.state.last
        if marker is None:
            yield from iter_objects(first)
            return
        found = False
        for key in iter_objects(first):
            if found:
                yield key
            elif key == marker:
                found = True
        if found:
            return
        log.warning(
            "reindex of %s: the source no longer yields %r, the last object exported before; exporting every "
            "object again into %s (its order is not stable, or the object is gone)",
            self.agent.id,
            marker,
            self.state.generation,
        )
        self._read = (0, None)
        yield from iter_objects(source())

    def swap(self, uploader: Any, loader: NamedLoader | None, wait: float) -> None:
        """Under the agent's run locks: catch up to its pointers, swap the generation in, note it."""
        state = self.state
        try:
            agent_locks = self.locks.take_agent_locks(wait)
        except AgentBusy as exc:
            raise AgentBusy(
                f"reindex of {self.agent.id!r}: the swap could not begin: {exc}; {state.generation} is caught up, "
                "run the reindex again to swap it in"
            ) from None
        try:
            pointers = []
            for track in self.tracks:
                pointer = track.pointer(self.agent.id)
                if pointer is None:
                    raise AgentNotRunnable(f"agent {self.agent.id!r} has no pointer in partition {track.partition}")
                pointers.append(pointer)
            # what the agent delivered to the old generation, the new one gets now; the rest its runs deliver
            self.catch_up.run(uploader, loader, pointers)
            self.locks.check()
            for lock in agent_locks:
                lock.check()
            state.retired = uploader.swap_generation(state.generation, state.live)
            state.phase = "swapped"
            save_state(self.manager, self.agent.id, state, "retired", "phase")
            log.info("reindex of %s: %s is live, %s retired", self.agent.id, state.generation, state.retired)
        finally:
            for lock in agent_locks:
                lock.release()

    # -- bookkeeping ---------------------------------------------------------------------------

    def dead_letter_export(self, rejected: list[upload.Rejection]) -> None:
        """File the export's refused records under the agent, per partition, fenced by the reindex locks."""
        by_partition: dict[int, list[upload.Rejection]] = {}
        for record, reason in rejected:
            by_partition.setdefault(partition_of(record.type, record.id, len(self.tracks)), []).append((record, reason))
        for partition, rejections in by_partition.items():
            letters = deadletters.encode(rejections)
            lock, track = self.locks.own[partition], self.tracks[partition]
            track.acknowledge(self.pointer_id, lock.token, None, dead_letters=letters, letters_for=self.agent.id)
            self.state.rejected += len(letters)

    def forget(self) -> None:
        """After a reindex ended (swapped or abandoned): drop its pointers (prune may go on) and its state."""
        if self._state is not None and self._state.phase != "swapped":
            return
        for track in self.tracks:
            track.remove_pointer(self.pointer_id)
        delete_state(self.manager, self.agent.id)
