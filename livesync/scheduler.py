"""Scheduling on RQ's own cron: a periodic ``livesync.jobs.tick`` per namespace.

RQ's ``CronScheduler`` enqueues with RQ's default (pickle) serializer; livesync's
queue is JSON-only, so the cron jobs here enqueue through a JSON queue. Each tick
prunes (with retention), marks gaps and enqueues one run per due agent and partition;
agents added, paused or resumed are picked up at the next tick without a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rq import Queue, cron_job_registry
from rq.cron import CronJob, CronScheduler
from rq.defaults import DEFAULT_CRON_JOB_HISTORY_LIMIT, DEFAULT_CRON_JOB_HISTORY_TTL
from rq.job import Job
from rq.serializers import JSONSerializer

from livesync import jobs
from livesync.config import Settings
from livesync.connection import connect_track
from livesync.redis_policy import check_settings

log = logging.getLogger(__name__)


class JsonCronJob(CronJob):
    """A cron job enqueued with the JSON serializer (RQ's own uses pickle)."""

    def enqueue(self, connection: Any) -> Job:
        """Enqueue the job and record it in RQ's cron history, as ``CronJob.enqueue`` does."""
        if self.func is None:
            raise ValueError(f"cron job {self.name} has no function to enqueue")
        queue = Queue(self.queue_name, connection=connection, serializer=JSONSerializer)
        with connection.pipeline() as pipeline:
            job = queue.enqueue(self.func, args=self.args, kwargs=self.kwargs, **self.job_options, pipeline=pipeline)
            assert job.enqueued_at is not None
            enqueued_at = job.enqueued_at.timestamp()
            pipeline.zadd(self.job_history_key, {job.id: enqueued_at})
            pipeline.zremrangebyrank(self.job_history_key, 0, -(DEFAULT_CRON_JOB_HISTORY_LIMIT + 1))
            pipeline.expire(self.job_history_key, DEFAULT_CRON_JOB_HISTORY_TTL)
            cron_job_registry.add(self.name, pipeline, enqueue_timestamp=enqueued_at)
            pipeline.execute()
        log.info("enqueued %s%s on %s", self.func_name, tuple(self.args), self.queue_name)
        return job


class Scheduler(CronScheduler):
    """RQ's cron scheduler, registering :class:`JsonCronJob` jobs."""

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
    register_ticks(scheduler, settings)
    return scheduler
