"""Rollbacks: a partition rewound or re-created under an agent (invariant 6).

A Redis restarted from an older snapshot, a lost key or a re-created namespace can put
an agent's pointer beyond the head or change the partition's epoch. The run must stop
the agent in state ``rollback`` saying what happened, never skip or report lag 0, and
``agent reset`` brings it back. Versions keep growing across the rewind, so a target
that keeps the highest version per object takes the changes published after it.
"""

from __future__ import annotations

import json

import pytest
import redis
from click.testing import CliRunner
from support.backends import RecordingBackend
from support.version_target import VersionTarget

from livesync import Publisher, jobs
from livesync.cli import main
from livesync.errors import AgentNotRunnable
from livesync.manager import Agent, SyncManager
from livesync.records import Record
from livesync.runner import run_agent
from livesync.status import agent_status


def lose_partition_data(client: redis.Redis, manager: SyncManager, partition: int = 0) -> None:
    """What a Redis that lost data does to a partition: head, clock and changes gone, pointers kept."""
    track = manager.track(partition)
    doomed = [track.keys.seq, track.keys.clock, track.keys.buckets]
    doomed += [track.keys.bucket(bucket) for bucket, _first in track.buckets()]
    client.delete(*doomed)


def test_pointer_beyond_a_rewound_head_puts_the_agent_in_rollback(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent that read 10 changes, and a head rewound to 4 (Redis restarted from an older state)
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(10)])
    run_agent(manager, "search", backend=RecordingBackend())
    real_redis.set(manager.track(0).keys.seq, 4)

    # When it runs
    with pytest.raises(AgentNotRunnable, match="rollback") as excinfo:
        run_agent(manager, "search", backend=RecordingBackend())

    # Then it is stopped in state rollback with a message saying what happened and how to recover
    agent = manager.get_agent("search")
    assert agent.state == "rollback"
    assert agent.last_error is not None
    for part in ("partition 0", "pointer 10 is beyond head 4", "nothing was skipped", "agent reset"):
        assert part in agent.last_error
        assert part in str(excinfo.value)
    # And the next run refuses before touching anything, while the pointer stays where it was
    with pytest.raises(AgentNotRunnable, match="rollback"):
        run_agent(manager, "search", backend=RecordingBackend())
    assert manager.pointers("search") == [10]


def test_status_shows_a_negative_lag_for_a_pointer_beyond_the_head(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent at seq 10 of a head rewound to 4
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(10)])
    run_agent(manager, "search", backend=RecordingBackend())
    real_redis.set(manager.track(0).keys.seq, 4)
    # When its status is computed (before any run noticed)
    status = agent_status(manager, manager.get_agent("search"))
    # Then the lag is not 0 but -6 (how far the pointer is beyond the head), in total and per partition
    assert status["lag_changes"] == -6
    assert status["partitions"][0]["lag_changes"] == -6
    assert status["partitions"][0]["rewound"] is True


def test_changed_partition_epoch_puts_the_agent_in_rollback(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent, and a partition whose epoch no longer matches the namespace's
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit("event", 1, "created")
    epoch = manager.meta.epoch
    real_redis.set(manager.track(0).keys.epoch, epoch + 5)
    # When it runs
    with pytest.raises(AgentNotRunnable, match="rollback"):
        run_agent(manager, "search", backend=RecordingBackend())
    # Then the agent is in rollback and the message names both epochs
    agent = manager.get_agent("search")
    assert agent.state == "rollback"
    assert agent.last_error is not None
    assert str(epoch + 5) in agent.last_error and str(epoch) in agent.last_error


def test_missing_partition_epoch_with_changes_puts_the_agent_in_rollback(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent, and a partition that holds changes but lost its epoch key
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit("event", 1, "created")
    real_redis.delete(manager.track(0).keys.epoch)
    # When it runs
    with pytest.raises(AgentNotRunnable, match="rollback"):
        run_agent(manager, "search", backend=RecordingBackend())
    # Then the agent is in rollback, saying the epoch is missing
    last_error = manager.get_agent("search").last_error
    assert last_error is not None and "no epoch" in last_error


def test_reset_clears_rollback_and_the_agent_runs_again(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent in rollback after its head was rewound
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(10)])
    run_agent(manager, "search", backend=RecordingBackend())
    real_redis.set(manager.track(0).keys.seq, 4)
    with pytest.raises(AgentNotRunnable):
        run_agent(manager, "search", backend=RecordingBackend())
    # When the operator resets it to the head
    assert manager.reset_agent("search", "head") == [4]
    # Then it is active again and runs the changes published from then on
    assert manager.get_agent("search").state == "active"
    publisher.emit("event", 99, "created")
    backend = RecordingBackend()
    result = run_agent(manager, "search", backend=backend)
    assert result.pointer_after == 5
    assert [(r.id, r.action) for r in backend.records] == [(99, "created")]


def test_target_keeping_the_highest_version_takes_changes_published_after_a_rollback(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given a target that holds events 0..2, read through seqs 1..3
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    target = VersionTarget()
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])
    run_agent(manager, "search", backend=target)
    assert target.live == {("event", 0), ("event", 1), ("event", 2)}
    old_versions = {key: version for key, (_live, version) in target.state.items()}
    # And a Redis that lost the partition's data (head, clock, changes; meta and epoch kept)
    lose_partition_data(real_redis, manager)
    with pytest.raises(AgentNotRunnable, match="rollback"):
        run_agent(manager, "search", backend=target)
    manager.reset_agent("search", "tail")

    # When event 0 is deleted and event 5 created: their seqs 1 and 2 repeat seqs the target saw
    seqs = publisher.emit_many([("event", 0, ["deleted"]), ("event", 5, ["created"])])
    assert seqs == [1, 2]
    before = len(target.records)
    run_agent(manager, "search", backend=target)

    # Then the target took both: their versions are above every version from before the rewind
    assert target.live == {("event", 1), ("event", 2), ("event", 5)}
    new = target.records[before:]
    assert [(record.id, record.action, record.seq) for record in new] == [(0, "deleted", 1), (5, "created", 2)]
    assert min(record.version for record in new) > max(old_versions.values())


def test_tick_maintenance_does_not_turn_a_rollback_into_a_gap(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent in rollback whose pointer is also below what was pruned
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(10)])
    manager.update_agent("search", state="rollback", last_error="rollback: partition 0 was rewound")
    real_redis.set(manager.track(0).keys.pruned, 5)
    # When the tick marks gaps
    marked = manager.mark_gaps()
    # Then the agent keeps its rollback state and message
    assert marked == []
    agent = manager.get_agent("search")
    assert (agent.state, agent.last_error) == ("rollback", "rollback: partition 0 was rewound")


# --- a rewound head seen by the tick; prune keeps what a rewound partition publishes ------------


def rewound_agent(real_redis: redis.Redis, manager: SyncManager, publisher: Publisher) -> None:
    """One agent that read seqs 1..3, then a head rewound to 1 (Redis restored an older state)."""
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])
    assert run_agent(manager, "search", backend=RecordingBackend()).pointer_after == 3
    real_redis.set(manager.track(0).keys.seq, 1)


def test_tick_maintenance_keeps_changes_published_after_the_head_was_rewound_below_a_pointer(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent at pointer 3 whose head was rewound to 1, and one change published since (seq 2)
    rewound_agent(real_redis, manager, publisher)
    assert publisher.emit("event", 77, "created") == 2
    # When the tick maintains the namespace
    manager.maintain()
    # Then the new change is still stored: a pointer beyond the head has read nothing of it
    change = manager.track(0).change_at(2)
    assert change is not None and change.id == 77


def test_tick_maintenance_marks_an_agent_whose_pointer_is_beyond_the_head_rollback(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent at pointer 3 whose head was rewound to 1 (the scheduler never runs it: pointer >= head)
    manager.add_agent(Agent(id="other", backend="null"), start="head")
    rewound_agent(real_redis, manager, publisher)
    # When the tick maintains the namespace
    outcome = manager.maintain()
    # Then that agent is in rollback with the message a run writes, and the other one is left alone
    assert outcome["rollbacks"] == ["search"]
    agent = manager.get_agent("search")
    assert agent.state == "rollback"
    assert agent.last_error is not None
    for part in ("partition 0", "pointer 3 is beyond head 1", "nothing was skipped", "agent reset search"):
        assert part in agent.last_error
    assert manager.get_agent("other").state == "active"
    # And a run refuses with the same message
    with pytest.raises(AgentNotRunnable, match="pointer 3 is beyond head 1"):
        run_agent(manager, "search", backend=RecordingBackend())


# --- seqs handed out again after the head was set back and overtaken ---------------------------


def test_run_refuses_seqs_handed_out_again_after_the_head_was_set_back_and_overtaken(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent at pointer 3, a head set back to 1, and three publishes since: head 4 > pointer 3
    rewound_agent(real_redis, manager, publisher)
    assert publisher.emit_many([("event", i, ["created"]) for i in (10, 11, 12)]) == [2, 3, 4]
    # When it runs
    backend = RecordingBackend()
    with pytest.raises(AgentNotRunnable, match="rollback") as excinfo:
        run_agent(manager, "search", backend=backend)
    # Then it is stopped in rollback, nothing was uploaded, and the pointer stayed (seqs 2 and 3 not skipped)
    agent = manager.get_agent("search")
    assert agent.state == "rollback"
    assert agent.last_error is not None
    for part in ("seqs were handed out again", "the change at seq 3 is not the one this agent acknowledged"):
        assert part in agent.last_error
        assert part in str(excinfo.value)
    assert backend.records == []
    assert manager.pointers("search") == [3]


def test_run_after_a_reset_skips_the_acknowledged_version_check(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given the agent stopped because seqs 2..4 were handed out again
    rewound_agent(real_redis, manager, publisher)
    publisher.emit_many([("event", i, ["created"]) for i in (10, 11, 12)])
    with pytest.raises(AgentNotRunnable):
        run_agent(manager, "search", backend=RecordingBackend())
    # When the operator resets it to seq 1 (an operator's pointer has no acknowledged version)
    assert manager.reset_agent("search", 1) == [1]
    # Then it runs the new changes 2..4
    backend = RecordingBackend()
    assert run_agent(manager, "search", backend=backend).pointer_after == 4
    assert sorted(record.id for record in backend.records) == [10, 11, 12]


def test_runs_without_a_rewind_pass_the_acknowledged_version_check(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent that acknowledged seq 3
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])
    run_agent(manager, "search", backend=RecordingBackend())
    # When more is published and it runs again
    publisher.emit("event", 9, "moved")
    result = run_agent(manager, "search", backend=RecordingBackend())
    # Then it goes on as usual
    assert (result.pointer_before, result.pointer_after) == (3, 4)
    assert manager.get_agent("search").state == "active"


# --- a record's version is never forgotten ---------------------------------------------------


def test_a_record_without_a_version_cannot_be_built() -> None:
    # When a record is built without its version, it is refused
    with pytest.raises(TypeError, match="version"):
        Record("event", 1, "created", ("created",), 1)  # type: ignore[call-arg]


def test_livesync_tick_reports_and_status_shows_an_agent_beyond_a_rewound_head(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher, redis_url: str, namespace: str
) -> None:
    # Given an agent at pointer 3 whose head was rewound to 1
    rewound_agent(real_redis, manager, publisher)
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": f"q-{namespace}"}
    try:
        # When the operator ticks
        tick = CliRunner().invoke(main, ["tick", "--json"], env=env)
        # Then the tick names it, enqueues nothing for it, and status shows it in rollback
        assert tick.exit_code == 0, tick.output
        data = json.loads(tick.stdout)
        assert (data["rollbacks"], data["enqueued"]) == (["search"], [])
        status = CliRunner().invoke(main, ["status", "--json"], env=env)
        assert status.exit_code == 0, status.output
        (row,) = [agent for agent in json.loads(status.stdout)["agents"] if agent["id"] == "search"]
        assert row["state"] == "rollback"
    finally:
        jobs.clear_configuration()
        real_redis.srem("rq:queues", f"rq:queue:q-{namespace}")
