"""Scheduling on RQ's cron: one periodic ``livesync.jobs.tick`` per namespace, enqueued as JSON.

Ticks are driven by calling ``enqueue_jobs()`` (and, to make the next tick due without
waiting for the interval, by moving the cron job's next enqueue time into the past);
one test runs a real ``livesync scheduler`` process and polls the queue for its tick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import rq.cron
from click.testing import CliRunner
from rq import Queue
from rq.cron import CronScheduler
from rq.job import Job
from rq.serializers import JSONSerializer
from support.servers import RedisServer, free_port
from support.waiting import wait_for

from livesync import Publisher, jobs
from livesync.cli import main
from livesync.config import Settings
from livesync.manager import Agent, SyncManager
from livesync.scheduler import JsonCronJob, Scheduler, build_scheduler, is_outage
from livesync.worker import LiveSyncSimpleWorker

REPO = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).with_name("livesync")
#: Longest a test waits for a process to do something before it fails.
WAIT_SECONDS = 10.0


pytestmark = pytest.mark.jobs_settings(tick_interval=5)


def delete_jobs_of_queue(client: redis.Redis, queue_name: str) -> None:
    """Delete every RQ job hash (and result stream) whose origin is ``queue_name``.

    Cron ticks get random job ids, which the namespace cleanup of conftest cannot match.
    """
    for key in list(client.scan_iter(match="rq:job:*", count=1000)):
        name = key.decode()
        if name.count(":") != 2 or client.type(key) != b"hash":
            continue
        if client.hget(key, "origin") == queue_name.encode():
            job_id = name.rsplit(":", 1)[1]
            client.delete(key, f"rq:results:{job_id}")


@pytest.fixture(autouse=True)
def cron_jobs_deleted(real_redis: redis.Redis, namespace: str) -> Iterator[None]:
    """The scheduler's jobs of the test's queue are deleted after it (after ``settings`` is torn down)."""
    yield
    delete_jobs_of_queue(real_redis, f"q-{namespace}")


def add_jsonl_agent(manager: SyncManager, agent_id: str, path: Path) -> None:
    """A jsonl agent reading from the tail, due at every tick."""
    manager.add_agent(
        Agent(id=agent_id, backend="jsonl", options={"path": str(path)}, update_time=0),
        start="tail",
    )


def work(queue: Queue, real_redis: redis.Redis, namespace: str, max_jobs: int | None = None) -> None:
    """Run queued jobs in this process with livesync's simple worker (burst)."""
    worker = LiveSyncSimpleWorker(
        [queue], connection=real_redis, serializer=JSONSerializer, name=f"w-{namespace}-{uuid.uuid4().hex[:6]}"
    )
    worker.work(burst=True, max_jobs=max_jobs)


def fetch(job_id: str, real_redis: redis.Redis) -> Job:
    return Job.fetch(job_id, connection=real_redis, serializer=JSONSerializer)


def make_due(scheduler: CronScheduler) -> None:
    """Make every cron job due now, as if its interval had passed."""
    for cron_job in scheduler.get_jobs():
        cron_job.next_enqueue_time = datetime.now(UTC) - timedelta(seconds=1)


def tick_once(scheduler: CronScheduler, queue: Queue, real_redis: redis.Redis, namespace: str) -> dict[str, Any]:
    """Let the scheduler enqueue its tick, run only that job, and return the tick's result."""
    assert len(scheduler.enqueue_jobs()) == 1
    [tick_id] = [job_id for job_id in queue.get_job_ids() if fetch(job_id, real_redis).func_name == jobs.TICK]
    work(queue, real_redis, namespace, max_jobs=1)
    result: dict[str, Any] = fetch(tick_id, real_redis).return_value()
    return result


def assert_json_payload(real_redis: redis.Redis, job_id: str, namespace: str) -> None:
    """The raw job hash holds JSON naming the tick and its namespace, never pickle."""
    raw = real_redis.hget(f"rq:job:{job_id}", "data")
    assert raw is not None
    payload = zlib.decompress(raw)
    assert not payload.startswith(b"\x80")
    decoded = json.loads(payload)
    assert jobs.TICK in decoded
    assert [namespace] in decoded


# Registration


def test_build_scheduler_registers_one_tick_per_scheduled_namespace(
    settings: Settings, real_redis: redis.Redis, namespace: str
) -> None:
    # Given settings that schedule two namespaces every 7 s
    several = settings.model_copy(update={"namespaces": [namespace, f"{namespace}-b"], "tick_interval": 7})

    # When the scheduler is built
    scheduler = build_scheduler(several, real_redis)

    # Then it holds one JSON cron job per namespace: the tick, on the livesync queue, every 7 s
    assert isinstance(scheduler, Scheduler)
    cron_jobs = scheduler.get_jobs()
    assert all(isinstance(cron_job, JsonCronJob) for cron_job in cron_jobs)
    assert [(c.func, c.args, c.interval, c.queue_name) for c in cron_jobs] == [
        (jobs.tick, (namespace,), 7, settings.queue),
        (jobs.tick, (f"{namespace}-b",), 7, settings.queue),
    ]


def test_build_scheduler_defaults_to_the_settings_namespace(
    settings: Settings, real_redis: redis.Redis, namespace: str
) -> None:
    # Given settings without a list of namespaces
    assert settings.namespaces == []

    # When the scheduler is built
    scheduler = build_scheduler(settings, real_redis)

    # Then it ticks the one namespace at the configured interval
    assert [(c.func_name, c.args, c.interval) for c in scheduler.get_jobs()] == [(jobs.TICK, (namespace,), 5)]


# Enqueueing


def test_scheduler_enqueues_the_tick_as_json_never_pickle(
    settings: Settings, queue: Queue, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a scheduler of the namespace
    scheduler = build_scheduler(settings, real_redis)

    # When its due jobs are enqueued
    scheduler.enqueue_jobs()

    # Then the livesync queue holds one tick job stored as JSON
    [job_id] = queue.get_job_ids()
    job = fetch(job_id, real_redis)
    assert (job.func_name, job.args) == (jobs.TICK, [namespace])
    assert_json_payload(real_redis, job_id, namespace)


def test_scheduler_records_ticks_in_rq_cron_history(settings: Settings, real_redis: redis.Redis) -> None:
    # Given a scheduler of the namespace
    scheduler = build_scheduler(settings, real_redis)
    [cron_job] = scheduler.get_jobs()

    # When its due jobs are enqueued
    scheduler.enqueue_jobs()

    # Then the tick is in RQ's cron history, as RQ's own cron jobs are
    try:
        assert len(cron_job.get_job_ids(real_redis)) == 1
    finally:
        real_redis.delete(cron_job.job_history_key)


def test_tick_run_by_a_worker_enqueues_due_runs_which_the_next_burst_delivers(
    settings: Settings,
    queue: Queue,
    manager: SyncManager,
    publisher: Publisher,
    real_redis: redis.Redis,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a jsonl agent with three pending changes and a scheduler
    target = tmp_path / "search.jsonl"
    add_jsonl_agent(manager, "search", target)
    publisher.emit_many([("event", i, ["created"]) for i in (1, 2, 3)])
    scheduler = build_scheduler(settings, real_redis)

    # When the tick is enqueued and a worker runs only that job
    outcome = tick_once(scheduler, queue, real_redis, namespace)

    # Then the tick enqueued the agent's run, which is waiting on the queue
    [run_id] = outcome["enqueued"]
    assert queue.get_job_ids() == [run_id]
    assert fetch(run_id, real_redis).args == [namespace, "search", 0]
    assert not target.exists()

    # When a second burst runs
    work(queue, real_redis, namespace)

    # Then the target received the records
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(r["id"], r["action"]) for r in records] == [(1, "created"), (2, "created"), (3, "created")]
    assert manager.pointers("search") == [3]


def test_agent_added_after_the_scheduler_started_is_picked_up_by_the_next_tick(
    settings: Settings,
    queue: Queue,
    manager: SyncManager,
    publisher: Publisher,
    real_redis: redis.Redis,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a namespace with changes, a scheduler, and a first tick that found no agent
    publisher.emit_many([("event", i, ["created"]) for i in (1, 2)])
    scheduler = build_scheduler(settings, real_redis)
    assert tick_once(scheduler, queue, real_redis, namespace)["enqueued"] == []

    # When an agent is added and the next tick is due
    add_jsonl_agent(manager, "late", tmp_path / "late.jsonl")
    make_due(scheduler)
    outcome = tick_once(scheduler, queue, real_redis, namespace)

    # Then that tick enqueued the new agent's run, without a new scheduler
    [run_id] = outcome["enqueued"]
    assert fetch(run_id, real_redis).args == [namespace, "late", 0]


def test_agent_paused_after_the_scheduler_started_is_not_enqueued(
    settings: Settings,
    queue: Queue,
    manager: SyncManager,
    publisher: Publisher,
    real_redis: redis.Redis,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a scheduler, then two agents with pending changes of which one is paused
    publisher.emit("event", 1, "created")
    scheduler = build_scheduler(settings, real_redis)
    add_jsonl_agent(manager, "active", tmp_path / "active.jsonl")
    add_jsonl_agent(manager, "paused", tmp_path / "paused.jsonl")
    manager.set_state("paused", "paused")

    # When the scheduler's tick runs
    outcome = tick_once(scheduler, queue, real_redis, namespace)

    # Then only the active agent got a run
    assert [fetch(run_id, real_redis).args[1] for run_id in outcome["enqueued"]] == ["active"]


def tick_jobs(queue: Queue, real_redis: redis.Redis) -> list[Job]:
    """The tick jobs waiting on the queue (ids whose job expired are left out)."""
    waiting = Job.fetch_many(queue.get_job_ids(), connection=real_redis, serializer=JSONSerializer)
    return [job for job in waiting if job is not None and job.func_name == jobs.TICK]


def test_enqueue_steps_without_a_worker_leave_one_tick_waiting_that_expires_after_an_interval(
    settings: Settings, queue: Queue, real_redis: redis.Redis
) -> None:
    # Given a scheduler and no worker
    scheduler = build_scheduler(settings, real_redis)

    # When its enqueue step runs five times, each time with the tick due
    for _ in range(5):
        make_due(scheduler)
        scheduler.enqueue_jobs()

    # Then one tick job waits, alone on the queue, and it expires after about one interval
    [job] = tick_jobs(queue, real_redis)
    assert queue.get_job_ids() == [job.id]
    assert job.ttl == settings.tick_interval
    assert 0 < real_redis.ttl(job.key) <= settings.tick_interval


def test_a_tick_that_expired_unworked_is_replaced_by_the_next_and_leaves_nothing_on_the_queue(
    settings: Settings, queue: Queue, real_redis: redis.Redis
) -> None:
    # Given a scheduler ticking every second whose first tick expired without a worker
    scheduler = build_scheduler(settings.model_copy(update={"tick_interval": 1}), real_redis)
    scheduler.enqueue_jobs()
    [first] = queue.get_job_ids()
    wait_for(lambda: not real_redis.exists(f"rq:job:{first}"), 5, "the first tick job to expire")

    # When the next tick is due
    make_due(scheduler)
    scheduler.enqueue_jobs()

    # Then a new tick waits, and the expired one's id is no longer on the queue
    [second] = queue.get_job_ids()
    assert second != first
    assert [job.id for job in tick_jobs(queue, real_redis)] == [second]


def test_scheduler_process_rides_out_a_redis_restart_with_one_log_line_per_outage(
    tmp_path: Path, namespace: str
) -> None:
    # Given a private Redis and a `livesync scheduler` process ticking it every second
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port())
    server.start()
    client = server.client()
    queue = Queue(f"q-{namespace}", connection=client, serializer=JSONSerializer)
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
    env.update(
        {
            "LIVESYNC_REDIS_URL": server.url,
            "LIVESYNC_NAMESPACE": namespace,
            "LIVESYNC_QUEUE": queue.name,
            "LIVESYNC_TICK_INTERVAL": "1",
        }
    )
    log_path = tmp_path / "scheduler.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([str(CONSOLE_SCRIPT), "-vv", "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)

    def output() -> str:
        return log_path.read_text(errors="replace")

    try:
        wait_for(lambda: bool(queue.get_job_ids()), WAIT_SECONDS, "the first tick")
        [first] = queue.get_job_ids()

        # When Redis stops, for long enough that the scheduler retries twice
        server.stop()
        wait_for(
            lambda: output().count("retrying in") >= 2 or proc.poll() is not None,
            3 * WAIT_SECONDS,
            "two reconnection attempts",
        )
        assert proc.poll() is None, output()

        # and comes back on the same port (the waiting tick survived in the AOF; it goes, so the next is due)
        server.start()
        queue.empty()

        # Then the scheduler is still running and ticks again
        wait_for(lambda: queue.get_job_ids() not in ([], [first]), 3 * WAIT_SECONDS, "a tick after the restart")
        assert proc.poll() is None, output()

        # and it logged the outage once, and once that it is back
        wait_for(lambda: "is back" in output(), WAIT_SECONDS, "the line saying Redis is back")
        text = output()
        assert text.count("lost the connection to Redis") == 1, text
        assert text.count("is back") == 1, text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        client.close()
        server.stop()


# livesync.rqconfig.cron for `rq cron`


def test_rq_cron_config_file_registers_the_tick_and_enqueues_json(
    settings: Settings,
    queue: Queue,
    real_redis: redis.Redis,
    redis_url: str,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the environment of the namespace (livesync.rqconfig.cron patches rq's CronJob.enqueue: undone afterwards)
    monkeypatch.setattr(rq.cron.CronJob, "enqueue", rq.cron.CronJob.enqueue)
    monkeypatch.setattr(rq.cron.CronScheduler, "start", rq.cron.CronScheduler.start)
    monkeypatch.setenv("LIVESYNC_REDIS_URL", redis_url)
    monkeypatch.setenv("LIVESYNC_NAMESPACE", namespace)
    monkeypatch.setenv("LIVESYNC_QUEUE", settings.queue)
    monkeypatch.setenv("LIVESYNC_TICK_INTERVAL", "3")
    monkeypatch.delenv("LIVESYNC_NAMESPACES", raising=False)
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))

    # When RQ's cron scheduler loads livesync.rqconfig.cron and enqueues what is due
    cron = CronScheduler(connection=real_redis)
    cron.load_config_from_file("livesync.rqconfig.cron")
    [cron_job] = cron.get_jobs()
    cron.enqueue_jobs()

    # Then it registered the namespace's tick, and the tick it enqueued is JSON
    assert (cron_job.func_name, cron_job.args, cron_job.interval, cron_job.queue_name) == (
        jobs.TICK,
        (namespace,),
        3,
        settings.queue,
    )
    [job_id] = queue.get_job_ids()
    assert_json_payload(real_redis, job_id, namespace)

    # and `rq cron` runs like `livesync scheduler`: ticks expire after the interval, the loop reconnects
    assert cron_job.job_options["ttl"] == 3
    assert rq.cron.CronScheduler.start is Scheduler.start


# The `livesync scheduler` command


def test_scheduler_help_describes_the_command() -> None:
    # When `livesync scheduler --help` runs
    result = CliRunner().invoke(main, ["scheduler", "--help"])

    # Then it exits 0 and explains the tick
    assert result.exit_code == 0, result.output
    assert "LIVESYNC_TICK_INTERVAL" in result.output
    assert "rq cron" in result.output


def test_scheduler_process_enqueues_a_tick_and_stops_on_sigterm(
    settings: Settings, queue: Queue, real_redis: redis.Redis, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    # Given a `livesync scheduler` process ticking the namespace every second
    env = {
        **os.environ,
        "LIVESYNC_REDIS_URL": redis_url,
        "LIVESYNC_NAMESPACE": namespace,
        "LIVESYNC_QUEUE": settings.queue,
        "LIVESYNC_TICK_INTERVAL": "1",
    }
    env.pop("LIVESYNC_NAMESPACES", None)
    log = (tmp_path / "scheduler.log").open("wb")
    proc = subprocess.Popen([str(CONSOLE_SCRIPT), "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # When the queue is watched for a while
        deadline = time.monotonic() + WAIT_SECONDS
        ticks: list[str] = []
        while not ticks and time.monotonic() < deadline and proc.poll() is None:
            ticks = [job_id for job_id in queue.get_job_ids() if fetch(job_id, real_redis).func_name == jobs.TICK]
            time.sleep(0.05)

        # Then a tick of the namespace was enqueued, as JSON
        assert ticks, (tmp_path / "scheduler.log").read_text()
        assert_json_payload(real_redis, ticks[0], namespace)

        # When the process gets SIGTERM
        proc.send_signal(signal.SIGTERM)

        # Then it stops cleanly within the wait
        assert proc.wait(timeout=WAIT_SECONDS) == 0, (tmp_path / "scheduler.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
        for key in real_redis.scan_iter(match=f"rq:cron_scheduler:*:{proc.pid}:*"):
            real_redis.zrem("rq:cron_schedulers", key.decode().split("rq:cron_scheduler:", 1)[1])
            real_redis.delete(key)


# Refusing Redis: full (OOM), read-only (a replica after a failover), busy (a long script)


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (``noeviction``) the test may fill or turn into a replica."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port(), extra=["--maxmemory-policy", "noeviction", "--appendonly", "no"])
    server.start()
    yield server
    server.stop()


def start_scheduler(server: RedisServer, namespace: str, log_path: Path) -> subprocess.Popen[bytes]:
    """A `livesync scheduler` process ticking the namespace every second on ``server``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
    env.update(
        {
            "LIVESYNC_REDIS_URL": server.url,
            "LIVESYNC_NAMESPACE": namespace,
            "LIVESYNC_QUEUE": f"q-{namespace}",
            "LIVESYNC_TICK_INTERVAL": "1",
        }
    )
    with log_path.open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen([str(CONSOLE_SCRIPT), "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM the process and return its exit code (kill it when it does not stop)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def make_full(client: redis.Redis) -> None:
    """Set maxmemory below the memory in use: Redis refuses every write that needs memory."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 256 * 1024)


@pytest.mark.parametrize("refusal", ["full", "read-only"])
def test_scheduler_process_rides_out_a_redis_refusing_writes_and_ticks_again_when_it_accepts_them(
    private_server: RedisServer, namespace: str, tmp_path: Path, refusal: str
) -> None:
    # Given a `livesync scheduler` process that has ticked a private Redis
    client = private_server.client()
    queue = Queue(f"q-{namespace}", connection=client, serializer=JSONSerializer)
    log_path = tmp_path / "scheduler.log"
    proc = start_scheduler(private_server, namespace, log_path)

    def output() -> str:
        return log_path.read_text(errors="replace")

    try:
        wait_for(lambda: bool(queue.get_job_ids()) or proc.poll() is not None, WAIT_SECONDS, "the first tick")
        assert proc.poll() is None, output()

        # When Redis starts refusing writes (full at maxmemory, or read-only: a replica of a dead master)
        if refusal == "full":
            make_full(client)
        else:
            client.replicaof("127.0.0.1", free_port())

        # Then the scheduler logs the outage once and keeps running
        wait_for(lambda: "retrying with backoff" in output() or proc.poll() is not None, WAIT_SECONDS, "the outage")
        assert proc.poll() is None, output()
        before = set(queue.get_job_ids())  # nothing can be enqueued now

        # When Redis accepts writes again
        if refusal == "full":
            client.config_set("maxmemory", 0)
        else:
            client.replicaof("NO", "ONE")

        # Then it ticks again and says once that Redis is back
        wait_for(
            lambda: not set(queue.get_job_ids()) <= before or proc.poll() is not None, 3 * WAIT_SECONDS, "a new tick"
        )
        wait_for(lambda: "is back" in output() or proc.poll() is not None, WAIT_SECONDS, "the line saying it is back")
        assert proc.poll() is None, output()
        text = output()
        assert text.count("retrying with backoff") == 1, text
        assert text.count("is back") == 1, text
        assert "Traceback" not in text, text
    finally:
        stop(proc)
        client.close()


def test_scheduler_started_on_a_full_redis_says_so_and_stops_cleanly_on_sigterm(
    private_server: RedisServer, namespace: str, tmp_path: Path
) -> None:
    # Given a Redis at maxmemory holding the RQ queue too
    client = private_server.client()
    make_full(client)
    log_path = tmp_path / "scheduler.log"

    # When a scheduler starts on it (it never registers) and later gets SIGTERM
    proc = start_scheduler(private_server, namespace, log_path)
    try:
        wait_for(
            lambda: "retrying with backoff" in log_path.read_text() or proc.poll() is not None, WAIT_SECONDS, "outage"
        )
        assert proc.poll() is None, log_path.read_text()
        code = stop(proc)
    finally:
        stop(proc)
        client.close()

    # Then it said in one line that the queue's Redis is full and what to do, and stopped cleanly
    text = log_path.read_text()
    assert code == 0, text
    assert text.count("the RQ queue is on the track's Redis, which is full") == 1, text
    assert "Traceback" not in text and "SchedulerNotFound" not in text, text


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
        redis.exceptions.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL."),
        redis.exceptions.ResponseError(
            "Command # 1 (ZADD rq:cron_schedulers x 1) of pipeline caused error: BUSY Redis is busy running a script."
        ),
        redis.exceptions.ConnectionError("Connection refused"),
    ],
    ids=["oom", "readonly", "busy", "busy-in-pipeline", "connection"],
)
def test_scheduler_treats_refusals_of_a_healthy_redis_as_outages(error: Exception) -> None:
    # When the scheduler meets one of these replies, Then it is an outage to wait out
    assert is_outage(error)


def test_scheduler_does_not_treat_a_bug_as_an_outage() -> None:
    # A wrong command is a bug, not an outage: the scheduler must not hide it
    assert not is_outage(redis.exceptions.ResponseError("ERR unknown command 'NOPE'"))
    assert not is_outage(ValueError("boom"))
