"""Prune never blocks Redis for long, listings are paged, publishers ride out BUSY.

Prune deletes in script calls of at most ``prune_chunk`` buckets (one call over 200,000
buckets held Redis for seconds); status and metrics list and size buckets in pages
(one round trip per page, not per bucket); a publisher that meets ``BUSY`` (another
client's long script) retries like after any transient error, and without retries
raises a :class:`LiveSyncError` that says Redis was busy. Buckets are written by hand in
the documented layout (DESIGN.md, "Redis layout"), one per second of granularity 1.
The BUSY tests run a Lua busy loop on a PRIVATE redis-server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.client
import redis.connection
from support.servers import RedisServer, free_port
from support.waiting import wait_for

from livesync import Publisher
from livesync.changes import FLAG_BITS
from livesync.codec import encode_body
from livesync.config import Settings
from livesync.errors import LiveSyncError
from livesync.keys import PartitionKeys
from livesync.manager import Agent, SyncManager
from livesync.runner import run_with_settings
from livesync.status import partition_status
from livesync.track import Track

CREATED = FLAG_BITS["created"]


def fill_buckets(client: Any, keys: PartitionKeys, count: int, *, first_bucket: int = 1_000_000) -> int:
    """Write ``count`` one-change buckets (ids ``first_bucket``...), seqs 1..count; return the head."""
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        seq, bucket = index + 1, first_bucket + index
        member = f"{seq}:{bucket * 1000}:".encode() + encode_body([("event", index, CREATED)])
        pipe.zadd(keys.bucket(bucket), {member: seq})
        pipe.zadd(keys.buckets, {str(bucket): seq})
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.set(keys.seq, count)
    pipe.execute()
    return count


@dataclass
class Traffic:
    """What this process sent to Redis: round trips, and every command's arguments."""

    round_trips: int = 0
    commands: list[tuple[Any, ...]] = field(default_factory=list)

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for args in self.commands if str(args[0]).upper() == name]


@contextmanager
def traffic(monkeypatch: pytest.MonkeyPatch) -> Iterator[Traffic]:
    """Count round trips (one socket send each) and record commands, pipelined ones too."""
    seen = Traffic()
    send = redis.connection.AbstractConnection.send_packed_command
    execute_command = redis.Redis.execute_command
    execute_pipeline = redis.client.Pipeline.execute

    def counting_send(self: Any, command: Any, check_health: bool = True) -> Any:
        seen.round_trips += 1
        return send(self, command, check_health)

    def recording_command(self: Any, *args: Any, **options: Any) -> Any:
        seen.commands.append(args)
        return execute_command(self, *args, **options)

    def recording_pipeline(self: Any, raise_on_error: bool = True) -> Any:
        seen.commands.extend(command[0] for command in self.command_stack)
        return execute_pipeline(self, raise_on_error)

    with monkeypatch.context() as patch:
        patch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting_send)
        patch.setattr(redis.Redis, "execute_command", recording_command)
        patch.setattr(redis.client.Pipeline, "execute", recording_pipeline)
        yield seen


def prune_calls(seen: Traffic, track: Track) -> list[int]:
    """Bucket keys passed to each prune script call (EVALSHA numkeys minus the 6 fixed keys)."""
    sha = track.scripts.prune.sha
    return [int(args[2]) - 6 for args in seen.named("EVALSHA") if args[1] == sha]


@pytest.fixture
def chunk_track(real_redis: redis.Redis, keys: PartitionKeys) -> Track:
    return Track(real_redis, keys, 1)


# --- prune in chunks -------------------------------------------------------------------------


def test_prune_deletes_every_read_bucket_in_calls_of_at_most_chunk_buckets(
    chunk_track: Track, real_redis: redis.Redis, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 1,200 buckets every pointer has read
    head = fill_buckets(real_redis, keys, 1200)
    chunk_track.add_pointer("a", head)
    # When the track is pruned in chunks of 500
    with traffic(monkeypatch) as seen:
        deleted = chunk_track.prune(chunk=500)
    # Then every bucket is gone, in three script calls of at most 500 buckets
    assert deleted == 1200
    assert prune_calls(seen, chunk_track) == [500, 500, 200]
    assert real_redis.zcard(keys.buckets) == 0
    assert not real_redis.exists(keys.bucket(1_000_000), keys.bucket(1_001_199))
    assert chunk_track.pruned_upto() == head and chunk_track.head() == head


def test_chunked_prune_stops_at_the_first_bucket_a_pointer_still_needs(
    chunk_track: Track, real_redis: redis.Redis, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 1,200 buckets of which the slowest agent read the first 730
    fill_buckets(real_redis, keys, 1200)
    chunk_track.add_pointer("fast", 1200)
    chunk_track.add_pointer("slow", 730)
    # When the track is pruned in chunks of 100
    with traffic(monkeypatch) as seen:
        deleted = chunk_track.prune(chunk=100)
    # Then exactly the 730 read buckets are gone, no call passed more than 100, and seq 731 is readable
    assert deleted == 730
    assert max(prune_calls(seen, chunk_track)) <= 100
    assert chunk_track.first_seq() == 731
    assert chunk_track.pruned_upto() == 730


def test_chunked_prune_with_retention_deletes_only_expired_buckets(
    chunk_track: Track, real_redis: redis.Redis, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 300 unread buckets from two hours ago and 5 from now
    now = int(time.time())
    fill_buckets(real_redis, keys, 300, first_bucket=now - 7200)
    pipe = real_redis.pipeline(transaction=False)
    for index in range(5):
        seq = 301 + index
        member = f"{seq}:{now * 1000}:".encode() + encode_body([("event", seq, CREATED)])
        pipe.zadd(keys.bucket(now + index), {member: seq})
        pipe.zadd(keys.buckets, {str(now + index): seq})
    pipe.set(keys.seq, 305)
    pipe.execute()
    chunk_track.add_pointer("a", 0)
    # When pruned with a one-hour retention in chunks of 64
    with traffic(monkeypatch) as seen:
        deleted = chunk_track.prune(3600, chunk=64)
    # Then the old buckets are gone in calls of at most 64, the recent ones stay
    assert deleted == 300
    assert max(prune_calls(seen, chunk_track)) <= 64
    assert chunk_track.first_seq() == 301


def test_runs_prune_in_chunks_of_the_prune_chunk_setting(
    real_redis: redis.Redis, namespace: str, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an agent that read all of 25 buckets, with LIVESYNC_PRUNE_CHUNK=10
    manager = SyncManager(real_redis, namespace)
    manager.add_agent(Agent(id="a", backend="null"), start="head")
    fill_buckets(real_redis, keys, 25)
    manager.track(0).move_pointer("a", 25)
    settings = Settings(namespace=namespace, prune_chunk=10)
    track = manager.track(0)
    # When the agent runs
    with traffic(monkeypatch) as seen:
        result = run_with_settings(manager, "a", 0, settings)
    # Then its prune deleted everything in calls of at most 10 buckets
    assert result.pruned_buckets == 25
    assert max(prune_calls(seen, track)) == 10


def test_maintain_prunes_in_chunks(
    real_redis: redis.Redis, namespace: str, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an agent that read all of 25 buckets
    manager = SyncManager(real_redis, namespace)
    manager.add_agent(Agent(id="a", backend="null"), start="head")
    fill_buckets(real_redis, keys, 25)
    track = manager.track(0)
    track.move_pointer("a", 25)
    # When the namespace is maintained with chunks of 7
    with traffic(monkeypatch) as seen:
        outcome = manager.maintain(None, chunk=7)
    # Then everything was pruned in calls of at most 7 buckets
    assert outcome["pruned_buckets"] == 25
    assert max(prune_calls(seen, track)) == 7


def test_prune_deletes_in_chunks_on_fakeredis_too(fake_redis: Any, keys: PartitionKeys) -> None:
    # Given 130 read buckets on the embedded fakeredis
    track = Track(fake_redis, keys, 1)
    fill_buckets(fake_redis, keys, 130)
    track.add_pointer("a", 130)
    # When pruned in chunks of 50, then everything is gone
    assert track.prune(chunk=50) == 130
    assert track.first_seq() is None


# --- listings in pages -------------------------------------------------------------------------


def test_buckets_are_listed_in_pages_not_in_one_reply(
    chunk_track: Track, real_redis: redis.Redis, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 2,500 buckets
    fill_buckets(real_redis, keys, 2500)
    # When they are listed
    with traffic(monkeypatch) as seen:
        buckets = chunk_track.buckets()
    # Then all of them come back, oldest first, in pages of 1,000
    assert [bucket for bucket, _first in buckets] == list(range(1_000_000, 1_002_500))
    assert [first for _bucket, first in buckets] == list(range(1, 2501))
    assert seen.round_trips == 3


def test_memory_usage_costs_a_round_trip_per_page_of_buckets(
    chunk_track: Track, real_redis: redis.Redis, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 2,500 buckets
    fill_buckets(real_redis, keys, 2500)
    expected = sum(
        int(real_redis.memory_usage(key, samples=0) or 0)
        for key in [keys.seq, keys.buckets, *(keys.bucket(1_000_000 + i) for i in range(2500))]
    )
    # When the partition's memory is measured
    with traffic(monkeypatch) as seen:
        memory = chunk_track.memory_usage()
    # Then it is the sum over every key, in a few round trips (two per page of 1,000), not 2,502
    assert memory == expected
    assert seen.round_trips <= 7


def test_partition_status_does_not_cost_a_round_trip_per_bucket(
    chunk_track: Track, real_redis: redis.Redis, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 2,500 buckets
    fill_buckets(real_redis, keys, 2500)
    # When status reads the partition
    with traffic(monkeypatch) as seen:
        data = partition_status(chunk_track)
    # Then it reports them in a bounded number of round trips
    assert (data["head"], data["stored"]) == (2500, 2500)
    assert seen.round_trips <= 15


def test_destroy_deletes_buckets_in_bounded_commands(
    chunk_track: Track, real_redis: redis.Redis, keys: PartitionKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 2,500 buckets and a pointer
    fill_buckets(real_redis, keys, 2500)
    chunk_track.add_pointer("a", 10)
    # When the partition is destroyed
    with traffic(monkeypatch) as seen:
        deleted = chunk_track.destroy()
    # Then every key is gone, and no single command deleted more than a page of keys
    assert deleted == 2500 + 3  # the buckets, their index, the head and the pointers
    assert not list(real_redis.scan_iter(match=keys.pattern))
    deletes = seen.named("DEL") + seen.named("UNLINK")
    assert max(len(args) - 1 for args in deletes) <= 1000


# --- BUSY: another client's long script ------------------------------------------------------------

#: Spins for ARGV[1] ms of server time: the "long script" other clients see as BUSY.
BUSY_LOOP = """
local start = redis.call('TIME')
local begin = tonumber(start[1]) * 1000 + tonumber(start[2]) / 1000
while true do
    local now = redis.call('TIME')
    if tonumber(now[1]) * 1000 + tonumber(now[2]) / 1000 - begin > tonumber(ARGV[1]) then
        return 1
    end
end
"""


@pytest.fixture
def busy_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that answers BUSY after 50 ms of a running script."""
    server = RedisServer(tmp_path, free_port(), extra=["--appendonly", "no", "--busy-reply-threshold", "50"])
    server.start()
    yield server
    server.stop()


@contextmanager
def busy_script(server: RedisServer, milliseconds: int) -> Iterator[threading.Event]:
    """Run the busy loop in a thread; yield once other clients get BUSY; the event is set when it ended."""
    ended = threading.Event()

    def spin() -> None:
        with closing(server.client()) as client:
            client.eval(BUSY_LOOP, 0, milliseconds)
        ended.set()

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()

    def busy() -> bool:
        with closing(server.client()) as probe:
            try:
                probe.get("probe")
            except redis.ResponseError as exc:
                return str(exc).startswith("BUSY")
        return False

    wait_for(busy, 10, "the busy loop to make Redis answer BUSY", interval=0.01)
    try:
        yield ended
    finally:
        thread.join(timeout=30)


def test_publisher_retries_busy_until_the_script_ends(busy_server: RedisServer, namespace: str) -> None:
    # Given a publisher with retries whose namespace exists
    publisher = Publisher.from_url(busy_server.url, namespace=namespace, retries=6, retry_backoff=0.1)
    publisher.emit("event", 1, "created")
    # When another client's script keeps Redis busy for 1.5 s while it emits
    with busy_script(busy_server, 1500) as ended:
        seq = publisher.emit("event", 2, "created")
        # Then the emit succeeded, after the script had ended (it was retried, not refused)
        assert ended.is_set()
    assert seq == 2
    assert publisher.meta.partitions == 1
    publisher.close()


def test_publisher_without_retries_says_redis_was_busy(busy_server: RedisServer, namespace: str) -> None:
    # Given a publisher without retries whose namespace exists
    publisher = Publisher.from_url(busy_server.url, namespace=namespace)
    publisher.emit("event", 1, "created")
    # When another client's script keeps Redis busy while it emits
    with busy_script(busy_server, 1000), pytest.raises(LiveSyncError) as info:
        publisher.emit("event", 2, "created")
    # Then it raises a livesync error saying Redis was busy, not a raw ResponseError
    assert not isinstance(info.value, redis.ResponseError)
    assert "busy" in str(info.value).lower()
    assert busy_server.url in str(info.value)
    publisher.close()


def test_publisher_creation_during_busy_checks_at_first_emit(busy_server: RedisServer, namespace: str) -> None:
    # Given Redis busy with another client's script while a publisher with retries is created
    with busy_script(busy_server, 1000):
        publisher = Publisher.from_url(busy_server.url, namespace=namespace, retries=6, retry_backoff=0.1)
    # Then it was created and publishes once Redis is free
    assert publisher.emit("event", 1, "created") == 1
    publisher.close()
