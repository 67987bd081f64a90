"""Blast radius of one (invariant 7): a corrupt agent is shown as ``corrupt``, the others go on.

Each test corrupts the agent ``a-bad`` (first in sort order) one way — an unknown
``state``, non-JSON ``options``, a non-integer pointer in the partition's pointers hash —
next to a healthy agent ``good``, then drives one consumer: the tick, ``status``,
``agent list``, ``agent show``, ``agent remove``, the metrics collector and runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.servers import TEST_REDIS_URL
from test_retention import GRANULARITY, OLD, RECENT, RETENTION, write_bucket

from livesync import Publisher, jobs
from livesync.cli import main
from livesync.config import Settings
from livesync.errors import AgentNotRunnable
from livesync.manager import Agent, SyncManager
from livesync.metrics import make_registry
from livesync.runner import run_agent

BAD, GOOD = "a-bad", "good"
KINDS = ["state", "options", "pointer"]


pytestmark = pytest.mark.jobs_settings(redis_url=TEST_REDIS_URL)


def corrupt(real_redis: redis.Redis, manager: SyncManager, kind: str) -> tuple[str, str]:
    """Corrupt agent ``BAD`` one way; return (the key that is named, what is wrong)."""
    if kind == "state":
        key = manager.keys.agent(BAD)
        real_redis.hset(key, "state", "sleeping")
        return key, "state"
    if kind == "options":
        key = manager.keys.agent(BAD)
        real_redis.hset(key, "options", "{not json")
        return key, "options is not JSON"
    key = manager.keys.partition(0).pointers
    real_redis.hset(key, BAD, "twelve")
    return key, "not an integer"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def two_agent_manager(manager: SyncManager, publisher: Publisher) -> SyncManager:
    """Agents ``a-bad`` and ``good``, both with three pending changes."""
    for agent_id in (BAD, GOOD):
        manager.add_agent(Agent(id=agent_id, backend="null", update_time=0), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])
    return manager


@pytest.fixture
def damaged(real_redis: redis.Redis, two_agent_manager: SyncManager, kind: str) -> tuple[str, str]:
    """``a-bad`` corrupted the way of ``kind``: (key named, what is wrong)."""
    return corrupt(real_redis, two_agent_manager, kind)


@pytest.fixture
def settings_cli(redis_url: str, namespace: str, settings: Settings) -> Callable[..., Result]:
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": settings.queue}

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    return invoke


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return result


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


# The tick


def test_tick_skips_a_corrupt_agent_and_enqueues_the_healthy_one(
    two_agent_manager: SyncManager, damaged: tuple[str, str], settings: Settings, namespace: str
) -> None:
    key, _problem = damaged

    # When the tick job runs
    outcome = jobs.tick(namespace)

    # Then the healthy agent got its run and the corrupt one is reported with the key
    queue = jobs.make_queue(settings)
    assert [queue.fetch_job(job_id).args[1] for job_id in outcome["enqueued"]] == [GOOD]  # type: ignore[union-attr]
    assert list(outcome["corrupt"]) == [BAD]
    assert key in outcome["corrupt"][BAD]


def test_tick_command_skips_a_corrupt_agent_and_enqueues_the_healthy_one(
    two_agent_manager: SyncManager, damaged: tuple[str, str], settings_cli: Callable[..., Result]
) -> None:
    key, _problem = damaged

    # When `livesync tick --json` runs
    data = json.loads(ok(settings_cli("tick", "--json")).stdout)

    # Then it enqueued the healthy agent's run and names the corrupt agent's key
    assert len(data["enqueued"]) == 1
    assert key in data["corrupt"][BAD]


# status


def test_status_json_shows_the_corrupt_agent_with_its_key_and_the_healthy_one_as_usual(
    two_agent_manager: SyncManager, damaged: tuple[str, str], settings_cli: Callable[..., Result]
) -> None:
    key, problem = damaged

    # When `livesync status --json` runs
    agents = by_id(json.loads(ok(settings_cli("status", "--json")).stdout)["agents"])

    # Then the corrupt agent is in state corrupt with the key and the problem named; the other is untouched
    assert agents[BAD]["state"] == "corrupt"
    assert key in agents[BAD]["last_error"] and problem in agents[BAD]["last_error"]
    assert (agents[GOOD]["state"], agents[GOOD]["pointers"], agents[GOOD]["lag_changes"]) == ("active", [0], 3)


def test_status_table_shows_the_corrupt_agent_with_its_key(
    two_agent_manager: SyncManager, damaged: tuple[str, str], settings_cli: Callable[..., Result]
) -> None:
    key, _problem = damaged

    # When `livesync status` runs
    output = ok(settings_cli("status")).output

    # Then both agents are listed, the corrupt one as corrupt with its key spelled out
    rows = {line.split()[0]: line for line in output.splitlines() if line.startswith((BAD + " ", GOOD + " "))}
    assert "corrupt" in rows[BAD] and "active" in rows[GOOD]
    assert key in output


# agent list / show / remove


def test_agent_list_shows_the_corrupt_agent_with_its_key(
    two_agent_manager: SyncManager, damaged: tuple[str, str], settings_cli: Callable[..., Result]
) -> None:
    key, problem = damaged

    # When `livesync agent list` runs, as JSON and as a table
    rows = by_id(json.loads(ok(settings_cli("agent", "list", "--json")).stdout))
    table = ok(settings_cli("agent", "list")).output

    # Then the corrupt agent is listed as corrupt with its key, next to the healthy one
    assert rows[BAD]["state"] == "corrupt" and key in rows[BAD]["last_error"] and problem in rows[BAD]["last_error"]
    assert rows[GOOD]["state"] == "active"
    assert key in table and GOOD in table


def test_agent_show_of_a_corrupt_agent_says_what_is_wrong(
    two_agent_manager: SyncManager, damaged: tuple[str, str], settings_cli: Callable[..., Result]
) -> None:
    key, problem = damaged

    # When `livesync agent show a-bad` runs
    output = ok(settings_cli("agent", "show", BAD)).output

    # Then it shows the state corrupt, the key and the problem
    assert "corrupt" in output and key in output and problem in output


def test_agent_remove_removes_a_corrupt_agent_without_decoding_it(
    two_agent_manager: SyncManager,
    damaged: tuple[str, str],
    settings_cli: Callable[..., Result],
    real_redis: redis.Redis,
) -> None:
    # When `livesync agent remove a-bad` runs
    result = ok(settings_cli("agent", "remove", BAD))

    # Then the agent, its hash and its pointer are gone, and the healthy agent stays
    assert f"removed agent {BAD}" in result.output
    assert not real_redis.sismember(two_agent_manager.keys.agents, BAD)
    assert not real_redis.exists(two_agent_manager.keys.agent(BAD))
    assert not real_redis.hexists(two_agent_manager.keys.partition(0).pointers, BAD)
    assert [agent.id for agent in two_agent_manager.list_agents()] == [GOOD]


def test_agent_remove_of_an_unknown_agent_still_exits_2(
    two_agent_manager: SyncManager, settings_cli: Callable[..., Result]
) -> None:
    # When an agent that does not exist is removed
    result = settings_cli("agent", "remove", "nobody")

    # Then it is bad input, said in one line
    assert result.exit_code == 2
    assert "unknown agent 'nobody'" in result.output


# metrics


def test_metrics_stay_up_export_the_healthy_agent_and_show_the_corrupt_one(
    two_agent_manager: SyncManager,
    damaged: tuple[str, str],
    settings: Settings,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # When the collector is scraped
    text = generate_latest(make_registry(settings, redis=real_redis, rq_redis=real_redis)).decode()
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset({"namespace": namespace, **labels}.items()))]

    # Then it is up, the healthy agent's lag is exported, and the corrupt one is in state corrupt
    assert value("livesync_up") == 1
    assert value("livesync_agent_lag_changes", agent=GOOD) == 3
    assert value("livesync_agent_state", agent=GOOD, state="active") == 1
    assert value("livesync_agent_state", agent=BAD, state="corrupt") == 1
    assert value("livesync_agent_state", agent=BAD, state="active") == 0


# runs


def test_run_of_a_corrupt_agent_refuses_naming_the_key_and_the_healthy_agent_runs(
    two_agent_manager: SyncManager, damaged: tuple[str, str]
) -> None:
    key, _problem = damaged

    # When both agents are run
    with pytest.raises(AgentNotRunnable) as refused:
        run_agent(two_agent_manager, BAD)
    result = run_agent(two_agent_manager, GOOD)

    # Then the corrupt agent refused with its key named, and the healthy one delivered
    assert key in str(refused.value)
    assert result.pointer_after == 3


# prune


def test_prune_counts_a_corrupt_pointer_as_nothing_read_and_retention_still_applies(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given a bucket older than the retention and a recent one, a healthy agent that read both, a corrupt pointer
    manager = SyncManager(real_redis, namespace, granularity=GRANULARITY)
    assert manager.granularity == GRANULARITY  # the namespace exists before its buckets are written
    keys = manager.keys.partition(0)
    write_bucket(real_redis, keys, OLD, (1, 2, 3))
    write_bucket(real_redis, keys, RECENT, (4, 5))
    manager.add_agent(Agent(id=GOOD, backend="null", update_time=0), start="head")
    manager.add_agent(Agent(id=BAD, backend="null", update_time=0), start="head")
    corrupt(real_redis, manager, "pointer")

    # When the namespace is maintained without retention, then with it
    kept = manager.maintain()
    pruned = manager.maintain(RETENTION)

    # Then nothing the corrupt agent may need went without retention; retention deleted the old bucket
    assert kept == {"pruned_buckets": 0, "rollbacks": [], "gaps": []}
    assert pruned == {"pruned_buckets": 1, "rollbacks": [], "gaps": []}
    assert [bucket for bucket, _first in manager.track().buckets()] == [RECENT]
