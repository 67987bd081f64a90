"""A loader for SQLAlchemy models: each type maps to a model (or a select), one ``IN`` query per type per batch.

::

    from livesync.loaders.sqlalchemy import SQLAlchemyLoader

    load = SQLAlchemyLoader(
        engine,                                   # or a sessionmaker
        {"event": Event, "contribution": select(Contribution).join(Event)},
        visible={"event": Event.private.is_(False)},   # the agent's access: others leave its target
    )
    load([("event", 42), ("event", 7)])          # -> {("event", 42): {"id": 42, "title": ...}}
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, inspect, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from livesync.errors import ConfigurationError
from livesync.records import ObjectId

log = logging.getLogger(__name__)

Key = tuple[str, ObjectId]
#: ``serialize(type, obj) -> document``: ``obj`` is a mapped instance, or a dict of a row's columns.
Serializer = Callable[[str, Any], dict[str, Any] | None]
#: Per type: a SQL condition, or a function narrowing the select.
Visibility = ColumnElement[bool] | Callable[[Select[Any]], Select[Any]]
CHUNK = 1000
"""Ids per ``IN`` list; more make several queries of one type."""
_ID_LABEL = "livesync_loader_id"


class SQLAlchemyLoader:
    """Loads the documents of a batch from SQLAlchemy models: one ``IN`` query per type (per 1,000 ids).

    ``types`` maps each livesync type to a mapped class or a ``Select`` (of an entity or
    of columns; joins and conditions of its own are kept). The ids are matched against
    ``id_column`` (per type: an attribute name or a column; default the primary key),
    converted to its Python type first: ``"42"`` matches an integer key 42, a string that
    is no such value (``"abc"`` for an integer key, not a UUID for a UUID key) matches
    nothing, so the object is left out (a warning names it).

    ``visible`` is the agent's access (an agent that sees what one user or group may
    see): a function ``(type, select) -> select``, or per type a condition or a function
    ``select -> select``. An object it hides is left out of the mapping, so its record
    is uploaded as ``deleted`` and it leaves the target (an event turned private
    disappears from a public index on its ``protection_changed``).

    ``serialize(type, obj)`` makes the document (``None`` leaves the object out); by
    default the mapped columns (or the row's columns) as JSON-safe values: datetimes
    and dates ISO 8601, ``Decimal`` and ``UUID`` as strings, bytes as base64, enums by value.
    """

    def __init__(
        self,
        bind: Engine | sessionmaker[Session],
        types: Mapping[str, type[Any] | Select[Any]],
        *,
        serialize: Serializer | None = None,
        visible: Callable[[str, Select[Any]], Select[Any]] | Mapping[str, Visibility] | None = None,
        id_column: Mapping[str, str | ColumnElement[Any] | InstrumentedAttribute[Any]] | None = None,
        chunk_size: int = CHUNK,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self._sessions: Callable[[], Session] = (lambda: Session(bind)) if isinstance(bind, Engine) else bind
        self._serialize = serialize or default_serialize
        self._visible = visible
        self._chunk_size = chunk_size
        self._queries = {name: _Query.of(name, target, (id_column or {}).get(name)) for name, target in types.items()}

    def __call__(self, keys: Sequence[Key]) -> dict[Key, dict[str, Any] | None]:
        """The documents of the objects of ``keys`` that exist and are visible, keyed as given."""
        wanted: dict[str, dict[Any, list[Key]]] = {}
        for key in keys:
            type_, id_ = key
            query = self._queries.get(type_)
            if query is None:
                raise ConfigurationError(f"SQLAlchemyLoader: no model or select for type {type_!r}")
            value = query.convert(id_)
            if value is _NO_VALUE:
                log.warning("loader: %s id %r cannot be a value of %s; left out (uploaded as deleted)", *key, query.id)
                continue
            wanted.setdefault(type_, {}).setdefault(value, []).append(key)
        documents: dict[Key, dict[str, Any] | None] = {}
        with self._sessions() as session:
            for type_, by_value in wanted.items():
                query = self._queries[type_]
                for chunk in _chunks(list(by_value), self._chunk_size):
                    for value, obj in query.load(session, self._narrow(type_, query.select), chunk):
                        document = self._serialize(type_, obj)
                        if document is not None:
                            documents.update((key, document) for key in by_value.get(value, ()))
        return documents

    def _narrow(self, type_: str, statement: Select[Any]) -> Select[Any]:
        """``statement`` with the agent's visibility applied."""
        if self._visible is None:
            return statement
        if callable(self._visible):
            return self._visible(type_, statement)
        rule = self._visible.get(type_)
        if rule is None:
            return statement
        if isinstance(rule, ColumnElement):
            return statement.where(rule)
        return rule(statement)


class _Query:
    """How one type is loaded: the select, its id column and the Python type of that column."""

    def __init__(self, select_: Select[Any], id_: Any, entity: bool) -> None:
        self.select = select_
        self.id = id_
        self.entity = entity
        try:
            self.python_type: type[Any] | None = id_.type.python_type
        except NotImplementedError:
            self.python_type = None

    @classmethod
    def of(
        cls,
        name: str,
        target: type[Any] | Select[Any],
        id_column: str | ColumnElement[Any] | InstrumentedAttribute[Any] | None,
    ) -> _Query:
        if isinstance(target, Select):
            statement = target
            descriptions = target.column_descriptions
            model = descriptions[0].get("entity") if descriptions else None
            entity = len(descriptions) == 1 and model is not None and descriptions[0].get("expr") is model
        else:
            statement, model, entity = select(target), target, True
        if id_column is not None and not isinstance(id_column, str):  # a column or a mapped attribute
            return cls(statement, id_column, entity)
        if id_column is not None:
            column = getattr(model, id_column, None) if model is not None else None
            if column is None:
                column = statement.selected_columns.get(id_column)
            if column is None:
                raise ConfigurationError(f"SQLAlchemyLoader: type {name!r} has no column {id_column!r}")
            return cls(statement, column, entity)
        if model is None:
            raise ConfigurationError(f"SQLAlchemyLoader: give id_column for type {name!r} (its select has no entity)")
        primary_key = inspect(model).primary_key
        if len(primary_key) != 1:
            raise ConfigurationError(f"SQLAlchemyLoader: type {name!r} has a composite primary key; give id_column")
        return cls(statement, primary_key[0], entity)

    def convert(self, id_: ObjectId) -> Any:
        """``id_`` as a value of the id column, or ``_NO_VALUE`` when it cannot be one."""
        kind = self.python_type
        if kind is int and isinstance(id_, str):
            return int(id_) if id_.isascii() and id_.isdigit() and str(int(id_)) == id_ else _NO_VALUE
        if kind is str:
            return str(id_)
        if kind is uuid.UUID:
            try:
                return uuid.UUID(str(id_))
            except ValueError:
                return _NO_VALUE
        return id_

    def load(self, session: Session, statement: Select[Any], values: Sequence[Any]) -> Iterator[tuple[Any, Any]]:
        """``(id value, object)`` of the rows of ``statement`` whose id is one of ``values``."""
        rows = session.execute(statement.add_columns(self.id.label(_ID_LABEL)).where(self.id.in_(values)))
        for row in rows:
            mapping = row._mapping
            value = mapping[_ID_LABEL]
            if self.entity:
                yield value, row[0]
            else:
                yield value, {str(key): item for key, item in mapping.items() if key != _ID_LABEL}


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


_NO_VALUE = _NoValue()


def default_serialize(type_: str, obj: Any) -> dict[str, Any]:
    """A mapped instance's column attributes (or a row's columns) as JSON-safe values."""
    if isinstance(obj, Mapping):
        return {str(key): json_safe(value) for key, value in obj.items()}
    mapper = inspect(obj).mapper
    return {attribute.key: json_safe(getattr(obj, attribute.key)) for attribute in mapper.column_attrs}


def json_safe(value: Any) -> Any:
    """``value`` as something ``json.dumps`` writes: ISO 8601 times, Decimal/UUID as str, bytes base64."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    return str(value)


def _chunks(values: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]
