"""RQ jobs: ``run`` (one agent partition's run), ``tick`` and ``relay`` (the outbox), importable by any RQ worker.

Jobs are stored with RQ's JSON serializer (never pickle), so rq-dashboard started
with ``--json`` shows them. A worker process that was not set up by
:func:`configure` (``rq worker -c livesync.rqconfig.settings``) reads its settings from the
``LIVESYNC_*`` environment.
"""

from __future__ import annotations

import logging
import string
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis as redis_lib
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from livesync import runner
from livesync.config import Settings, load_settings
from livesync.connection import connect_queue, connect_track
from livesync.errors import AgentBusy, AgentCorrupt, AgentNotFound, AgentNotRunnable, RedisFull, describe
from livesync.lock import short_lock
from livesync.lua import scripts_for
from livesync.manager import SyncManager
from livesync.redis_policy import check_settings, redis_full
from livesync.track import Track
from livesync.urls import mask_url

log = logging.getLogger(__name__)

RUN = "livesync.jobs.run"
TICK = "livesync.jobs.tick"
RELAY = "livesync.jobs.relay"
ACTIVE_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
#: Why nothing can be scheduled while the queue shares the track's Redis and that Redis is full.
QUEUE_ON_FULL_TRACK = (
    "the RQ queue is on the track's Redis, which is full: scheduled runs cannot be enqueued; "
    "run 'livesync agent run ID' to drain it, and put LIVESYNC_RQ_URL on another Redis"
)

#: Set by a worker's warm shutdown: the run in progress ends after its current window.
STOP = threading.Event()

# Why module-level state: RQ calls the jobs below by dotted name (``RUN``, ``TICK``)
# with JSON arguments only, so nothing but the namespace and ids can travel with a job; the
# settings and clients of the worker process are found here, set once by ``configure`` (or
# read from the environment on first use) and reused by every job the process runs, one
# connection pool per process instead of one per job. ``STOP`` is shared by the worker's
# signal handler and the run in progress, which sit in different frames of one process.
_settings: Settings | None = None
_redis: Any = None
_rq_redis: Any = None


def configure(settings: Settings | None, *, redis: Any = None, rq_redis: Any = None) -> None:
    """Set the settings (and optionally ready clients) the jobs of this process use."""
    global _settings, _redis, _rq_redis
    _settings, _redis, _rq_redis = settings, redis, rq_redis


def clear_configuration() -> None:
    """Forget what :func:`configure` set (back to the environment)."""
    configure(None, redis=None, rq_redis=None)


def current_settings(namespace: str | None = None) -> Settings:
    """The configured settings, else those of the environment; ``namespace`` overrides."""
    settings = _settings if _settings is not None else load_settings()
    if namespace is not None and namespace != settings.namespace:
        settings = settings.model_copy(update={"namespace": namespace})
    return settings


def track_redis(settings: Settings) -> Any:
    """The client of the track's Redis."""
    global _redis
    if _redis is None:
        _redis = connect_track(settings)
    return _redis


def queue_redis(settings: Settings) -> Any:
    """The client of the RQ queue's Redis (the track's unless ``rq_url`` is set)."""
    global _rq_redis
    if _rq_redis is None:
        _rq_redis = connect_queue(settings) if settings.rq_url else track_redis(settings)
    return _rq_redis


def queue_full_message(settings: Settings) -> str:
    """The one line saying that the queue's Redis is full, and what to do about it.

    RQ's own writes (enqueue, worker registration) are plain commands, which a Redis at
    maxmemory refuses; only livesync's scripts may run there (``allow-oom``). With the
    queue on the track's Redis, only a manual run (``livesync agent run``, which needs
    no queue) drains it; with the queue on another Redis, scheduled runs drain a full
    track by themselves.
    """
    if settings.queue_url == settings.redis_url:
        return QUEUE_ON_FULL_TRACK
    return (
        f"the RQ queue's Redis at {mask_url(settings.queue_url)} is full: scheduled runs cannot be enqueued "
        "until it has room (it holds RQ's jobs only; raise its maxmemory or clear old jobs)"
    )


def make_queue(settings: Settings, connection: Any = None) -> Queue:
    """The RQ queue of livesync, JSON-serialized."""
    return Queue(
        settings.queue,
        connection=connection if connection is not None else queue_redis(settings),
        serializer=JSONSerializer,
        default_timeout=settings.job_timeout,
    )


def run(namespace: str, agent_id: str, partition: int = 0) -> dict[str, Any]:
    """RQ job: run one agent's partition; returns the run's summary.

    A removed, paused or busy agent is skipped (the result says why); any other
    error fails the job, leaves the pointer where it was and RQ retries it.
    """
    settings = current_settings(namespace)
    manager = SyncManager(track_redis(settings), namespace, allowed_imports=settings.allowed_imports)
    try:
        result = runner.run_with_settings(manager, agent_id, partition, settings, stop=STOP)
    except (AgentNotFound, AgentNotRunnable, AgentBusy) as exc:
        log.info("skipped run of %s/%s: %s", agent_id, partition, exc)
        return {"agent": agent_id, "partition": partition, "skipped": str(exc)}
    return result.to_dict()


def tick(namespace: str) -> dict[str, Any]:
    """RQ job: :func:`tick_namespace` on the configured queue (skipped while the namespace does not exist)."""
    settings = current_settings(namespace)
    check_settings(track_redis(settings), settings)  # also where `rq cron` and plain RQ workers tick
    manager = SyncManager(track_redis(settings), namespace, allowed_imports=settings.allowed_imports)
    if not manager.exists():
        return {"namespace": namespace, "skipped": "namespace does not exist yet"}
    try:
        return tick_namespace(manager, make_queue(settings), settings)
    except RedisFull as exc:  # one line, not a traceback per tick: the message says what to do
        log.error("tick of %s: %s", namespace, exc)
        return {"namespace": namespace, "skipped": str(exc)}


def relay(namespace: str) -> dict[str, Any]:
    """RQ job: relay the namespace's committed outbox rows once (``livesync relay --once``); returns the summary.

    The database is the worker's ``LIVESYNC_OUTBOX_URL`` (and ``LIVESYNC_OUTBOX_TABLE``),
    never a job argument: a job is data anyone with access to the queue could write.
    Stops after its current batch on a warm shutdown; a failure fails the job (RQ retries).
    """
    from livesync.outbox.relay import open_relay  # SQLAlchemy: only on workers that relay

    settings = current_settings(namespace)
    worker = open_relay(settings, track_redis(settings))
    try:
        return {"namespace": namespace, **worker.drain(STOP).to_dict()}
    finally:
        worker.engine.dispose()


def tick_namespace(manager: SyncManager, queue: Queue, settings: Settings, *, force: bool = False) -> dict[str, Any]:
    """One tick: prune (with ``settings.retention``), mark gaps, enqueue a run for every due agent once.

    The tick job and ``livesync tick`` both call this. Returns the job ids enqueued,
    the agents whose runs could not be enqueued and the corrupt agents skipped (each
    with the reason), the buckets pruned and the agents newly marked ``rollback`` and ``gap``.
    """
    maintenance = manager.maintain(settings.retention, chunk=settings.prune_chunk)
    if maintenance["gaps"]:
        log.warning("agents lost unread changes to retention (gap): %s", ", ".join(maintenance["gaps"]))
    if maintenance["rollbacks"]:
        log.warning("agents stopped, their partition was rewound (rollback): %s", ", ".join(maintenance["rollbacks"]))
    scheduled = schedule_due(manager, queue, settings, force=force)
    return {"namespace": manager.namespace, **scheduled.to_dict(), **maintenance}


@dataclass
class Scheduled:
    """What one pass over the agents of a namespace enqueued, and which agents it had to leave out."""

    #: ids of the run jobs enqueued
    enqueued: list[str] = field(default_factory=list)
    #: agent id -> why a run of it could not be enqueued
    failed: dict[str, str] = field(default_factory=dict)
    #: agent id -> what is wrong with its stored hash or pointer (never enqueued)
    corrupt: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tick results, ``livesync tick --json``)."""
        return {"enqueued": self.enqueued, "failed": self.failed, "corrupt": self.corrupt}


def enqueue_due(manager: SyncManager, queue: Queue, settings: Settings, *, force: bool = False) -> list[str]:
    """The ids of the run jobs :func:`schedule_due` enqueued."""
    return schedule_due(manager, queue, settings, force=force).enqueued


def schedule_due(manager: SyncManager, queue: Queue, settings: Settings, *, force: bool = False) -> Scheduled:
    """Enqueue ``run`` for each (agent, partition) that is due.

    Due: active (not paused, not needing an export, no gap), ``update_time`` passed
    since its last run (``force`` ignores this), changes pending, and no run of it
    already queued, scheduled for retry or running. A short lock keeps concurrent
    ticks from enqueueing the same run twice; it is taken and released by allow-oom
    scripts, like the run lock, so a full track Redis can still be ticked. One agent
    never stops the others: a corrupt one is skipped, one whose run cannot be enqueued
    is left out, each logged in one line and reported in the result; only a lost
    connection ends the pass, or a queue Redis that is full (:class:`RedisFull`, whose
    message says what to do): every other agent would fail the same way.
    """
    scheduled = Scheduled()
    with short_lock(manager.redis, manager.keys.tick_lock, settings.tick_lock_ttl) as taken:
        if not taken:
            log.info("another tick of %s is running; skipping", manager.namespace)
            return scheduled
        now = time.time()
        tracks = manager.tracks()
        for agent in manager.list_agents():
            if agent.state == "corrupt":
                _skip_corrupt(scheduled, agent.id, agent.last_error or "corrupt")
                continue
            if agent.state != "active":
                continue
            if not force and agent.last_run_at is not None and now - agent.last_run_at < agent.update_time:
                continue
            try:
                _enqueue_agent(manager, queue, settings, tracks, agent.id, scheduled)
            except AgentCorrupt as exc:
                _skip_corrupt(scheduled, agent.id, str(exc))
            except (redis_lib.ConnectionError, redis_lib.TimeoutError):
                raise  # not this agent's fault: every other agent would fail the same way
            except redis_lib.exceptions.OutOfMemoryError as exc:
                if redis_full(queue.connection):  # the enqueue was refused, not one of the track's writes
                    raise RedisFull(queue_full_message(settings)) from exc
                scheduled.failed[agent.id] = describe(exc)
                log.warning("could not enqueue a run of agent %s: %s", agent.id, describe(exc))
            except Exception as exc:
                scheduled.failed[agent.id] = describe(exc)
                log.warning("could not enqueue a run of agent %s: %s", agent.id, describe(exc))
    return scheduled


def _enqueue_agent(
    manager: SyncManager, queue: Queue, settings: Settings, tracks: list[Track], agent_id: str, scheduled: Scheduled
) -> None:
    """Enqueue a run of each partition of the agent with changes pending and no run standing."""
    redis = manager.redis
    for track in tracks:
        pointer = track.pointer(agent_id)
        if pointer is None or pointer >= track.head():
            continue
        slot = f"{agent_id}:{track.partition}"
        previous = redis.hget(manager.keys.jobs, slot)
        if previous and _active(previous.decode(), queue, redis, track.keys.lock(agent_id)):
            continue
        job = enqueue_run(queue, settings, manager.namespace, agent_id, track.partition)
        note_job(manager, slot, job.id)
        scheduled.enqueued.append(job.id)


def note_job(manager: SyncManager, slot: str, job_id: str) -> None:
    """Remember ``job_id`` as the run standing for ``slot`` (``<agent>:<partition>``), at maxmemory too."""
    scripts_for(manager.redis).note_job(keys=[manager.keys.jobs], args=[slot, job_id])


def _skip_corrupt(scheduled: Scheduled, agent_id: str, problem: str) -> None:
    scheduled.corrupt[agent_id] = problem
    log.warning("skipped corrupt agent %s: %s", agent_id, problem)


def enqueue_run(queue: Queue, settings: Settings, namespace: str, agent_id: str, partition: int) -> Job:
    """Enqueue one ``run`` job with RQ retries and backoff."""
    retry = None
    if settings.retry_max > 0:
        retry = Retry(max=settings.retry_max, interval=settings.retry_intervals)
    return queue.enqueue(
        RUN,
        args=(namespace, agent_id, partition),
        job_id=run_job_id(namespace, agent_id, partition),
        description=f"livesync run {namespace}/{agent_id} partition {partition}",
        retry=retry,
        result_ttl=3600,
        failure_ttl=7 * 86400,
        job_timeout=settings.job_timeout,
    )


def run_job_id(namespace: str, agent_id: str, partition: int) -> str:
    """A fresh RQ job id of a run: ``livesync-<namespace>-<agent>-<partition>-<8 random hex>``.

    RQ allows only letters, digits, ``_`` and ``-`` in job ids (``rq.job.JOB_ID_PATTERN``),
    while namespaces and agent ids also allow ``.``: both go through :func:`job_id_part`,
    so the id is valid for every legal id and ``-`` separates the fields unambiguously.
    """
    return f"livesync-{job_id_part(namespace)}-{job_id_part(agent_id)}-{partition}-{uuid.uuid4().hex[:8]}"


def job_id_part(text: str) -> str:
    """``text`` in letters, digits and ``_`` only, injectively (a percent-encoding with ``_`` for ``%``).

    Letters and digits stay, so plain ids stay readable; every other UTF-8 byte becomes
    ``_`` and two hex digits: ``.`` is ``_2e``, ``-`` is ``_2d``, ``_`` is ``_5f``.
    """
    return "".join(chr(byte) if chr(byte) in _PLAIN else f"_{byte:02x}" for byte in text.encode())


_PLAIN = frozenset(string.ascii_letters + string.digits)


def _active(job_id: str, queue: Queue, redis: Any, lock_key: str) -> bool:
    """Whether a run job still stands for its (agent, partition).

    Queued, deferred and scheduled jobs do. A *started* one does only while the run lock
    lives: a worker killed mid-run leaves its job "started" in RQ for minutes, but its
    lock expires after ``LIVESYNC_LOCK_TTL``, and then the next tick enqueues a new run
    that resumes from the pointer. So does a *queued* one that is in no queue: a worker
    dequeued it (RQ moved it to the queue's intermediate list) and died before starting
    it, and RQ fails such a job only in its maintenance, minutes later. (A job that just
    started, or was just dequeued, and has not taken the lock yet may get a twin; the twin
    finds the lock taken and skips.)
    """
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return bool(redis.exists(lock_key))
    if status == JobStatus.QUEUED and queue.connection.lpos(queue.key, job_id) is None:
        return bool(redis.exists(lock_key))  # dequeued and never started
    return status in ACTIVE_STATUSES
