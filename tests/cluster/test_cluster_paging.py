"""Chunked prune, paged bucket listings and paged destroy on a real Redis Cluster.

Pipelines of a cluster client go to the node of each key's slot; the bucket keys of a
partition share its hash tag, so every page is one round trip to one master.
"""

from __future__ import annotations

from typing import Any

import pytest
from cluster.conftest import RedisClusterServers

from livesync.changes import FLAG_BITS
from livesync.codec import encode_body
from livesync.keys import PartitionKeys, namespace_keys
from livesync.track import Track

pytestmark = pytest.mark.timeout(60)

CREATED = FLAG_BITS["created"]


def fill(client: Any, keys: PartitionKeys, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        seq, bucket = index + 1, 1_000_000 + index
        pipe.zadd(keys.bucket(bucket), {f"{seq}:{bucket * 1000}:".encode() + encode_body([("e", index, CREATED)]): seq})
        pipe.zadd(keys.buckets, {str(bucket): seq})
    pipe.set(keys.seq, count)
    pipe.execute()


def test_prune_listing_memory_and_destroy_work_in_pages_on_a_cluster(
    redis_cluster: RedisClusterServers, namespace: str
) -> None:
    client = redis_cluster.client()
    keys = namespace_keys(namespace).partition(3)
    track = Track(client, keys, 1)
    # Given 1,200 buckets every pointer read: a chunked prune deletes them all
    fill(client, keys, 1200)
    track.add_pointer("a", 1200)
    assert track.prune(chunk=500) == 1200
    assert track.first_seq() is None
    # Given 1,200 buckets again: they are listed in pages, sized and destroyed
    fill(client, keys, 1200)
    assert len(track.buckets()) == 1200
    assert track.memory_usage() > 1200 * 50
    assert track.destroy() == 1200 + 4  # buckets, index, head, pruned, pointers
    assert track.head() == 0 and track.buckets() == []
    client.close()
