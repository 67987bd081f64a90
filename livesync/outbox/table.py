"""The ``livesync_outbox`` table (SQLAlchemy Core): its columns, its creation, the relay's engine.

One row is one change, written in the application's own transaction by
:func:`livesync.outbox.emit`::

    id          BIGINT, autoincrement primary key: the order the relay publishes in
    namespace   VARCHAR(64)   the livesync namespace the change goes to
    type        VARCHAR(64)   the object's type
    object_id   VARCHAR(256)  the object's id as text
    integer_id  BOOLEAN       the id is an integer (42 and "42" are different objects)
    flags       INTEGER       bit mask of livesync.changes.FLAGS (the track's stored form)
    created_us  BIGINT        the writer's clock at emit, microseconds since 1970 (lag)

with an index on ``(namespace, id)``, the relay's scan. SQLite gets ``AUTOINCREMENT``
(ids are never reused after a delete); MySQL/MariaDB tables are InnoDB, ``utf8mb4``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    create_engine,
    delete,
    func,
    inspect,
    make_url,
    select,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from livesync import defaults
from livesync.changes import (
    ALL_FLAGS_MASK,
    APPEAR,
    CONTROL_CHARACTERS,
    DISAPPEAR,
    LIFECYCLE,
    MAX_ID_LENGTH,
    Triple,
    flag_names,
    validate_id,
    validate_type,
)
from livesync.errors import ConfigurationError, InvalidChange, OutboxError, describe
from livesync.sqlite import begin_immediate
from livesync.urls import mask_url

TABLE = defaults.OUTBOX_TABLE
_tables: dict[str, Table] = {}
_MYSQL = ("mysql", "mariadb")


def outbox_table(name: str = TABLE) -> Table:
    """The outbox :class:`~sqlalchemy.Table` called ``name`` (one per name, each in its own metadata)."""
    table = _tables.get(name)
    if table is None:
        table = _tables[name] = Table(
            name,
            MetaData(),
            Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
            Column("namespace", String(64), nullable=False),
            Column("type", String(64), nullable=False),
            Column("object_id", String(MAX_ID_LENGTH), nullable=False),
            Column("integer_id", Boolean(create_constraint=False), nullable=False),
            Column("flags", Integer, nullable=False),
            Column("created_us", BigInteger, nullable=False),
            Index(f"{name}_namespace_id", "namespace", "id"),
            sqlite_autoincrement=True,
            mysql_engine="InnoDB",
            mysql_charset="utf8mb4",
        )
    return table


def create_table(engine: Engine | Connection, name: str = TABLE) -> bool:
    """Create the outbox table ``name`` and its index unless it exists; return whether it was created.

    Idempotent, also when two processes race (the loser finds the winner's table).
    """
    table = outbox_table(name)
    if _exists(engine, name):
        return False
    try:
        if isinstance(engine, Connection):
            table.create(engine, checkfirst=True)
        else:
            with engine.begin() as connection:
                table.create(connection, checkfirst=True)
    except SQLAlchemyError:
        if not _exists(engine, name):
            raise
        return False
    return True


def _exists(engine: Engine | Connection, name: str) -> bool:
    return bool(inspect(engine).has_table(name))


def row_change(row: Any, table: str = TABLE) -> Triple:
    """The validated ``(type, id, flags)`` of one outbox row; :class:`OutboxError` names a bad row."""
    return change_of(row.id, row.type, row.object_id, row.integer_id, row.flags, table)


#: Types and flag masks found valid: both checks are pure functions of the value, and few values repeat.
_VALID_TYPES: set[str] = set()
_VALID_MASKS: set[int] = set()


def change_of(row_id: Any, type_: Any, object_id: Any, integer_id: Any, flags: Any, table: str = TABLE) -> Triple:
    """The validated ``(type, id, flags)`` of one outbox row's columns; :class:`OutboxError` names a bad row.

    The same checks as :func:`livesync.changes.validate` of the row's change (the type's
    and flags' verdicts are remembered, the id is checked every time).
    """
    try:
        if type_ not in _VALID_TYPES:
            validate_type(type_)
            if len(_VALID_TYPES) >= 4096:
                _VALID_TYPES.clear()
            _VALID_TYPES.add(type_)
        if integer_id:
            id_: int | str = validate_id(int(object_id))
        else:
            id_ = validate_id(object_id)
        mask = int(flags)
        if mask not in _VALID_MASKS:
            if mask <= 0 or mask & ~ALL_FLAGS_MASK:
                raise InvalidChange("flags", f"{mask} is not a mask of livesync's flags")
            if mask & APPEAR and mask & DISAPPEAR:
                both = ", ".join(flag_names(mask & LIFECYCLE))
                raise InvalidChange("changes", f"{both} both appear and disappear; publish them as two changes")
            _VALID_MASKS.add(mask)
        return type_, id_, mask
    except (InvalidChange, ValueError, TypeError) as exc:
        raise OutboxError(
            f"outbox row {row_id} of table {table} is not a valid change ({describe(exc)}); "
            "fix or delete that row: the relay stops at it to keep every object's changes in order"
        ) from exc


def claimed_changes(rows: Sequence[Sequence[Any]], table: str = TABLE) -> tuple[list[Triple], OutboxError | None]:
    """The validated changes of ``rows`` (``(id, type, object_id, integer_id, flags, ...)``) up to the first bad one.

    Returns the changes of the rows before the first row that is not a valid change, and
    that row's :class:`OutboxError` (``None`` when every row is valid). The checks are
    :func:`change_of`'s, made for the whole batch at once where they can be: one search
    for control characters and one UTF-8 encode over every string id; any doubt and each
    row goes through :func:`change_of` (which names the bad row).
    """
    changes: list[Triple] = []
    strings: list[str] = []
    try:
        for _id, type_, object_id, integer_id, flags, *_rest in rows:
            mask = int(flags)
            if type_ not in _VALID_TYPES or mask not in _VALID_MASKS:
                break
            if integer_id:
                value = int(object_id)
                if value < 0 or value >= 1 << 63:
                    break
                changes.append((type_, value, mask))
            elif type(object_id) is str and 0 < len(object_id) <= MAX_ID_LENGTH:
                strings.append(object_id)
                changes.append((type_, object_id, mask))
            else:
                break
        else:
            joined = "".join(strings)
            if not CONTROL_CHARACTERS.search(joined):
                joined.encode("utf-8")
                return changes, None
    except (ValueError, TypeError, UnicodeEncodeError):
        pass
    changes = []
    for row in rows:
        try:
            changes.append(change_of(row[0], row[1], row[2], row[3], row[4], table))
        except OutboxError as exc:
            return changes, exc
    return changes, None


def relay_engine(url: str, *, timeout: float = 30.0) -> Engine:
    """An engine for the relay: pre-pinged pool, bounded connects, ``READ COMMITTED`` where there is one.

    Each statement of a relay's transaction sees what committed before it: the order
    check (:mod:`livesync.outbox.relay`) needs the rows other relays hold. On SQLite the
    transaction begins with ``BEGIN IMMEDIATE``: relays of one file take turns.
    """
    connect_args: dict[str, Any] = {}
    try:
        backend = _backend(url)
        if backend == "postgresql":
            connect_args["connect_timeout"] = int(timeout)
        elif backend in _MYSQL:
            connect_args.update(connect_timeout=int(timeout), read_timeout=int(timeout), write_timeout=int(timeout))
        elif backend == "sqlite":
            connect_args["timeout"] = timeout
        engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True, hide_parameters=True)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigurationError(
            f"outbox database {mask_url(url)}: {describe(exc)} (install livesync[sql] for PostgreSQL, MySQL/MariaDB "
            "and SQLite)"
        ) from None
    if backend == "sqlite":
        begin_immediate(engine)
        return engine
    return engine.execution_options(isolation_level="READ COMMITTED")


def _backend(url: str) -> str:
    return make_url(url).get_backend_name()


def database_error(url: str, exc: BaseException) -> OutboxError:
    """The one-line error of a failed outbox database, the URL masked."""
    exc = getattr(exc, "orig", None) or exc  # the driver's message, without SQLAlchemy's statement dump
    return OutboxError(f"outbox database {mask_url(url)}: {describe(exc)}")


class RelayStatements:
    """The relay's statements on one table, compiled once for one dialect and run as driver SQL.

    Each is SQLAlchemy Core compiled by the engine's own dialect (its quoting, paramstyle,
    ``FOR UPDATE SKIP LOCKED`` or none on SQLite), then run with
    :meth:`~sqlalchemy.engine.Connection.exec_driver_sql`: no statement is built, cached
    or compiled again per batch, and rows come back as the driver's tuples
    ``(id, type, object_id, integer_id, flags, created_us)``. The delete is ``id =
    ANY(:ids)`` on PostgreSQL and ``id IN (...)`` elsewhere, compiled once per length.
    """

    def __init__(self, dialect: Dialect, table: str, namespace: str, batch: int) -> None:
        t = outbox_table(table)
        self.dialect = dialect
        self.table = t
        ns = t.c.namespace == bindparam("namespace", namespace)
        self.claim = _Compiled(
            select(t.c.id, t.c.type, t.c.object_id, t.c.integer_id, t.c.flags, t.c.created_us)
            .where(ns)
            .order_by(t.c.id)
            .limit(batch)
            .with_for_update(skip_locked=True),
            dialect,
        )
        self.count = _Compiled(select(func.count()).select_from(t).where(ns, t.c.id <= bindparam("top")), dialect)
        self.others = _Compiled(
            select(t.c.id, t.c.type, t.c.object_id, t.c.integer_id).where(ns, t.c.id < bindparam("top")), dialect
        )
        self._any = (
            _Compiled(delete(t).where(t.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger)))), dialect)
            if dialect.name == "postgresql"
            else None
        )
        self._deletes: dict[int, _Compiled] = {}

    def delete(self, connection: Connection, ids: list[int]) -> None:
        """Delete the rows ``ids``."""
        if self._any is not None:
            self._any.run(connection, ids=ids)
            return
        compiled = self._deletes.get(len(ids))
        if compiled is None:
            if len(self._deletes) >= 16:
                self._deletes.clear()
            marks = [bindparam(f"id_{n}", type_=BigInteger) for n in range(len(ids))]
            statement = delete(self.table).where(self.table.c.id.in_(marks))
            compiled = self._deletes[len(ids)] = _Compiled(statement, self.dialect)
        compiled.run(connection, **{f"id_{n}": value for n, value in enumerate(ids)})


class _Compiled:
    """One compiled statement: its SQL text and how to lay out its parameters for the driver."""

    def __init__(self, clause: Any, dialect: Dialect) -> None:
        compiled = clause.compile(dialect=dialect)
        self.sql = compiled.string
        self.defaults = dict(compiled.params)
        self.positions = list(compiled.positiontup) if dialect.positional and compiled.positiontup else None

    def run(self, connection: Connection, **values: Any) -> Any:
        params = {**self.defaults, **values}
        if self.positions is None:
            return connection.exec_driver_sql(self.sql, params)
        return connection.exec_driver_sql(self.sql, tuple(params[name] for name in self.positions))
