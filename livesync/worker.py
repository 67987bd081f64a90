"""RQ worker classes with a livesync-aware warm shutdown.

On SIGTERM (or the first Ctrl+C) RQ's worker waits for the job in progress; with a
large backlog a run can take minutes. These workers also tell the run in progress to
stop after its current window: it acknowledges that window, returns, and the next tick
enqueues the rest. The forking worker signals its work horse with SIGUSR1; the simple
worker runs jobs in its own process and sets the flag directly.

``rq worker -c livesync.rqconfig.settings -S json -w livesync.worker.LiveSyncWorker
--with-scheduler`` is the same as ``livesync worker``.

Both run livesync's own jobs only (:data:`JOB_FUNCTIONS`). A job is data in Redis: anyone
who can write to the queue's Redis could otherwise name any importable function
(``subprocess.check_call``) and have a worker call it. A job naming anything else, or
carrying RQ callbacks or webhooks (livesync sets none), is refused before anything of
it is imported or called: one log line, the job failed with ``JobRefused``, no retry.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from types import FrameType
from typing import Any

from rq import Queue, SimpleWorker, Worker
from rq.exceptions import DeserializationError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.utils import now
from rq.worker import BaseWorker

from livesync import jobs
from livesync.errors import JobRefused
from livesync.redis_policy import check_settings

log = logging.getLogger(__name__)

#: The signal a worker sends its work horse to end the run after the current window.
STOP_SIGNAL = signal.SIGUSR1


#: The only functions a livesync worker executes: the jobs livesync itself enqueues.
JOB_FUNCTIONS = frozenset({jobs.RUN, jobs.TICK, jobs.RELAY})


def refusal(job: Job) -> str | None:
    """Why a livesync worker must not execute ``job``, or ``None`` for one of livesync's own jobs.

    Reads only the job's stored names; nothing of the job is imported.
    """
    try:
        function, instance = job.func_name, job.instance
    except DeserializationError:
        return "its data cannot be decoded"
    if function not in JOB_FUNCTIONS or instance is not None:
        return f"function {function!r} is not one of livesync's jobs ({', '.join(sorted(JOB_FUNCTIONS))})"
    callbacks = [
        name for name in (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name) if name
    ]
    if callbacks:
        return f"function {function!r} carries callback(s) {', '.join(callbacks)} (livesync's jobs have none)"
    if job.webhooks:
        return f"function {function!r} carries webhooks (livesync's jobs have none)"
    return None


def _refuse(worker: BaseWorker, job: Job, queue: Queue, execution: Execution, reason: str) -> None:
    """Fail ``job`` without running any of it: no function, callback, webhook or retry."""
    log.error("refused job %s: %s", job.id, reason)
    # disarm what RQ's failure handling would otherwise act on: the job names them
    job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
    job.webhooks = []
    job.retries_left = None
    worker.prepare_job_execution(job, remove_from_intermediate_queue=len(worker.queues) == 1)
    job.started_at = now()
    job._status = JobStatus.FAILED
    worker.handle_execution_ended(job, queue, job.failure_callback_timeout)
    worker.handle_job_failure(
        job,
        queue,
        started_job_registry=queue.started_job_registry,
        exc_string=f"{JobRefused.__module__}.{JobRefused.__name__}: refused job {job.id}: {reason}\n",
        execution=execution,
    )


def _stop_run(signum: int, frame: FrameType | None) -> None:
    log.info("stop requested: the run ends after its current window")
    jobs.STOP.set()


def check_track_redis() -> None:
    """Refuse to start on a track Redis that may evict keys (unless ``allow_eviction``)."""
    settings = jobs.current_settings()
    check_settings(jobs.track_redis(settings), settings)


class _OwnJobsOnly(BaseWorker):
    """Refuses, in ``perform_job``, every job that is not one of livesync's own (:func:`refusal`).

    The forking worker calls ``perform_job`` in its work horse, the simple worker in its
    own process: in both before RQ imports the job's function.
    """

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        reason = refusal(job)
        if reason is not None:
            _refuse(self, job, queue, execution, reason)
            return False
        return bool(super().perform_job(job, queue, execution))


class LiveSyncWorker(_OwnJobsOnly, Worker):
    """RQ's forking worker; runs livesync's jobs only; a warm shutdown ends the run in progress after its window."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        check_track_redis()
        return bool(super().work(*args, **kwargs))

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()  # type: ignore[no-untyped-call]
        jobs.STOP.clear()
        signal.signal(STOP_SIGNAL, _stop_run)

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        if self.horse_pid:
            with contextlib.suppress(ProcessLookupError):  # the horse just finished
                os.kill(self.horse_pid, STOP_SIGNAL)


class LiveSyncSimpleWorker(_OwnJobsOnly, SimpleWorker):
    """RQ's in-process worker; runs livesync's jobs only; a warm shutdown ends the run in progress after its window."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        check_track_redis()
        jobs.STOP.clear()
        return bool(super().work(*args, **kwargs))

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        jobs.STOP.set()
