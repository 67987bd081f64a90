"""On a Redis Cluster every master's ``maxmemory-policy`` is checked, one INFO per master.

One evicting master is enough to lose the partitions it serves, so the check reads each
master (replicas follow their master's data) and names the node that may evict. The
policy is changed with CONFIG SET on this module's private cluster only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pytest
from cluster.conftest import RedisClusterServers

from livesync import Publisher
from livesync.errors import EvictingRedis
from livesync.redis_policy import check_eviction, read_policy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[0, 1, 2], ids=["first-master", "second-master", "third-master"])
def evicting_master(redis_cluster: RedisClusterServers, request: pytest.FixtureRequest) -> Iterator[int]:
    """The port of one master (each in turn) switched to allkeys-lru; switched back afterwards."""
    port = redis_cluster.masters()[request.param]
    with closing(redis_cluster.node(port).client()) as node:
        node.config_set("maxmemory-policy", "allkeys-lru")
        try:
            yield port
        finally:
            node.config_set("maxmemory-policy", "noeviction")


def info_calls(redis_cluster: RedisClusterServers) -> dict[int, int]:
    calls = {}
    for port in redis_cluster.masters():
        with closing(redis_cluster.node(port).client()) as node:
            calls[port] = int(node.info("commandstats").get("cmdstat_info", {}).get("calls", 0))
    return calls


def test_every_master_is_read_once(redis_cluster: RedisClusterServers) -> None:
    # Given a cluster whose masters all have noeviction
    client = redis_cluster.client()
    before = info_calls(redis_cluster)
    # When its policy is read (twice: the second comes from the cache)
    policy = read_policy(client)
    read_policy(client)
    after = info_calls(redis_cluster)
    # Then each master answered one INFO (plus the INFO commandstats of this test), and none evicts
    assert {port: after[port] - before[port] for port in before} == {port: 2 for port in before}
    assert len(policy.nodes) == 3 and not policy.evicting
    client.close()


def test_one_evicting_master_is_refused_and_named(redis_cluster: RedisClusterServers, evicting_master: int) -> None:
    # Given a cluster where one master has allkeys-lru
    client = redis_cluster.client()
    # When the cluster is checked, it is refused naming that node
    with pytest.raises(EvictingRedis) as info:
        check_eviction(client, url=redis_cluster.url())
    message = str(info.value)
    assert "maxmemory-policy allkeys-lru" in message
    assert f"127.0.0.1:{evicting_master}" in message
    client.close()


def test_publisher_of_a_cluster_with_an_evicting_master_refuses(
    redis_cluster: RedisClusterServers, evicting_master: int
) -> None:
    # Given a cluster where one master has allkeys-lru
    # When a publisher is created for it, it refuses
    with pytest.raises(EvictingRedis, match="allkeys-lru"):
        Publisher.from_url(redis_cluster.url(), namespace="ns")
