"""The ``sql`` backend's generations: a new mirror table filled beside the live one, then renamed into its place.

A reindex (``livesync agent reindex``) creates ``<table>_r<token>`` shaped like the mirror
table (:func:`create_generation_table`), fills it while live runs keep writing the
mirror, and swaps it in by renames in one transaction (:func:`swap_tables`): readers of
``<table>`` see the old rows or the new ones, never a half-built table. The old table
stays as ``<table>_o<token>`` until dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from livesync.backends.sql_mirror import MYSQL, check_table, mirror_table
from livesync.errors import BackendError, ConfigurationError


def generation_tables(table: str, token: str) -> tuple[str, str]:
    """The new generation of mirror ``table`` and the name the old one gets at the swap.

    ``<table>_r<token>`` and ``<table>_o<token>``, the table's name cut so both fit in 63
    characters (PostgreSQL's limit).
    """
    base = table[: 63 - len(token) - 2]
    return f"{base}_r{token}", f"{base}_o{token}"


def retired_table(generation: str) -> str:
    """The name the live table gets when generation ``<t>_r<token>`` is swapped in: ``<t>_o<token>``."""
    base, _r, token = generation.rpartition("_r")
    return f"{base}_o{token}"


def table_exists(connection: Connection, name: str, schema: str | None) -> bool:
    """Whether table ``name`` exists in ``schema``."""
    return bool(inspect(connection).has_table(name, schema=schema))


def _qualified(connection: Connection, name: str, schema: str | None) -> str:
    preparer = connection.dialect.identifier_preparer
    return f"{preparer.quote_schema(schema)}.{preparer.quote(name)}" if schema else preparer.quote(name)


def create_generation_table(connection: Connection, live: str, name: str, schema: str | None) -> None:
    """Create the empty table ``name`` shaped like the mirror table ``live``, and check its shape.

    PostgreSQL copies columns, defaults, constraints and indexes (``LIKE ... INCLUDING
    ALL``), MySQL/MariaDB columns and indexes (``CREATE TABLE ... LIKE``), so what an
    operator added comes along; SQLite gets the mirror's own shape. Grants, triggers and
    foreign keys pointing at the table are not copied.
    """
    dialect = connection.dialect.name
    new, old = _qualified(connection, name, schema), _qualified(connection, live, schema)
    if dialect == "postgresql":
        connection.execute(text(f"CREATE TABLE {new} (LIKE {old} INCLUDING ALL)"))
    elif dialect in MYSQL:
        connection.execute(text(f"CREATE TABLE {new} LIKE {old}"))
    else:
        mirror_table(name, schema).create(connection)
    check_table(connection, mirror_table(name, schema), create=False)


def swap_tables(connection: Connection, live: str, name: str, retired: str, schema: str | None, timeout: float) -> None:
    """Rename ``live`` to ``retired`` and ``name`` to ``live``, in ``connection``'s transaction.

    PostgreSQL and SQLite rename both inside the one transaction (SQLite's begun with
    ``BEGIN IMMEDIATE``), MySQL/MariaDB in one ``RENAME TABLE`` of both, which is atomic
    there (its DDL commits by itself). The renames wait for readers' transactions on the
    table; at most ``timeout`` seconds (PostgreSQL's ``statement_timeout`` is the engine's
    already, MySQL's ``lock_wait_timeout`` is set here: its default is a year).
    """
    preparer = connection.dialect.identifier_preparer
    current, new = _qualified(connection, live, schema), _qualified(connection, name, schema)
    if connection.dialect.name in MYSQL:
        connection.execute(text(f"SET SESSION lock_wait_timeout = {max(1, math.ceil(timeout))}"))
        old = _qualified(connection, retired, schema)
        connection.execute(text(f"RENAME TABLE {current} TO {old}, {new} TO {current}"))
        return
    connection.execute(text(f"ALTER TABLE {current} RENAME TO {preparer.quote(retired)}"))
    connection.execute(text(f"ALTER TABLE {new} RENAME TO {preparer.quote(live)}"))


class MirrorGenerations:
    """:class:`~livesync.backends.base.Generations` of :class:`~livesync.backends.sql.SqlBackend`: tables.

    The live generation always is the mirror table (option ``table``); a new one is
    ``<table>_r<token>`` until the swap renames it to ``<table>`` and the old one to
    ``<table>_o<token>``.
    """

    options: Any
    table_name: str

    def _open_engine(self) -> Engine:
        raise NotImplementedError

    def _error(self, what: str, exc: SQLAlchemyError) -> BackendError:
        raise NotImplementedError

    def live_generation(self) -> str:
        """The mirror table's name: whichever table holds it is the live generation."""
        return str(self.options.table)

    def create_generation(self, token: str) -> str:
        """Create ``<table>_r<token>`` like the mirror table (kept as it is when it exists)."""
        name, _retired = generation_tables(self.options.table, token)
        schema = self.options.db_schema

        def create(connection: Connection) -> None:
            if not table_exists(connection, name, schema):
                create_generation_table(connection, self.options.table, name, schema)

        self._ddl(f"cannot create the new generation {name}", create)
        return name

    def write_generation(self, name: str) -> None:
        """Write to table ``name`` from now on (the mirror table stays what readers see)."""
        self.table_name = name

    def swap_generation(self, name: str, live: str) -> str:
        """Rename the mirror table to ``<table>_o<token>`` and ``name`` to the mirror's, in one transaction."""
        retired, schema = retired_table(name), self.options.db_schema

        def swap(connection: Connection) -> None:
            if table_exists(connection, name, schema) or not table_exists(connection, retired, schema):
                swap_tables(connection, self.options.table, name, retired, schema, self.options.timeout)

        self._ddl(f"cannot swap {name} in as {self.options.table}", swap)
        self.table_name = self.options.table
        return retired

    def drop_generation(self, name: str) -> None:
        """Drop table ``name``; the mirror table itself is refused."""
        if name == self.options.table:
            raise ConfigurationError(f"sql table {name} is the live mirror table; it is never dropped by a reindex")
        schema = self.options.db_schema
        self._ddl(
            f"cannot drop {name}",
            lambda connection: connection.execute(text(f"DROP TABLE IF EXISTS {_qualified(connection, name, schema)}")),
        )

    def _ddl(self, what: str, statements: Callable[[Connection], object]) -> None:
        try:
            with self._open_engine().begin() as connection:
                statements(connection)
        except SQLAlchemyError as exc:
            raise self._error(what, exc) from exc
