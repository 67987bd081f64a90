"""The mirror table of the ``sql`` backend: its shape, the check of an existing one, the guarded writes, the engine.

One row per object, primary key ``(type, id)``::

    type      VARCHAR(64)      the object's type
    id        VARCHAR(256)     str(id): an int id 42 and a str id "42" are one row
                               (VARBINARY(1024) on MySQL/MariaDB: their string
                               collations fold case and trailing spaces)
    version   BIGINT           the version of the last record applied
    document  JSON             JSONB on PostgreSQL; NULL for a tombstone
    deleted   BOOLEAN          a tombstone keeps its row and version

Every write is guarded by ``version`` inside the statement itself, so concurrent
writers (an agent's partitions) and resends never let an older state win:
``INSERT ... ON CONFLICT (type, id) DO UPDATE ... WHERE mirror.version < excluded.version``
on PostgreSQL and SQLite, ``INSERT ... ON DUPLICATE KEY UPDATE col = CASE WHEN
VALUES(version) > version ...`` on MySQL/MariaDB (``version`` assigned last: MySQL
applies assignments left to right, so a ``version`` assigned first would change the
later comparisons). On PostgreSQL a batch is one set-based statement over the batch sent
as one JSON array (``jsonb_to_recordset``): one execution, one plan, whatever its size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    URL,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Dialect,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    bindparam,
    case,
    create_engine,
    inspect,
    not_,
    text,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine.interfaces import ReflectedColumn
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.sql.dml import Insert, Update
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.types import TypeEngine, _Binary

from livesync.errors import ConfigurationError, describe
from livesync.sqlite import begin_immediate
from livesync.urls import redact_url

COLUMNS = ("type", "id", "version", "document", "deleted")
#: Drivers the ``sql`` extra installs, used when a URL names none (``postgresql://``).
DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}
MYSQL = frozenset({"mysql", "mariadb"})
UPSERT_DIALECTS = frozenset({"postgresql", "sqlite", *MYSQL})


class EncodedDocument(str):
    """A document already encoded as JSON text: the engine's JSON serializer passes it through as is.

    The backend encodes each document once, to check it (JSON-serialisable, size) before
    anything is sent; the bind step must not encode that text a second time.
    """

    __slots__ = ()


def serialize_json(value: Any) -> str:
    """The engine's ``json_serializer``: pre-encoded documents as they are, anything else as compact JSON."""
    if isinstance(value, EncodedDocument):
        return str.__str__(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ObjectIdText(TypeDecorator[str]):
    """``str(id)``: VARCHAR(256), or VARBINARY(1024) on MySQL/MariaDB (exact byte comparison), read back as str."""

    impl = String(256)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in MYSQL:
            return dialect.type_descriptor(mysql.VARBINARY(1024))
        return dialect.type_descriptor(String(256))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return value.encode("utf-8") if dialect.name in MYSQL and isinstance(value, str) else value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        return value.decode("utf-8") if isinstance(value, bytes) else value


def mirror_table(name: str, schema: str | None = None) -> Table:
    """The mirror table ``name`` (in ``schema``) as livesync writes and creates it."""
    return Table(
        name,
        MetaData(),
        Column("type", String(64), primary_key=True),
        Column("id", ObjectIdText(), primary_key=True),
        Column("version", BigInteger, nullable=False),
        Column("document", JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")),
        Column("deleted", Boolean(create_constraint=False), nullable=False),
        schema=schema,
    )


def check_table(connection: Connection, table: Table, *, create: bool) -> None:
    """Make sure ``table`` exists with the mirror's shape; create it when missing and ``create``.

    Raises :class:`~livesync.errors.ConfigurationError` naming the table and every
    missing or wrong column; an existing table is never altered.
    """
    where = f"{table.schema}.{table.name}" if table.schema else table.name
    inspector = inspect(connection)
    if not inspector.has_table(table.name, schema=table.schema):
        if not create:
            raise ConfigurationError(
                f"sql table {where} does not exist; create it (see the sql backend's docs) or give --option create=true"
            )
        table.create(connection, checkfirst=True)
        return
    found = {column["name"].lower(): column for column in inspector.get_columns(table.name, schema=table.schema)}
    problems = [
        problem
        for name in COLUMNS
        if (problem := _column_problem(name, found.get(name), connection.dialect.name)) is not None
    ]
    problems += [
        f"column {column['name']} is NOT NULL without a default (livesync does not write it)"
        for name, column in found.items()
        if name not in COLUMNS and not column["nullable"] and column.get("default") is None
        and column.get("autoincrement") is not True
    ]  # fmt: skip
    primary = [
        name.lower() for name in inspector.get_pk_constraint(table.name, schema=table.schema)["constrained_columns"]
    ]
    if sorted(primary) != ["id", "type"]:
        problems.append(f"the primary key is ({', '.join(primary) or 'none'}), not (type, id)")
    if problems:
        raise ConfigurationError(f"sql table {where} is not a livesync mirror table: {'; '.join(problems)}")


def _column_problem(name: str, column: ReflectedColumn | None, dialect: str) -> str | None:
    if column is None:
        return f"column {name} is missing"
    kind = column["type"]
    if name in ("type", "id"):
        fits = isinstance(kind, String | _Binary)
        wanted = "a string"
    elif name == "version":
        # SQLite's INTEGER holds 64 bits whatever its declared name; elsewhere it must be BIGINT
        fits = isinstance(kind, BigInteger) or (dialect == "sqlite" and isinstance(kind, Integer))
        wanted = "a 64-bit integer (BIGINT)"
    elif name == "document":
        # MariaDB's JSON is LONGTEXT with a JSON_VALID check, and reflects as such
        fits = isinstance(kind, JSON) or (dialect in MYSQL and isinstance(kind, String))
        wanted = "JSON" + (" or JSONB" if dialect == "postgresql" else "")
    else:
        fits = isinstance(kind, Boolean | Integer)
        wanted = "a boolean"
    if not fits:
        return f"column {name} is {kind}, not {wanted}"
    if name != "document" and column["nullable"] and name not in ("type", "id"):
        return f"column {name} may be NULL"
    return None


def upsert(table: Table, dialect: str) -> Insert:
    """The INSERT that replaces a stored row only when its version is lower, executed with a list of rows.

    Each row carries all five columns; one execution holds each ``(type, id)`` at most
    once. Compiled once and cached by SQLAlchemy; the driver sends the list (PyMySQL as
    one multi-row INSERT). PostgreSQL uses :func:`pg_upsert` instead.
    """
    if dialect in MYSQL:
        statement = mysql.insert(table)
        newer = statement.inserted.version > table.c.version
        # version last: MySQL assigns left to right, and the comparisons read the row as assigned so far
        return statement.on_duplicate_key_update(
            [
                ("document", case((newer, statement.inserted.document), else_=table.c.document)),
                ("deleted", case((newer, statement.inserted.deleted), else_=table.c.deleted)),
                ("version", case((newer, statement.inserted.version), else_=table.c.version)),
            ]
        )
    module = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(table)
    excluded = statement.excluded
    guarded: Insert = statement.on_conflict_do_update(
        index_elements=[table.c.type, table.c.id],
        set_={"version": excluded.version, "document": excluded.document, "deleted": excluded.deleted},
        where=table.c.version < excluded.version,
    )
    return guarded


def pg_upsert(table: Table) -> TextClause:
    """PostgreSQL's :func:`upsert` as one set-based statement over a batch sent as one JSON array.

    One execution per batch whatever its size, and the same text every time (the server
    keeps its plan), where a list of parameter sets would run the statement once per
    row; the server parses the documents in the array once (:func:`pg_rows` builds it).
    """
    name = postgresql.dialect().identifier_preparer.format_table(table)  # type: ignore[no-untyped-call]
    return text(
        f"INSERT INTO {name} (type, id, version, document, deleted) SELECT t, i, v, d, x "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS u({_PG_ROW}, x boolean) "
        "ON CONFLICT (type, id) DO UPDATE SET version = excluded.version, document = excluded.document, "
        f"deleted = excluded.deleted WHERE {name}.version < excluded.version"
    )


def pg_update_live(table: Table) -> TextClause:
    """PostgreSQL's :func:`update_live` as one set-based statement (parameter ``rows``, see :func:`pg_rows`)."""
    name = postgresql.dialect().identifier_preparer.format_table(table)  # type: ignore[no-untyped-call]
    return text(
        f"UPDATE {name} AS m SET version = u.v, document = u.d "
        f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS u({_PG_ROW}) "
        "WHERE m.type = u.t AND m.id = u.i AND m.version < u.v AND NOT m.deleted"
    )


_PG_ROW = "t text, i text, v bigint, d jsonb"


def pg_rows(rows: Sequence[Mapping[str, Any]], prefix: str = "") -> str:
    """The rows as one JSON array of ``{"t", "i", "v", "d", "x"}``, documents pasted in as encoded."""
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    deleted = f"{prefix}deleted"
    return (
        "["
        + ",".join(
            f'{{"t":{dumps(row[prefix + "type"])},"i":{dumps(row[prefix + "id"])},"v":{row[prefix + "version"]:d},'
            f'"d":{row[prefix + "document"] or "null"},"x":{"true" if row.get(deleted) else "false"}}}'
            for row in rows
        )
        + "]"
    )


def update_live(table: Table) -> Update:
    """Replace a live row whose version is lower (an ``updated`` record): its version and document.

    Parameters ``k_type``, ``k_id``, ``k_version``, ``k_document``; an absent row or a
    tombstone is left as it is, version included (only ``created`` makes an object live).
    """
    return (
        update(table)
        .where(
            table.c.type == bindparam("k_type"),
            table.c.id == bindparam("k_id"),
            table.c.version < bindparam("k_version"),
            not_(table.c.deleted),
        )
        .values(version=bindparam("k_version"), document=bindparam("k_document", type_=table.c.document.type))
    )


def create_mirror_engine(url: URL, timeout: float) -> Engine:
    """An engine for ``url`` whose connects and statements end within ``timeout`` seconds."""
    backend = url.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args["connect_timeout"] = max(1, math.ceil(timeout))
        if "options" not in url.query:
            connect_args["options"] = f"-c statement_timeout={math.ceil(timeout * 1000)}"
    elif backend in MYSQL:
        connect_args.update(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    elif backend == "sqlite":
        connect_args["timeout"] = timeout
    try:
        engine = create_engine(
            url,
            connect_args=connect_args,
            json_serializer=serialize_json,
            hide_parameters=True,  # documents never reach messages or logs
            pool_pre_ping=True,
            pool_timeout=timeout,
        )
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigurationError(
            f"option 'url': cannot use {redact_url(url.render_as_string())}: {describe(exc)} "
            "(install livesync[sql] for PostgreSQL, MySQL/MariaDB and SQLite)"
        ) from None
    if backend == "sqlite":
        begin_immediate(engine)
    return engine
