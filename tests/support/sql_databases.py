"""The databases the ``sql`` backend and the SQLAlchemy loader are tested on, and how to reach and break them.

PostgreSQL and MariaDB are the machine's own servers (CI's too): PostgreSQL on
127.0.0.1:5432 (trust, database ``test``), MariaDB on 127.0.0.1:3306 (root, empty
password, database ``test``); ``LIVESYNC_TEST_POSTGRES_URL`` and
``LIVESYNC_TEST_MYSQL_URL`` point elsewhere. SQLite is a file in the test's ``tmp_path``.
Every test uses a table of its own, dropped afterwards: the servers are shared.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
DIALECTS = ("sqlite", "postgresql", "mariadb")


def server_url(dialect: str, tmp_path: Path, environ: dict[str, str]) -> str:
    """The URL of ``dialect``'s test database (a new SQLite file under ``tmp_path``)."""
    if dialect == "sqlite":
        return f"sqlite:///{tmp_path / 'mirror.db'}"
    if dialect == "postgresql":
        return environ.get("LIVESYNC_TEST_POSTGRES_URL", POSTGRES_URL)
    return environ.get("LIVESYNC_TEST_MYSQL_URL", MYSQL_URL)


def unreachable(url: str) -> str | None:
    """Why the database at ``url`` does not answer (within 3 s), or ``None`` when it does."""
    engine = admin_engine(url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"{make_url(url).render_as_string()} does not answer: {exc.orig if hasattr(exc, 'orig') else exc!s}"
    finally:
        engine.dispose()
    return None


def admin_engine(url: str) -> Engine:
    """An engine of the test itself (setup, read-back, cleanup), short timeouts."""
    backend = make_url(url).get_backend_name()
    connect_args: dict[str, object] = {}
    if backend == "postgresql":
        connect_args = {"connect_timeout": 3}
    elif backend in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": 3, "read_timeout": 30}
    return create_engine(url, connect_args=connect_args)


def unique_table() -> str:
    """A table name no other test uses."""
    return f"ls_{uuid.uuid4().hex[:12]}"


def drop_table(engine: Engine, name: str) -> None:
    """Drop ``name`` if it exists."""
    with engine.begin() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {name}"))


@contextmanager
def table_locked(engine: Engine, name: str) -> Iterator[None]:
    """While inside, another session holds ``name`` locked for writing: writers wait, then time out."""
    with engine.connect() as connection:
        dialect = engine.dialect.name
        if dialect == "sqlite":
            connection.exec_driver_sql("BEGIN EXCLUSIVE")
        elif dialect == "postgresql":
            connection.execute(text(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE"))
        else:
            connection.execute(text(f"LOCK TABLES {name} WRITE"))
        try:
            yield
        finally:
            if dialect in ("mysql", "mariadb"):
                connection.execute(text("UNLOCK TABLES"))
            connection.rollback()


def reachable_url(dialect: str, tmp_path: Path) -> str:
    """The test database URL of ``dialect`` (:func:`server_url`); the test skips, saying why, if it does not answer."""
    import os

    import pytest

    url = server_url(dialect, tmp_path, dict(os.environ))
    problem = unreachable(url)
    if problem is not None:
        pytest.skip(problem)
    return url
