"""The SQLAlchemy integration's databases and models: SQLite (a file of the test) and PostgreSQL (the machine's).

Every test gets tables of its own (``ls_<hex>_...``), dropped afterwards: the server is
shared with other tests and sessions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, ForeignKey
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from support.sql_databases import admin_engine, drop_table, reachable_url, unique_table

from livesync.client import Publisher
from livesync.integrations.sqlalchemy import LiveSync
from livesync.outbox import create_table


class Models:
    """Categories, their events and the events' contributions, in tables named after ``prefix``."""

    def __init__(self, prefix: str) -> None:
        class Base(DeclarativeBase):
            pass

        class Category(Base):
            __tablename__ = f"{prefix}_category"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str]
            events: Mapped[list[Event]] = relationship(back_populates="category")

        class Event(Base):
            __tablename__ = f"{prefix}_event"
            id: Mapped[int] = mapped_column(primary_key=True)
            title: Mapped[str]
            description: Mapped[str] = mapped_column(default="")
            views: Mapped[int] = mapped_column(default=0)
            is_deleted: Mapped[bool] = mapped_column(default=False)
            is_public: Mapped[bool] = mapped_column(default=True)
            category_id: Mapped[int | None] = mapped_column(ForeignKey(Category.id))
            category: Mapped[Category | None] = relationship(back_populates="events")
            contributions: Mapped[list[Contribution]] = relationship(back_populates="event")

        class Contribution(Base):
            __tablename__ = f"{prefix}_contribution"
            slug: Mapped[str] = mapped_column(primary_key=True)
            title: Mapped[str]
            event_id: Mapped[int] = mapped_column(ForeignKey(Event.id))
            event: Mapped[Event] = relationship(back_populates="contributions")

        self.Base, self.Category, self.Event, self.Contribution = Base, Category, Event, Contribution


def register_all(sync: LiveSync, models: Models) -> None:
    """The registrations the tests share: mapped title, ignored view counter, soft delete, publish flag, cascades."""
    sync.register(models.Category, "category", flags={"title": "title_changed"}, cascade={"events": None})
    sync.register(
        models.Event,
        "event",
        flags={"title": "title_changed", "views": None},
        soft_delete="is_deleted",
        published="is_public",
        cascade=["contributions"],
    )
    sync.register(models.Contribution, "contribution")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One dialect's test database (the test runs on each); skipped, saying why, when it does not answer."""
    return reachable_url(request.param, tmp_path)


@pytest.fixture
def app_engine(database_url: str) -> Iterator[Engine]:
    """The application's engine."""
    engine = admin_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def models(app_engine: Engine) -> Iterator[Models]:
    """The test's own tables, dropped afterwards."""
    made = Models(unique_table())
    made.Base.metadata.create_all(app_engine)
    yield made
    made.Base.metadata.drop_all(app_engine)


@pytest.fixture
def outbox_name(app_engine: Engine) -> Iterator[str]:
    """An outbox table of the test's own in the application's database, dropped afterwards."""
    name = unique_table()
    create_table(app_engine, name)
    yield name
    drop_table(app_engine, name)


@pytest.fixture
def direct_sync(publisher: Publisher, models: Models) -> LiveSync:
    """Direct mode publishing to the test's namespace, the shared models registered."""
    sync = LiveSync(publisher=publisher)
    register_all(sync, models)
    return sync


@pytest.fixture
def outbox_sync(namespace: str, outbox_name: str, models: Models) -> LiveSync:
    """Outbox mode writing to the test's outbox table for the test's namespace, the shared models registered."""
    sync = LiveSync("outbox", namespace=namespace, table=outbox_name)
    register_all(sync, models)
    return sync


@pytest.fixture
def sessions(app_engine: Engine) -> sessionmaker:  # type: ignore[type-arg]
    """A sessionmaker of the application's engine that no other test listens to."""
    return sessionmaker(app_engine)


@pytest.fixture
def outbox_session(outbox_sync: LiveSync, sessions: sessionmaker) -> Iterator[Any]:  # type: ignore[type-arg]
    """A session of ``sessions`` with the outbox-mode integration attached (detached afterwards)."""
    outbox_sync.attach(sessions)
    with sessions() as made:
        yield made
    outbox_sync.detach(sessions)
