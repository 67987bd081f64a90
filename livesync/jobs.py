"""RQ jobs: ``run_agent`` and ``tick``, importable by any RQ worker.

Jobs are stored with RQ's JSON serializer (never pickle), so rq-dashboard started
with ``--json`` shows them. A worker process that was not set up by
:func:`configure` (``rq worker -c workers.settings``) reads its settings from the
``LIVESYNC_*`` environment.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from livesync import runner
from livesync.config import Settings
from livesync.connection import connect, connect_track
from livesync.errors import AgentBusy, AgentNotFound, AgentNotRunnable
from livesync.manager import SyncManager
from livesync.redis_policy import check_settings

log = logging.getLogger(__name__)

RUN_AGENT = "livesync.jobs.run_agent"
TICK = "livesync.jobs.tick"
ACTIVE_STATUSES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
TICK_LOCK_SECONDS = 30

#: Set by a worker's warm shutdown: the run in progress ends after its current window.
STOP = threading.Event()

_settings: Settings | None = None
_redis: Any = None
_rq_redis: Any = None


def configure(settings: Settings | None, *, redis: Any = None, rq_redis: Any = None) -> None:
    """Set the settings (and optionally ready clients) the jobs of this process use."""
    global _settings, _redis, _rq_redis
    _settings, _redis, _rq_redis = settings, redis, rq_redis


def reset() -> None:
    """Forget what :func:`configure` set (back to the environment)."""
    configure(None, redis=None, rq_redis=None)


def current_settings(namespace: str | None = None) -> Settings:
    """The configured settings, else those of the environment; ``namespace`` overrides."""
    settings = _settings if _settings is not None else Settings()
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
        _rq_redis = connect(settings.queue_url) if settings.rq_url else track_redis(settings)
    return _rq_redis


def make_queue(settings: Settings, connection: Any = None) -> Queue:
    """The RQ queue of livesync, JSON-serialized."""
    return Queue(
        settings.queue,
        connection=connection if connection is not None else queue_redis(settings),
        serializer=JSONSerializer,
        default_timeout=settings.job_timeout,
    )


def run_agent(namespace: str, agent_id: str, partition: int = 0) -> dict[str, Any]:
    """RQ job: run one agent's partition; returns the run's summary.

    A removed, paused or busy agent is skipped (the result says why); any other
    error fails the job, leaves the pointer where it was and RQ retries it.
    """
    settings = current_settings(namespace)
    manager = SyncManager(track_redis(settings), namespace)
    try:
        result = runner.run_with_settings(manager, agent_id, partition, settings, stop=STOP)
    except (AgentNotFound, AgentNotRunnable, AgentBusy) as exc:
        log.info("skipped run of %s/%s: %s", agent_id, partition, exc)
        return {"agent": agent_id, "partition": partition, "skipped": str(exc)}
    return result.to_dict()


def tick(namespace: str) -> dict[str, Any]:
    """RQ job: prune (with retention), mark gaps, enqueue a run for every due agent once."""
    settings = current_settings(namespace)
    check_settings(track_redis(settings), settings)  # also where `rq cron` and plain RQ workers tick
    manager = SyncManager(track_redis(settings), namespace)
    if not manager.exists():
        return {"namespace": namespace, "skipped": "namespace does not exist yet"}
    maintenance = manager.maintain(settings.retention, chunk=settings.prune_chunk)
    if maintenance["gaps"]:
        log.warning("agents lost unread changes to retention (gap): %s", ", ".join(maintenance["gaps"]))
    enqueued = enqueue_due(manager, make_queue(settings), settings)
    return {"namespace": namespace, "enqueued": enqueued, **maintenance}


def enqueue_due(manager: SyncManager, queue: Queue, settings: Settings, *, force: bool = False) -> list[str]:
    """Enqueue ``run_agent`` for each (agent, partition) that is due; return the job ids.

    Due: active (not paused, not needing an export, no gap), ``update_time`` passed
    since its last run (``force`` ignores this), changes pending, and no run of it
    already queued, scheduled for retry or running. A short lock keeps concurrent
    ticks from enqueueing the same run twice.
    """
    redis = manager.redis
    token = uuid.uuid4().hex
    if not redis.set(manager.keys.tick_lock, token, nx=True, ex=TICK_LOCK_SECONDS):
        log.info("another tick of %s is running; skipping", manager.namespace)
        return []
    enqueued: list[str] = []
    try:
        now = time.time()
        tracks = manager.tracks()
        for agent in manager.list_agents():
            if agent.state != "active":
                continue
            if not force and agent.last_run_at is not None and now - agent.last_run_at < agent.update_time:
                continue
            for track in tracks:
                pointer = track.pointer(agent.id)
                if pointer is None or pointer >= track.head():
                    continue
                field = f"{agent.id}:{track.partition}"
                previous = redis.hget(manager.keys.jobs, field)
                if previous and _active(previous.decode(), queue, redis, track.keys.lock(agent.id)):
                    continue
                job = enqueue_run(queue, settings, manager.namespace, agent.id, track.partition)
                redis.hset(manager.keys.jobs, field, job.id)
                enqueued.append(job.id)
    finally:
        if redis.get(manager.keys.tick_lock) == token.encode():
            redis.delete(manager.keys.tick_lock)
    return enqueued


def enqueue_run(queue: Queue, settings: Settings, namespace: str, agent_id: str, partition: int) -> Job:
    """Enqueue one ``run_agent`` job with RQ retries and backoff."""
    retry = None
    if settings.retry_max > 0:
        retry = Retry(max=settings.retry_max, interval=settings.retry_intervals)
    return queue.enqueue(
        RUN_AGENT,
        args=(namespace, agent_id, partition),
        job_id=f"livesync-{namespace}-{agent_id}-{partition}-{uuid.uuid4().hex[:8]}",
        description=f"livesync run {namespace}/{agent_id} partition {partition}",
        retry=retry,
        result_ttl=3600,
        failure_ttl=7 * 86400,
        job_timeout=settings.job_timeout,
    )


def _active(job_id: str, queue: Queue, redis: Any, lock_key: str) -> bool:
    """Whether a run job still stands for its (agent, partition).

    Queued, deferred and scheduled jobs do. A *started* one does only while the run lock
    lives: a worker killed mid-run leaves its job "started" in RQ for minutes, but its
    lock expires after ``LIVESYNC_LOCK_TTL``, and then the next tick enqueues a new run
    that resumes from the pointer. (A job that just started and has not taken the lock
    yet may get a twin; the twin finds the lock taken and skips.)
    """
    try:
        job = Job.fetch(job_id, connection=queue.connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return bool(redis.exists(lock_key))
    return status in ACTIVE_STATUSES
