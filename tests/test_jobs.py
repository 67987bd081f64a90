"""RQ jobs: scheduling due agents, JSON-serialized jobs, results, failures and retries."""

from __future__ import annotations

import json
import uuid
import zlib
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer
from support.backends import RecordingBackend
from test_retention import GRANULARITY, OLD, RECENT, RETENTION, write_bucket

from livesync import Publisher, jobs
from livesync.cli import main
from livesync.config import Settings
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of
from livesync.runner import run_agent

pytestmark = pytest.mark.jobs_settings(retry_intervals=[0], retry_max=1)


def work(queue: Queue, real_redis: redis.Redis, namespace: str) -> None:
    """Run every queued job in this process until the queue is empty."""
    worker = SimpleWorker(
        [queue],
        connection=real_redis,
        serializer=JSONSerializer,
        name=f"w-{namespace}-{uuid.uuid4().hex[:6]}",
    )
    worker.work(burst=True)


def fetch(job_id: str, real_redis: redis.Redis) -> Job:
    return Job.fetch(job_id, connection=real_redis, serializer=JSONSerializer)


def add_agent(manager: SyncManager, agent_id: str = "search", **fields: object) -> None:
    manager.add_agent(Agent.model_validate({"id": agent_id, "backend": "null", "update_time": 0, **fields}))


# Which agents are due


def test_enqueue_due_enqueues_one_job_per_agent_and_partition_with_pending_changes(
    real_redis: redis.Redis, namespace: str, queue: Queue, settings: Settings
) -> None:
    # Given two agents on two partitions, both with pending changes in each partition
    manager = SyncManager(real_redis, namespace, partitions=2)
    add_agent(manager, "a")
    add_agent(manager, "b")
    items = [("event", i, ["created"]) for i in range(20)]
    assert {partition_of("event", i, 2) for i in range(20)} == {0, 1}
    Publisher(real_redis, namespace, partitions=2).emit_many(items)

    # When due agents are enqueued
    job_ids = jobs.enqueue_due(manager, queue, settings)

    # Then there is one run_agent job per (agent, partition)
    runs = sorted(tuple(fetch(job_id, real_redis).args) for job_id in job_ids)
    assert runs == [(namespace, "a", 0), (namespace, "a", 1), (namespace, "b", 0), (namespace, "b", 1)]
    assert all(fetch(job_id, real_redis).func_name == jobs.RUN for job_id in job_ids)
    assert sorted(queue.get_job_ids()) == sorted(job_ids)


def test_enqueue_due_skips_paused_agents(
    manager: SyncManager, publisher: Publisher, queue: Queue, settings: Settings
) -> None:
    # Given a paused and an active agent, both with pending changes
    add_agent(manager, "paused")
    add_agent(manager, "active")
    manager.set_state("paused", "paused")
    publisher.emit("event", 1, "created")

    # When due agents are enqueued
    job_ids = jobs.enqueue_due(manager, queue, settings)

    # Then only the active one got a job
    assert [fetch(job_id, queue.connection).args[1] for job_id in job_ids] == ["active"]


def test_enqueue_due_skips_agents_with_nothing_pending(
    manager: SyncManager, publisher: Publisher, queue: Queue, settings: Settings
) -> None:
    # Given an agent added at the head of the track
    publisher.emit("event", 1, "created")
    add_agent(manager)

    # When due agents are enqueued
    job_ids = jobs.enqueue_due(manager, queue, settings)

    # Then nothing was enqueued
    assert job_ids == []
    assert queue.count == 0


def test_enqueue_due_skips_agents_whose_update_time_has_not_passed(
    manager: SyncManager, publisher: Publisher, queue: Queue, settings: Settings
) -> None:
    # Given an agent that runs at most hourly, ran just now, and has new changes since
    add_agent(manager, update_time=3600)
    publisher.emit("event", 1, "created")
    run_agent(manager, "search", backend=RecordingBackend())
    publisher.emit("event", 2, "created")

    # When due agents are enqueued
    job_ids = jobs.enqueue_due(manager, queue, settings)

    # Then it is not due yet
    assert job_ids == []


def test_enqueue_due_with_force_ignores_update_time(
    manager: SyncManager, publisher: Publisher, queue: Queue, settings: Settings
) -> None:
    # Given an agent that runs at most hourly, ran just now, and has new changes since
    add_agent(manager, update_time=3600)
    publisher.emit("event", 1, "created")
    run_agent(manager, "search", backend=RecordingBackend())
    publisher.emit("event", 2, "created")

    # When due agents are enqueued with force
    job_ids = jobs.enqueue_due(manager, queue, settings, force=True)

    # Then it is enqueued anyway
    assert len(job_ids) == 1


def test_enqueue_due_does_not_enqueue_a_second_job_while_one_is_queued(
    manager: SyncManager, publisher: Publisher, queue: Queue, settings: Settings
) -> None:
    # Given an agent with pending changes that was enqueued once
    add_agent(manager)
    publisher.emit("event", 1, "created")
    first = jobs.enqueue_due(manager, queue, settings)

    # When due agents are enqueued again before a worker ran
    second = jobs.enqueue_due(manager, queue, settings)

    # Then no second job is added
    assert len(first) == 1
    assert second == []
    assert queue.count == 1


def test_enqueue_due_does_nothing_while_another_tick_holds_the_tick_lock(
    manager: SyncManager, publisher: Publisher, queue: Queue, settings: Settings, real_redis: redis.Redis
) -> None:
    # Given a due agent and a tick lock held by a concurrent tick
    add_agent(manager)
    publisher.emit("event", 1, "created")
    real_redis.set(manager.keys.tick_lock, "other-tick", ex=30)

    # When due agents are enqueued
    job_ids = jobs.enqueue_due(manager, queue, settings)

    # Then nothing is enqueued and the other tick's lock stays
    assert job_ids == []
    assert real_redis.get(manager.keys.tick_lock) == b"other-tick"


def test_agent_is_due_again_after_its_job_ran_and_new_changes_arrived(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given an agent (update_time 0) whose job ran
    add_agent(manager)
    publisher.emit("event", 1, "created")
    [first] = jobs.enqueue_due(manager, queue, settings)
    work(queue, real_redis, namespace)
    assert fetch(first, real_redis).get_status() == JobStatus.FINISHED
    assert jobs.enqueue_due(manager, queue, settings) == []

    # When a new change is published
    publisher.emit("event", 2, "title_changed")

    # Then it is due again
    [second] = jobs.enqueue_due(manager, queue, settings)
    assert second != first


def test_tick_enqueues_due_agents(
    manager: SyncManager, publisher: Publisher, queue: Queue, settings: Settings, namespace: str
) -> None:
    # Given a due agent and an agent with nothing pending
    add_agent(manager, "due")
    publisher.emit("event", 1, "created")
    add_agent(manager, "idle")

    # When the tick job runs
    job_ids = jobs.tick(namespace)["enqueued"]

    # Then the due agent was enqueued on the configured queue
    assert [fetch(job_id, queue.connection).args for job_id in job_ids] == [[namespace, "due", 0]]
    assert queue.get_job_ids() == job_ids


def test_tick_command_prunes_with_retention_and_marks_gaps_like_the_tick_job(
    real_redis: redis.Redis, namespace: str, settings: Settings, redis_url: str
) -> None:
    # Given a bucket older than the retention that an agent has not read, and a recent one
    manager = SyncManager(real_redis, namespace, granularity=GRANULARITY)
    assert manager.granularity == GRANULARITY  # the namespace exists before its buckets are written
    keys = manager.keys.partition(0)
    write_bucket(real_redis, keys, OLD, (1, 2, 3))
    write_bucket(real_redis, keys, RECENT, (4, 5))
    manager.add_agent(Agent(id="slow", backend="null", update_time=0), start=0)

    # When `livesync tick` runs with that retention
    env = {
        "LIVESYNC_REDIS_URL": redis_url,
        "LIVESYNC_NAMESPACE": namespace,
        "LIVESYNC_QUEUE": settings.queue,
        "LIVESYNC_RETENTION": str(RETENTION),
    }
    result = CliRunner().invoke(main, ["tick", "--json"], env=env)

    # Then the expired bucket is pruned, the agent is gap (and not enqueued), as the tick job does
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["pruned_buckets"], data["gaps"], data["enqueued"]) == (1, ["slow"], [])
    assert [bucket for bucket, _first in manager.track().buckets()] == [RECENT]
    assert manager.get_agent("slow").state == "gap"


def test_tick_command_reports_pruning_and_gaps_in_its_text_output(
    real_redis: redis.Redis, namespace: str, settings: Settings, redis_url: str
) -> None:
    # Given a bucket older than the retention that an agent has not read
    manager = SyncManager(real_redis, namespace, granularity=GRANULARITY)
    assert manager.granularity == GRANULARITY  # the namespace exists before its buckets are written
    write_bucket(real_redis, manager.keys.partition(0), OLD, (1, 2, 3))
    manager.add_agent(Agent(id="slow", backend="null", update_time=0), start=0)

    # When `livesync tick` runs with that retention
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": settings.queue}
    result = CliRunner().invoke(main, ["tick"], env={**env, "LIVESYNC_RETENTION": str(RETENTION)})

    # Then it says what it pruned and which agent lost unread changes
    assert result.exit_code == 0, result.output
    assert "pruned 1 bucket(s)" in result.output
    assert "gap: slow" in result.output


# Serialization


def test_jobs_are_stored_as_json_never_pickle(
    manager: SyncManager, publisher: Publisher, queue: Queue, settings: Settings, real_redis: redis.Redis
) -> None:
    # Given an enqueued run
    add_agent(manager)
    publisher.emit("event", 1, "created")
    [job_id] = jobs.enqueue_due(manager, queue, settings)

    # When the raw job hash is read (RQ zlib-compresses the data field)
    raw = real_redis.hget(f"rq:job:{job_id}", "data")
    assert raw is not None
    payload = zlib.decompress(raw)

    # Then the payload is JSON naming the function and its arguments, not pickle
    assert not payload.startswith(b"\x80")
    decoded = json.loads(payload)
    assert jobs.RUN in decoded
    assert [manager.namespace, "search", 0] in decoded


# Running


def test_run_job_returns_a_summary_dict(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given an agent with three changes of two objects pending
    add_agent(manager)
    publisher.emit_many([("event", 1, ["created"]), ("event", 1, ["moved"]), ("event", 2, ["created"])])
    [job_id] = jobs.enqueue_due(manager, queue, settings)

    # When a worker runs the job
    work(queue, real_redis, namespace)

    # Then its result is a dict with the run's changes and records, and the pointer moved
    result = fetch(job_id, real_redis).return_value()
    assert isinstance(result, dict)
    assert (result["agent"], result["partition"], result["changes"], result["records"]) == ("search", 0, 3, 2)
    assert result["skipped"] is None
    assert manager.pointers("search") == [3]


def test_failing_run_ends_in_failed_registry_after_retries_with_pointer_unchanged(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a jsonl agent whose path became a directory, so opening it fails
    add_agent(manager, backend="jsonl", options={"path": str(tmp_path / "out")})
    (tmp_path / "out").mkdir()
    publisher.emit_many([("event", 1, ["created"]), ("event", 2, ["created"])])
    [job_id] = jobs.enqueue_due(manager, queue, settings)

    # When a worker runs it (one retry, no delay)
    work(queue, real_redis, namespace)

    # Then the job failed after its retry with the traceback stored, and the pointer stayed
    job = fetch(job_id, real_redis)
    assert job.get_status() == JobStatus.FAILED
    assert job.retries_left == 0
    assert job_id in FailedJobRegistry(queue=queue).get_job_ids()
    latest = job.latest_result()
    assert latest is not None and latest.exc_string is not None
    assert "IsADirectoryError" in latest.exc_string
    assert manager.pointers("search") == [0]
    stored = manager.get_agent("search")
    assert (stored.runs, stored.failures) == (2, 2)
    assert stored.last_error is not None and stored.last_error.startswith("IsADirectoryError")


def test_job_of_a_removed_agent_returns_a_skipped_result(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given a queued run of an agent that is then removed
    add_agent(manager)
    publisher.emit("event", 1, "created")
    [job_id] = jobs.enqueue_due(manager, queue, settings)
    manager.remove_agent("search")

    # When a worker runs the job
    work(queue, real_redis, namespace)

    # Then the job finished with a result saying why it skipped
    job = fetch(job_id, real_redis)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == {"agent": "search", "partition": 0, "skipped": "unknown agent 'search'"}


def test_job_of_a_paused_agent_returns_a_skipped_result(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given a queued run of an agent that is then paused
    add_agent(manager)
    publisher.emit("event", 1, "created")
    [job_id] = jobs.enqueue_due(manager, queue, settings)
    manager.set_state("search", "paused")

    # When a worker runs the job
    work(queue, real_redis, namespace)

    # Then the job finished with a skipped result and the pointer stayed
    job = fetch(job_id, real_redis)
    assert job.get_status() == JobStatus.FINISHED
    assert "paused" in job.return_value()["skipped"]
    assert manager.pointers("search") == [0]


def test_job_of_an_agent_removed_while_the_tick_enqueues_it_is_skipped(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a due agent that an operator removes while the tick is enqueueing its run
    add_agent(manager)
    publisher.emit("event", 1, "created")
    enqueue_run = jobs.enqueue_run

    def removed_meanwhile(*args: object, **kwargs: object) -> Job:
        manager.remove_agent("search")
        return enqueue_run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs, "enqueue_run", removed_meanwhile)
    [job_id] = jobs.enqueue_due(manager, queue, settings)

    # When a worker runs the job
    work(queue, real_redis, namespace)

    # Then the job was skipped, not failed, and nothing of the agent is left
    job = fetch(job_id, real_redis)
    assert job.get_status() == JobStatus.FINISHED
    assert job.return_value() == {"agent": "search", "partition": 0, "skipped": "unknown agent 'search'"}
    assert not real_redis.exists(manager.keys.agent("search"))


def test_agent_behind_at_a_track_only_reset_is_not_due_after_one_run(
    manager: SyncManager,
    publisher: Publisher,
    queue: Queue,
    settings: Settings,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given an agent at seq 3 of 5 whose unread changes went with a track-only reset
    manager.add_agent(Agent(id="search", backend="null", update_time=0), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(5)])
    manager.advance("search", 3)
    manager.destroy(track_only=True)

    # When its run job ran once with nothing to read
    jobs.enqueue_due(manager, queue, settings)
    work(queue, real_redis, namespace)

    # Then it is not due again while nothing new is published
    assert jobs.enqueue_due(manager, queue, settings) == []
