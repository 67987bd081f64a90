"""Relays beside open transactions and beside each other, on PostgreSQL and MariaDB."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from sqlalchemy import Connection, Engine, select
from support.outbox import database_url, outbox_ids, track_changes

from livesync.outbox import emit, emit_many, outbox_table
from livesync.outbox.relay import Batch, Relay


@pytest.fixture(params=["postgresql", "mariadb"])
def outbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Servers only: their transactions run side by side (SQLite's take turns)."""
    return database_url(request.param, tmp_path)


def test_rows_of_an_open_transaction_wait_for_its_commit(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    with outbox_engine.connect() as open_one:
        transaction = open_one.begin()
        emit(open_one, "event", 1, "created", namespace=namespace, table=table_name)
        assert make_relay(outbox_engine).drain().published == 0
        assert track_changes(real_redis, namespace) == []
        transaction.commit()
    assert make_relay(outbox_engine).drain().published == 1


def test_a_row_that_commits_after_a_later_id_was_relayed_is_relayed_too(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    # Given transaction A takes the lower id and stays open while B takes a higher one and commits
    with outbox_engine.connect() as first, outbox_engine.connect() as second:
        a = first.begin()
        emit(first, "event", 7, "title_changed", namespace=namespace, table=table_name)
        b = second.begin()
        emit(second, "event", 7, "data_changed", namespace=namespace, table=table_name)
        b.commit()
        lower, higher = sorted(outbox_ids_of_all(outbox_engine, table_name, first))
        # When the relay moves B's row (the higher id) and A commits afterwards
        assert make_relay(outbox_engine).drain().published == 1
        a.commit()
    # Then a high-water mark would skip A's row (its id is below one relayed): per-row marks do not
    assert outbox_ids(outbox_engine, table_name) == [lower]
    assert make_relay(outbox_engine).drain().published == 1
    assert track_changes(real_redis, namespace) == [("event", 7, ("data_changed",)), ("event", 7, ("title_changed",))]
    assert higher > lower


def outbox_ids_of_all(engine: Engine, table_name: str, inside: Connection) -> list[int]:
    """The ids of both rows: the committed one, and the open transaction's as it sees itself."""
    table = outbox_table(table_name)
    return list(inside.execute(select(table.c.id)).scalars())


def test_two_relays_share_the_rows_and_keep_each_objects_order(
    outbox_engine: Engine, table_name: str, make_relay: Callable[..., Relay], real_redis: redis.Redis, namespace: str
) -> None:
    # Given X@1 Y@2 X@3 Z@4, and relay A holding the first two (paused after claiming them)
    with outbox_engine.begin() as connection:
        emit_many(
            connection,
            [("event", "x", ["created"]), ("event", "y", ["created"]), ("event", "x", ["moved"]),
             ("event", "z", ["created"])],
            namespace=namespace, table=table_name,
        )  # fmt: skip
    claimed, release = threading.Event(), threading.Event()

    def pause(point: str) -> None:
        if point == "claimed":
            claimed.set()
            assert release.wait(30)

    first = make_relay(outbox_engine, batch=2, checkpoint=pause)
    results: list[Batch] = []
    holder = threading.Thread(target=lambda: results.append(first.batch()))
    holder.start()
    try:
        assert claimed.wait(30)
        # When relay B runs a batch meanwhile: it skips A's locked rows
        second = make_relay(outbox_engine, batch=10).batch()
    finally:
        release.set()
        holder.join(30)
    # Then B published Z but left X@3 behind A's X@1; A published X@1 and Y@2
    assert (second.claimed, second.published, second.waiting) == (2, 1, 1)
    assert results[0].published == 2
    assert make_relay(outbox_engine).drain().published == 1
    assert track_changes(real_redis, namespace) == [
        ("event", "z", ("created",)),
        ("event", "x", ("created",)),
        ("event", "y", ("created",)),
        ("event", "x", ("moved",)),
    ]
    assert outbox_ids(outbox_engine, table_name) == []
