"""RQ worker classes with a livesync-aware warm shutdown.

On SIGTERM (or the first Ctrl+C) RQ's worker waits for the job in progress; with a
large backlog a run can take minutes. These workers also tell the run in progress to
stop after its current window: it acknowledges that window, returns, and the next tick
enqueues the rest. The forking worker signals its work horse with SIGUSR1; the simple
worker runs jobs in its own process and sets the flag directly.

``rq worker -c workers.settings -S json -w livesync.worker.LiveSyncWorker
--with-scheduler`` is the same as ``livesync worker``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from types import FrameType
from typing import Any

from rq import SimpleWorker, Worker

from livesync import jobs
from livesync.redis_policy import check_settings

log = logging.getLogger(__name__)

#: The signal a worker sends its work horse to end the run after the current window.
STOP_SIGNAL = signal.SIGUSR1


def _stop_run(signum: int, frame: FrameType | None) -> None:
    log.info("stop requested: the run ends after its current window")
    jobs.STOP.set()


def check_track_redis() -> None:
    """Refuse to start on a track Redis that may evict keys (unless ``allow_eviction``)."""
    settings = jobs.current_settings()
    check_settings(jobs.track_redis(settings), settings)


class LiveSyncWorker(Worker):
    """RQ's forking worker; a warm shutdown ends the run in progress after its window."""

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


class LiveSyncSimpleWorker(SimpleWorker):
    """RQ's in-process worker; a warm shutdown ends the run in progress after its window."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        check_track_redis()
        jobs.STOP.clear()
        return bool(super().work(*args, **kwargs))

    def handle_warm_shutdown_request(self) -> None:
        super().handle_warm_shutdown_request()  # type: ignore[no-untyped-call]
        jobs.STOP.set()
