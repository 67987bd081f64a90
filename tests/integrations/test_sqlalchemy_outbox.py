"""The SQLAlchemy integration in outbox mode, on SQLite and PostgreSQL, relayed to the real Redis.

A transaction's changes are outbox rows of that very transaction, merged per object: a
rollback (of it or of a savepoint) leaves no row of its part, and the relay moves the
committed rows to the track.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker
from support.outbox import outbox_ids, track_changes

from livesync.changes import flag_names
from livesync.errors import ConfigurationError
from livesync.integrations.sqlalchemy import LiveSync
from livesync.outbox import outbox_table, relay_engine
from livesync.outbox.publish import RelayPublisher
from livesync.outbox.relay import Relay

from .conftest import Models


def rows(engine: Engine, name: str) -> list[tuple[str, Any, tuple[str, ...]]]:
    """The outbox's rows as ``(type, id, flag names)``, in id order."""
    table = outbox_table(name)
    with engine.connect() as connection:
        found = connection.execute(select(table).order_by(table.c.id)).all()
    return [(row.type, int(row.object_id) if row.integer_id else row.object_id, flag_names(row.flags)) for row in found]


def relay(database_url: str, real_redis: redis.Redis, namespace: str, name: str) -> int:
    """Drain the outbox to the test's namespace; return how many changes were published."""
    engine = relay_engine(database_url)
    try:
        return Relay(engine, RelayPublisher(real_redis, namespace), table=name).drain().published
    finally:
        engine.dispose()


def test_rows_are_written_in_the_transaction_and_relayed(
    outbox_session: Session,
    models: Models,
    app_engine: Engine,
    outbox_name: str,
    database_url: str,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given an event created and renamed in one transaction, not yet committed
    event = models.Event(id=1, title="Opening")
    outbox_session.add(event)
    outbox_session.flush()
    event.title = "Grand opening"
    outbox_session.flush()
    assert rows(app_engine, outbox_name) == []  # nothing is visible outside the transaction
    # When it commits
    outbox_session.commit()
    # Then one merged row is in the outbox, and the relay moves it to the track
    assert rows(app_engine, outbox_name) == [("event", 1, ("created", "title_changed"))]
    assert relay(database_url, real_redis, namespace, outbox_name) == 1
    assert track_changes(real_redis, namespace) == [("event", 1, ("created", "title_changed"))]
    assert outbox_ids(app_engine, outbox_name) == []


def test_rollback_leaves_no_row(outbox_session: Session, models: Models, app_engine: Engine, outbox_name: str) -> None:
    # Given changes flushed in a transaction
    outbox_session.add(models.Event(id=1, title="Opening"))
    outbox_session.flush()
    # When it rolls back
    outbox_session.rollback()
    # Then the outbox is empty
    assert rows(app_engine, outbox_name) == []


def test_rolled_back_savepoint_leaves_no_row_of_its_part(
    outbox_session: Session, models: Models, app_engine: Engine, outbox_name: str
) -> None:
    # Given one insert in the transaction, one in a released savepoint, one in a rolled-back savepoint
    outbox_session.add(models.Event(id=1, title="Kept"))
    with outbox_session.begin_nested():
        outbox_session.add(models.Event(id=2, title="Released"))
    savepoint = outbox_session.begin_nested()
    outbox_session.add(models.Event(id=3, title="Dropped"))
    outbox_session.flush()
    savepoint.rollback()
    # When the transaction commits
    outbox_session.commit()
    # Then the rows are those of the transaction and of the released savepoint
    assert sorted(rows(app_engine, outbox_name)) == [("event", 1, ("created",)), ("event", 2, ("created",))]


def test_committing_the_transaction_with_a_savepoint_open_writes_both(
    outbox_sync: LiveSync,
    sessions: sessionmaker,
    models: Models,
    app_engine: Engine,
    outbox_name: str,  # type: ignore[type-arg]
) -> None:
    # Given a transaction block that leaves a savepoint open when it ends
    outbox_sync.attach(sessions)
    try:
        with sessions() as outbox_session, outbox_session.begin():
            outbox_session.add(models.Event(id=1, title="Outer"))
            outbox_session.flush()
            outbox_session.begin_nested()
            outbox_session.add(models.Event(id=2, title="Inner"))
            # When the block commits (releasing the savepoint first)
    finally:
        outbox_sync.detach(sessions)
    # Then the changes of both are in the outbox
    assert sorted(rows(app_engine, outbox_name)) == [("event", 1, ("created",)), ("event", 2, ("created",))]


def test_each_commit_writes_its_own_rows(
    outbox_session: Session, models: Models, app_engine: Engine, outbox_name: str
) -> None:
    event = models.Event(id=1, title="Opening")
    outbox_session.add(event)
    outbox_session.commit()
    event.is_deleted = True
    outbox_session.commit()
    outbox_session.commit()
    assert rows(app_engine, outbox_name) == [("event", 1, ("created",)), ("event", 1, ("deleted",))]


def test_cascades_and_deletes_write_rows(
    outbox_session: Session, models: Models, app_engine: Engine, outbox_name: str
) -> None:
    category = models.Category(id=1, title="Talks")
    outbox_session.add_all([category, models.Event(id=1, title="Opening", category=category)])
    outbox_session.commit()
    category.title = "Lectures"
    outbox_session.commit()
    outbox_session.delete(outbox_session.get(models.Event, 1))
    outbox_session.commit()
    assert rows(app_engine, outbox_name)[2:] == [
        ("category", 1, ("title_changed",)),
        ("event", 1, ("title_changed",)),
        ("event", 1, ("deleted",)),
    ]


def test_emit_for_on_a_connection_writes_rows_in_its_transaction(
    outbox_sync: LiveSync, outbox_session: Session, models: Models, app_engine: Engine, outbox_name: str
) -> None:
    # Given stored events
    outbox_session.add_all([models.Event(id=i, title=f"Event {i}") for i in (1, 2)])
    outbox_session.commit()
    before = len(rows(app_engine, outbox_name))
    # When a Core transaction deletes one, naming it first, and rolls back; then again, committing
    statement = select(models.Event).where(models.Event.id == 2)
    with app_engine.connect() as connection:
        assert outbox_sync.emit_for(connection, statement, "deleted") == 1
        connection.execute(delete(models.Event).where(models.Event.id == 2))
        connection.rollback()
    assert len(rows(app_engine, outbox_name)) == before
    with app_engine.begin() as connection:
        outbox_sync.emit_for(connection, statement, "deleted")
        connection.execute(delete(models.Event).where(models.Event.id == 2))
    # Then the committed one's row is there
    assert rows(app_engine, outbox_name)[before:] == [("event", 2, ("deleted",))]


def test_emit_many_after_the_commit_write_joins_the_commit(
    outbox_sync: LiveSync, outbox_session: Session, models: Models, app_engine: Engine, outbox_name: str
) -> None:
    # Given a bulk change named in a transaction
    outbox_sync.emit_many(outbox_session, [("event", 5, ["data_changed"])])
    # When it commits
    outbox_session.commit()
    # Then its row is in
    assert rows(app_engine, outbox_name) == [("event", 5, ("data_changed",))]


def test_a_connection_in_direct_mode_is_refused(direct_sync: LiveSync, app_engine: Engine) -> None:
    with app_engine.connect() as connection, pytest.raises(ConfigurationError, match="use a Session"):
        direct_sync.emit_many(connection, [("event", 1, ["created"])])
