"""RQ job ids of livesync's runs: valid for every legal namespace and agent id, and one bad agent never stops a tick.

Namespace and agent ids allow letters, digits, ``_``, ``.`` and ``-``; RQ's job ids allow
letters, digits, ``_`` and ``-`` only (``rq.job.JOB_ID_PATTERN``). The tests enqueue on a
real RQ queue and run the jobs with a burst worker, as ``tests/test_jobs.py`` does.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable

import pytest
import redis
from rq import Queue
from rq.job import JOB_ID_PATTERN, Job
from rq.serializers import JSONSerializer

from livesync import Publisher, jobs
from livesync.config import Settings
from livesync.manager import Agent, SyncManager
from livesync.worker import LiveSyncSimpleWorker

#: One id per legal character class, and ids mixing all of them.
AGENT_IDS = ["letters", "0123", "under_score", "dot.ted", "dash-ed", "A.b-c_9", ".-_", "search.v2"]


@pytest.fixture
def odd_namespace(namespace: str) -> str:
    """The test's namespace with every legal non-alphanumeric character (the cleanup matches its prefix)."""
    return f"{namespace}_prod.v2-x"


@pytest.fixture
def odd_settings(odd_namespace: str, configure_jobs: Callable[..., Settings]) -> Settings:
    """Jobs configured for the odd namespace."""
    return configure_jobs(odd_namespace)


@pytest.fixture
def odd_queue(odd_settings: Settings, real_redis: redis.Redis) -> Queue:
    return jobs.make_queue(odd_settings, connection=real_redis)


def work(queue: Queue, real_redis: redis.Redis) -> None:
    """Run every queued job in this process until the queue is empty."""
    worker = LiveSyncSimpleWorker(
        [queue], connection=real_redis, serializer=JSONSerializer, name=f"w-{uuid.uuid4().hex[:8]}"
    )
    worker.work(burst=True)


def fetch(job_id: str, real_redis: redis.Redis) -> Job:
    return Job.fetch(job_id, connection=real_redis, serializer=JSONSerializer)


def add_agents(manager: SyncManager, agent_ids: list[str]) -> None:
    for agent_id in agent_ids:
        manager.add_agent(Agent(id=agent_id, backend="null", update_time=0), start="tail")


# The encoding


def test_run_job_ids_are_valid_rq_job_ids_for_every_legal_character() -> None:
    # Given namespaces and agent ids made of each legal character
    names = [*AGENT_IDS, "x" * 64, "." * 64]

    # When their run job ids are built
    ids = [jobs.run_job_id(ns, agent, 3) for ns, agent in itertools.product(names, names)]

    # Then RQ accepts every one of them
    assert all(JOB_ID_PATTERN.fullmatch(job_id) for job_id in ids), [i for i in ids if not JOB_ID_PATTERN.fullmatch(i)]


def test_run_job_ids_are_injective_over_namespace_agent_and_partition() -> None:
    # Given pairs that a naive join with '-' or a '.' -> '_' replacement would confuse
    pairs = [("a-b", "c"), ("a", "b-c"), ("a.b", "c"), ("a_b", "c"), ("a_2eb", "c"), ("a", "b"), ("a", "b.")]

    # When their run job ids are built without the random suffix
    prefixes = [jobs.run_job_id(ns, agent, 0).rsplit("-", 1)[0] for ns, agent in pairs]

    # Then no two (namespace, agent) pairs share one
    assert len(set(prefixes)) == len(pairs), prefixes


def test_run_job_ids_of_plain_ids_stay_readable() -> None:
    # Given a namespace and an agent of letters and digits
    # When the run job id is built
    job_id = jobs.run_job_id("prod", "search2", 1)

    # Then it reads as namespace, agent and partition
    assert job_id.startswith("livesync-prod-search2-1-")


# Ticks with real RQ


def test_tick_of_a_namespace_with_a_dot_enqueues_and_a_worker_delivers_every_agent(
    real_redis: redis.Redis, odd_namespace: str, odd_settings: Settings, odd_queue: Queue
) -> None:
    # Given a namespace with '_', '.' and '-' and agents of every legal character, all with pending changes
    manager = SyncManager(real_redis, odd_namespace)
    add_agents(manager, AGENT_IDS)
    Publisher(real_redis, odd_namespace).emit_many([("event", i, ["created"]) for i in range(3)])

    # When the tick job runs and a burst worker works the queue
    outcome = jobs.tick(odd_namespace)
    work(odd_queue, real_redis)

    # Then every agent got a run that delivered its changes, and nothing failed
    assert sorted(fetch(job_id, real_redis).args[1] for job_id in outcome["enqueued"]) == sorted(AGENT_IDS)
    assert outcome["failed"] == {}
    assert {agent_id: manager.pointers(agent_id) for agent_id in AGENT_IDS} == {agent_id: [3] for agent_id in AGENT_IDS}


def test_an_agent_that_fails_to_enqueue_does_not_stop_the_tick_for_the_agents_after_it(
    real_redis: redis.Redis,
    odd_namespace: str,
    odd_settings: Settings,
    odd_queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given an agent first in sort order whose run cannot be enqueued, and healthy agents after it
    manager = SyncManager(real_redis, odd_namespace)
    add_agents(manager, ["0.first", *AGENT_IDS])
    Publisher(real_redis, odd_namespace).emit("event", 1, "created")
    enqueue_run = jobs.enqueue_run

    def refuse_the_first(queue: Queue, settings: Settings, namespace: str, agent_id: str, partition: int) -> Job:
        if agent_id == "0.first":
            raise RuntimeError("queue refused the job")
        return enqueue_run(queue, settings, namespace, agent_id, partition)

    monkeypatch.setattr(jobs, "enqueue_run", refuse_the_first)

    # When the tick job runs and a burst worker works the queue
    with caplog.at_level(logging.WARNING, logger="livesync.jobs"):
        outcome = jobs.tick(odd_namespace)
    work(odd_queue, real_redis)

    # Then the failing agent is reported and logged in one line, and every other agent was delivered
    assert outcome["failed"] == {"0.first": "RuntimeError: queue refused the job"}
    assert sorted(fetch(job_id, real_redis).args[1] for job_id in outcome["enqueued"]) == sorted(AGENT_IDS)
    assert all(manager.pointers(agent_id) == [1] for agent_id in AGENT_IDS)
    [line] = [r.getMessage() for r in caplog.records if "0.first" in r.getMessage()]
    assert "queue refused the job" in line
