"""The application's data: categories and the events in them (SQLAlchemy 2 ORM, any database it speaks)."""

from __future__ import annotations

import datetime
from typing import Any

from sqlalchemy import Engine, ForeignKey, String, UniqueConstraint, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """The application's models."""


class Category(Base):
    """A category of events; an event's documents carry its category's name."""

    __tablename__ = "categories"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    events: Mapped[list[Event]] = relationship(back_populates="category")


class Event(Base):
    """An event in a category; a private one (``is_public`` false) stays out of the public search index."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("category_id", "title"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    starts_at: Mapped[datetime.datetime | None] = mapped_column(default=None)
    is_public: Mapped[bool] = mapped_column(default=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("categories.id"))
    category: Mapped[Category] = relationship(back_populates="events")


def make_engine(url: str) -> Engine:
    """The application's engine; on SQLite with foreign keys enforced and a write-ahead log.

    The log lets the relay and the workers' loaders read while a request writes; SQLite
    (unlike PostgreSQL) checks foreign keys only when asked, per connection.
    """
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.close()

    return engine
