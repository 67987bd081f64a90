"""A full Redis (``noeviction``, at ``maxmemory``) refuses publishes but never wedges runs.

Every test runs on a PRIVATE redis-server (the shared one must never see CONFIG SET):
the namespace and its agent are created, then ``maxmemory`` is set a little above the
memory in use and a backlog is published until Redis refuses it. A refused big publish
frees its query buffer again, which can leave Redis just under the limit; so the limit
is then lowered a little below the memory in use, and the server stays over it whatever
client buffers come and go. What frees memory, or is needed to get there, must still
work: the run lock (acquire, renew, release), the fenced ack, prune and the run's
bookkeeping, and the tick's lock and job note. RQ's own writes are plain commands a
full Redis refuses: with the queue on a second private Redis (``LIVESYNC_RQ_URL``) the
scheduled path drains a full track by itself; with the queue on the full track,
``status``, ``tick``, ``worker`` and the tick job say so in one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from support.backends import RecordingBackend
from support.servers import RedisServer, free_port

from livesync import Publisher, deadletters, jobs
from livesync.cli import main
from livesync.config import Settings
from livesync.errors import DeadLetterLimit, RecordRejected
from livesync.lock import RunLock, short_lock
from livesync.manager import Agent, SyncManager
from livesync.records import Record
from livesync.runner import run_agent
from livesync.scheduler import build_scheduler

#: Left out of scripts/test --fast: private redis-servers filled to maxmemory.
pytestmark = pytest.mark.slow

CONSOLE_SCRIPT = Path(sys.executable).with_name("livesync")
#: The start of the one line saying why scheduled runs cannot be enqueued (status, tick, worker, scheduler).
QUEUE_ON_FULL_REDIS = "the RQ queue is on the track's Redis, which is full"

#: Head room above the memory in use when maxmemory is set; the backlog fills it.
HEADROOM = 2 * 1024 * 1024
#: How far below the memory in use maxmemory is set once the backlog is refused.
OVER = 256 * 1024
#: Changes per publish while filling (distinct objects, so none cancels out).
FILL_BATCH = 5000
#: Most publishes the fill may take before the test gives up (Redis never refused).
MAX_FILL_CALLS = 400


class RefusingBackend(RecordingBackend):
    """Refuses every record of every batch (a target answering 400 to all)."""

    def upload(self, records: Sequence[Record]) -> None:
        raise RecordRejected([(record, "400 Bad Request") for record in records])


@pytest.fixture
def full_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with ``noeviction`` (Redis's default, stated for clarity)."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port(), extra=["--maxmemory-policy", "noeviction", "--appendonly", "no"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def full_client(full_server: RedisServer) -> Iterator[redis.Redis]:
    client = full_server.client()
    yield client
    client.close()


@pytest.fixture
def full_manager(full_client: redis.Redis, namespace: str) -> SyncManager:
    """A namespace with one null agent reading from the tail."""
    manager = SyncManager(full_client, namespace, granularity=1)
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    return manager


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def await_room(client: redis.Redis, timeout: float = 10.0) -> None:
    """Wait until Redis is below maxmemory again.

    Prune UNLINKs buckets: Redis frees a large one in a background thread, so the memory
    a drain released may show a few milliseconds after the run returned.
    """
    deadline = time.monotonic() + timeout
    while True:
        memory = client.info("memory")
        if int(memory["used_memory"]) - int(memory.get("mem_not_counted_for_evict", 0)) < int(memory["maxmemory"]):
            return
        assert time.monotonic() < deadline, f"Redis stayed at maxmemory after the drain: {memory['used_memory']}"
        time.sleep(0.01)


def fill(client: redis.Redis, namespace: str) -> int:
    """Set maxmemory just above what is used, publish until Redis refuses, then keep it over; return the head."""
    client.config_set("maxmemory", used_memory(client) + HEADROOM)
    publisher = Publisher(client, namespace)
    head = 0
    for call in range(MAX_FILL_CALLS):
        items = [("event", call * FILL_BATCH + n, ["created"]) for n in range(FILL_BATCH)]
        try:
            head = publisher.emit_many(items)[-1]
        except redis.exceptions.OutOfMemoryError:
            client.config_set("maxmemory", used_memory(client) - OVER)
            return head
    raise AssertionError(f"Redis never refused a publish after {MAX_FILL_CALLS * FILL_BATCH} changes")


def stored_changes(manager: SyncManager) -> int:
    track = manager.track(0)
    return sum(int(manager.redis.zcard(track.keys.bucket(bucket))) for bucket, _first in track.buckets())


@pytest.fixture
def full(full_client: redis.Redis, full_manager: SyncManager, namespace: str) -> int:
    """Fill the server to maxmemory with a backlog of the agent; return the head."""
    head = fill(full_client, namespace)
    assert head > 0
    return head


def test_publishing_to_a_full_redis_is_refused_with_nothing_written(
    full_client: redis.Redis, full_manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory
    track = full_manager.track(0)
    members_before = stored_changes(full_manager)

    # When one more publish comes
    with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
        Publisher(full_client, namespace).emit("event", "extra", "created")

    # Then it is refused and nothing of it was written: head and stored members unchanged
    assert track.head() == full
    assert stored_changes(full_manager) == members_before


def test_the_run_lock_can_be_taken_renewed_and_released_at_maxmemory(
    full_client: redis.Redis, full_manager: SyncManager, full: int
) -> None:
    # Given a Redis at maxmemory
    track = full_manager.track(0)

    # When a runner takes, renews and releases the lock
    lock = RunLock(track, "search", ttl=30, renew=False).acquire()
    held = full_client.get(lock.key)
    renewed = lock.renew()
    lock.release()

    # Then each step worked
    assert held == lock.token.encode()
    assert renewed is True
    assert not full_client.exists(lock.key)


def test_a_run_at_maxmemory_drains_the_backlog_frees_memory_and_publishing_works_again(
    full_client: redis.Redis, full_manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory holding a backlog of the agent
    track = full_manager.track(0)
    memory_full = used_memory(full_client)
    assert track.pointer("search") == 0

    # When the agent runs (null backend)
    result = run_agent(full_manager, "search", window=50_000)

    # Then it took the lock, acknowledged every window, pruned, and released the lock
    assert result.pointer_after == track.head() == full
    assert track.pointer("search") == full
    assert result.windows > 0
    assert result.pruned_buckets > 0
    assert track.buckets() == []
    assert not full_client.exists(track.keys.lock("search"))
    # the memory fell
    assert used_memory(full_client) < memory_full
    # the run's bookkeeping was stored too
    agent = full_manager.get_agent("search")
    assert (agent.runs, agent.failures, agent.changes) == (1, 0, full)
    assert agent.last_success_at is not None
    # and publishing works again
    await_room(full_client)
    assert Publisher(full_client, namespace).emit("event", "extra", "created") == full + 1


def test_the_fenced_ack_and_prune_free_memory_at_maxmemory(
    full_client: redis.Redis, full_manager: SyncManager, namespace: str
) -> None:
    # Given a runner holding the lock while Redis fills to maxmemory with the agent's backlog
    track = full_manager.track(0)
    lock = RunLock(track, "search", ttl=60, renew=False).acquire()
    head = fill(full_client, namespace)
    memory_full = used_memory(full_client)

    # When it acknowledges the whole backlog and prunes
    track.acknowledge("search", lock.token, head)
    pruned = track.prune()
    lock.release()

    # Then the pointer moved, every bucket went and the memory fell
    assert track.pointer("search") == head
    assert pruned > 0 and track.buckets() == []
    assert used_memory(full_client) < memory_full


def test_the_run_bookkeeping_is_stored_at_maxmemory(
    full_client: redis.Redis, full_manager: SyncManager, full: int
) -> None:
    # Given a Redis at maxmemory
    # When the outcome of a run is recorded
    full_manager.record_run("search", started=1.0, changes=5, records=4, rejected=1, error=None)

    # Then the agent's counters show it
    agent = full_manager.get_agent("search")
    assert (agent.runs, agent.changes, agent.records, agent.rejected, agent.failures) == (1, 5, 4, 1, 0)
    assert agent.last_run_at == 1.0


def test_dead_letters_are_written_with_the_ack_at_maxmemory(
    full_client: redis.Redis, full_manager: SyncManager, namespace: str
) -> None:
    # Given a runner holding the lock while Redis fills to maxmemory with the agent's backlog
    track = full_manager.track(0)
    lock = RunLock(track, "search", ttl=60, renew=False).acquire()
    head = fill(full_client, namespace)
    letters = deadletters.encode([(Record("event", 1, "created", ("created",), 1, 1), "refused")])

    # When it acknowledges the backlog with a dead letter
    track.acknowledge("search", lock.token, head, dead_letters=letters)
    lock.release()

    # Then both were stored
    assert track.pointer("search") == head
    assert deadletters.count(full_manager, "search") == 1


def test_a_run_at_maxmemory_past_the_dead_letter_limit_pauses_the_agent(
    full_client: redis.Redis, full_manager: SyncManager, full: int
) -> None:
    # Given a Redis at maxmemory and a target that refuses every record
    track = full_manager.track(0)

    # When the agent runs with a limit of 10 dead letters per run
    with pytest.raises(DeadLetterLimit):
        run_agent(full_manager, "search", backend=RefusingBackend(), window=5, batch_size=5, dead_letter_limit=10)

    # Then it stopped at the limit and the agent is paused, saying why
    assert track.pointer("search") == 10
    assert deadletters.count(full_manager, "search") == 10
    agent = full_manager.get_agent("search")
    assert agent.state == "paused"
    assert agent.last_error is not None and "LIVESYNC_DEAD_LETTER_LIMIT=10" in agent.last_error


def test_livesync_agent_run_drains_a_full_redis(
    full_server: RedisServer, full_client: redis.Redis, full_manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory holding the agent's backlog
    env = {"LIVESYNC_REDIS_URL": full_server.url, "LIVESYNC_NAMESPACE": namespace}

    # When an operator runs the agent from the command line
    result = CliRunner().invoke(main, ["agent", "run", "search"], env=env)

    # Then it drained the backlog and publishing works again
    assert result.exit_code == 0, result.output
    assert f"pointer 0 -> {full}" in result.output
    await_room(full_client)
    assert Publisher(full_client, namespace).emit("event", "extra", "created") == full + 1


# The scheduled path: tick, queue and worker


@pytest.fixture
def queue_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A second private redis-server, for the RQ queue (``LIVESYNC_RQ_URL``)."""
    directory = tmp_path / "queue-redis"
    directory.mkdir()
    server = RedisServer(directory, free_port(), extra=["--appendonly", "no"])
    server.start()
    yield server
    server.stop()


def cli_env(track: RedisServer, namespace: str, queue: RedisServer | None = None) -> dict[str, str]:
    """The environment of a livesync process on these servers, without the caller's LIVESYNC_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
    env.update({"LIVESYNC_REDIS_URL": track.url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": f"q-{namespace}"})
    if queue is not None:
        env["LIVESYNC_RQ_URL"] = queue.url
    return env


def test_scheduled_runs_drain_a_full_track_redis_when_the_queue_is_on_another_redis(
    full_server: RedisServer,
    queue_server: RedisServer,
    full_client: redis.Redis,
    full_manager: SyncManager,
    namespace: str,
    full: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a track Redis at maxmemory holding the agent's backlog, and the RQ queue on another Redis
    track = full_manager.track(0)
    memory_full = used_memory(full_client)
    queue_client = queue_server.client()
    settings = Settings(redis_url=full_server.url, rq_url=queue_server.url, namespace=namespace, queue=f"q-{namespace}")
    queue = Queue(settings.queue, connection=queue_client, serializer=JSONSerializer)

    # When the scheduler enqueues its tick and a `livesync worker --burst` process works the queue
    scheduler = build_scheduler(settings, queue_client)
    assert len(scheduler.enqueue_jobs()) == 1
    [tick_id] = queue.get_job_ids()
    worker = subprocess.run(
        [str(CONSOLE_SCRIPT), "worker", "--burst", "--name", f"w-{namespace}"],
        env=cli_env(full_server, namespace, queue_server),
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then the worker started (its eviction check reads INFO, which a full Redis answers)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    # the tick enqueued the agent's run without a failure
    tick = Job.fetch(tick_id, connection=queue_client, serializer=JSONSerializer)
    assert tick.get_status() == JobStatus.FINISHED, worker.stderr
    result = tick.return_value()
    assert result is not None and len(result["enqueued"]) == 1 and result["failed"] == {}, result
    # the run drained the backlog and pruned it, and the memory fell
    assert track.pointer("search") == full
    assert track.buckets() == []
    assert used_memory(full_client) < memory_full
    # and publishing works again
    await_room(full_client)
    assert Publisher(full_client, namespace).emit("event", "extra", "created") == full + 1
    queue_client.close()


def test_livesync_tick_says_in_one_line_that_the_queue_is_on_the_full_track_redis(
    full_server: RedisServer, full_manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory holding a due agent's backlog, with the RQ queue on it too
    # When an operator ticks the namespace
    result = CliRunner().invoke(main, ["tick"], env=cli_env(full_server, namespace))

    # Then it fails in one line saying why and what to do, without a traceback
    assert result.exit_code == 1, result.output
    assert QUEUE_ON_FULL_REDIS in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0, result.output


def test_livesync_status_warns_that_the_queue_is_on_the_full_track_redis(
    full_server: RedisServer, full_manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory, with the RQ queue on it too
    # When an operator asks for the status
    result = CliRunner().invoke(main, ["status"], env=cli_env(full_server, namespace))
    as_json = CliRunner().invoke(main, ["status", "--json"], env=cli_env(full_server, namespace))

    # Then it shows the status with one line saying the queue cannot take scheduled runs
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.output.splitlines() if QUEUE_ON_FULL_REDIS in line]
    assert "livesync agent run" in warning and "LIVESYNC_RQ_URL" in warning
    assert "search" in result.output
    # and the JSON says the queue's Redis is full
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["queue"]["redis_full"] is True


def test_livesync_status_does_not_warn_when_the_full_track_redis_is_not_the_queues(
    full_server: RedisServer, queue_server: RedisServer, full_manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory, with the RQ queue on another Redis
    # When an operator asks for the status
    result = CliRunner().invoke(main, ["status", "--json"], env=cli_env(full_server, namespace, queue_server))

    # Then the queue's Redis is not reported full
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["queue"]["redis_full"] is False


def test_livesync_worker_says_in_one_line_that_the_queue_is_on_the_full_track_redis(
    full_server: RedisServer, full_manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory, with the RQ queue on it too
    # When a worker starts
    worker = subprocess.run(
        [str(CONSOLE_SCRIPT), "worker", "--burst", "--name", f"w-{namespace}"],
        env=cli_env(full_server, namespace),
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then it exits 1 with one line saying why and what to do, without a traceback
    assert worker.returncode == 1, worker.stdout + worker.stderr
    assert QUEUE_ON_FULL_REDIS in worker.stderr
    assert "Traceback" not in worker.stdout + worker.stderr


def test_the_tick_lock_is_taken_refused_to_a_second_tick_and_released_at_maxmemory(
    full_client: redis.Redis, full_manager: SyncManager, full: int
) -> None:
    # Given a Redis at maxmemory
    key = full_manager.keys.tick_lock

    # When a tick takes the tick lock while another tries too
    with short_lock(full_client, key, 30) as taken:
        held = full_client.exists(key)
        with short_lock(full_client, key, 30) as second:
            pass

    # Then the first got it, the second did not, and it is gone afterwards
    assert taken is True and held == 1
    assert second is False
    assert not full_client.exists(key)


def test_the_tick_job_on_the_full_track_redis_holding_the_queue_says_so_in_one_line(
    full_client: redis.Redis, full_manager: SyncManager, namespace: str, full: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis at maxmemory holding a due agent's backlog, with the RQ queue on it too
    settings = Settings(redis_url="redis://full.invalid:6379/0", namespace=namespace, queue=f"q-{namespace}")
    jobs.configure(settings, redis=full_client)
    try:
        # When the tick job runs (as a worker that got it before Redis filled would)
        result = jobs.tick(namespace)
    finally:
        jobs.clear_configuration()

    # Then it enqueued nothing and said why in its result and in one log line, without a traceback
    assert result["skipped"] == jobs.QUEUE_ON_FULL_TRACK
    [record] = [r for r in caplog.records if jobs.QUEUE_ON_FULL_TRACK in r.getMessage()]
    assert record.exc_info is None
