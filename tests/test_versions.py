"""Versions and epochs (DESIGN.md, "Versions and epochs"; invariant 6).

Every namespace has an epoch fixed when its meta is created and greater for every later
creation; every change carries a version from the server's clock in microseconds, kept
monotonic per partition, that targets can compare for ever.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from livesync import Publisher
from livesync.changes import FLAG_BITS
from livesync.codec import encode_body, member_header
from livesync.errors import ConfigurationError, EpochChanged
from livesync.keys import namespace_keys
from livesync.manager import SyncManager
from livesync.namespace import SCHEMA_VERSION, ensure_meta, read_meta
from livesync.records import Record
from livesync.reduce import reduce
from livesync.track import Track

MOVED = FLAG_BITS["moved"]


def server_us(client: Any) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def test_meta_gets_an_epoch_from_the_server_clock_and_every_partition_a_copy(any_redis: Any, namespace: str) -> None:
    # Given an empty namespace
    before = server_us(any_redis)
    # When a manager creates it with 3 partitions
    meta = SyncManager(any_redis, namespace, partitions=3).meta
    after = server_us(any_redis)
    # Then its epoch is the server's time in microseconds, and each partition holds the same epoch
    assert before <= meta.epoch <= after
    keys = namespace_keys(namespace)
    assert [int(any_redis.get(keys.partition(p).epoch)) for p in range(3)] == [meta.epoch] * 3
    assert read_meta(any_redis, keys) == meta


def test_a_re_created_namespace_has_a_greater_epoch(any_redis: Any, namespace: str) -> None:
    # Given a namespace that was created, used and destroyed
    first = SyncManager(any_redis, namespace, partitions=2)
    old = first.meta.epoch
    Publisher(any_redis, namespace).emit("event", 1, "created")
    first.destroy()
    assert not any(True for _ in any_redis.scan_iter(match=f"livesync:{{{namespace}*"))
    # When it is created again
    new = SyncManager(any_redis, namespace, partitions=2).meta.epoch
    # Then the new epoch is greater than the old one
    assert new > old


def test_concurrent_creators_end_with_one_meta(real_redis: redis.Redis, namespace: str) -> None:
    # Given eight clients that create the same namespace at the same moment
    keys = namespace_keys(namespace)
    barrier = threading.Barrier(8)
    epochs: list[int] = []

    def create() -> None:
        client = redis.Redis(connection_pool=real_redis.connection_pool)
        barrier.wait()
        epochs.append(ensure_meta(client, keys, partitions=2).epoch)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every one of them sees the same meta and epoch, and the partitions hold that epoch
    assert len(epochs) == 8 and len(set(epochs)) == 1
    assert [int(real_redis.get(keys.partition(p).epoch) or 0) for p in range(2)] == epochs[:2]


def test_changes_carry_versions_from_the_server_clock_strictly_increasing(any_redis: Any, namespace: str) -> None:
    # Given a publisher of a one-partition namespace
    publisher = Publisher(any_redis, namespace)
    before = server_us(any_redis)
    # When it publishes a batch of three and then a single change
    publisher.emit_many([("event", i, ["moved"]) for i in range(3)])
    publisher.emit("event", 9, "moved")
    after = server_us(any_redis)
    # Then the versions are server microseconds, strictly increasing, consecutive within the batch
    changes = list(SyncManager(any_redis, namespace).track(0).values())
    versions = [change.version for change in changes]
    assert before <= versions[0] and versions[-1] <= after + 4
    assert versions[1:3] == [versions[0] + 1, versions[0] + 2]
    assert versions[3] > versions[2]
    # And ts is the member's version in milliseconds
    assert [change.ts for change in changes] == [versions[0] // 1000] * 3 + [versions[3] // 1000]


def test_versions_never_fall_below_the_last_one_handed_out(any_redis: Any, namespace: str) -> None:
    # Given a partition whose clock is an hour ahead of the server (a clock that went back)
    publisher = Publisher(any_redis, namespace)
    publisher.emit("event", 1, "created")
    keys = namespace_keys(namespace).partition(0)
    ahead = server_us(any_redis) + 3_600_000_000
    any_redis.set(keys.clock, ahead)
    # When two more changes are published
    publisher.emit_many([("event", 1, ["moved"]), ("event", 2, ["moved"])])
    # Then they get the versions right after the clock, and the clock moves to the last one
    changes = list(SyncManager(any_redis, namespace).track(0).values())
    assert [change.version for change in changes[1:]] == [ahead + 1, ahead + 2]
    assert int(any_redis.get(keys.clock)) == ahead + 2


def test_member_header_holds_the_first_seq_and_the_first_version(any_redis: Any, namespace: str) -> None:
    # Given a published batch of two changes
    publisher = Publisher(any_redis, namespace)
    publisher.emit_many([("event", 1, ["moved"]), ("event", 2, ["moved"])])
    track = SyncManager(any_redis, namespace).track(0)
    [(bucket, _first)] = track.buckets()
    # When the raw member is read
    [raw] = any_redis.zrange(track.keys.bucket(bucket), 0, -1)
    # Then its header is "<first seq>:<first version>:" and the clock holds the last version
    seq, version, _offset = member_header(raw)
    assert seq == 1
    assert version == int(any_redis.get(track.keys.clock)) - 1
    assert raw.startswith(f"1:{version}:".encode())


def test_publish_with_a_stale_epoch_writes_nothing(any_redis: Any, namespace: str) -> None:
    # Given a namespace and a track that believes in another epoch
    manager = SyncManager(any_redis, namespace)
    epoch = manager.meta.epoch
    stale = Track(any_redis, manager.keys.partition(0), manager.granularity, epoch=epoch - 1)
    # When it publishes
    with pytest.raises(EpochChanged, match=str(epoch)):
        stale.publish([(1, encode_body([("event", 1, MOVED)]))])
    # Then nothing was written
    track = manager.track(0)
    assert track.head() == 0 and track.buckets() == []
    assert any_redis.get(track.keys.clock) is None


def test_namespace_of_an_older_schema_is_refused_with_a_clear_message(any_redis: Any, namespace: str) -> None:
    # Given a namespace written by livesync before versions (schema 1, no epoch)
    keys = namespace_keys(namespace)
    any_redis.hset(keys.meta, mapping={"granularity": 60, "partitions": 1, "schema": 1, "created_at": time.time()})
    # When a manager opens it
    with pytest.raises(ConfigurationError, match=f"schema 1.*{SCHEMA_VERSION}") as excinfo:
        _ = SyncManager(any_redis, namespace).meta
    # Then the message says what to do
    assert "re-create" in str(excinfo.value) or "destroy" in str(excinfo.value)


def test_record_carries_the_version_of_its_highest_seq_change(any_redis: Any, namespace: str) -> None:
    # Given two changes of one object
    publisher = Publisher(any_redis, namespace)
    publisher.emit("event", 1, "created")
    publisher.emit("event", 1, "title_changed")
    changes = list(SyncManager(any_redis, namespace).track(0).values())
    # When they are reduced
    [record] = reduce(changes)
    # Then the record carries the version of the last one, and its dict form keeps it
    assert record.version == changes[-1].version
    assert record.to_dict()["version"] == record.version
    assert Record.from_dict(record.to_dict()) == record


def test_a_partition_that_never_held_a_change_gets_its_missing_epoch_at_first_publish(
    any_redis: Any, namespace: str
) -> None:
    # Given a namespace whose creator stopped before copying the epoch into partition 0
    meta = SyncManager(any_redis, namespace).meta
    keys = namespace_keys(namespace).partition(0)
    any_redis.delete(keys.epoch)
    # When a publisher emits
    seq = Publisher(any_redis, namespace).emit("event", 1, "created")
    # Then the partition took the namespace's epoch and the change is stored
    assert seq == 1
    assert int(any_redis.get(keys.epoch)) == meta.epoch
