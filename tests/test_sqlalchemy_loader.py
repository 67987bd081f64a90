"""The SQLAlchemy loader, for real on SQLite and PostgreSQL: events with a ``private`` flag."""

from __future__ import annotations

import datetime
import decimal
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey, Numeric, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from support.sql_databases import admin_engine, server_url, unique_table, unreachable

from livesync.errors import ConfigurationError
from livesync.loaders.sqlalchemy import SQLAlchemyLoader


class Models:
    """An event and its contributions, in tables of the test's own."""

    def __init__(self, suffix: str) -> None:
        class Base(DeclarativeBase):
            pass

        class Event(Base):
            __tablename__ = f"{suffix}_event"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str]
            private: Mapped[bool] = mapped_column(default=False)
            starts: Mapped[datetime.datetime | None]
            fee: Mapped[decimal.Decimal | None] = mapped_column(Numeric(10, 2))
            code: Mapped[uuid.UUID | None]

        class Contribution(Base):
            __tablename__ = f"{suffix}_contribution"
            slug: Mapped[str] = mapped_column(primary_key=True)
            event_id: Mapped[int] = mapped_column(ForeignKey(Event.id))
            title: Mapped[str]

        self.Base, self.Event, self.Contribution = Base, Event, Contribution


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = server_url(request.param, tmp_path, dict(os.environ))
    problem = unreachable(url)
    if problem is not None:
        pytest.skip(problem)
    made = admin_engine(url)
    yield made
    made.dispose()


@pytest.fixture
def models(engine: Engine) -> Iterator[Models]:
    made = Models(unique_table())
    made.Base.metadata.create_all(engine)
    code = uuid.UUID("12345678-1234-5678-1234-567812345678")
    with Session(engine) as session:
        session.add_all(
            [
                made.Event(
                    id=1,
                    title="Opening",
                    starts=datetime.datetime(2026, 12, 1, 9, 30),
                    fee=decimal.Decimal("12.50"),
                    code=code,
                ),
                made.Event(id=2, title="Board meeting", private=True),
                made.Event(id=3, title="Closing"),
            ]
        )
        session.flush()  # no relationship orders the inserts
        session.add_all(
            [
                made.Contribution(slug="c-1", event_id=1, title="Keynote"),
                made.Contribution(slug="c-2", event_id=2, title="Budget"),
            ]
        )
        session.commit()
    yield made
    made.Base.metadata.drop_all(engine)


@pytest.fixture
def statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine runs while the test does."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_a_batch_is_loaded_with_one_query_per_type(engine: Engine, models: Models, statements: list[str]) -> None:
    load = SQLAlchemyLoader(engine, {"event": models.Event, "contribution": models.Contribution})
    documents = load([("event", 1), ("contribution", "c-1"), ("event", 3), ("event", 404), ("contribution", "nope")])
    assert documents == {
        ("event", 1): {
            "id": 1,
            "title": "Opening",
            "private": False,
            "starts": "2026-12-01T09:30:00",
            "fee": "12.50",
            "code": "12345678-1234-5678-1234-567812345678",
        },
        ("event", 3): {"id": 3, "title": "Closing", "private": False, "starts": None, "fee": None, "code": None},
        ("contribution", "c-1"): {"slug": "c-1", "event_id": 1, "title": "Keynote"},
    }
    assert len([sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]) == 2


def test_the_visibility_predicate_leaves_out_what_the_agent_may_not_see(engine: Engine, models: Models) -> None:
    public = SQLAlchemyLoader(engine, {"event": models.Event}, visible={"event": models.Event.private.is_(False)})
    assert set(public([("event", 1), ("event", 2), ("event", 3)])) == {("event", 1), ("event", 3)}
    # the same as a function of (type, select), on a select joining another model
    contributions = select(models.Contribution).join(models.Event)
    by_function = SQLAlchemyLoader(
        engine,
        {"contribution": contributions},
        visible=lambda _type, statement: statement.where(models.Event.private.is_(False)),
    )
    assert set(by_function([("contribution", "c-1"), ("contribution", "c-2")])) == {("contribution", "c-1")}


def test_ids_are_converted_to_the_column_type_and_impossible_ones_left_out(
    engine: Engine, models: Models, caplog: pytest.LogCaptureFixture
) -> None:
    load = SQLAlchemyLoader(sessionmaker(engine), {"event": models.Event})
    with caplog.at_level(logging.WARNING, logger="livesync.loaders.sqlalchemy"):
        documents = load([("event", "1"), ("event", 1), ("event", "abc"), ("event", "01")])
    assert set(documents) == {("event", "1"), ("event", 1)}  # keyed as the records give them
    assert "event id 'abc' cannot be a value of" in caplog.text


def test_big_batches_are_loaded_in_chunks_of_ids(engine: Engine, models: Models, statements: list[str]) -> None:
    load = SQLAlchemyLoader(engine, {"event": models.Event}, chunk_size=2)
    assert set(load([("event", n) for n in range(1, 6)])) == {("event", 1), ("event", 2), ("event", 3)}
    assert len([sql for sql in statements if sql.lstrip().upper().startswith("SELECT")]) == 3


def test_a_select_of_columns_and_a_serializer_of_ones_own(engine: Engine, models: Models) -> None:
    titles = select(models.Event.id, models.Event.title, models.Contribution.title.label("talk")).join(
        models.Contribution, models.Contribution.event_id == models.Event.id
    )
    load = SQLAlchemyLoader(
        engine,
        {"event": titles},
        id_column={"event": models.Event.id},
        serialize=lambda type_, row: {"kind": type_, **row} if row["title"] != "Closing" else None,
    )
    assert load([("event", 1), ("event", 3)]) == {
        ("event", 1): {"kind": "event", "id": 1, "title": "Opening", "talk": "Keynote"}
    }


def test_types_it_cannot_load_are_configuration_errors(engine: Engine, models: Models) -> None:
    load = SQLAlchemyLoader(engine, {"event": models.Event})
    with pytest.raises(ConfigurationError, match="no model or select for type 'room'"):
        load([("room", 1)])
    with pytest.raises(ConfigurationError, match="has no column 'uid'"):
        SQLAlchemyLoader(engine, {"event": models.Event}, id_column={"event": "uid"})
    with pytest.raises(ConfigurationError, match="give id_column"):
        SQLAlchemyLoader(engine, {"event": select(models.Event.__table__.c.title)})
