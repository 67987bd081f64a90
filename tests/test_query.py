"""livesync.query: stored changes of every partition in ]low, high], merged in publish order."""

from __future__ import annotations

import pytest
import redis

from livesync.client import Publisher
from livesync.errors import ConfigurationError
from livesync.manager import Agent, SyncManager
from livesync.query import list_changes


@pytest.fixture
def two_partitions(real_redis: redis.Redis, namespace: str) -> SyncManager:
    """A namespace of two partitions holding ten changes of events 0..9, published in that order."""
    publisher = Publisher(real_redis, namespace, partitions=2)
    for n in range(10):
        publisher.emit("event", n, "created")
    return SyncManager(real_redis, namespace)


def test_list_changes_merges_partitions_in_publish_order(two_partitions: SyncManager) -> None:
    rows, more = list_changes(two_partitions)
    assert [change.id for _partition, change in rows] == list(range(10))
    assert {partition for partition, _change in rows} == {0, 1}
    assert more is False


def test_list_changes_says_when_the_limit_cut_the_list(two_partitions: SyncManager) -> None:
    rows, more = list_changes(two_partitions, limit=4)
    assert [change.id for _partition, change in rows] == [0, 1, 2, 3]
    assert more is True
    assert list_changes(two_partitions, limit=10)[1] is False


def test_list_changes_seq_bounds_apply_in_each_partition(two_partitions: SyncManager) -> None:
    rows, _more = list_changes(two_partitions, ("seq", 1), ("seq", 2))
    assert sorted((partition, change.seq) for partition, change in rows) == [(0, 2), (1, 2)]


def test_list_changes_for_an_agent_skips_what_it_acknowledged_and_its_filtered_types(
    real_redis: redis.Redis, namespace: str
) -> None:
    publisher = Publisher(real_redis, namespace)
    for n in range(4):
        publisher.emit("event", n, "created")
    publisher.emit("note", 9, "created")
    manager = SyncManager(real_redis, namespace)
    agent = manager.add_agent(Agent(id="a", backend="null", exclude_types=["note"]), start=2)
    rows, _more = list_changes(manager, agent=agent)
    assert [change.id for _partition, change in rows] == [2, 3]


def test_list_changes_with_bounds_of_two_kinds_is_a_configuration_error(two_partitions: SyncManager) -> None:
    with pytest.raises(ConfigurationError, match="--from and --to must be of the same kind"):
        list_changes(two_partitions, ("seq", 1), ("bucket", 2))
