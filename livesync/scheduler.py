"""Scheduling on RQ's own cron: a periodic ``livesync.jobs.tick`` per namespace.

RQ's ``CronScheduler`` enqueues with RQ's default (pickle) serializer; livesync's
queue is JSON-only, so the cron jobs here enqueue through a JSON queue. Each tick
prunes (with retention), marks gaps and enqueues one run per due agent and partition;
agents added, paused or resumed are picked up at the next tick without a restart.

Two things RQ's cron does not do: at most one tick of a namespace waits on the queue
(and it expires after about an interval), so ticks do not pile up while no worker
runs; and the scheduler rides out a Redis outage, retrying with capped backoff,
instead of exiting at the first connection error. A Redis that answers but refuses
writes for a while (full at maxmemory, a read-only replica after a failover, busy
in a long script) is an outage too.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import redis as redis_lib
from rq import Queue, cron_job_registry
from rq.cron import CronJob, CronScheduler
from rq.defaults import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL
from rq.exceptions import NoSuchJobError, SchedulerNotFound, StopRequested
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from livesync import defaults, jobs
from livesync.config import Settings
from livesync.connection import connect_track
from livesync.errors import describe
from livesync.redis_policy import check_settings

log = logging.getLogger(__name__)

#: Job statuses in which an enqueued cron job still waits for a worker.
WAITING = {JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
#: Errors that mean Redis is away (or still loading its data after a restart), not a bug.
OUTAGE_ERRORS = (redis_lib.ConnectionError, redis_lib.TimeoutError)
#: Replies of a Redis that is there but refuses writes for a while, not a bug: full
#: (noeviction at maxmemory) or a read-only replica (a failover, a misdirected client).
REFUSAL_ERRORS = (redis_lib.exceptions.OutOfMemoryError, redis_lib.exceptions.ReadOnlyError)
#: Error replies (plain ``ResponseError``) of a Redis busy in a long script or cut off from
#: its master; in a pipeline redis-py puts "Command # n (...) of pipeline caused error: " first.
_TRANSIENT_REPLY = re.compile(r"(?:^|caused error: )(?:BUSY|MASTERDOWN)\b")


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis cannot take the scheduler's writes for now (wait), rather than a bug (exit)."""
    if isinstance(exc, OUTAGE_ERRORS + REFUSAL_ERRORS):
        return True
    return isinstance(exc, redis_lib.ResponseError) and bool(_TRANSIENT_REPLY.search(str(exc)))


class JsonCronJob(CronJob):
    """A cron job enqueued with the JSON serializer (RQ's own uses pickle), at most one waiting."""

    def enqueue(self, connection: Any) -> Job:
        """Enqueue the job and record it in RQ's cron history, as ``CronJob.enqueue`` does.

        While the job enqueued last still waits for a worker, nothing is enqueued and
        that job is returned: without a worker, ticks would otherwise pile up, one per
        interval. A job that expired while it waited (its ``ttl``) has left its id on the
        queue; that id goes. WATCH on the history keeps two schedulers from both enqueueing.
        """
        if self.func is None:
            raise ValueError(f"cron job {self.name} has no function to enqueue")
        queue = Queue(self.queue_name, connection=connection, serializer=JSONSerializer)
        with connection.pipeline() as pipeline:
            pipeline.watch(self.job_history_key)
            previous = _newest(pipeline, self.job_history_key)
            waiting = _waiting(previous, connection)
            if waiting is not None:
                log.debug("%s%s still waits as job %s; not enqueued again", self.func_name, self.args, previous)
                return waiting
            pipeline.multi()
            if previous is not None:
                queue.remove(previous, pipeline=pipeline)
            job = queue.enqueue(self.func, args=self.args, kwargs=self.kwargs, **self.job_options, pipeline=pipeline)
            assert job.enqueued_at is not None
            enqueued_at = job.enqueued_at.timestamp()
            pipeline.zadd(self.job_history_key, {job.id: enqueued_at})
            pipeline.zremrangebyrank(self.job_history_key, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
            pipeline.expire(self.job_history_key, DEFAULT_CRON_JOB_HISTORY_TTL)
            cron_job_registry.add(self.name, pipeline, enqueue_timestamp=enqueued_at)
            try:
                pipeline.execute()
            except redis_lib.WatchError:
                log.info("another scheduler enqueued %s meanwhile; not enqueued again", self.name)
                newest = _newest(connection, self.job_history_key)
                assert newest is not None  # the history changed: someone added a job
                return Job.fetch(newest, connection=connection, serializer=JSONSerializer)
        log.info("enqueued %s%s on %s", self.func_name, tuple(self.args), self.queue_name)
        return job


def _newest(client: Any, history_key: str) -> str | None:
    """The id of the job a cron job enqueued last (RQ scores its history by enqueue time)."""
    newest = client.zrange(history_key, -1, -1)
    return newest[0].decode() if newest else None


def _waiting(job_id: str | None, connection: Any) -> Job | None:
    """The job ``job_id`` while it still waits for a worker, else ``None``."""
    if job_id is None:
        return None
    try:
        job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:  # expired (ttl) or its result is gone
        return None
    return job if job.get_status(refresh=False) in WAITING else None


class Outage:
    """Capped exponential backoff while Redis is away; one log line when it goes, one when it is back.

    ``full_message`` is the line logged when Redis is full (it says what to do); by
    default a generic one.
    """

    def __init__(self, where: str, full_message: str | None = None) -> None:
        self.where = where
        self.full_message = full_message
        self.since: float | None = None
        self.delay = defaults.RECONNECT_FIRST

    def failed(self, exc: BaseException) -> float:
        """Note a failed attempt; return the seconds to wait before the next one."""
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s; retrying with backoff up to %.0f s", self.describe(exc), defaults.RECONNECT_MAX)
        delay, self.delay = self.delay, min(self.delay * 2, defaults.RECONNECT_MAX)
        log.debug("Redis at %s does not answer; retrying in %.0f s", self.where, delay)
        return delay

    def describe(self, exc: BaseException) -> str:
        """What is wrong with Redis, in one line naming where and the reply."""
        reply = describe(exc)
        if isinstance(exc, redis_lib.exceptions.OutOfMemoryError):
            if self.full_message:
                return f"{self.full_message} (Redis at {self.where}: {reply})"
            return f"Redis at {self.where} is full at maxmemory and refuses writes ({reply})"
        if isinstance(exc, redis_lib.exceptions.ReadOnlyError):
            return f"Redis at {self.where} is a read-only replica (after a failover?) and refuses writes ({reply})"
        if isinstance(exc, OUTAGE_ERRORS):
            return f"lost the connection to Redis at {self.where} ({reply})"
        return f"Redis at {self.where} refuses commands for now ({reply})"

    def succeeded(self) -> None:
        """Note that Redis answered; ends an outage."""
        if self.since is not None:
            log.warning("Redis at %s is back after %.0f s", self.where, time.monotonic() - self.since)
            self.since, self.delay = None, defaults.RECONNECT_FIRST


def start(scheduler: CronScheduler) -> None:
    """Run ``scheduler`` until SIGINT or SIGTERM, riding out Redis outages.

    ``CronScheduler.start`` ends at the first connection error; workers reconnect,
    so the scheduler must too. An outage is any :func:`is_outage` error: Redis away,
    full, read-only or busy. Each outage is logged once and its end once; between
    attempts the wait doubles from :data:`livesync.defaults.RECONNECT_FIRST` to :data:`livesync.defaults.RECONNECT_MAX`.
    Death is registered only after a birth was.
    """
    scheduler.log.info("CronScheduler %s: starting...", scheduler.name)
    scheduler._install_signal_handlers()  # type: ignore[no-untyped-call]
    outage = Outage(_where(scheduler.connection), getattr(scheduler, "full_message", None))
    born = False
    try:
        while True:
            try:
                if not born:
                    scheduler.register_birth()
                    born = True
                if scheduler.enqueue_jobs():
                    scheduler.save()  # the cron jobs' enqueue times, for monitoring
                scheduler.heartbeat()
            except redis_lib.RedisError as exc:
                if not is_outage(exc):
                    raise
                time.sleep(outage.failed(exc))
                continue
            outage.succeeded()
            sleep_time = scheduler.calculate_sleep_interval()
            if sleep_time > 0:
                time.sleep(sleep_time)
    except KeyboardInterrupt:
        scheduler.log.info("CronScheduler %s: received KeyboardInterrupt", scheduler.name)
    except StopRequested:
        scheduler.log.info("CronScheduler %s: stop requested", scheduler.name)
    finally:
        if born:
            _register_death(scheduler)
        scheduler.log.info("CronScheduler %s: shutdown complete", scheduler.name)


def _register_death(scheduler: CronScheduler) -> None:
    """Unregister ``scheduler``; during an outage (or once its entry expired) its registry entry expires by itself."""
    try:
        scheduler.register_death()
    except SchedulerNotFound:
        pass
    except redis_lib.RedisError as exc:
        if not is_outage(exc):
            raise
        log.info("could not unregister the scheduler (%s); its entry expires by itself", describe(exc))


def _where(connection: Any) -> str:
    """Host and port (or socket path) and database of a client, never its password."""
    kwargs = connection.connection_pool.connection_kwargs
    place = kwargs.get("path") or f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
    return f"{place}/{kwargs.get('db', 0)}"


class Scheduler(CronScheduler):
    """RQ's cron scheduler, registering :class:`JsonCronJob` jobs and riding out Redis outages."""

    #: The line logged when the queue's Redis is full (see :func:`livesync.jobs.queue_full_message`).
    full_message: str | None = None

    def start(self) -> None:
        """Run until SIGINT or SIGTERM (see :func:`start`)."""
        start(self)

    def register(  # type: ignore[override]
        self,
        func: Callable[..., Any],
        queue_name: str,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        interval: int | None = None,
        cron: str | None = None,
        **options: Any,
    ) -> CronJob:
        cron_job = JsonCronJob(
            queue_name=queue_name, func=func, args=args, kwargs=kwargs, interval=interval, cron=cron, **options
        )
        self._cron_jobs.append(cron_job)
        log.info("registered %s%s on %s every %ss", cron_job.func_name, tuple(args or ()), queue_name, interval)
        return cron_job


def register_ticks(scheduler: CronScheduler, settings: Settings) -> None:
    """Register a tick of every scheduled namespace every ``tick_interval`` seconds.

    ``scheduler`` is a :class:`CronScheduler`, or the ``rq.cron`` module in an ``rq
    cron`` config file: both have ``register`` with the same signature.
    """
    for namespace in settings.scheduled_namespaces:
        scheduler.register(
            jobs.tick,
            settings.queue,
            args=(namespace,),
            interval=settings.tick_interval,
            # a tick nobody worked expires after about an interval: the next one replaces it
            ttl=settings.tick_interval,
            job_timeout=max(60, settings.tick_interval * 6),
            result_ttl=max(60, settings.tick_interval * 6),
            failure_ttl=7 * 86400,
            name=f"livesync-tick-{namespace}",
        )


def build_scheduler(settings: Settings, connection: Any, *, track_redis: Any = None) -> Scheduler:
    """A scheduler ticking the settings' namespaces on the RQ Redis ``connection``.

    Refuses (:class:`EvictingRedis`) when the track's Redis (``track_redis``, by default
    the one of ``settings``; the queue's when they are the same) may evict keys.
    """
    if track_redis is None:
        track_redis = connection if settings.rq_url is None else connect_track(settings)
    check_settings(track_redis, settings)
    scheduler = Scheduler(connection=connection)
    scheduler.full_message = jobs.queue_full_message(settings)
    register_ticks(scheduler, settings)
    return scheduler
