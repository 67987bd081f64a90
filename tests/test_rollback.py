"""Rollbacks: a partition rewound or re-created under an agent (invariant 6).

A Redis restarted from an older snapshot, a lost key or a re-created namespace can put
an agent's pointer beyond the head or change the partition's epoch. The run must stop
the agent in state ``rollback`` saying what happened, never skip or report lag 0, and
``agent reset`` brings it back. Versions keep growing across the rewind, so a target
that keeps the highest version per object takes the changes published after it.
"""

from __future__ import annotations

import pytest
import redis
from backends_for_tests import RecordingBackend
from version_target import VersionTarget

from livesync import Publisher
from livesync.errors import AgentNotRunnable
from livesync.manager import Agent, SyncManager
from livesync.runner import run_agent
from livesync.status import agent_status


@pytest.fixture
def manager(real_redis: redis.Redis, namespace: str) -> SyncManager:
    return SyncManager(real_redis, namespace)


@pytest.fixture
def publisher(real_redis: redis.Redis, namespace: str) -> Publisher:
    return Publisher(real_redis, namespace)


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
