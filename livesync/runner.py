"""The agent run: lock, windows, reduce, upload in batches, fenced ack, prune.

The successor of Indico's ``PushSyncAgent.run`` / ``_generateRecords`` /
``acknowledge`` and ``RecordUploader(batchSize).iterateOver``. The pointer moves to
the end of a window only after every record of that window was accepted by the
backend or put on the dead-letter list; any other error leaves it where it was. The
window's dead letters are written by the same fenced ack call that moves the pointer,
and a run that would dead-letter more than ``dead_letter_limit`` records stops before
that ack and pauses the agent: a target refusing everything is broken, and must not
empty the backlog into the dead-letter list.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from livesync import deadletters
from livesync.backends import Backend, create_backend
from livesync.config import Settings
from livesync.errors import AgentCorrupt, AgentNotRunnable, DeadLetterLimit, RecordRejected, describe
from livesync.lock import RunLock
from livesync.manager import Agent, State, SyncManager, reused_message, rewound_message
from livesync.namespace import partition_epoch_problem
from livesync.records import Record
from livesync.reduce import reduce
from livesync.track import PRUNE_CHUNK, Track

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
DEFAULT_WINDOW = 10_000
DEFAULT_LOCK_TTL = 60.0
DEFAULT_DEAD_LETTER_LIMIT: int = Settings.model_fields["dead_letter_limit"].default


@dataclass
class RunResult:
    """What one run of (agent, partition) did."""

    agent: str
    partition: int
    pointer_before: int = 0
    pointer_after: int = 0
    head: int = 0
    changes: int = 0
    records: int = 0
    rejected: int = 0
    windows: int = 0
    batches: int = 0
    pruned_buckets: int = 0
    elapsed: float = 0.0
    skipped: str | None = None
    stopped: bool = False
    actions: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (RQ job results, ``--json``)."""
        return asdict(self)


def run_agent(
    manager: SyncManager,
    agent_id: str,
    partition: int = 0,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    window: int = DEFAULT_WINDOW,
    lock_ttl: float = DEFAULT_LOCK_TTL,
    retention: int | None = None,
    backend: Backend | None = None,
    stop: threading.Event | None = None,
    dead_letter_limit: int = DEFAULT_DEAD_LETTER_LIMIT,
    prune_chunk: int = PRUNE_CHUNK,
) -> RunResult:
    """Sync the pending changes of ``agent_id`` in ``partition`` up to the head seen at start.

    Raises :class:`AgentNotRunnable` for a paused agent or one that needs an export or
    has a gap, :class:`AgentBusy` when another runner holds the lock, and re-raises any
    backend error after recording it (the pointer stays at the last acked window). A
    ``KeyboardInterrupt`` (Ctrl-C) is recorded as a run but not as a failure.
    When ``stop`` is set (a worker's warm shutdown), the run ends after the window in
    flight is acknowledged. ``retention`` and ``prune_chunk`` are passed to the prune after
    the run. A run that would dead-letter more than ``dead_letter_limit`` records pauses the
    agent and raises :class:`DeadLetterLimit` before acking the window that went past it.
    """
    if batch_size < 1 or window < 1 or dead_letter_limit < 1:
        raise ValueError("batch_size, window and dead_letter_limit must be positive")
    agent = manager.get_agent(agent_id)
    _check_runnable(agent)
    track = manager.track(partition)
    result = RunResult(agent=agent_id, partition=partition)
    started = time.time()
    clock = time.perf_counter()
    lock = RunLock(track, agent_id, ttl=lock_ttl).acquire()
    error: str | None = None
    leaves: State | None = None  # the state the run leaves the agent in, when it changes it
    interrupted = False
    try:
        result.head = track.head()
        pointer, acked = track.position(agent_id)
        if pointer is None:
            raise AgentNotRunnable(f"agent {agent_id!r} has no pointer in partition {partition}")
        result.pointer_before = result.pointer_after = pointer
        rollback = _rollback_message(manager, agent_id, track, pointer, result.head, acked)
        if rollback is not None:
            manager.update_agent(agent_id, state="rollback", last_error=rollback)
            raise AgentNotRunnable(f"agent {agent_id!r} is stopped: {rollback}")
        gap = manager.gap_message(agent_id)
        if gap is not None:
            manager.update_agent(agent_id, state="gap")
            raise AgentNotRunnable(f"agent {agent_id!r} has a {gap}")
        if pointer < result.head:
            uploader = backend or create_backend(agent.backend, agent.id, agent.options, manager.allowed_imports)
            uploader.open()
            try:
                _sync(manager, agent, partition, uploader, lock, result, batch_size, window, stop, dead_letter_limit)
            finally:
                uploader.close()
        result.pruned_buckets = track.prune(retention, chunk=prune_chunk)
    except KeyboardInterrupt:
        # Ctrl-C says nothing about the target: not a failure, and the last error stays
        interrupted = True
        raise
    except BaseException as exc:
        error = describe(exc)
        if isinstance(exc, DeadLetterLimit):
            leaves = "paused"
        raise
    finally:
        lock.release()
        result.elapsed = time.perf_counter() - clock
        try:
            manager.record_run(
                agent_id,
                started=started,
                changes=result.changes,
                records=result.records,
                rejected=result.rejected,
                error=error,
                state=leaves,
                interrupted=interrupted,
            )
        except Exception:  # bookkeeping must not hide the run's own outcome
            # when the run failed already (Redis gone), its own error says what matters
            log.log(
                logging.INFO if error or interrupted else logging.WARNING,
                "could not record the run of %s",
                agent_id,
                exc_info=True,
            )
    log.info(
        "agent %s/%s: %d changes -> %d records (%d rejected), pointer %d -> %d in %.2fs",
        agent_id,
        partition,
        result.changes,
        result.records,
        result.rejected,
        result.pointer_before,
        result.pointer_after,
        result.elapsed,
    )
    return result


def run_with_settings(
    manager: SyncManager, agent_id: str, partition: int, settings: Settings, *, stop: threading.Event | None = None
) -> RunResult:
    """:func:`run_agent` with batch size, window, lock TTL, retention and dead-letter limit from ``settings``.

    What RQ jobs and ``livesync agent run`` call, so both run an agent the same way.
    """
    return run_agent(
        manager,
        agent_id,
        partition,
        batch_size=settings.batch_size,
        window=settings.window,
        lock_ttl=settings.lock_ttl,
        retention=settings.retention,
        stop=stop,
        dead_letter_limit=settings.dead_letter_limit,
        prune_chunk=settings.prune_chunk,
    )


def _check_runnable(agent: Agent) -> None:
    if agent.state == "corrupt":
        raise AgentCorrupt(f"agent {agent.id!r} is corrupt and is never run: {agent.last_error}")
    if agent.state == "paused":
        raise AgentNotRunnable(f"agent {agent.id!r} is paused; resume it first")
    if agent.state == "needs_export":
        raise AgentNotRunnable(f"agent {agent.id!r} needs its initial export before it can run")
    if agent.state == "gap":
        raise AgentNotRunnable(f"agent {agent.id!r} lost unread changes to retention (gap); reset or re-export it")
    if agent.state == "rollback":
        raise AgentNotRunnable(
            f"agent {agent.id!r} is stopped in state rollback ({agent.last_error or 'its partition was rewound'})"
        )


def _rollback_message(
    manager: SyncManager, agent_id: str, track: Track, pointer: int, head: int, acked: int | None
) -> str | None:
    """Why the partition was rewound or re-created under the agent (invariant 6), or ``None``.

    A pointer beyond the head means the head was lost or rolled back: the seqs after it
    will be handed out again, so going on would skip them. A partition epoch other than
    the meta's means the partition belongs to another creation of the namespace. A
    change at the pointer whose version is not the one the last ack stored (``acked``;
    ``None`` when an operator set the pointer) means the head was set back and then
    overtaken: the seqs up to the pointer were handed out again to new changes.
    """
    partition = track.partition
    if pointer > head:
        return rewound_message(agent_id, partition, pointer, head)
    problem = partition_epoch_problem(manager.redis, manager.keys, manager.meta, partition)
    if problem is not None:
        return (
            f"rollback: {problem}; nothing was skipped; recover with "
            f"'livesync init --repair --partitions {manager.partitions}', then "
            f"'livesync agent reset {agent_id} --to tail' or re-export"
        )
    if acked is not None and pointer > 0:
        found = track.version_at(pointer)  # None: pruned, nothing left to compare with
        if found is not None and found != acked:
            return reused_message(agent_id, partition, pointer, acked, found)
    return None


def _sync(
    manager: SyncManager,
    agent: Agent,
    partition: int,
    backend: Backend,
    lock: RunLock,
    result: RunResult,
    batch_size: int,
    window: int,
    stop: threading.Event | None,
    dead_letter_limit: int,
) -> None:
    track = manager.track(partition)
    for changes in track.iter_windows(result.pointer_before, result.head, window):
        _check_contiguous(manager, agent.id, track, result.pointer_after, changes[0].seq, changes[-1].seq, len(changes))
        if stop is not None and stop.is_set():
            result.stopped = True
            log.info(
                "agent %s/%s: stop requested; ending the run after seq %d", agent.id, partition, result.pointer_after
            )
            return
        lock.check()
        records = reduce(manager.agent_view(agent, changes))
        rejections: list[tuple[Record, str]] = []
        for batch in _batches(records, batch_size):
            lock.check()
            try:
                backend.upload(batch)
                accepted = len(batch)
            except RecordRejected as rejected:
                rejections += rejected.rejections
                accepted = len(batch) - len(rejected.rejections)
            result.records += accepted
            result.batches += 1
            if result.rejected + len(rejections) > dead_letter_limit:
                lock.check()  # a runner that lost its lock leaves the agent's state alone
                raise _dead_letter_limit(agent.id, result.rejected + len(rejections), dead_letter_limit)
        # dead letters are written with the window's ack, not per batch: a window that fails
        # later is sent again, and its rejected records must not be dead-lettered twice. One
        # fenced call: a runner that lost its lock or its agent writes neither
        lock.check()
        letters = deadletters.encode(rejections)
        for record in records:
            result.actions[record.action] = result.actions.get(record.action, 0) + 1
        last = changes[-1].seq
        track.acknowledge(agent.id, lock.token, last, dead_letters=letters, version=changes[-1].version)
        result.rejected += len(letters)
        result.pointer_after = last
        result.changes += len(changes)
        result.windows += 1
    # the last changes up to the head may have vanished too
    _check_contiguous(manager, agent.id, track, result.pointer_after, result.head + 1, result.head, 0)


def _dead_letter_limit(agent_id: str, refused: int, limit: int) -> DeadLetterLimit:
    """The error that stops a run whose backend refused more than ``limit`` records.

    Nothing of the window in flight is acked or dead-lettered; the records refused
    before it stay on the list for a requeue once the target is fixed. The run's
    bookkeeping pauses the agent (with this message), in the same allow-oom script, so
    the pause holds even on a full Redis.
    """
    return DeadLetterLimit(
        f"paused: the backend refused {refused} records in one run (limit LIVESYNC_DEAD_LETTER_LIMIT={limit}); "
        f"check the target, then 'livesync agent dlq {agent_id} --requeue' and 'livesync agent resume {agent_id}'"
    )


def _check_contiguous(
    manager: SyncManager, agent_id: str, track: Track, pointer: int, first: int, last: int, count: int
) -> None:
    """Refuse a window with a hole: changes pruned (by retention) while the run read them.

    Seqs are consecutive and every seq <= head is stored unless pruned, so a hole
    means this agent lost unread changes: it goes to ``gap`` and nothing is acked.
    """
    if first == pointer + 1 and last - first + 1 == count:
        return
    message = manager.gap_message(agent_id) or (
        f"gap: changes after seq {pointer} of partition {track.partition} vanished while this run read them "
        f"(pruned up to {track.pruned_upto()}); reset it (livesync agent reset) or re-export it"
    )
    manager.update_agent(agent_id, state="gap", last_error=message)
    raise AgentNotRunnable(f"agent {agent_id!r} has a {message}")


def _batches(records: Sequence[Record], size: int) -> Iterator[Sequence[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]
