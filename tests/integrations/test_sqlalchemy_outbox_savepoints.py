"""Outbox mode and released savepoints: what one transaction did to an object is one row, in order.

SQLAlchemy calls ``before_commit`` for a savepoint's release too; the outbox fault suite
(``tests/reliability/test_rel_outbox.py``) found the released savepoint's changes written
there, apart from and before the transaction's own earlier changes: an object created
and then renamed in a savepoint reached the track as ``title_changed`` before ``created``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from livesync.changes import flag_names
from livesync.integrations.sqlalchemy import LiveSync
from livesync.outbox import outbox_table

from .conftest import Models


def rows(engine: Engine, name: str) -> list[tuple[str, Any, tuple[str, ...]]]:
    """The outbox's rows as ``(type, id, flag names)``, in id order."""
    table = outbox_table(name)
    with engine.connect() as connection:
        found = connection.execute(select(table).order_by(table.c.id)).all()
    return [(row.type, int(row.object_id) if row.integer_id else row.object_id, flag_names(row.flags)) for row in found]


def test_a_change_in_a_released_savepoint_merges_with_the_transactions_earlier_change(
    outbox_session: Session, models: Models, app_engine: Engine, outbox_name: str
) -> None:
    # Given an event created in the transaction, then renamed in a savepoint that is released
    event = models.Event(id=1, title="Opening")
    outbox_session.add(event)
    outbox_session.flush()
    with outbox_session.begin_nested():
        event.title = "Grand opening"
    # and another event created after the savepoint
    outbox_session.add(models.Event(id=2, title="Closing"))
    # When the transaction commits
    outbox_session.commit()
    # Then each event has one row, the first one's merged, in the order they were written
    assert rows(app_engine, outbox_name) == [("event", 1, ("created", "title_changed")), ("event", 2, ("created",))]


def test_a_delete_in_a_released_savepoint_follows_the_transactions_update(
    outbox_session: Session, models: Models, app_engine: Engine, outbox_name: str
) -> None:
    # Given a committed event, renamed in a transaction and deleted in its released savepoint
    outbox_session.add(models.Event(id=1, title="Opening"))
    outbox_session.commit()
    event = outbox_session.get(models.Event, 1)
    assert event is not None
    event.title = "Renamed"
    outbox_session.flush()
    with outbox_session.begin_nested():
        outbox_session.delete(event)
    # When the transaction commits
    outbox_session.commit()
    # Then the transaction's change is one row: never the rename after the delete
    assert rows(app_engine, outbox_name) == [("event", 1, ("created",)), ("event", 1, ("deleted", "title_changed"))]


def test_committing_with_nested_savepoints_open_writes_one_row_per_object(
    outbox_sync: LiveSync,
    sessions: sessionmaker,  # type: ignore[type-arg]
    models: Models,
    app_engine: Engine,
    outbox_name: str,
) -> None:
    # Given a transaction block that creates an event and leaves two savepoints open, each changing it
    outbox_sync.attach(sessions)
    try:
        with sessions() as outbox_session, outbox_session.begin():
            event = models.Event(id=1, title="Outer")
            outbox_session.add(event)
            outbox_session.flush()
            outbox_session.begin_nested()
            event.title = "Middle"
            outbox_session.flush()
            outbox_session.begin_nested()
            event.description = "Inner"
            # When the block commits (releasing the savepoints first)
    finally:
        outbox_sync.detach(sessions)
    # Then the event's changes are one row
    assert rows(app_engine, outbox_name) == [("event", 1, ("created", "data_changed", "title_changed"))]
