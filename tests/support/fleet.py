"""A fleet of ``livesync worker`` processes and a scheduler, kept running as a supervisor would.

:meth:`Fleet.keep_up` starts again any process of the fleet that died (a worker that
gave up on a lost Redis, one the test crashed), under a new name: RQ refuses a second
live worker of one name, and a crashed worker's registration outlives it.
:meth:`Fleet.crash` is a host dying under a worker with a job in flight: the worker's
process group (RQ's scheduler too) and its work horses (forked per job, each in a
process group of its own) are SIGKILLed at once, so nobody reports the job.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from redis import Redis
from rq import Queue
from rq.job import Job

from support.processes import Proc, Processes
from support.waiting import wait_for


def children(pid: int) -> list[tuple[int, int]]:
    """``(pid, process group)`` of the live processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, parent, group = stat.rsplit(")", 1)[1].split()[:3]
        if int(parent) == pid and state not in ("Z", "X"):
            found.append((int(entry.name), int(group)))
    return found


def horses(worker: Proc) -> list[int]:
    """The work horses of ``worker`` (its children in a process group of their own; RQ's scheduler is not one)."""
    return [pid for pid, group in children(worker.pid) if group != worker.pid]


def gone(pid: int) -> bool:
    """Whether ``pid`` is dead (a zombie counts: nobody may reap an orphaned horse at once)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


class Fleet:
    """``workers`` workers and one scheduler of the test's ``processes`` (on ``redis``), restarted when they die."""

    def __init__(self, processes: Processes, workers: int, redis: Redis, env: dict[str, str] | None = None) -> None:
        self.processes = processes
        self.redis = redis
        self.env = env
        self.workers: list[Proc | None] = [None] * workers
        self.scheduler: Proc | None = None
        self.started = 0
        self.restarts = 0
        self.crashes = 0

    def keep_up(self) -> bool:
        """Start whatever is not running (again); always ``True``, so it can sit in a waited condition."""
        namespace = self.processes.env["LIVESYNC_NAMESPACE"]
        for slot, worker in enumerate(self.workers):
            if worker is None or not worker.alive():
                self.restarts += worker is not None
                self.started += 1
                name = f"worker{slot}-{self.started}"
                worker_name = f"{name}-{namespace}"
                self.workers[slot] = self.processes.livesync(name, "worker", "--name", worker_name, env=self.env)
        if self.scheduler is None or not self.scheduler.alive():
            self.restarts += self.scheduler is not None
            self.started += 1
            self.scheduler = self.processes.livesync(f"scheduler-{self.started}", "scheduler", env=self.env)
        return True

    def running_horses(self) -> dict[int, list[int]]:
        """Per worker slot, the pids of its work horses (runs in flight); slots without one left out."""
        found = {}
        for slot, worker in enumerate(self.workers):
            if worker is not None and worker.alive():
                pids = horses(worker)
                if pids:
                    found[slot] = pids
        return found

    def crash(self, slot: int) -> bool:
        """SIGKILL worker ``slot`` while a job of it is in flight: its process group and its horses at once.

        The worker and its horses are stopped first (SIGSTOP: nothing of them moves while
        the fleet looks). When the worker then has no horse (its job ended meanwhile), or
        a job sits between RQ's dequeue and its start (see :meth:`starting`), they are
        let go on (SIGCONT) and ``False`` is returned.
        """
        worker = self.workers[slot]
        assert worker is not None and worker.alive(), f"worker {slot} is not running"
        doomed = _stop(worker)
        if not doomed or self.starting():
            _go_on(worker, doomed)
            return False
        doomed += [pid for horse in doomed for pid, _group in children(horse)]
        os.killpg(worker.pid, signal.SIGKILL)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        worker.wait(10)
        for pid in doomed:
            wait_for(lambda pid=pid: gone(pid), 10, f"process {pid} of worker {slot} to die")
        self.crashes += 1
        return True

    @contextmanager
    def frozen(self) -> Iterator[bool]:
        """While inside, every worker, horse and the scheduler is stopped; yields whether no job is starting.

        Nothing enqueues or dequeues meanwhile (ticks and RQ's own scheduler run in the
        workers), so a Redis crash inside hits runs in flight, never a job between
        dequeue and start.
        """
        stopped = [(proc, _stop(proc)) for proc in [*self.workers, self.scheduler] if proc is not None and proc.alive()]
        try:
            yield not self.starting()
        finally:
            for proc, pids in stopped:
                _go_on(proc, pids)

    def starting(self) -> bool:
        """Whether a job is between RQ's dequeue and its start: in the queue's intermediate list.

        RQ's horse takes a job off that list only once it marked it started. A job killed
        before that stays "queued" in no queue, a gap of its own (``test_rel_dequeue_crash``),
        kept out of the runs that use the fleet. An id whose job is gone never starts: a
        tick that expired in the queue (its ``ttl``) and was dequeued after leaves its id on
        that list until RQ's maintenance removes it; such ids do not count.
        """
        queue = Queue(self.processes.env["LIVESYNC_QUEUE"], connection=self.redis)
        ids = self.redis.lrange(queue.intermediate_queue_key, 0, -1)
        return any(self.redis.exists(Job.key_for(job_id.decode())) for job_id in ids)


def _stop(proc: Proc) -> list[int]:
    """SIGSTOP ``proc``'s process group, then its horses; return the horses' pids."""
    os.killpg(proc.pid, signal.SIGSTOP)
    stopped = horses(proc)  # nothing forks meanwhile
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    return stopped


def _go_on(proc: Proc, stopped: list[int]) -> None:
    """SIGCONT what :func:`_stop` stopped."""
    for pid in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)
