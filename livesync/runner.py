"""The agent run: lock, windows, reduce, upload in batches, fenced ack, prune.

The successor of Indico's ``PushSyncAgent.run`` / ``_generateRecords`` /
``acknowledge`` and ``RecordUploader(batchSize).iterateOver``. The pointer moves to
the end of a window only after every record of that window was accepted by the
backend or put on the dead-letter list; any other error leaves it where it was. The
window's dead letters are written by the same fenced ack call that moves the pointer,
and a run that would dead-letter more than ``dead_letter_limit`` records stops before
that ack and pauses the agent: a target refusing everything is broken, and must not
empty the backlog into the dead-letter list.

One :class:`AgentRun` per (agent, partition) run holds what the run reads once (its
agent, track, lock) and the :class:`RunResult` it fills; :func:`run_agent` and
:func:`run_with_settings` build one and run it. Batches go through :mod:`livesync.upload`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

from livesync import deadletters, defaults, upload
from livesync.agent import Agent, State, reused_message, rewound_message
from livesync.backends import Backend
from livesync.changes import Change
from livesync.config import Settings
from livesync.errors import AgentCorrupt, AgentNotRunnable, DeadLetterLimit, describe
from livesync.loaders import NamedLoader
from livesync.lock import RunLock
from livesync.manager import SyncManager
from livesync.namespace import partition_epoch_problem
from livesync.records import Record
from livesync.reduce import reduce

log = logging.getLogger(__name__)


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
    batch_size: int = defaults.BATCH_SIZE,
    window: int = defaults.WINDOW,
    lock_ttl: float = defaults.LOCK_TTL,
    retention: int | None = None,
    backend: Backend | None = None,
    stop: threading.Event | None = None,
    dead_letter_limit: int = defaults.DEAD_LETTER_LIMIT,
    prune_chunk: int = defaults.PRUNE_CHUNK,
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
    options = RunOptions(
        batch_size=batch_size,
        window=window,
        lock_ttl=lock_ttl,
        retention=retention,
        dead_letter_limit=dead_letter_limit,
        prune_chunk=prune_chunk,
    )
    return AgentRun(manager, agent_id, partition, options, backend=backend, stop=stop).run()


def run_with_settings(
    manager: SyncManager, agent_id: str, partition: int, settings: Settings, *, stop: threading.Event | None = None
) -> RunResult:
    """:func:`run_agent` with batch size, window, lock TTL, retention and dead-letter limit from ``settings``.

    What RQ jobs and ``livesync agent run`` call, so both run an agent the same way.
    """
    return AgentRun(manager, agent_id, partition, RunOptions.from_settings(settings), stop=stop).run()


@dataclass(frozen=True)
class RunOptions:
    """How a run reads, uploads and prunes; the defaults are :class:`Settings`' (``livesync.defaults``)."""

    batch_size: int = defaults.BATCH_SIZE
    window: int = defaults.WINDOW
    lock_ttl: float = defaults.LOCK_TTL
    retention: int | None = None
    dead_letter_limit: int = defaults.DEAD_LETTER_LIMIT
    prune_chunk: int = defaults.PRUNE_CHUNK

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.window < 1 or self.dead_letter_limit < 1:
            raise ValueError("batch_size, window and dead_letter_limit must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> RunOptions:
        """The options ``settings`` give (``LIVESYNC_BATCH_SIZE``, ``_WINDOW``, ``_LOCK_TTL``, ...)."""
        return cls(
            batch_size=settings.batch_size,
            window=settings.window,
            lock_ttl=settings.lock_ttl,
            retention=settings.retention,
            dead_letter_limit=settings.dead_letter_limit,
            prune_chunk=settings.prune_chunk,
        )


class AgentRun:
    """One run of one (agent, partition): its agent, track, lock and result, read and built once.

    :meth:`run` takes the lock, checks that the partition may be read (pointer, rollback,
    gap), sends the windows up to the head seen at start, acks each one with its dead
    letters, prunes and records the run in the agent's hash. See :func:`run_agent`.
    """

    def __init__(
        self,
        manager: SyncManager,
        agent_id: str,
        partition: int = 0,
        options: RunOptions | None = None,
        *,
        backend: Backend | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.manager = manager
        self.options = options if options is not None else RunOptions()
        self.backend = backend
        self.stop = stop
        self.agent: Agent = manager.get_agent(agent_id)
        self.track = manager.track(partition)
        self.lock = RunLock(self.track, agent_id, ttl=self.options.lock_ttl)
        self.result = RunResult(agent=agent_id, partition=partition)

    def run(self) -> RunResult:
        """Run once; returns the result, or raises after recording the run (see :func:`run_agent`)."""
        self.check_runnable()
        started = time.time()
        clock = time.perf_counter()
        self.lock.acquire()
        error: str | None = None
        leaves: State | None = None  # the state the run leaves the agent in, when it changes it
        interrupted = False
        try:
            pointer = self.start()
            if pointer < self.result.head:
                loader = upload.loader_for(self.manager, self.agent)
                with upload.backend_for(self.manager, self.agent, self.backend, self.track.partition) as uploader:
                    self.sync(uploader, loader)
            self.result.pruned_buckets = self.track.prune(self.options.retention, chunk=self.options.prune_chunk)
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
            self.lock.release()
            self.result.elapsed = time.perf_counter() - clock
            self.record(started, error, leaves, interrupted)
        self.log_result()
        return self.result

    # -- the checks before reading ---------------------------------------------------------

    def check_runnable(self) -> None:
        """Refuse an agent whose state forbids a run (corrupt, paused, needs_export, gap, rollback)."""
        agent = self.agent
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

    def start(self) -> int:
        """Read the head and the agent's position; refuse a rewound partition or a gap; return the pointer."""
        agent_id, result = self.agent.id, self.result
        result.head = self.track.head()
        pointer, acked = self.track.position(agent_id)
        if pointer is None:
            raise AgentNotRunnable(f"agent {agent_id!r} has no pointer in partition {self.track.partition}")
        result.pointer_before = result.pointer_after = pointer
        rollback = self.rollback_message(pointer, acked)
        if rollback is not None:
            self.manager.update_agent(agent_id, state="rollback", last_error=rollback)
            raise AgentNotRunnable(f"agent {agent_id!r} is stopped: {rollback}")
        gap = self.manager.gap_message(agent_id)
        if gap is not None:
            self.manager.update_agent(agent_id, state="gap")
            raise AgentNotRunnable(f"agent {agent_id!r} has a {gap}")
        return pointer

    def rollback_message(self, pointer: int, acked: int | None) -> str | None:
        """Why the partition was rewound or re-created under the agent (invariant 6), or ``None``.

        A pointer beyond the head means the head was lost or rolled back: the seqs after it
        will be handed out again, so going on would skip them. A partition epoch other than
        the meta's means the partition belongs to another creation of the namespace. A
        change at the pointer whose version is not the one the last ack stored (``acked``;
        ``None`` when an operator set the pointer) means the head was set back and then
        overtaken: the seqs up to the pointer were handed out again to new changes.
        """
        manager, agent_id, partition = self.manager, self.agent.id, self.track.partition
        if pointer > self.result.head:
            return rewound_message(agent_id, partition, pointer, self.result.head)
        problem = partition_epoch_problem(manager.redis, manager.keys, manager.meta, partition)
        if problem is not None:
            return (
                f"rollback: {problem}; nothing was skipped; recover with "
                f"'livesync init --repair --partitions {manager.partitions}', then "
                f"'livesync agent reset {agent_id} --to tail' or re-export"
            )
        if acked is not None and pointer > 0:
            found = self.track.version_at(pointer)  # None: pruned, nothing left to compare with
            if found is not None and found != acked:
                return reused_message(agent_id, partition, pointer, acked, found)
        return None

    # -- the windows -------------------------------------------------------------------------

    def sync(self, uploader: Backend, loader: NamedLoader | None = None) -> None:
        """Send and ack the windows from the pointer up to the head seen at start (or until ``stop``)."""
        result = self.result
        for changes in self.track.iter_windows(result.pointer_before, result.head, self.options.window):
            first, last = changes[0].seq, changes[-1].seq
            if first != result.pointer_after + 1 or last - first + 1 != len(changes):
                self.lost_changes()
            if self.stop is not None and self.stop.is_set():
                result.stopped = True
                log.info(
                    "agent %s/%s: stop requested; ending the run after seq %d",
                    self.agent.id,
                    self.track.partition,
                    result.pointer_after,
                )
                return
            self.send_window(uploader, changes, loader)
        if result.pointer_after != result.head:  # the last changes up to the head vanished
            self.lost_changes()

    def send_window(self, uploader: Backend, changes: Sequence[Change], loader: NamedLoader | None = None) -> None:
        """Reduce one window, upload it in batches and ack it with its dead letters.

        Raises :class:`DeadLetterLimit` (nothing of this window acked) once the run's
        refused records pass ``dead_letter_limit``.
        """
        lock, result, limit = self.lock, self.result, self.options.dead_letter_limit
        lock.check()
        records = reduce(self.manager.agent_view(self.agent, changes))
        rejections: list[upload.Rejection] = []
        for uploaded in upload.send_batches(
            uploader, records, self.options.batch_size, check=lock.check, loader=loader
        ):
            rejections += uploaded.rejected
            result.records += uploaded.accepted
            result.batches += 1
            if result.rejected + len(rejections) > limit:
                lock.check()  # a runner that lost its lock leaves the agent's state alone
                raise _dead_letter_limit(self.agent.id, result.rejected + len(rejections), limit)
        self.acknowledge(changes, records, rejections)

    def acknowledge(
        self, changes: Sequence[Change], records: Sequence[Record], rejections: list[upload.Rejection]
    ) -> None:
        """Move the pointer to the window's end and write its dead letters, in one fenced call.

        Dead letters go with the window's ack, not per batch: a window that fails later is
        sent again, and its rejected records must not be dead-lettered twice. A runner that
        lost its lock or its agent writes neither.
        """
        result = self.result
        self.lock.check()
        letters = deadletters.encode(rejections)
        for record in records:
            result.actions[record.action] = result.actions.get(record.action, 0) + 1
        last = changes[-1].seq
        self.track.acknowledge(self.agent.id, self.lock.token, last, dead_letters=letters, version=changes[-1].version)
        result.rejected += len(letters)
        result.pointer_after = last
        result.changes += len(changes)
        result.windows += 1

    def lost_changes(self) -> NoReturn:
        """Refuse a window with a hole: changes pruned (by retention) while the run read them.

        Seqs are consecutive and every seq <= head is stored unless pruned, so a hole
        means this agent lost unread changes: it goes to ``gap`` and nothing is acked.
        """
        track, agent_id, pointer = self.track, self.agent.id, self.result.pointer_after
        pruned = track.pruned_upto()
        message = self.manager.gap_message(agent_id, [(track, pruned)]) or (
            f"gap: changes after seq {pointer} of partition {track.partition} vanished while this run read them "
            f"(pruned up to {pruned}); reset it (livesync agent reset) or re-export it"
        )
        self.manager.update_agent(agent_id, state="gap", last_error=message)
        raise AgentNotRunnable(f"agent {agent_id!r} has a {message}")

    # -- bookkeeping -------------------------------------------------------------------------

    def record(self, started: float, error: str | None, leaves: State | None, interrupted: bool) -> None:
        """Store the run's outcome in the agent's hash; never hides the run's own outcome."""
        result = self.result
        try:
            self.manager.record_run(
                result.agent,
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
                result.agent,
                exc_info=True,
            )

    def log_result(self) -> None:
        """One log line of what the run did."""
        result = self.result
        log.info(
            "agent %s/%s: %d changes -> %d records (%d rejected), pointer %d -> %d in %.2fs",
            result.agent,
            result.partition,
            result.changes,
            result.records,
            result.rejected,
            result.pointer_before,
            result.pointer_after,
            result.elapsed,
        )


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
