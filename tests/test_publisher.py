"""The publisher client: emit, emit_many, collect, namespace checks, and invariants 1 and 5.

Invariant 1: a publish call is atomic and server-ordered (consecutive seqs, unique
members, server time, every seq <= head readable). Invariant 5: bad input raises
``InvalidChange`` naming the field before Redis is touched, so nothing of the batch lands.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import livesync.track as track_module
from livesync import Publisher
from livesync.changes import FLAG_BITS, Change
from livesync.codec import MAX_RUN
from livesync.errors import ConfigurationError, InvalidChange, RedisUnavailable
from livesync.keys import namespace_keys
from livesync.namespace import partition_of
from livesync.track import Track

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def any_publisher(any_redis: Any, namespace: str) -> Publisher:
    """A publisher of the test's namespace (one partition, 60 s buckets)."""
    return Publisher(any_redis, namespace, granularity=60)


def track_of(publisher: Publisher, partition: int = 0) -> Track:
    """A track reading one partition of the publisher's namespace."""
    keys = namespace_keys(publisher.namespace).partition(partition)
    return Track(publisher.redis, keys, publisher.meta.granularity)


def mask(*flags: str) -> int:
    value = 0
    for name in flags:
        value |= FLAG_BITS[name]
    return value


def stored(publisher: Publisher, partition: int = 0) -> list[tuple[int, str, object, int]]:
    """Every stored change of a partition as ``(seq, type, id, flags)``."""
    return [(c.seq, c.type, c.id, c.flags) for c in track_of(publisher, partition).values()]


def snapshot(redis: Any, namespace: str) -> dict[bytes, object]:
    """Every key of the namespace with its full value, to prove nothing was written."""
    state: dict[bytes, object] = {}
    for key in redis.scan_iter(match=f"livesync:{{{namespace}*"):
        kind = redis.type(key)
        if kind == b"string":
            state[key] = redis.get(key)
        elif kind == b"hash":
            state[key] = redis.hgetall(key)
        elif kind == b"zset":
            state[key] = redis.zrange(key, 0, -1, withscores=True)
        elif kind == b"set":
            state[key] = redis.smembers(key)
        else:
            state[key] = redis.lrange(key, 0, -1)
    return state


# --- emit and emit_many -------------------------------------------------------------------


def test_emit_returns_consecutive_seqs(any_publisher: Publisher) -> None:
    # Given an empty namespace
    # When three changes are emitted one by one
    seqs = [
        any_publisher.emit("event", 42, "created"),
        any_publisher.emit("event", 42, "title_changed"),
        any_publisher.emit("contribution", "c-7", "deleted"),
    ]
    # Then they get seqs 1, 2, 3 and are stored under them
    assert seqs == [1, 2, 3]
    assert stored(any_publisher) == [
        (1, "event", 42, mask("created")),
        (2, "event", 42, mask("title_changed")),
        (3, "contribution", "c-7", mask("deleted")),
    ]


def test_emit_stores_all_flags_of_one_change(any_publisher: Publisher) -> None:
    # Given an object created with a title
    # When it is emitted with two flags
    seq = any_publisher.emit("event", 42, "created", "title_changed")
    # Then one change carrying both flags is stored
    [change] = track_of(any_publisher).values()
    assert change.seq == seq
    assert change.flag_names == ("created", "title_changed")


def test_emit_many_returns_seqs_in_input_order(any_publisher: Publisher) -> None:
    # Given a namespace where one change was already published
    any_publisher.emit("event", 1, "created")
    items: list[Any] = [("event", 42, ["data_changed"]), ("contribution", "c-7", ["deleted"]), ("event", 7, ["moved"])]
    # When a batch of tuples is emitted
    seqs = any_publisher.emit_many(items)
    # Then the seqs follow the head and match the input order
    assert seqs == [2, 3, 4]
    assert stored(any_publisher)[1:] == [
        (2, "event", 42, mask("data_changed")),
        (3, "contribution", "c-7", mask("deleted")),
        (4, "event", 7, mask("moved")),
    ]


def test_emit_many_accepts_dict_items(any_publisher: Publisher) -> None:
    # Given a batch mixing dict items and tuple items
    items: list[Any] = [
        {"type": "event", "id": 42, "changes": ["created", "title_changed"]},
        ("event", 43, ["moved"]),
        {"changes": ["deleted"], "id": "c-7", "type": "contribution"},
    ]
    # When it is emitted
    seqs = any_publisher.emit_many(items)
    # Then every item is stored as given, in input order
    assert seqs == [1, 2, 3]
    assert stored(any_publisher) == [
        (1, "event", 42, mask("created", "title_changed")),
        (2, "event", 43, mask("moved")),
        (3, "contribution", "c-7", mask("deleted")),
    ]


def test_emit_many_of_nothing_publishes_nothing(any_publisher: Publisher) -> None:
    # Given an empty namespace
    # When an empty batch is emitted
    seqs = any_publisher.emit_many([])
    # Then no seq is handed out
    assert seqs == []
    assert track_of(any_publisher).head() == 0


def test_emit_accepts_boundary_values(any_publisher: Publisher) -> None:
    # Given the largest valid type and ids, and the smallest int id
    items: list[Any] = [
        ("a" * 64, 0, ["created"]),
        ("event", 2**63 - 1, ["created"]),
        ("event", "x" * 256, ["created"]),
        ("e", "ünïcødé/id:1", ["created"]),
    ]
    # When they are emitted
    seqs = any_publisher.emit_many(items)
    # Then all are stored unchanged
    assert seqs == [1, 2, 3, 4]
    assert [(t, i) for _s, t, i, _f in stored(any_publisher)] == [(t, i) for t, i, _f in items]


def test_emit_many_routes_each_object_to_its_partition(any_redis: Any, namespace: str) -> None:
    # Given a namespace with four partitions
    publisher = Publisher(any_redis, namespace, partitions=4)
    items: list[Any] = [("event", i, ["data_changed"]) for i in range(40)]
    items += [("contribution", f"c-{i}", ["moved"]) for i in range(40)]
    # When a batch of 80 objects is emitted
    seqs = publisher.emit_many(items)
    # Then each change is stored, under its returned seq, in partition crc32(type:id) % 4
    by_partition = {p: {(c.type, c.id): c.seq for c in track_of(publisher, p).values()} for p in range(4)}
    for (type_, id_, _flags), seq in zip(items, seqs, strict=True):
        assert by_partition[partition_of(type_, id_, 4)].get((type_, id_)) == seq
    assert sum(len(changes) for changes in by_partition.values()) == len(items)
    assert all(by_partition.values()), "every partition should receive some of 80 objects"


def test_emit_many_keeps_one_head_per_partition(any_redis: Any, namespace: str) -> None:
    # Given a namespace with four partitions
    publisher = Publisher(any_redis, namespace, partitions=4)
    items: list[Any] = [("event", i, ["created"]) for i in range(40)]
    # When a batch is emitted
    seqs = publisher.emit_many(items)
    # Then each partition hands out its own seqs 1..n, and its head is n
    for partition in range(4):
        mine = [seq for (t, i, _f), seq in zip(items, seqs, strict=True) if partition_of(t, i, 4) == partition]
        assert mine == list(range(1, len(mine) + 1))
        assert track_of(publisher, partition).head() == len(mine)


def test_changes_of_one_object_keep_their_order_across_calls(any_redis: Any, namespace: str) -> None:
    # Given a namespace with four partitions
    publisher = Publisher(any_redis, namespace, partitions=4)
    # When one object changes three times, interleaved with other objects
    for step, flag in enumerate(["created", "title_changed", "deleted"]):
        publisher.emit_many([("event", 42, [flag]), ("event", 100 + step, ["moved"])])
    # Then its partition holds its changes in emit order
    partition = partition_of("event", 42, 4)
    mine = [c.flag_names for c in track_of(publisher, partition).values() if c.id == 42]
    assert mine == [("created",), ("title_changed",), ("deleted",)]


# --- collect --------------------------------------------------------------------------------


def test_collect_publishes_once_with_flags_merged_per_object(any_publisher: Publisher) -> None:
    # Given a unit of work touching two objects, one of them three times
    with any_publisher.collect() as unit:
        unit.emit("event", 42, "created")
        unit.emit("contribution", "c-7", "moved")
        unit.emit("event", 42, "title_changed")
        unit.emit("event", 42, "acl_changed", "title_changed")
    # When the block exits cleanly
    # Then one change per object is stored, with the union of its flags, in first-touch order
    assert stored(any_publisher) == [
        (1, "event", 42, mask("created", "title_changed", "acl_changed")),
        (2, "contribution", "c-7", mask("moved")),
    ]
    assert unit.seqs == [1, 2]


def test_collect_writes_one_member_in_one_call(any_publisher: Publisher) -> None:
    # Given a unit of work with three objects
    with any_publisher.collect() as unit:
        for object_id in (1, 2, 3):
            unit.emit("event", object_id, "data_changed")
    # When it exits cleanly
    # Then one publish call stored them: a single packed member holds all three
    track = track_of(any_publisher)
    [(bucket, _first)] = track.buckets()
    assert any_publisher.redis.zcard(track.keys.bucket(bucket)) == 1
    assert track.head() == 3


def test_collect_treats_int_and_str_ids_as_different_objects(any_publisher: Publisher) -> None:
    # Given a unit of work touching event 42 and event "42"
    with any_publisher.collect() as unit:
        unit.emit("event", 42, "created")
        unit.emit("event", "42", "moved")
    # When it exits cleanly
    # Then two changes are stored, each keeping its id type
    assert stored(any_publisher) == [(1, "event", 42, mask("created")), (2, "event", "42", mask("moved"))]


def test_collect_discards_everything_on_exception(any_publisher: Publisher) -> None:
    # Given a namespace with one published change
    any_publisher.emit("event", 1, "created")
    # When a unit of work raises after emitting
    with pytest.raises(RuntimeError, match="boom"), any_publisher.collect() as unit:
        unit.emit("event", 42, "created")
        unit.emit("event", 43, "deleted")
        raise RuntimeError("boom")
    # Then nothing of it was published: the head did not move
    assert track_of(any_publisher).head() == 1
    assert [seq for seq, *_ in stored(any_publisher)] == [1]


def test_collect_splits_appear_then_disappear_into_two_changes_in_order(any_publisher: Publisher) -> None:
    # Given a unit of work that creates, edits and then deletes one object
    with any_publisher.collect() as unit:
        unit.emit("event", 42, "created")
        unit.emit("event", 42, "title_changed")
        unit.emit("event", 42, "deleted")
    # When it exits cleanly
    # Then the appear and the disappear are two changes, in emit order
    assert stored(any_publisher) == [
        (1, "event", 42, mask("created", "title_changed")),
        (2, "event", 42, mask("deleted")),
    ]


def test_collect_splits_disappear_then_appear_into_two_changes_in_order(any_publisher: Publisher) -> None:
    # Given a unit of work that deletes and then undeletes one object
    with any_publisher.collect() as unit:
        unit.emit("event", 42, "deleted")
        unit.emit("event", 42, "undeleted")
        unit.emit("event", 42, "moved")
    # When it exits cleanly
    # Then the later flags merge into the latest change of the object
    assert stored(any_publisher) == [
        (1, "event", 42, mask("deleted")),
        (2, "event", 42, mask("undeleted", "moved")),
    ]


def test_collect_with_nothing_emitted_publishes_nothing(any_publisher: Publisher) -> None:
    # Given an empty unit of work
    with any_publisher.collect() as unit:
        pass
    # When it exits
    # Then no seq was handed out
    assert unit.seqs == []
    assert track_of(any_publisher).head() == 0


def test_collect_rejects_invalid_change_at_emit(any_publisher: Publisher) -> None:
    # Given a unit of work
    # When an invalid change is emitted inside it
    with pytest.raises(InvalidChange, match=r"^type:"), any_publisher.collect() as unit:
        unit.emit("event", 42, "created")
        unit.emit("Event", 43, "created")
    # Then the error names the field and the whole unit is discarded
    assert track_of(any_publisher).head() == 0


# --- connecting and the namespace -------------------------------------------------------------


def test_from_url_publishes_to_that_redis(redis_url: str, real_redis: Any, namespace: str) -> None:
    # Given a publisher built from the URL of the test Redis
    publisher = Publisher.from_url(redis_url, namespace=namespace)
    try:
        # When it emits a change
        seq = publisher.emit("event", 42, "created", "title_changed")
    finally:
        publisher.close()
    # Then another client of that Redis reads it back
    track = Track(real_redis, namespace_keys(namespace).partition(0), 60)
    [change] = track.values()
    assert (change.seq, change.type, change.id) == (seq, "event", 42)
    assert change.flag_names == ("created", "title_changed")


def test_importing_the_publisher_does_not_import_pydantic_rq_or_click() -> None:
    # Given a fresh interpreter
    code = (
        "import json, sys\n"
        "import livesync.client\n"
        "from livesync import Publisher\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'rq', 'click'))\n"
        "print(json.dumps(heavy))\n"
    )
    # When it imports the publisher client
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    # Then none of the heavy dependencies were loaded
    assert json.loads(result.stdout) == []


def test_publisher_refuses_other_partition_count_than_the_namespace(any_redis: Any, namespace: str) -> None:
    # Given a namespace created with two partitions
    Publisher(any_redis, namespace, partitions=2).emit("event", 1, "created")
    before = snapshot(any_redis, namespace)
    # When a publisher asking for three partitions emits
    with pytest.raises(ConfigurationError) as excinfo:
        Publisher(any_redis, namespace, partitions=3).emit("event", 2, "created")
    # Then it is refused with an error naming partitions, and nothing was written
    assert "partitions" in str(excinfo.value)
    assert "2" in str(excinfo.value)
    assert snapshot(any_redis, namespace) == before


def test_publisher_without_partition_count_uses_the_namespace(any_redis: Any, namespace: str) -> None:
    # Given a namespace created with two partitions
    Publisher(any_redis, namespace, partitions=2).emit("event", 1, "created")
    # When a publisher that does not say how many partitions it wants connects
    publisher = Publisher(any_redis, namespace)
    # Then it uses the namespace's two partitions
    assert publisher.meta.partitions == 2


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://:hunter2@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        ("redis://alice:hunter2@127.0.0.1:1/0", "redis://alice:***@127.0.0.1:1/0"),
        (
            "unix:///nonexistent/livesync.sock?password=hunter2",
            "unix:///nonexistent/livesync.sock?password=***",
        ),
    ],
)
def test_unreachable_redis_raises_redis_unavailable_without_the_password(url: str, where: str) -> None:
    # Given a publisher of a Redis that does not answer, with a password in its URL
    publisher = Publisher.from_url(url, namespace="demo")
    # When it emits
    with pytest.raises(RedisUnavailable) as excinfo:
        publisher.emit("event", 42, "created")
    # Then the error names the masked URL but not the password
    message = str(excinfo.value)
    assert "hunter2" not in message
    assert "hunter2" not in repr(excinfo.value)
    assert where in message
    assert isinstance(excinfo.value, ConnectionError)


def test_publisher_refuses_other_granularity_than_the_namespace(any_redis: Any, namespace: str) -> None:
    # Given a namespace created with 60 s buckets
    Publisher(any_redis, namespace, granularity=60).emit("event", 1, "created")
    before = snapshot(any_redis, namespace)
    # When a publisher asking for 30 s buckets emits
    with pytest.raises(ConfigurationError, match=r"^granularity:"):
        Publisher(any_redis, namespace, granularity=30).emit("event", 2, "created")
    # Then nothing was written
    assert snapshot(any_redis, namespace) == before


# --- invariant 5: bad input never half-lands ---------------------------------------------------

BAD_CHANGES: dict[str, tuple[Any, Any, list[Any], str]] = {
    "type not str": (5, 1, ["created"], "type"),
    "type bytes": (b"event", 1, ["created"], "type"),
    "type capitalised": ("Event", 1, ["created"], "type"),
    "type starts with digit": ("1abc", 1, ["created"], "type"),
    "type empty": ("", 1, ["created"], "type"),
    "type 65 chars": ("a" * 65, 1, ["created"], "type"),
    "type with dash": ("my-type", 1, ["created"], "type"),
    "id float": ("event", 1.5, ["created"], "id"),
    "id None": ("event", None, ["created"], "id"),
    "id bool": ("event", True, ["created"], "id"),
    "id list": ("event", [1], ["created"], "id"),
    "id negative": ("event", -1, ["created"], "id"),
    "id 2**63": ("event", 2**63, ["created"], "id"),
    "id empty": ("event", "", ["created"], "id"),
    "id 257 chars": ("event", "x" * 257, ["created"], "id"),
    "id with NUL": ("event", "a\x00b", ["created"], "id"),
    "id with newline": ("event", "a\nb", ["created"], "id"),
    "id with DEL": ("event", "a\x7fb", ["created"], "id"),
    "id lone surrogate": ("event", "a\ud800b", ["created"], "id"),
    "flag not a string": ("event", 1, ["created", 5], "changes[1]"),
    "unknown flag": ("event", 1, ["renamed"], "changes[0]"),
    "no flags": ("event", 1, [], "changes"),
    "appear and disappear": ("event", 1, ["created", "deleted"], "changes"),
    "publish and unpublish": ("event", 1, ["published", "unpublished"], "changes"),
}


@pytest.mark.parametrize(("type_", "id_", "flags", "field"), list(BAD_CHANGES.values()), ids=list(BAD_CHANGES))
def test_emit_rejects_invalid_change_naming_the_field(
    any_publisher: Publisher, any_redis: Any, namespace: str, type_: Any, id_: Any, flags: list[Any], field: str
) -> None:
    # Given a namespace with one published change
    any_publisher.emit("event", 1, "created")
    before = snapshot(any_redis, namespace)
    # When an invalid change is emitted
    with pytest.raises(InvalidChange) as excinfo:
        any_publisher.emit(type_, id_, *flags)
    # Then the error names the field, the head did not move and no key was written
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: ")
    assert track_of(any_publisher).head() == 1
    assert snapshot(any_redis, namespace) == before


@pytest.mark.parametrize(("type_", "id_", "flags", "field"), list(BAD_CHANGES.values()), ids=list(BAD_CHANGES))
def test_emit_many_with_one_bad_item_writes_nothing_of_the_batch(
    any_publisher: Publisher, any_redis: Any, namespace: str, type_: Any, id_: Any, flags: list[Any], field: str
) -> None:
    # Given a namespace with one published change, and a batch with one bad item among good ones
    any_publisher.emit("event", 1, "created")
    before = snapshot(any_redis, namespace)
    items = [
        ("event", 2, ["created"]),
        ("event", 3, ["moved"]),
        (type_, id_, flags),
        ("event", 4, ["deleted"]),
    ]
    # When the batch is emitted
    with pytest.raises(InvalidChange) as excinfo:
        any_publisher.emit_many(items)
    # Then the error names the item and field, and nothing of the batch was written
    assert str(excinfo.value).startswith(f"item 2: {field}: ")
    assert track_of(any_publisher).head() == 1
    assert snapshot(any_redis, namespace) == before


BAD_ITEMS: dict[str, tuple[Any, str]] = {
    "flags a string": (("event", 1, "created"), "item 0: changes"),
    "flags None": (("event", 1, None), "item 0: changes"),
    "flags an int": (("event", 1, 1), "item 0: changes"),
    "flags a mapping": ({"type": "event", "id": 1, "changes": {"created": 1}}, "item 0: changes"),
    "dict missing changes": ({"type": "event", "id": 1}, "item 0: changes"),
    "dict missing id": ({"type": "event", "changes": ["created"]}, "item 0: id"),
    "dict missing type": ({"id": 1, "changes": ["created"]}, "item 0: type"),
    "dict unknown field": ({"type": "event", "id": 1, "changes": ["created"], "seq": 3}, "item 0: seq"),
    "tuple of two": (("event", 1), "item 0"),
    "not an item": ("event", "item 0"),
}


@pytest.mark.parametrize(("item", "field"), list(BAD_ITEMS.values()), ids=list(BAD_ITEMS))
def test_emit_many_rejects_malformed_item_naming_the_field(
    any_publisher: Publisher, any_redis: Any, namespace: str, item: Any, field: str
) -> None:
    # Given a fresh namespace
    # When a batch whose first item is malformed is emitted
    with pytest.raises(InvalidChange) as excinfo:
        any_publisher.emit_many([item, ("event", 2, ["created"])])
    # Then the error names the item and field, and no key at all was written
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(f"{field}: ")
    assert snapshot(any_redis, namespace) == {}


@pytest.mark.parametrize("items", ["event", b"event", {"type": "event"}, 42, None])
def test_emit_many_rejects_a_batch_that_is_not_a_list(any_publisher: Publisher, items: Any) -> None:
    # Given something that is not a list of changes
    # When it is emitted as a batch
    with pytest.raises(InvalidChange) as excinfo:
        any_publisher.emit_many(items)
    # Then the error names the items
    assert excinfo.value.field == "items"


def test_invalid_change_is_a_value_error(any_publisher: Publisher) -> None:
    # Given an invalid change
    # When it is emitted
    with pytest.raises(ValueError) as excinfo:
        any_publisher.emit("event", -1, "created")
    # Then the error is an InvalidChange, catchable as ValueError
    assert isinstance(excinfo.value, InvalidChange)


def test_validation_happens_before_redis_is_touched() -> None:
    # Given a publisher of a Redis that does not answer
    publisher = Publisher.from_url("redis://127.0.0.1:1/0", namespace="demo")
    # When it emits an invalid change
    # Then validation fails first: InvalidChange, not RedisUnavailable
    with pytest.raises(InvalidChange, match=r"^type:"):
        publisher.emit("Event", 42, "created")
    with pytest.raises(InvalidChange, match=r"^item 1: id:"):
        publisher.emit_many([("event", 1, ["created"]), ("event", "", ["created"])])


# --- invariant 1: atomic, server-ordered publish ---------------------------------------------


def test_batch_gets_consecutive_seqs_after_the_head(any_publisher: Publisher) -> None:
    # Given a namespace whose head is 2
    any_publisher.emit("event", 1, "created")
    any_publisher.emit("event", 2, "created")
    # When a batch of five is published
    seqs = any_publisher.emit_many([("event", i, ["moved"]) for i in range(10, 15)])
    # Then it gets the next five seqs and the head is the last of them
    assert seqs == [3, 4, 5, 6, 7]
    assert track_of(any_publisher).head() == 7


def test_identical_change_published_twice_is_stored_twice(any_publisher: Publisher) -> None:
    # Given one change
    # When the very same change is published twice
    first = any_publisher.emit("event", 42, "title_changed")
    second = any_publisher.emit("event", 42, "title_changed")
    # Then two changes are stored as two members (no merge in the sorted set)
    track = track_of(any_publisher)
    assert [c.seq for c in track.values()] == [first, second] == [1, 2]
    assert track.size() == 2
    [(bucket, _first)] = track.buckets()
    assert any_publisher.redis.zcard(track.keys.bucket(bucket)) == 2


def test_every_seq_up_to_the_head_is_readable_after_publish(any_publisher: Publisher) -> None:
    # Given several publish calls of different sizes
    any_publisher.emit("event", 1, "created")
    any_publisher.emit_many([("event", i, ["moved"]) for i in range(2, 7)])
    any_publisher.emit("event", 7, "deleted")
    # When the track is read up to the head right after
    track = track_of(any_publisher)
    head = track.head()
    # Then every seq 1..head is there, once, in order
    assert [c.seq for c in track.iter_changes(0, head)] == list(range(1, head + 1))
    assert head == 7


def test_ts_comes_from_the_server_clock(
    any_publisher: Publisher, any_redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a publisher whose own clock is wrong by years
    monkeypatch.setattr(track_module, "time", SimpleNamespace(time=lambda: 946_684_800.0))
    before_s, before_us = any_redis.time()
    # When it publishes
    seq = any_publisher.emit("event", 42, "created")
    after_s, after_us = any_redis.time()
    # Then the change's ts is the server's TIME at publish (window of a few seconds)
    [change] = track_of(any_publisher).values()
    assert change.seq == seq
    before_ms = before_s * 1000 + before_us // 1000
    after_ms = after_s * 1000 + after_us // 1000
    assert before_ms - 5000 <= change.ts <= after_ms + 5000


def test_batch_larger_than_max_run_is_split_but_reads_back_complete(any_publisher: Publisher) -> None:
    # Given a batch of 2 * MAX_RUN + 5 changes
    items: list[Any] = [("event", i, ["data_changed"]) for i in range(2 * MAX_RUN + 5)]
    # When it is published in one call
    seqs = any_publisher.emit_many(items)
    # Then it is stored as three members, and reads back complete and in order
    track = track_of(any_publisher)
    members = sum(any_publisher.redis.zcard(track.keys.bucket(bucket)) for bucket, _first in track.buckets())
    assert members == 3
    assert seqs == list(range(1, len(items) + 1))
    changes = list(track.values())
    assert [c.seq for c in changes] == seqs
    assert [c.id for c in changes] == [i for _t, i, _f in items]
    # And the versions are consecutive over the whole call; each member's changes share its ts
    first_version = changes[0].version
    assert [c.version for c in changes] == list(range(first_version, first_version + len(items)))
    assert [c.ts for c in changes] == [(first_version + i // MAX_RUN * MAX_RUN) // 1000 for i in range(len(items))]
    assert changes[0] == Change(1, first_version // 1000, "event", 0, FLAG_BITS["data_changed"], first_version)
