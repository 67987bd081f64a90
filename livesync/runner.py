"""The agent run: lock, windows, reduce, upload in batches, fenced ack, prune.

The successor of Indico's ``PushSyncAgent.run`` / ``_generateRecords`` /
``acknowledge`` and ``RecordUploader(batchSize).iterateOver``. The pointer moves to
the end of a window only after every record of that window was accepted by the
backend or put on the dead-letter list; any other error leaves it where it was.
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
from livesync.errors import AgentNotRunnable, RecordRejected, describe
from livesync.lock import RunLock
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_epoch_problem
from livesync.records import Record
from livesync.reduce import reduce
from livesync.track import Track

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 500
DEFAULT_WINDOW = 10_000
DEFAULT_LOCK_TTL = 60.0


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
) -> RunResult:
    """Sync the pending changes of ``agent_id`` in ``partition`` up to the head seen at start.

    Raises :class:`AgentNotRunnable` for a paused agent or one that needs an export or
    has a gap, :class:`AgentBusy` when another runner holds the lock, and re-raises any
    backend error after recording it (the pointer stays at the last acked window).
    When ``stop`` is set (a worker's warm shutdown), the run ends after the window in
    flight is acknowledged. ``retention`` is passed to the prune after the run.
    """
    if batch_size < 1 or window < 1:
        raise ValueError("batch_size and window must be positive")
    agent = manager.get_agent(agent_id)
    _check_runnable(agent)
    track = manager.track(partition)
    result = RunResult(agent=agent_id, partition=partition)
    started = time.time()
    clock = time.perf_counter()
    lock = RunLock(track, agent_id, ttl=lock_ttl).acquire()
    error: str | None = None
    try:
        result.head = track.head()
        pointer = track.pointer(agent_id)
        if pointer is None:
            raise AgentNotRunnable(f"agent {agent_id!r} has no pointer in partition {partition}")
        result.pointer_before = result.pointer_after = pointer
        rollback = _rollback_message(manager, agent_id, track, pointer, result.head)
        if rollback is not None:
            manager.update_agent(agent_id, state="rollback", last_error=rollback)
            raise AgentNotRunnable(f"agent {agent_id!r} is stopped: {rollback}")
        gap = manager.gap_message(agent_id)
        if gap is not None:
            manager.update_agent(agent_id, state="gap")
            raise AgentNotRunnable(f"agent {agent_id!r} has a {gap}")
        if pointer < result.head:
            uploader = backend or create_backend(agent.backend, agent.id, agent.options)
            uploader.open()
            try:
                _sync(manager, agent, partition, uploader, lock, result, batch_size, window, stop)
            finally:
                uploader.close()
        result.pruned_buckets = track.prune(retention)
    except BaseException as exc:
        error = describe(exc)
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
            )
        except Exception:  # bookkeeping must not hide the run's own outcome
            # when the run failed already (Redis gone), its own error says what matters
            log.log(
                logging.INFO if error else logging.WARNING, "could not record the run of %s", agent_id, exc_info=True
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
    """:func:`run_agent` with batch size, window, lock TTL and retention from ``settings``.

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
    )


def _check_runnable(agent: Agent) -> None:
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


def _rollback_message(manager: SyncManager, agent_id: str, track: Track, pointer: int, head: int) -> str | None:
    """Why the partition was rewound or re-created under the agent (invariant 6), or ``None``.

    A pointer beyond the head means the head was lost or rolled back: the seqs after it
    will be handed out again, so going on would skip them. A partition epoch other than
    the meta's means the partition belongs to another creation of the namespace.
    """
    partition = track.partition
    if pointer > head:
        return (
            f"rollback: partition {partition} was rewound: pointer {pointer} is beyond head {head} "
            "(Redis lost or rolled back data); nothing was skipped; "
            f"recover with 'livesync agent reset {agent_id} --to tail' or re-export"
        )
    problem = partition_epoch_problem(manager.redis, manager.keys, manager.meta, partition)
    if problem is not None:
        return (
            f"rollback: {problem}; nothing was skipped; recover with "
            f"'livesync init --repair --partitions {manager.partitions}', then "
            f"'livesync agent reset {agent_id} --to tail' or re-export"
        )
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
        # dead letters are written with the window's ack, not per batch: a window that fails
        # later is sent again, and its rejected records must not be dead-lettered twice
        lock.check()
        result.rejected += deadletters.add(manager, agent.id, partition, RecordRejected(rejections))
        for record in records:
            result.actions[record.action] = result.actions.get(record.action, 0) + 1
        last = changes[-1].seq
        track.acknowledge(agent.id, lock.token, last)
        result.pointer_after = last
        result.changes += len(changes)
        result.windows += 1
    # the last changes up to the head may have vanished too
    _check_contiguous(manager, agent.id, track, result.pointer_after, result.head + 1, result.head, 0)


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
