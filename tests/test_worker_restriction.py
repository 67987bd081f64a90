"""Workers run livesync's own jobs only: any other function named by a job is refused.

Anyone who can write to the queue's Redis can enqueue a JSON job naming any importable
function (``subprocess.check_call``). livesync's workers execute only ``run_agent`` and
``tick``; anything else is logged, failed with ``JobRefused`` and never executed. The
check is on the worker side, so it holds for jobs written straight into Redis.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from rq import Callback, Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from livesync import Publisher, jobs
from livesync.config import Settings
from livesync.manager import Agent, SyncManager
from livesync.worker import LiveSyncSimpleWorker

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def touch_marker(*args: object) -> None:
    """A callback a stranger's job may name: it proves it ran by creating the marker."""
    Path(os.environ["LIVESYNC_TEST_MARKER"]).touch()


def fetch(job_id: str, real_redis: redis.Redis) -> Job:
    return Job.fetch(job_id, connection=real_redis, serializer=JSONSerializer)


def work_simple(queue: Queue, real_redis: redis.Redis, namespace: str) -> None:
    worker = LiveSyncSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer, name=f"w-{namespace}")
    worker.work(burst=True)


def assert_refused(job_id: str, queue: Queue, real_redis: redis.Redis, function: str) -> None:
    job = fetch(job_id, real_redis)
    assert job.get_status() == JobStatus.FAILED
    assert job_id in FailedJobRegistry(queue=queue).get_job_ids()
    exc_info = job.latest_result().exc_string  # type: ignore[union-attr]
    assert "JobRefused" in exc_info
    assert function in exc_info


def test_the_allow_list_holds_exactly_the_jobs_livesync_enqueues() -> None:
    from livesync.worker import JOB_FUNCTIONS

    assert frozenset({jobs.RUN, jobs.TICK, jobs.RELAY}) == JOB_FUNCTIONS
    assert f"{jobs.run.__module__}.{jobs.run.__qualname__}" == jobs.RUN
    assert f"{jobs.tick.__module__}.{jobs.tick.__qualname__}" == jobs.TICK
    assert f"{jobs.relay.__module__}.{jobs.relay.__qualname__}" == jobs.RELAY


def test_simple_worker_refuses_a_job_naming_a_stdlib_function_and_runs_nothing(
    queue: Queue, real_redis: redis.Redis, namespace: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a JSON job on the livesync queue that would create a marker file
    marker = tmp_path / "pwned"
    job = queue.enqueue("subprocess.check_call", args=(["touch", str(marker)],))

    # When a livesync simple worker runs the queue in burst mode
    work_simple(queue, real_redis, namespace)

    # Then nothing ran, the job failed with JobRefused, and one log line names it
    assert not marker.exists()
    assert_refused(job.id, queue, real_redis, "subprocess.check_call")
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1
    assert "subprocess.check_call" in refusals[0].getMessage()
    assert job.id in refusals[0].getMessage()


def test_a_refused_job_is_not_retried_even_when_it_asks_for_retries(
    queue: Queue, real_redis: redis.Redis, namespace: str, tmp_path: Path
) -> None:
    from rq import Retry

    # Given a stranger's job asking for retries
    marker = tmp_path / "pwned"
    job = queue.enqueue("subprocess.check_call", args=(["touch", str(marker)],), retry=Retry(max=3))

    # When a worker runs the queue
    work_simple(queue, real_redis, namespace)

    # Then it failed for good: not requeued, not scheduled
    assert not marker.exists()
    assert_refused(job.id, queue, real_redis, "subprocess.check_call")
    assert queue.count == 0
    assert job.id not in queue.scheduled_job_registry.get_job_ids()


def test_a_livesync_job_carrying_a_callback_is_refused_and_the_callback_never_runs(
    queue: Queue,
    real_redis: redis.Redis,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a job naming livesync's tick but with success and failure callbacks of a stranger
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LIVESYNC_TEST_MARKER", str(marker))
    callback = Callback(f"{__name__}.touch_marker")
    job = queue.enqueue(jobs.TICK, args=(namespace,), on_success=callback, on_failure=callback)

    # When a worker runs the queue
    work_simple(queue, real_redis, namespace)

    # Then the job was refused and neither callback ran
    assert not marker.exists()
    assert_refused(job.id, queue, real_redis, "callback")


def test_simple_worker_still_runs_livesync_run_and_tick_jobs(
    queue: Queue, settings: Settings, real_redis: redis.Redis, namespace: str, tmp_path: Path
) -> None:
    # Given an agent with pending changes, its run and a tick enqueued
    manager = SyncManager(real_redis, namespace)
    target = tmp_path / "search.jsonl"
    manager.add_agent(Agent(id="search", backend="jsonl", options={"path": str(target)}, update_time=0), start="tail")
    Publisher(real_redis, namespace).emit("event", 1, "created")
    run = jobs.enqueue_run(queue, settings, namespace, "search", 0)
    tick = queue.enqueue(jobs.tick, args=(namespace,))

    # When a worker runs the queue
    work_simple(queue, real_redis, namespace)

    # Then both finished and the change was delivered
    assert fetch(run.id, real_redis).get_status() == JobStatus.FINISHED
    assert fetch(tick.id, real_redis).get_status() == JobStatus.FINISHED
    assert manager.pointers("search") == [1]
    assert target.read_text().count("\n") == 1


@pytest.mark.parametrize(
    "command",
    [
        ["livesync", "worker", "--burst"],
        [
            "rq",
            "worker",
            "-c",
            "livesync.rqconfig.settings",
            "-S",
            "json",
            "-w",
            "livesync.worker.LiveSyncWorker",
            "--burst",
        ],
    ],
    ids=["livesync-worker", "rq-worker"],
)
def test_forking_worker_process_refuses_a_job_naming_a_stdlib_function(
    command: list[str],
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    redis_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a JSON job on the livesync queue that would create a marker file
    marker = tmp_path / "pwned"
    job = queue.enqueue("subprocess.check_call", args=(["touch", str(marker)],))

    # When a real forking worker process runs the queue in burst mode
    env = {**os.environ, "LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": queue.name}
    env.pop("LIVESYNC_RQ_URL", None)
    proc = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--name", f"w-{namespace}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=60,
    )

    # Then it ran nothing, the job is in the failed registry, and the log names function and job
    output = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, output
    assert not marker.exists()
    assert_refused(job.id, queue, real_redis, "subprocess.check_call")
    assert any("subprocess.check_call" in line and job.id in line for line in output.splitlines()), output
