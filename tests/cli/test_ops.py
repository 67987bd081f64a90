"""``livesync status``, ``tick`` and ``worker`` (livesync.cli.ops)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from livesync import jobs

from .helpers import Invoke, as_json, jsonl, line, ok

# status


def test_status_json_reports_partitions_agents_and_queue(populated: Invoke, namespace: str) -> None:
    # Given three changes, agent "a" that ran over them, agent "b" that did not, then one more change
    ok(populated("agent", "add", "b", "--backend", "null", "--start", "tail"))
    ok(populated("agent", "run", "a"))
    ok(populated("publish", "event", "4", "created"))
    # When status runs with --json
    data = as_json(populated("status", "--json"))
    # Then it reports each partition's head and stored changes
    assert data["namespace"] == namespace
    [partition] = data["partitions"]
    assert (partition["partition"], partition["head"], partition["stored"]) == (0, 4, 4)
    # And per agent its state, pointers, lag, last run, last error and dead letters
    agents = {agent["id"]: agent for agent in data["agents"]}
    assert set(agents) == {"a", "b"}
    a, b = agents["a"], agents["b"]
    assert (a["state"], a["pointers"], a["lag_changes"], a["last_error"], a["dead_letters"]) == (
        "active",
        [3],
        1,
        None,
        0,
    )
    assert a["last_run_at"] is not None
    assert a["lag_seconds"] is not None and a["lag_seconds"] >= 0
    assert (b["pointers"], b["lag_changes"], b["last_run_at"]) == ([0], 4, None)
    # And the RQ queue of the namespace's settings
    queue = data["queue"]
    assert queue["name"] == f"q-{namespace}"
    assert (queue["queued"], queue["workers"], queue["failed"]) == (0, 0, 0)


def test_status_table_mentions_each_agent(populated: Invoke, namespace: str) -> None:
    # Given agents "a" and "second"
    ok(populated("agent", "add", "second", "--backend", "null"))
    # When status runs as a table
    output = ok(populated("status")).output
    # Then the namespace, each agent and the queue are mentioned
    assert f"namespace {namespace}" in output
    agent_rows = [row.split()[0] for row in output.splitlines() if row.startswith(("a ", "second "))]
    assert agent_rows == ["a", "second"]
    assert f"queue q-{namespace}:" in output


# tick and worker


@pytest.fixture
def jobs_state() -> Iterator[None]:
    """Forget what the worker command configured in ``livesync.jobs``."""
    yield
    jobs.clear_configuration()


def test_tick_enqueues_due_runs_once(cli: Invoke, jobs_state: None, namespace: str, tmp_path: Path) -> None:
    # Given an agent with pending changes that never ran
    ok(cli("publish", "event", "1", "created"))
    ok(cli("agent", "add", "a", "--backend", "jsonl", "--option", f"path={tmp_path / 'a.jsonl'}", "--start", "tail"))
    # When tick runs twice
    first = as_json(cli("tick", "--json"))["enqueued"]
    second = as_json(cli("tick", "--json"))["enqueued"]
    # Then the first enqueues one run and the second nothing, as that run is still queued
    assert len(first) == 1
    assert first[0].startswith(f"livesync-{namespace}-a-0-")
    assert second == []
    assert as_json(cli("status", "--json"))["queue"]["queued"] == 1


def test_worker_burst_runs_the_enqueued_jobs_into_the_jsonl_target(
    cli: Invoke, jobs_state: None, namespace: str, tmp_path: Path
) -> None:
    # Given two changes and a jsonl agent whose run a tick enqueued
    target = tmp_path / "a.jsonl"
    ok(cli("publish", "--file", "-", input=jsonl(line("event", 1, "created"), line("event", 2, "created"))))
    ok(cli("agent", "add", "a", "--backend", "jsonl", "--option", f"path={target}", "--start", "tail"))
    assert len(as_json(cli("tick", "--json"))["enqueued"]) == 1
    # When a burst worker runs
    ok(cli("worker", "--burst", "--simple", "--name", f"w-{namespace}"))
    # Then the target received the records, the pointer is at the head and the queue is empty
    records = [json.loads(text) for text in target.read_text().splitlines()]
    assert [(r["id"], r["action"], r["seq"]) for r in records] == [(1, "created", 1), (2, "created", 2)]
    status = as_json(cli("status", "--json"))
    assert status["agents"][0]["pointers"] == [2]
    assert (status["queue"]["queued"], status["queue"]["failed"]) == (0, 0)
