"""Writing to the outbox: the table, and rows that commit or roll back with the caller's transaction."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.orm import Session
from support.outbox import outbox_ids

from livesync.changes import FLAG_BITS
from livesync.errors import InvalidChange
from livesync.outbox import create_table, emit, emit_many, outbox_table


def test_create_table_is_idempotent(outbox_engine: Engine, table_name: str) -> None:
    # Given the fixture created the table
    # When it is created again
    created = create_table(outbox_engine, table_name)
    # Then nothing happens, and it holds nothing
    assert created is False
    assert outbox_ids(outbox_engine, table_name) == []


def test_create_table_reports_a_new_table(outbox_engine: Engine, table_name: str) -> None:
    other = f"{table_name}_b"
    try:
        assert create_table(outbox_engine, other) is True
        assert create_table(outbox_engine, other) is False
    finally:
        with outbox_engine.begin() as connection:
            connection.execute(text(f"DROP TABLE IF EXISTS {other}"))


def test_emitted_rows_commit_with_the_callers_transaction(outbox_engine: Engine, table_name: str) -> None:
    with outbox_engine.begin() as connection:
        emit(connection, "event", 42, "created", "title_changed", namespace="ns1", table=table_name)
        emit_many(connection, [("event", "42", ["deleted"])], namespace="ns1", table=table_name)
    table = outbox_table(table_name)
    with outbox_engine.connect() as connection:
        rows = connection.execute(select(table).order_by(table.c.id)).all()
    assert [(r.namespace, r.type, r.object_id, bool(r.integer_id), r.flags) for r in rows] == [
        ("ns1", "event", "42", True, FLAG_BITS["created"] | FLAG_BITS["title_changed"]),
        ("ns1", "event", "42", False, FLAG_BITS["deleted"]),
    ]
    assert rows[0].id < rows[1].id
    assert all(r.created_us > 0 for r in rows)


def test_a_rolled_back_transaction_leaves_no_row(outbox_engine: Engine, table_name: str) -> None:
    with pytest.raises(RuntimeError), outbox_engine.begin() as connection:
        emit(connection, "event", 1, "created", namespace="ns1", table=table_name)
        raise RuntimeError("the application fails")
    assert outbox_ids(outbox_engine, table_name) == []


def test_a_session_writes_in_its_transaction(outbox_engine: Engine, table_name: str) -> None:
    with Session(outbox_engine) as session:
        emit(session, "event", 1, "created", namespace="ns1", table=table_name)
        session.rollback()
        emit_many(session, [("event", 2, ["created"]), {"type": "event", "id": 3, "changes": ["moved"]}],
                  namespace="ns1", table=table_name)  # fmt: skip
        session.commit()
    table = outbox_table(table_name)
    with outbox_engine.connect() as connection:
        assert connection.execute(select(table.c.object_id).order_by(table.c.id)).scalars().all() == ["2", "3"]


def test_an_invalid_change_raises_before_anything_is_written(outbox_engine: Engine, table_name: str) -> None:
    with outbox_engine.begin() as connection:
        with pytest.raises(InvalidChange, match=r"item 1: changes\[0\]"):
            emit_many(connection, [("event", 1, ["created"]), ("event", 2, ["no_such_flag"])], table=table_name)
        with pytest.raises(InvalidChange, match="type"):
            emit(connection, "Event", 1, "created", table=table_name)
        with pytest.raises(InvalidChange, match="both appear and disappear"):
            emit(connection, "event", 1, "created", "deleted", table=table_name)
        count = connection.execute(select(func.count()).select_from(outbox_table(table_name))).scalar_one()
    # the transaction committed: nothing of the refused calls was in it
    assert count == 0
    assert outbox_ids(outbox_engine, table_name) == []


def test_an_invalid_namespace_is_refused(outbox_engine: Engine, table_name: str) -> None:
    with outbox_engine.begin() as connection, pytest.raises(Exception, match="namespace"):
        emit(connection, "event", 1, "created", namespace="bad namespace", table=table_name)


def test_ids_that_are_not_reused_after_a_delete(outbox_engine: Engine, table_name: str) -> None:
    # a relay's marks name rows by id (and creation time): a deleted top id must not come back
    table = outbox_table(table_name)
    with outbox_engine.begin() as connection:
        emit_many(connection, [("event", 1, ["created"]), ("event", 2, ["created"])], table=table_name)
    top = outbox_ids(outbox_engine, table_name)[-1]
    with outbox_engine.begin() as connection:
        connection.execute(table.delete())
    with outbox_engine.begin() as connection:
        connection.execute(
            insert(table), [{"namespace": "n", "type": "event", "object_id": "3", "integer_id": True, "flags": 1,
                             "created_us": 1}],
        )  # fmt: skip
    assert outbox_ids(outbox_engine, table_name)[0] > top
