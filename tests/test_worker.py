"""Workers: a warm shutdown ends the run in progress after its window; a killed worker loses nothing.

The in-process tests hand ``run_agent`` a stop event. The process tests start real
workers (``livesync worker``, ``rq worker -c livesync.rqconfig.settings``) on a jsonl agent with a
large backlog and small windows, so a run lasts a few seconds; they wait for the first
acknowledged window by polling the pointer (bounded), then signal the worker. What the
target received is checked against a replay of the raw changes (live sets).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from support.backends import RecordingBackend
from support.waiting import wait_for

from livesync import Publisher, jobs
from livesync.config import Settings
from livesync.manager import Agent, SyncManager
from livesync.records import Record
from livesync.runner import run_agent
from livesync.worker import LiveSyncSimpleWorker
from livesync.workload import generate, replay_changes, replay_records

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Longest a test waits for a process to get somewhere before it fails.
WAIT_SECONDS = 20.0
#: A backlog that takes the worker a few seconds in windows of 100 and batches of 10.
BACKLOG = 200_000


def fetch(job_id: str, real_redis: redis.Redis) -> Job:
    return Job.fetch(job_id, connection=real_redis, serializer=JSONSerializer)


def worker_env(redis_url: str, settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker process on the test's namespace and queue."""
    env = {
        **os.environ,
        "LIVESYNC_REDIS_URL": redis_url,
        "LIVESYNC_NAMESPACE": settings.namespace,
        "LIVESYNC_QUEUE": settings.queue,
        **extra,
    }
    env.pop("LIVESYNC_RQ_URL", None)
    return env


def publish_backlog(publisher: Publisher, changes: int) -> list[tuple[str, Any, list[str]]]:
    """Publish a generated workload of ``changes`` changes; return it for the replay."""
    items = generate(changes, objects=max(10, changes // 40), seed=7)
    for start in range(0, len(items), 100_000):
        publisher.emit_many(items[start : start + 100_000])
    return items


def add_jsonl_agent(manager: SyncManager, target: Path) -> None:
    manager.add_agent(Agent(id="search", backend="jsonl", options={"path": str(target)}, update_time=0), start="tail")


def delivered(target: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in target.read_text().splitlines()]


def pointer(manager: SyncManager) -> int:
    return manager.pointers("search")[0]


def horse_pids(worker_pid: int) -> list[int]:
    """The work horses (children) of a forking worker process (Linux /proc)."""
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


# In-process: the stop event


def test_stop_during_the_first_window_ends_the_run_after_acking_that_window(
    manager: SyncManager, publisher: Publisher
) -> None:
    # Given 30 changes over distinct objects and a backend that requests a stop during its first upload
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(30)])
    stop = threading.Event()

    def stop_requested(_batch: Sequence[Record]) -> None:
        stop.set()

    backend = RecordingBackend(before_upload=stop_requested)

    # When the agent runs in windows of 10
    result = run_agent(manager, "search", window=10, batch_size=100, backend=backend, stop=stop)

    # Then the run stopped after acknowledging window 1; windows 2 and 3 stay pending
    assert result.stopped is True
    assert (result.windows, result.changes, result.pointer_after) == (1, 10, 10)
    assert manager.pointers("search") == [10]
    assert [record.id for record in backend.records] == list(range(10))
    assert [change.seq for change in manager.query("search")] == list(range(11, 31))


def test_simple_worker_warm_shutdown_request_sets_the_stop_flag(
    queue: Queue, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a simple worker and no stop requested
    worker = LiveSyncSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer, name=f"w-{namespace}")
    jobs.STOP.clear()

    # When a warm shutdown is requested
    worker.handle_warm_shutdown_request()

    # Then runs in this process are told to stop after their window
    assert jobs.STOP.is_set()


def test_simple_worker_clears_a_stale_stop_flag_when_it_starts_working(
    queue: Queue, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a stop flag left over from an earlier shutdown
    jobs.STOP.set()
    worker = LiveSyncSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer, name=f"w-{namespace}")

    # When the worker starts working (burst, empty queue)
    worker.work(burst=True)

    # Then the flag is cleared, so its runs are not stopped at once
    assert not jobs.STOP.is_set()


# Real worker processes


@pytest.mark.slow
def test_sigterm_ends_a_worker_run_after_its_window_and_the_next_run_delivers_the_rest(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    redis_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a large backlog for a jsonl agent, its run enqueued, and a forking `livesync worker` on it
    items = publish_backlog(publisher, BACKLOG)
    target = tmp_path / "search.jsonl"
    add_jsonl_agent(manager, target)
    head = manager.track(0).head()
    job_id = jobs.enqueue_run(queue, settings, namespace, "search", 0).id
    env = worker_env(redis_url, settings, LIVESYNC_WINDOW="100", LIVESYNC_BATCH_SIZE="10")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "livesync"), "worker", "--name", f"w-{namespace}"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        # When the worker has acknowledged a first window and then gets SIGTERM
        wait_for(lambda: pointer(manager) > 0 or proc.poll() is not None, WAIT_SECONDS, "the first acknowledged window")
        proc.send_signal(signal.SIGTERM)

        # Then the worker exits 0 ...
        assert proc.wait(timeout=WAIT_SECONDS) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # ... its job finished early, saying it stopped, with the pointer between start and head
    job = fetch(job_id, real_redis)
    assert job.get_status() == JobStatus.FINISHED, log.read_text()
    result = job.return_value()
    assert result["stopped"] is True
    assert 0 < result["pointer_after"] < head
    assert pointer(manager) == result["pointer_after"]

    # When the agent runs again, in this process
    rest = run_agent(manager, "search", window=20_000, batch_size=5_000)

    # Then it delivered the rest: the target's live set equals a replay of every raw change
    assert (rest.pointer_before, rest.pointer_after) == (result["pointer_after"], head)
    assert replay_records(delivered(target)) == replay_changes(items)


@pytest.mark.slow
def test_killed_worker_leaves_its_lock_to_expire_and_the_next_run_resumes_from_the_pointer(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    redis_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a large backlog for a jsonl agent, its run enqueued, and a worker with 2 s run locks
    items = publish_backlog(publisher, BACKLOG)
    target = tmp_path / "search.jsonl"
    add_jsonl_agent(manager, target)
    head = manager.track(0).head()
    jobs.enqueue_run(queue, settings, namespace, "search", 0)
    env = worker_env(redis_url, settings, LIVESYNC_WINDOW="100", LIVESYNC_BATCH_SIZE="10", LIVESYNC_LOCK_TTL="2")
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "livesync"), "worker", "--name", f"w-{namespace}"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: pointer(manager) > 0 or proc.poll() is not None, WAIT_SECONDS, "the first acknowledged window")
        horses = horse_pids(proc.pid)
        assert horses, log.read_text()

        # When the worker and its work horse are killed mid-run
        for pid in [*horses, proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=WAIT_SECONDS)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lock_key = manager.keys.partition(0).lock("search")
    stopped_at = pointer(manager)

    # Then the run's lock is left behind and expires after its TTL
    wait_for(lambda: not real_redis.exists(lock_key), 10, "the run lock to expire")

    # When another run takes over, in this process
    rest = run_agent(manager, "search", window=20_000, batch_size=5_000)

    # Then it resumed from the pointer and the target's live set equals a replay of every raw change
    assert 0 < stopped_at < head
    assert (rest.pointer_before, rest.pointer_after) == (stopped_at, head)
    assert replay_records(delivered(target)) == replay_changes(items)


@pytest.mark.parametrize(
    "command",
    [
        [
            "rq",
            "worker",
            "-c",
            "livesync.rqconfig.settings",
            "-S",
            "json",
            "-w",
            "livesync.worker.LiveSyncWorker",
            "--with-scheduler",
            "--burst",
        ],
        ["livesync", "worker", "--burst"],
    ],
    ids=["rq-worker", "livesync-worker"],
)
def test_worker_command_in_burst_mode_runs_an_enqueued_run_job(
    command: list[str],
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    redis_url: str,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a jsonl agent with 300 pending changes and its run enqueued
    items = publish_backlog(publisher, 300)
    target = tmp_path / "search.jsonl"
    add_jsonl_agent(manager, target)
    job_id = jobs.enqueue_run(queue, settings, namespace, "search", 0).id

    # When the worker command runs in burst mode from the repository root
    proc = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--name", f"w-{namespace}"],
        cwd=REPO,
        env=worker_env(redis_url, settings),
        capture_output=True,
        timeout=60,
    )

    # Then the job finished with the run's summary and the target holds the replayed live set
    assert proc.returncode == 0, proc.stderr.decode()
    job = fetch(job_id, real_redis)
    assert job.get_status() == JobStatus.FINISHED, proc.stderr.decode()
    result = job.return_value()
    assert (result["agent"], result["changes"], result["pointer_after"]) == ("search", 300, 300)
    assert manager.pointers("search") == [300]
    assert replay_records(delivered(target)) == replay_changes(items)
