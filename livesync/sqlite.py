"""SQLite engines for livesync's own tables (the ``sql`` mirror, the outbox): transactions that work.

pysqlite begins transactions itself, late and without the write lock, so savepoints
misbehave and two writers deadlock on upgrade; :func:`begin_immediate` makes SQLAlchemy
begin them, taking the write lock at ``BEGIN``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, event

__all__ = ["begin_immediate"]


def begin_immediate(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, begin ``engine``'s transactions, with the write lock taken at BEGIN."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
