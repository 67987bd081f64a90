"""The relay in-process: id order, deletion, exactly once across a failed batch, out-of-order commits, lag."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, insert
from support.outbox import outbox_ids, track_changes

from livesync.errors import OutboxError
from livesync.keys import namespace_keys
from livesync.lua import source
from livesync.outbox import emit, emit_many, outbox_table
from livesync.outbox.lag import outbox_status
from livesync.outbox.relay import Relay


class Killed(Exception):
    """Stands for a relay dying at a checkpoint (the process's transaction rolls back)."""


def die_at(point: str) -> Callable[[str], None]:
    def checkpoint(reached: str) -> None:
        if reached == point:
            raise Killed(point)

    return checkpoint


def test_relay_lua_runs_publish_lua_unchanged() -> None:
    # one publish logic: relay.lua holds publish.lua's text, not a copy by hand
    assert source("publish").rstrip("\n") in source("relay")
    assert "\n--@include" not in source("relay")


def test_committed_rows_go_to_the_track_in_id_order_and_leave_the_outbox(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    with outbox_engine.begin() as connection:
        emit(connection, "event", 42, "created", namespace=namespace, table=table_name)
        emit_many(connection, [("event", "x", ["title_changed"]), ("event", 42, ["deleted"])],
                  namespace=namespace, table=table_name)  # fmt: skip
    summary = make_relay(outbox_engine, batch=2).drain()
    assert (summary.published, summary.already, summary.batches) == (3, 0, 2)
    assert track_changes(real_redis, namespace) == [
        ("event", 42, ("created",)),
        ("event", "x", ("title_changed",)),
        ("event", 42, ("deleted",)),
    ]
    assert outbox_ids(outbox_engine, table_name) == []
    # the marks went with the rows' delete
    assert real_redis.zcard(namespace_keys(namespace).partition(0).relayed) == 0


def test_rows_of_other_namespaces_stay(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    with outbox_engine.begin() as connection:
        emit(connection, "event", 1, "created", namespace=f"{namespace}-other", table=table_name)
    assert make_relay(outbox_engine).drain().published == 0
    assert len(outbox_ids(outbox_engine, table_name)) == 1


@pytest.mark.parametrize("point", ["published", "deleted"])
def test_a_batch_that_dies_after_publishing_is_not_published_again(
    point: str,
    outbox_engine: Engine,
    table_name: str,
    make_relay: Callable[..., Relay],
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given rows, and a relay that dies after its Lua call (its delete rolls back)
    with outbox_engine.begin() as connection:
        emit_many(connection, [("event", i, ["created"]) for i in range(5)], namespace=namespace, table=table_name)
    with pytest.raises(Killed):
        make_relay(outbox_engine, checkpoint=die_at(point)).batch()
    assert len(outbox_ids(outbox_engine, table_name)) == 5
    assert len(track_changes(real_redis, namespace)) == 5
    # When another relay drains, with two more rows committed meanwhile
    with outbox_engine.begin() as connection:
        emit_many(connection, [("event", 5, ["created"]), ("event", 0, ["moved"])], namespace=namespace,
                  table=table_name)  # fmt: skip
    summary = make_relay(outbox_engine).drain()
    # Then it publishes only the new ones, deletes everything, and each change is on the track once
    assert (summary.published, summary.already) == (2, 5)
    assert outbox_ids(outbox_engine, table_name) == []
    assert track_changes(real_redis, namespace) == [
        *(("event", i, ("created",)) for i in range(6)),
        ("event", 0, ("moved",)),
    ]


def test_a_batch_that_dies_before_publishing_is_published_by_the_next(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    with outbox_engine.begin() as connection:
        emit_many(connection, [("event", i, ["created"]) for i in range(3)], namespace=namespace, table=table_name)
    with pytest.raises(Killed):
        make_relay(outbox_engine, checkpoint=die_at("claimed")).batch()
    assert track_changes(real_redis, namespace) == []
    assert make_relay(outbox_engine).drain().published == 3
    assert len(track_changes(real_redis, namespace)) == 3


def test_partitions_get_their_objects_changes_once_each(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    items = [("event", i % 20, ["data_changed" if i % 2 else "title_changed"]) for i in range(200)]
    with outbox_engine.begin() as connection:
        emit_many(connection, items, namespace=namespace, table=table_name)
    with pytest.raises(Killed):  # half of the partitions' calls may have run: all did, here
        make_relay(outbox_engine, partitions=4, checkpoint=die_at("published")).batch()
    make_relay(outbox_engine, partitions=4, batch=37).drain()
    on_track = track_changes(real_redis, namespace, partitions=4)
    assert sorted(on_track, key=repr) == sorted(((t, i, (f,)) for t, i, (f,) in items), key=repr)
    for object_id in range(20):  # each object's changes in the order they were written
        assert [c for c in on_track if c[1] == object_id] == [(t, i, (f,)) for t, i, (f,) in items if i == object_id]


def test_a_row_that_is_no_change_stops_the_relay_naming_it(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    with outbox_engine.begin() as connection:
        emit(connection, "event", 1, "created", namespace=namespace, table=table_name)
        connection.execute(
            insert(outbox_table(table_name)),
            {"namespace": namespace, "type": "event", "object_id": "2", "integer_id": True, "flags": 0,
             "created_us": 1},
        )  # fmt: skip
        emit(connection, "event", 3, "created", namespace=namespace, table=table_name)
    relay = make_relay(outbox_engine)
    with pytest.raises(OutboxError, match=r"outbox row \d+ of table .* is not a valid change") as caught:
        relay.drain()
    bad = outbox_ids(outbox_engine, table_name)[0]
    assert f"row {bad} " in str(caught.value)
    # what came before it went; nothing after it did (order)
    assert track_changes(real_redis, namespace) == [("event", 1, ("created",))]
    assert len(outbox_ids(outbox_engine, table_name)) == 2


def test_the_lag_report_counts_rows_and_the_oldest(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    with outbox_engine.begin() as connection:
        connection.execute(
            insert(outbox_table(table_name)),
            [{"namespace": namespace, "type": "event", "object_id": str(i), "integer_id": True, "flags": 1,
              "created_us": 1_000_000_000 * 1_000_000 + i} for i in range(3)],
        )  # fmt: skip
    relay = make_relay(outbox_engine)
    assert relay.report() == (3, 1_000_000_000 * 1_000_000)
    status = outbox_status(real_redis, namespace_keys(namespace), now=1_000_000_060.0)
    assert status is not None
    assert (status["rows"], status["oldest_age_seconds"], status["relay"]) == (3, 60.0, relay.name)
    relay.drain()
    status = outbox_status(real_redis, namespace_keys(namespace))
    assert status is not None
    assert (status["rows"], status["oldest_age_seconds"]) == (0, 0.0)


def test_no_report_means_no_outbox_status(real_redis: redis.Redis, namespace: str) -> None:
    assert outbox_status(real_redis, namespace_keys(namespace)) is None


def marks_of(real_redis: redis.Redis, namespace: str) -> list[Any]:
    return list(real_redis.zrange(namespace_keys(namespace).partition(0).relayed, 0, -1))


def test_marks_expire_with_their_ttl(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    with outbox_engine.begin() as connection:
        emit(connection, "event", 1, "created", namespace=namespace, table=table_name)
    relay = make_relay(outbox_engine, checkpoint=die_at("deleted"))
    relay.publisher.mark_ttl = 120
    with pytest.raises(Killed):
        relay.batch()
    assert len(marks_of(real_redis, namespace)) == 1
    assert 0 < real_redis.pttl(namespace_keys(namespace).partition(0).relayed) <= 120_000


def test_a_batchs_marks_go_with_the_next_call_after_its_commit(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    # a mark may go only once its row's delete committed: batch 1's marks stay through
    # batch 1, batch 2's relay.lua call removes them, an idle batch removes batch 2's
    with outbox_engine.begin() as connection:
        emit_many(connection, [("event", n, ["created"]) for n in range(4)], namespace=namespace, table=table_name)
    relay = make_relay(outbox_engine, batch=2)
    assert relay.batch().published == 2
    first = marks_of(real_redis, namespace)
    assert len(first) == 2
    assert relay.batch().published == 2
    second = marks_of(real_redis, namespace)
    assert len(second) == 2 and not set(first) & set(second)
    assert relay.batch().moved == 0
    assert marks_of(real_redis, namespace) == []
    assert outbox_ids(outbox_engine, table_name) == []


def test_marks_of_a_batch_that_did_not_commit_are_not_removed_by_the_next(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    with outbox_engine.begin() as connection:
        emit_many(connection, [("event", n, ["created"]) for n in range(2)], namespace=namespace, table=table_name)
    dying = make_relay(outbox_engine, checkpoint=die_at("deleted"))
    with pytest.raises(Killed):
        dying.batch()
    with outbox_engine.begin() as connection:
        emit(connection, "event", 9, "created", namespace=namespace, table=table_name)
    relay = dying
    relay.checkpoint = None
    batch = relay.batch()  # the rolled-back rows are found marked; their marks stay until this delete committed
    assert (batch.published, batch.already) == (1, 2)
    assert len(marks_of(real_redis, namespace)) == 3
    assert relay.drain().published == 0
    assert marks_of(real_redis, namespace) == []
    assert track_changes(real_redis, namespace) == [("event", n, ("created",)) for n in (0, 1, 9)]


@pytest.mark.parametrize(
    "bad",
    [
        ("Bad-Type", "1", False, 4),
        ("event", "x\x07", False, 4),
        ("event", "\ud800", False, 4),
        ("event", "", False, 4),
        ("event", "x" * 257, False, 4),
        ("event", "-1", True, 4),
        ("event", "nope", True, 4),
        ("event", str(1 << 63), True, 4),
        ("event", "1", True, 0),
        ("event", "1", True, 1 << 30),
        ("event", None, False, 4),
    ],
)
def test_a_batch_is_validated_as_each_row_would_be(bad: tuple[Any, Any, Any, Any]) -> None:
    # the batch-at-once checks of claimed_changes stop at the same row, with the same error, as change_of
    from livesync.outbox.table import change_of, claimed_changes

    rows = [(1, "event", "a", False, 4, 0), (2, "event", "7", True, 4, 0), (3, *bad, 0), (4, "event", "b", False, 4, 0)]
    changes, error = claimed_changes(rows, "t")
    assert changes == [("event", "a", 4), ("event", 7, 4)]
    assert error is not None and "outbox row 3 of table t" in str(error)
    with pytest.raises(OutboxError) as expected:
        change_of(*rows[2][:5], "t")
    assert str(error) == str(expected.value)
    assert claimed_changes(rows[:2] + rows[3:], "t") == ([("event", "a", 4), ("event", 7, 4), ("event", "b", 4)], None)
