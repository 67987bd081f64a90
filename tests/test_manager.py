"""The sync manager: agent registry, pointers, query, advance, reset (``SyncManager``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from support.backends import RecordingBackend

from livesync import Publisher, deadletters
from livesync.changes import Change
from livesync.errors import (
    AgentBusy,
    AgentExists,
    AgentNotFound,
    ConfigurationError,
    RecordRejected,
    UnknownBackend,
)
from livesync.lock import RunLock
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of
from livesync.records import Record
from livesync.runner import run_agent


def objects(changes: list[Change]) -> list[tuple[str, int | str]]:
    return [(change.type, change.id) for change in changes]


def wait_for_server_ms_after(client: Any, ts_ms: int) -> None:
    """Wait (bounded) until the Redis server's clock is past ``ts_ms``."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        seconds, micros = client.time()
        if seconds * 1000 + micros // 1000 > ts_ms:
            return
        time.sleep(0.001)
    raise AssertionError(f"server clock did not pass {ts_ms} ms")


# Registry


def test_add_agent_stores_it_and_get_agent_returns_it(any_redis: Any, namespace: str) -> None:
    # Given a manager on an empty namespace
    manager = SyncManager(any_redis, namespace)

    # When an agent is added
    manager.add_agent(Agent(id="search", backend="null", name="Search", description="the index", update_time=5))

    # Then it reads back with its fields and a creation time
    agent = manager.get_agent("search")
    assert (agent.id, agent.backend, agent.name, agent.description) == (
        "search",
        "null",
        "Search",
        "the index",
    )
    assert agent.update_time == 5
    assert agent.state == "active"
    assert agent.created_at > 0


def test_list_agents_returns_every_agent_sorted_by_id(any_redis: Any, namespace: str) -> None:
    # Given three agents added out of order
    manager = SyncManager(any_redis, namespace)
    for agent_id in ("zeta", "alpha", "mid"):
        manager.add_agent(Agent(id=agent_id, backend="null"))

    # When they are listed
    listed = manager.list_agents()

    # Then every one comes back, sorted by id
    assert [agent.id for agent in listed] == ["alpha", "mid", "zeta"]


def test_removed_agent_is_gone_from_get_and_list(manager: SyncManager) -> None:
    # Given two agents
    manager.add_agent(Agent(id="a", backend="null"))
    manager.add_agent(Agent(id="b", backend="null"))

    # When one is removed
    manager.remove_agent("a")

    # Then it is unknown and only the other is listed
    with pytest.raises(AgentNotFound):
        manager.get_agent("a")
    assert [agent.id for agent in manager.list_agents()] == ["b"]


def test_adding_an_agent_twice_raises_agent_exists(manager: SyncManager) -> None:
    # Given an agent
    manager.add_agent(Agent(id="search", backend="null", name="first"))

    # When an agent with the same id is added again
    with pytest.raises(AgentExists, match="search"):
        manager.add_agent(Agent(id="search", backend="debug", name="second"))

    # Then the first one is untouched
    agent = manager.get_agent("search")
    assert (agent.backend, agent.name) == ("null", "first")


@pytest.mark.parametrize(
    "operation",
    [
        lambda m: m.get_agent("ghost"),
        lambda m: m.remove_agent("ghost"),
        lambda m: m.set_state("ghost", "paused"),
        lambda m: m.pointers("ghost"),
        lambda m: m.query("ghost"),
        lambda m: m.advance("ghost", 0),
        lambda m: m.reset_agent("ghost"),
    ],
    ids=["get", "remove", "set_state", "pointers", "query", "advance", "reset_agent"],
)
def test_unknown_agent_raises_agent_not_found(manager: SyncManager, operation: Any) -> None:
    # Given a namespace without the agent 'ghost'
    manager.add_agent(Agent(id="real", backend="null"))

    # When / Then any operation on it raises AgentNotFound naming it
    with pytest.raises(AgentNotFound, match="ghost"):
        operation(manager)


def test_unknown_backend_raises_unknown_backend_and_registers_nothing(manager: SyncManager) -> None:
    # Given a backend name nothing is registered under
    agent = Agent(id="search", backend="no-such-backend")

    # When the agent is added
    with pytest.raises(UnknownBackend, match="no-such-backend"):
        manager.add_agent(agent)

    # Then no agent was registered
    assert manager.list_agents() == []


def test_jsonl_agent_without_path_raises_configuration_error_naming_path(manager: SyncManager) -> None:
    # Given a jsonl agent without its required 'path' option
    agent = Agent(id="archive", backend="jsonl", options={})

    # When it is added
    with pytest.raises(ConfigurationError, match="'path'"):
        manager.add_agent(agent)

    # Then no agent was registered
    assert manager.list_agents() == []


# Start positions


def test_agent_started_at_head_sees_only_later_changes(manager: SyncManager, publisher: Publisher) -> None:
    # Given three published changes
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])

    # When an agent is added at the head (the default) and one more change is published
    manager.add_agent(Agent(id="search", backend="null"))
    later = publisher.emit("event", 99, "title_changed")

    # Then its pointer is the old head and only the later change is pending
    assert manager.pointers("search") == [3]
    assert [change.seq for change in manager.query("search")] == [later]


def test_agent_started_at_tail_sees_everything_stored(manager: SyncManager, publisher: Publisher) -> None:
    # Given three published changes
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])

    # When an agent is added at the tail
    manager.add_agent(Agent(id="search", backend="null"), start="tail")

    # Then every stored change is pending
    assert manager.pointers("search") == [0]
    assert objects(list(manager.query("search"))) == [("event", 0), ("event", 1), ("event", 2)]


def test_agent_started_at_seq_sees_changes_after_it(manager: SyncManager, publisher: Publisher) -> None:
    # Given five published changes
    publisher.emit_many([("event", i, ["created"]) for i in range(5)])

    # When an agent is added at seq 2
    manager.add_agent(Agent(id="search", backend="null"), start=2)

    # Then its pointer is 2 and seqs 3..5 are pending
    assert manager.pointers("search") == [2]
    assert [change.seq for change in manager.query("search")] == [3, 4, 5]


@pytest.mark.parametrize("start", [-1, 6])
def test_start_seq_outside_zero_to_head_raises_configuration_error(
    manager: SyncManager, publisher: Publisher, start: int
) -> None:
    # Given a head of 5
    publisher.emit_many([("event", i, ["created"]) for i in range(5)])

    # When an agent is added at a seq outside 0..5
    with pytest.raises(ConfigurationError, match=f"seq {start}"):
        manager.add_agent(Agent(id="search", backend="null"), start=start)

    # Then no agent was registered
    assert manager.list_agents() == []


def test_start_seq_is_refused_with_several_partitions(real_redis: redis.Redis, namespace: str) -> None:
    # Given a namespace with two partitions
    manager = SyncManager(real_redis, namespace, partitions=2)
    Publisher(real_redis, namespace, partitions=2).emit_many([("event", i, ["created"]) for i in range(10)])

    # When an agent is added at a seq
    with pytest.raises(ConfigurationError, match="one partition"):
        manager.add_agent(Agent(id="search", backend="null"), start=1)

    # Then no agent was registered
    assert manager.list_agents() == []


# Removal


def test_remove_agent_deletes_its_pointers_locks_and_dead_letters(real_redis: redis.Redis, namespace: str) -> None:
    # Given an agent on two partitions with a lock and a dead letter in each
    manager = SyncManager(real_redis, namespace, partitions=2)
    manager.add_agent(Agent(id="search", backend="null"))
    manager.add_agent(Agent(id="other", backend="null"))
    for track in manager.tracks():
        RunLock(track, "search", ttl=30, renew=False).acquire()
        record = Record("event", track.partition, "updated", ("moved",), 1, 1)
        deadletters.add(manager, "search", track.partition, RecordRejected.one(record, "bad"))
    assert deadletters.count(manager, "search") == 2

    # When the agent is removed
    manager.remove_agent("search")

    # Then none of its keys remain, and the other agent keeps its pointers
    for track in manager.tracks():
        assert track.pointer("search") is None
        assert track.pointer("other") == 0
        assert not real_redis.exists(track.keys.lock("search"))
        assert not real_redis.exists(track.keys.dlq("search"))
    assert not real_redis.exists(manager.keys.agent("search"))
    assert not real_redis.sismember(manager.keys.agents, "search")


# State and filter


def test_set_state_pauses_and_resumes_an_agent(manager: SyncManager) -> None:
    # Given an active agent
    manager.add_agent(Agent(id="search", backend="null"))

    # When it is paused, then resumed
    paused = manager.set_state("search", "paused")
    stored_paused = manager.get_agent("search").state
    resumed = manager.set_state("search", "active")

    # Then the stored state follows
    assert (paused.state, stored_paused) == ("paused", "paused")
    assert (resumed.state, manager.get_agent("search").state) == ("active", "active")


def test_include_types_query_returns_only_included_types(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent that only wants events and contributions
    manager.add_agent(Agent(id="search", backend="null", include_types=["event", "contribution"]))

    # When changes of several types are published
    publisher.emit_many(
        [
            ("event", 1, ["created"]),
            ("category", 2, ["moved"]),
            ("contribution", "c-3", ["title_changed"]),
            ("attachment", 4, ["deleted"]),
        ]
    )

    # Then its query yields only the included types (objectExcluded)
    assert objects(list(manager.query("search"))) == [("event", 1), ("contribution", "c-3")]


def test_exclude_types_query_skips_excluded_types(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent that ignores categories
    manager.add_agent(Agent(id="search", backend="null", exclude_types=["category"]))

    # When changes of several types are published
    publisher.emit_many([("event", 1, ["created"]), ("category", 2, ["moved"]), ("contribution", 3, ["title_changed"])])

    # Then its query yields everything but categories
    assert objects(list(manager.query("search"))) == [("event", 1), ("contribution", 3)]


# Query and pointers


def test_query_stops_at_till(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent with ten pending changes
    manager.add_agent(Agent(id="search", backend="null"))
    publisher.emit_many([("event", i, ["data_changed"]) for i in range(10)])

    # When it queries up to seq 4
    changes = list(manager.query("search", till=4))

    # Then it gets seqs 1..4 only
    assert [change.seq for change in changes] == [1, 2, 3, 4]


def test_advance_moves_the_pointer(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent with ten pending changes
    manager.add_agent(Agent(id="search", backend="null"))
    publisher.emit_many([("event", i, ["data_changed"]) for i in range(10)])

    # When its pointer is advanced to 7
    manager.advance("search", 7)

    # Then the pointer is 7 and only 8..10 are pending
    assert manager.pointers("search") == [7]
    assert [change.seq for change in manager.query("search")] == [8, 9, 10]


def test_advance_refuses_while_a_run_lock_is_held(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent whose run lock another runner holds
    manager.add_agent(Agent(id="search", backend="null"))
    publisher.emit_many([("event", i, ["data_changed"]) for i in range(10)])
    RunLock(manager.track(0), "search", ttl=30, renew=False).acquire()

    # When an operator advances it
    with pytest.raises(AgentBusy):
        manager.advance("search", 7)

    # Then the pointer did not move
    assert manager.pointers("search") == [0]


# Reset of one agent


@pytest.fixture
def agent_with_history(manager: SyncManager, publisher: Publisher) -> SyncManager:
    """An agent at seq 4 of a track holding seqs 1..10."""
    publisher.emit_many([("event", i, ["data_changed"]) for i in range(10)])
    manager.add_agent(Agent(id="search", backend="null"), start=4)
    return manager


def test_reset_agent_to_head(agent_with_history: SyncManager) -> None:
    # When the agent is reset to the head
    pointers = agent_with_history.reset_agent("search", "head")

    # Then nothing is pending
    assert pointers == agent_with_history.pointers("search") == [10]
    assert list(agent_with_history.query("search")) == []


def test_reset_agent_to_tail(agent_with_history: SyncManager) -> None:
    # When the agent is reset to the tail
    pointers = agent_with_history.reset_agent("search", "tail")

    # Then every stored change is pending again
    assert pointers == agent_with_history.pointers("search") == [0]
    assert len(list(agent_with_history.query("search"))) == 10


def test_reset_agent_to_seq(agent_with_history: SyncManager) -> None:
    # When the agent is reset to seq 8
    pointers = agent_with_history.reset_agent("search", 8)

    # Then seqs 9 and 10 are pending
    assert pointers == agent_with_history.pointers("search") == [8]
    assert [change.seq for change in agent_with_history.query("search")] == [9, 10]


def test_reset_agent_to_time_lands_on_last_change_at_or_before_it(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher
) -> None:
    # Given three changes, then (a millisecond later on the server) three more
    publisher.emit_many([("event", i, ["data_changed"]) for i in range(3)])
    first_ts = manager.track(0).change_at(3).ts  # type: ignore[union-attr]
    wait_for_server_ms_after(real_redis, first_ts)
    publisher.emit_many([("event", i, ["title_changed"]) for i in range(3)])
    manager.add_agent(Agent(id="search", backend="null"))

    # When the agent is reset to the time of the first three
    pointers = manager.reset_agent("search", datetime.fromtimestamp(first_ts / 1000, tz=UTC))

    # Then its pointer is the last of them and the later three are pending
    assert pointers == [3]
    assert [change.seq for change in manager.query("search")] == [4, 5, 6]


def test_reset_agent_to_a_time_before_everything_goes_to_the_tail(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent at the head of three changes
    publisher.emit_many([("event", i, ["data_changed"]) for i in range(3)])
    manager.add_agent(Agent(id="search", backend="null"))

    # When it is reset to a time long before them
    pointers = manager.reset_agent("search", datetime(2000, 1, 1, tzinfo=UTC))

    # Then everything is pending
    assert pointers == [0]


def test_reset_agent_refuses_while_a_run_lock_is_held(real_redis: redis.Redis, namespace: str) -> None:
    # Given an agent on two partitions whose partition-1 run lock another runner holds
    manager = SyncManager(real_redis, namespace, partitions=2)
    Publisher(real_redis, namespace, partitions=2).emit_many([("event", i, ["data_changed"]) for i in range(20)])
    manager.add_agent(Agent(id="search", backend="null"))
    before = manager.pointers("search")
    RunLock(manager.track(1), "search", ttl=30, renew=False).acquire()

    # When the agent is reset to the tail
    with pytest.raises(AgentBusy):
        manager.reset_agent("search", "tail")

    # Then no pointer moved, and the partition-0 lock it had taken is released again
    assert manager.pointers("search") == before
    assert not real_redis.exists(manager.track(0).keys.lock("search"))


def test_reset_agent_clears_a_gap(agent_with_history: SyncManager) -> None:
    # Given an agent marked as having a gap
    agent_with_history.set_state("search", "gap")

    # When it is reset
    agent_with_history.reset_agent("search", "head")

    # Then it is active again
    assert agent_with_history.get_agent("search").state == "active"


# Reset of the namespace


def test_reset_agents_only_keeps_the_track(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent and five stored changes
    publisher.emit_many([("event", i, ["created"]) for i in range(5)])
    manager.add_agent(Agent(id="search", backend="null"), start="tail")

    # When only the agents are reset
    manager.destroy(agents_only=True)

    # Then the agent and its pointer are gone, the changes and head are kept
    assert manager.list_agents() == []
    assert manager.track(0).pointers() == {}
    assert manager.track(0).head() == 5
    assert [change.seq for change in manager.track(0).values()] == [1, 2, 3, 4, 5]


def test_reset_track_only_keeps_agents_and_head_and_moves_pointers_to_head(
    manager: SyncManager, publisher: Publisher
) -> None:
    # Given an agent at seq 3 of five stored changes
    publisher.emit_many([("event", i, ["created"]) for i in range(5)])
    manager.add_agent(Agent(id="search", backend="null"), start=3)

    # When only the track is reset
    manager.destroy(track_only=True)

    # Then the changes are gone, the agent and the head stay, and its pointer is at the
    # head: nothing older is stored, so it is not left "due" for changes that are gone
    assert list(manager.track(0).values()) == []
    assert [agent.id for agent in manager.list_agents()] == ["search"]
    assert manager.pointers("search") == [5]
    assert manager.track(0).head() == 5


def test_changes_published_after_a_track_only_reset_are_delivered(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent that synced five changes, then a track-only reset
    publisher.emit_many([("event", i, ["created"]) for i in range(5)])
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    run_agent(manager, "search", backend=RecordingBackend())
    manager.destroy(track_only=True)

    # When new changes are published and the agent runs
    seqs = publisher.emit_many([("event", 100, ["created"]), ("event", 101, ["title_changed"])])
    backend = RecordingBackend()
    result = run_agent(manager, "search", backend=backend)

    # Then the new changes got seqs past the pointer and were delivered
    assert seqs == [6, 7]
    assert [(record.id, record.seq) for record in backend.records] == [(100, 6), (101, 7)]
    assert result.pointer_after == 7


def test_reset_with_both_only_flags_is_refused(manager: SyncManager) -> None:
    # When both exclusive flags are given
    with pytest.raises(ConfigurationError, match="exclude each other"):
        manager.destroy(agents_only=True, track_only=True)


# Namespace meta


def test_granularity_and_partitions_come_from_the_namespace_meta(any_redis: Any, namespace: str) -> None:
    # Given a namespace created by a publisher with 3 partitions and 5 s buckets
    Publisher(any_redis, namespace, partitions=3, granularity=5).emit("event", 1, "created")

    # When a manager opens it without saying either
    manager = SyncManager(any_redis, namespace)

    # Then it uses the namespace's values
    assert (manager.partitions, manager.granularity) == (3, 5)
    assert len(manager.tracks()) == 3
    assert manager.track(partition_of("event", 1, 3)).head() == 1


def test_manager_asking_for_other_partitions_than_the_namespace_raises(real_redis: redis.Redis, namespace: str) -> None:
    # Given a namespace with 3 partitions
    Publisher(real_redis, namespace, partitions=3).emit("event", 1, "created")

    # When a manager wants 2
    manager = SyncManager(real_redis, namespace, partitions=2)

    # Then using it raises, naming partitions
    with pytest.raises(ConfigurationError, match="partitions"):
        manager.tracks()
