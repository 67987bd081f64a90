"""The ``sql`` backend: mirrors every object into one table of PostgreSQL, MySQL/MariaDB or SQLite.

The table's shape and the version-guarded statements are in :mod:`livesync.backends.sql_mirror`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, SecretStr, field_validator
from sqlalchemy import URL, Connection, Engine, Table, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, SQLAlchemyError

from livesync.backends.base import Backend
from livesync.backends.sql_generations import MirrorGenerations
from livesync.backends.sql_mirror import (
    DEFAULT_DRIVERS,
    UPSERT_DIALECTS,
    EncodedDocument,
    check_table,
    create_mirror_engine,
    mirror_table,
    pg_rows,
    pg_update_live,
    pg_upsert,
    update_live,
    upsert,
)
from livesync.errors import BackendError, ConfigurationError, RecordRejected, describe
from livesync.records import Record
from livesync.urls import Scrubber, redact_url

log = logging.getLogger(__name__)

#: Rows per INSERT: 5 parameters each, well below PostgreSQL's 65,535 and SQLite's 32,766 (999 before 3.32).
ROWS_PER_STATEMENT = 1000 if sqlite3.sqlite_version_info >= (3, 32) else 190
#: Document bytes per INSERT, so a batch of large documents stays below MySQL's ``max_allowed_packet``.
BYTES_PER_STATEMENT = 8 * 1024 * 1024
#: MySQL/MariaDB errors that refuse a row's data: CHECK failed (MariaDB 4025, MySQL 3819), invalid or too
#: deep JSON (3140, 3157; MariaDB 4038-4040), a value too long or of the wrong form (1264, 1366, 1406)
MYSQL_DATA_ERRORS = frozenset({4025, 3819, 3140, 3157, 4038, 4039, 4040, 1264, 1366, 1406})
#: A JSON string holding NUL (``\u0000`` after an even number of backslashes): PostgreSQL's JSONB refuses it.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


@dataclass
class _Object:
    """What one batch does to one object: its last create or delete, and the last update after it."""

    row: dict[str, Any] | None = None
    """The row of the highest ``created``/``deleted`` record (all five columns), upserted."""
    written_by: list[Record] = field(default_factory=list)
    """The records folded into ``row`` (rejected together when the database refuses it)."""
    update: dict[str, Any] | None = None
    """The highest ``updated`` record above ``row``'s version, applied to a live row only."""
    updated_by: list[Record] = field(default_factory=list)
    """The records folded into ``update``."""


class SqlBackend(MirrorGenerations, Backend):
    """Keeps one row per object in a mirror table, guarded by version.

    - ``created``: a live row with the record's document (``{}`` when it has none: the
      agent has no loader), inserted or replacing an older row or tombstone;
    - ``updated``: the version and document (``{}`` without one) of a live row of a
      lower version; an absent object or a tombstone is left as it is, version
      included: only ``created`` makes an object live (the rule of every backend);
    - ``deleted``: a tombstone (``deleted`` true, ``document`` NULL) keeping the
      version, inserted when the object was never seen, so a late stale ``created``
      cannot resurrect it.

    A stored row is replaced only by a record of a higher version, inside the statement
    (``ON CONFLICT ... WHERE`` / ``ON DUPLICATE KEY UPDATE`` with ``CASE``), so concurrent
    writers, resends and out-of-order partitions never let an older state win. Several
    records of one object in a batch fold into one row first, as if applied in version
    order. A batch is one transaction: one INSERT for the creates and deletes (per
    1,000 rows or 8 MiB of documents), then one UPDATE (one parameter set per object)
    for the updates.

    Refused records (:class:`~livesync.errors.RecordRejected`, the rest written): a
    document that is not JSON-serialisable or not valid unicode, larger than
    ``max_document_bytes``, holding a NUL character (on PostgreSQL), or refused by the
    database for its data (the batch is then written again with one savepoint per row,
    to find which). Anything else (unreachable, timed out, deadlocked, missing table,
    or every record refused) is a :class:`~livesync.errors.BackendError`: nothing counts.

    The table is checked when the backend opens (created when missing with
    ``create=true``); one of the wrong shape is refused with a
    :class:`~livesync.errors.ConfigurationError` naming its wrong columns.
    :attr:`table_name` is the only place that names the table, the seam for writing a
    new generation of it and swapping it in (:class:`~livesync.backends.sql_generations.MirrorGenerations`).
    """

    name = "sql"

    class Options(Backend.Options):
        """Options of the ``sql`` backend."""

        url: str = Field(
            description="SQLAlchemy URL, e.g. postgresql://user@host/db (a reference when it has a password)"
        )
        password: SecretStr | None = Field(default=None, description="the database password, kept out of the url")
        table: str = Field(default="livesync_mirror", min_length=1, max_length=63, description="the mirror table")
        db_schema: str | None = Field(default=None, alias="schema", min_length=1, description="the table's schema")
        create: bool = Field(default=False, description="create the table when it does not exist")
        timeout: float = Field(default=30.0, gt=0, description="seconds to connect, and for each statement")
        max_document_bytes: int = Field(
            default=4 * 1024 * 1024, gt=0, description="larger documents (as UTF-8 JSON) are refused"
        )

        @field_validator("url")
        @classmethod
        def _check_url(cls, value: str) -> str:
            value = value.strip()
            try:
                url = make_url(value)
            except ArgumentError:
                raise ValueError("is not a SQLAlchemy URL (dialect+driver://user@host/database)") from None
            if url.get_backend_name() not in UPSERT_DIALECTS:
                raise ValueError(
                    f"dialect {url.get_backend_name()!r} is not supported (postgresql, mysql, mariadb, sqlite)"
                )
            return value

    options: Options

    def __init__(self, agent_id: str, options: Backend.Options) -> None:
        super().__init__(agent_id, options)
        self.url = redact_url(self.options.url)
        """The database URL as shown in messages and logs (no credentials, no query)."""
        self.table_name = self.options.table
        """The table written: the one place naming it (a reindex writes a new generation under another name)."""
        password = self.options.password.get_secret_value() if self.options.password else None
        self._scrub = Scrubber(password, url=self.options.url)
        """``text`` without the password or any credential piece of the URL."""
        self._engine: Engine | None = None

    @classmethod
    def prepare_options(cls, options: Backend.Options, raw: Mapping[str, object]) -> dict[str, object]:
        """Store a SQLite database path absolute (workers run elsewhere); refuse a password given twice."""
        assert isinstance(options, cls.Options)
        url = make_url(options.url)
        if options.password is not None and url.password is not None:
            raise ConfigurationError("option 'password': the url holds a password already; give it in one place")
        database = url.database or ""
        if url.get_backend_name() == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
            absolute = url.set(database=os.path.abspath(os.path.expanduser(database)))
            return {**raw, "url": absolute.render_as_string(hide_password=False)}
        return dict(raw)

    @property
    def dialect(self) -> str:
        """The database's dialect name (``postgresql``, ``mysql``, ``mariadb``, ``sqlite``)."""
        return self._open_engine().dialect.name

    def open(self) -> None:
        """Create the engine, connect, and check (or create) the table."""
        if self._engine is not None:
            return
        engine = create_mirror_engine(self._engine_url(), self.options.timeout)
        try:
            with engine.begin() as connection:
                check_table(connection, self._table(), create=self.options.create)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise self._error("cannot open the mirror table", exc) from exc
        except BaseException:
            engine.dispose()
            raise
        self._engine = engine

    def close(self) -> None:
        """Close the engine's connections."""
        if self._engine is not None:
            engine, self._engine = self._engine, None
            engine.dispose()

    def upload(self, records: Sequence[Record]) -> None:
        """Write the batch in one transaction; raise RecordRejected for the records the target refuses."""
        engine = self._open_engine()
        rejections: list[tuple[Record, str]] = []
        objects = self._fold(records, rejections)
        if objects:
            ordered = [objects[key] for key in sorted(objects)]  # one lock order for concurrent writers
            rows = [state.row for state in ordered if state.row is not None]
            updates = [state.update for state in ordered if state.update is not None]
            try:
                try:
                    with engine.begin() as connection:
                        self._write(connection, rows, updates)
                except DBAPIError as exc:
                    if not _refused_for_data(exc):
                        raise
                    log.info("sql %s refused a batch (%s); writing it one row at a time", self.url, _cause(exc))
                    rejections += self._isolate(engine, objects, rows, updates)
            except SQLAlchemyError as exc:
                raise self._error(f"batch of {len(records)} record(s) failed", exc) from exc
        if rejections:
            raise RecordRejected(rejections)

    def _write(self, connection: Connection, rows: Sequence[dict[str, Any]], updates: Sequence[dict[str, Any]]) -> None:
        """The upserts (one INSERT per chunk), then the updates of live rows (one UPDATE, many parameter sets)."""
        table = self._table()
        if connection.dialect.name == "postgresql":
            for chunk in _chunks(rows):
                connection.execute(pg_upsert(table), {"rows": pg_rows(chunk)})
            if updates:
                connection.execute(pg_update_live(table), {"rows": pg_rows(updates, prefix="k_")})
            return
        for chunk in _chunks(rows):
            connection.execute(upsert(table, connection.dialect.name), chunk)
        if updates:
            connection.execute(update_live(table), list(updates))

    def _fold(self, records: Sequence[Record], rejections: list[tuple[Record, str]]) -> dict[tuple[str, str], _Object]:
        """Each object's writes, as if its records were applied in version order; refused documents left out.

        Of the creates and deletes only the highest version matters (each replaces the
        whole row); of the updates after it only the highest (each replaces version and
        document, on a live row).
        """
        objects: dict[tuple[str, str], _Object] = {}
        for record in records:
            document: EncodedDocument | None = None
            if record.action != "deleted":
                encoded = self._encode(record)
                if not isinstance(encoded, EncodedDocument):
                    rejections.append((record, encoded))
                    continue
                document = encoded
            key = (record.type, str(record.id))
            state = objects.setdefault(key, _Object())
            if record.action == "updated":
                if state.update is None or record.version >= state.update["k_version"]:
                    state.update = {
                        "k_type": key[0],
                        "k_id": key[1],
                        "k_version": record.version,
                        "k_document": document,
                    }
                state.updated_by.append(record)
                continue
            if state.row is None or record.version >= state.row["version"]:
                state.row = {
                    "type": key[0],
                    "id": key[1],
                    "version": record.version,
                    "document": document,
                    "deleted": record.action == "deleted",
                }
            state.written_by.append(record)
        for state in objects.values():
            if state.row is not None and state.update is not None and state.update["k_version"] <= state.row["version"]:
                state.update = None
        return objects

    def _encode(self, record: Record) -> EncodedDocument | str:
        """The record's document as JSON text, or why it is refused (a plain ``str``)."""
        try:
            text = json.dumps(
                record.document if record.document is not None else {},
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            )
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:  # a ValueError too
            return "document is not valid unicode (a lone surrogate)"
        except (TypeError, ValueError, RecursionError) as exc:
            return f"document is not JSON-serialisable: {exc}"
        if size > self.options.max_document_bytes:
            limit = self.options.max_document_bytes
            return f"document is {size:,} bytes as JSON, more than max_document_bytes ({limit:,})"
        if "\\u0000" in text and _NUL_ESCAPE.search(text) and self.dialect == "postgresql":
            return "document holds a NUL character (\\u0000), which PostgreSQL's JSONB cannot store"
        return EncodedDocument(text)

    def _isolate(
        self,
        engine: Engine,
        objects: Mapping[tuple[str, str], _Object],
        rows: Sequence[dict[str, Any]],
        updates: Sequence[dict[str, Any]],
    ) -> list[tuple[Record, str]]:
        """Write the batch again with a savepoint per row; return the records of the rows refused."""
        refused: list[tuple[Record, str]] = []
        writes: list[tuple[tuple[str, str], list[dict[str, Any]], list[dict[str, Any]]]] = [
            ((row["type"], row["id"]), [row], []) for row in rows
        ]
        writes += [((update["k_type"], update["k_id"]), [], [update]) for update in updates]
        refused_writes = 0
        with engine.begin() as connection:
            for key, upserts, live_updates in writes:
                try:
                    with connection.begin_nested():
                        self._write(connection, upserts, live_updates)
                except DBAPIError as exc:
                    if not _refused_for_data(exc):
                        raise
                    refused_writes += 1
                    reason = f"refused by the database: {self._scrub(_cause(exc))}"
                    state = objects[key]
                    refused += [(record, reason) for record in (state.written_by if upserts else state.updated_by)]
            if refused_writes == len(writes) > 1:
                raise BackendError(
                    f"sql {self.url}: the database refused every row of a batch of {len(writes)}, also one at a time "
                    f"({refused[0][1]}); the target refuses everything, so nothing was dead-lettered"
                )
        return refused

    def _table(self) -> Table:
        return _table_cache(self.table_name, self.options.db_schema)

    def _open_engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError(f"{self!r} is not open; use it as a context manager or call open()")
        return self._engine

    def _engine_url(self) -> URL:
        url = make_url(self.options.url)
        driver = DEFAULT_DRIVERS.get(url.drivername)
        if driver is not None:
            url = url.set(drivername=f"{url.drivername}+{driver}")
        if self.options.password is not None:
            url = url.set(password=self.options.password.get_secret_value())
        return url

    def _error(self, what: str, exc: SQLAlchemyError) -> BackendError:
        return BackendError(f"sql {self.url}: {what}: {self._scrub(_cause(exc))}")


_TABLES: dict[tuple[str, str | None], Table] = {}


def _table_cache(name: str, schema: str | None) -> Table:
    """One Table object per (name, schema), so SQLAlchemy's statement cache is shared by every batch."""
    table = _TABLES.get((name, schema))
    if table is None:
        table = _TABLES[(name, schema)] = mirror_table(name, schema)
    return table


def _refused_for_data(exc: DBAPIError) -> bool:
    """Whether the database refused a row for its data (a constraint, a value), not for its own state.

    PyMySQL reports the errors it has no class for as OperationalError: MySQL's and
    MariaDB's constraint and JSON errors are told by their codes.
    """
    if isinstance(exc, DataError | IntegrityError):
        return not exc.connection_invalidated
    code = exc.orig.args[0] if exc.orig is not None and exc.orig.args else None
    return isinstance(code, int) and code in MYSQL_DATA_ERRORS


def _cause(exc: SQLAlchemyError) -> str:
    """The driver's error of ``exc`` in one line (SQLAlchemy's own text adds the statement)."""
    orig = getattr(exc, "orig", None)
    return describe(orig if isinstance(orig, BaseException) else exc)


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """``rows`` in INSERTs of at most :data:`ROWS_PER_STATEMENT` rows and about :data:`BYTES_PER_STATEMENT`."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        length = len(row["document"] or "")
        if chunk and (len(chunk) >= ROWS_PER_STATEMENT or size + length > BYTES_PER_STATEMENT):
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += length
    if chunk:
        yield chunk
