"""The session integration: per-transaction changes, published after commit or written to the outbox.

See :mod:`livesync.integrations.sqlalchemy`.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, Select, event
from sqlalchemy.orm import Session, SessionTransaction

from livesync import defaults
from livesync.changes import Item, Triple, flag_names
from livesync.client import MAX_BATCH, Publisher, Unit, validate_items
from livesync.errors import ConfigurationError
from livesync.integrations.rules import CascadeFlags, ModelRule, object_id
from livesync.integrations.sqlalchemy.registry import Registry
from livesync.namespace import check_namespace

log = logging.getLogger(__name__)

Mode = Literal["direct", "outbox"]
#: ``on_error(changes, exc)``: direct mode's publish after a commit failed with ``exc``.
ErrorHandler = Callable[[list[Triple], Exception], None]
_EVENTS = ("before_flush", "after_flush", "before_commit", "after_commit", "after_transaction_end")


class _Frame:
    """The pending changes of one transaction or savepoint."""

    __slots__ = ("connection", "prepares", "unit")

    def __init__(self) -> None:
        self.unit = Unit()
        self.prepares = 0  # before_commit calls seen while it was the innermost (outbox mode)
        self.connection: Connection | None = None  # the session's, taken at before_commit (outbox mode)


class LiveSync:
    """Collects registered models' changes per session transaction; publishes or writes them on commit.

    ``mode="direct"`` publishes through ``publisher`` after each commit; ``"outbox"``
    writes to the outbox ``table`` of the session's database (create it with
    :func:`livesync.outbox.create_table`), for ``namespace`` (default livesync's): the
    relay of that namespace publishes the rows. ``on_error(changes, exc)`` replaces the
    log line of a failed publish after a commit (direct mode).
    """

    def __init__(
        self,
        mode: Mode = "direct",
        *,
        publisher: Publisher | None = None,
        namespace: str | None = None,
        table: str = defaults.OUTBOX_TABLE,
        on_error: ErrorHandler | None = None,
    ) -> None:
        if mode not in ("direct", "outbox"):
            raise ConfigurationError(f"mode must be 'direct' or 'outbox', got {mode!r}")
        if mode == "direct" and publisher is None:
            raise ConfigurationError("direct mode publishes through a Publisher: LiveSync(publisher=...)")
        if mode == "direct" and namespace is not None:
            raise ConfigurationError("direct mode publishes to its publisher's namespace; leave namespace= out")
        self.mode: Mode = mode
        self.publisher = publisher
        self.namespace = check_namespace(namespace or (publisher.namespace if publisher else defaults.NAMESPACE))
        self.table = table
        self.on_error = on_error
        self.registry = Registry()

    # -- registration ---------------------------------------------------------------

    def register(
        self,
        model: type,
        type: str,
        *,
        id: str | Callable[[Any], object] | None = None,
        flags: dict[str, str | Sequence[str] | None] | None = None,
        default: str | Sequence[str] | None = "data_changed",
        soft_delete: str | None = None,
        published: str | None = None,
        cascade: dict[str, CascadeFlags] | Iterable[str] | None = None,
    ) -> None:
        """Publish the changes of ``model`` (and its subclasses) as objects of ``type``.

        ``id`` is the object's id (default: the primary key); ``flags``, ``default``,
        ``soft_delete``, ``published`` and ``cascade`` are those of
        :class:`~livesync.integrations.rules.ModelRule`. An attribute set while it was
        not loaded (expired after a commit) counts as changed, as SQLAlchemy writes it
        too; the old values of ``soft_delete`` and ``published`` are loaded when they
        are set, so their transitions are exact.
        """
        rule = ModelRule.build(
            type, flags=flags, default=default, soft_delete=soft_delete, published=published, cascade=cascade
        )
        self.registry.add(model, rule, id)

    def attach(self, target: Any) -> None:
        """Listen to the sessions of ``target``: a ``sessionmaker``, a ``Session`` subclass, or one ``Session``."""
        for name in _EVENTS:
            if name == "before_commit" and self.mode == "direct":
                continue
            event.listen(target, name, getattr(self, f"_{name}"))

    def detach(self, target: Any) -> None:
        """Stop listening to ``target``'s sessions."""
        for name in _EVENTS:
            handler = getattr(self, f"_{name}")
            if event.contains(target, name, handler):
                event.remove(target, name, handler)

    # -- bulk statements --------------------------------------------------------------

    def emit_many(self, session: Session | Connection, items: Iterable[Item]) -> None:
        """Add changes to the current transaction of ``session`` (published/written on its commit).

        For ``update()``/``delete()`` statements and other writes the flush does not see.
        Items are ``(type, id, [flags])`` tuples as for :meth:`Publisher.emit_many`, all
        validated first. A Core ``Connection`` (outbox mode only) has them written now.
        """
        triples = validate_items(items)
        if isinstance(session, Connection):
            if self.mode != "outbox":
                raise ConfigurationError("a Connection has no commit event to publish after: use a Session")
            unit = Unit()
            for type_, id_, mask in triples:
                unit.emit(type_, id_, *flag_names(mask))
            self._write(session, unit)
            return
        session.connection()  # begins the session's transaction when none is open
        frame = self._frame(session)
        target = Unit() if self._rows_written(session, frame) else frame.unit
        for type_, id_, mask in triples:
            target.emit(type_, id_, *flag_names(mask))
        if target is not frame.unit:
            self._write(session.connection(), target)

    def emit_for(
        self, session: Session | Connection, statement: Select[Any], *flags: str, type: str | None = None
    ) -> int:
        """Add a change with ``flags`` for every object ``statement`` selects; return how many.

        ``statement`` selects a registered entity (``select(Event).where(...)``: only its
        ids are read), or, with ``type``, the ids themselves (``select(Event.id)``). Run
        it before an ``update()`` or ``delete()`` with the same condition, in the same
        transaction: afterwards the rows may no longer match.
        """
        if type is None:
            entity = statement.column_descriptions[0].get("entity")
            registration = self.registry.of(entity) if isinstance(entity, builtins.type) else None
            if registration is None:
                raise ConfigurationError("emit_for: select a registered entity, or pass type= with a select of ids")
            type = registration.rule.type
            if registration.id_key is not None:
                ids: list[object] = list(
                    session.execute(
                        statement.with_only_columns(getattr(entity, registration.id_key), maintain_column_froms=True)
                    ).scalars()
                )
            elif isinstance(session, Session):
                ids = [registration.object_id(obj) for obj in session.scalars(statement)]
            else:
                raise ConfigurationError("emit_for: an id function needs the objects; pass a Session")
        else:
            ids = list(session.execute(statement).scalars())
        self.emit_many(session, [(type, object_id(value), flags) for value in ids])
        return len(ids)

    # -- session events ---------------------------------------------------------------

    def _before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        self.registry.load_deleted_ids(session)

    def _after_flush(self, session: Session, flush_context: Any) -> None:
        # history still holds the flush's changes here (it is reset in after_flush_postexec)
        frame = self._frame(session)
        unit = Unit() if self._rows_written(session, frame) else frame.unit
        self.registry.flushed(session, unit)
        if unit is not frame.unit and unit.changes:
            self._write(session.connection(), unit)  # flushed after the commit's write: written now

    def _before_commit(self, session: Session) -> None:
        # outbox mode: the rows must be in before the database commits; flush first so the
        # last changes are in. SQLAlchemy calls this for a savepoint's release too: its
        # changes wait, merged into its parent's by after_commit, so that what one
        # transaction did to an object is one row, written after nothing it did later
        session.flush()
        transaction = _innermost(session)
        frame = self._frame(session, transaction)
        frame.connection = session.connection()
        frame.prepares += 1
        if not transaction.nested:
            self._write(frame.connection, frame.unit)
            frame.unit = Unit()

    def _after_commit(self, session: Session) -> None:
        transaction = _innermost(session)
        frames = self._frames(session)
        frame = frames.pop(transaction, None)
        if transaction.nested:  # a savepoint released: its changes are its parent's now
            parent_transaction = _real_parent(transaction)
            parent = self._frame(session, parent_transaction)
            if frame is not None:
                _merge(frame.unit, parent.unit)
                if frame.prepares > 1:
                    # the first before_commit seen for this savepoint was an ancestor's (its commit
                    # releases open savepoints first): that ancestor commits next, without another
                    parent.prepares += frame.prepares - 1
                    parent.connection = frame.connection
                if parent.prepares and not parent_transaction.nested and parent.connection is not None:
                    # the root's before_commit has passed: the released changes are written now
                    self._write(parent.connection, parent.unit)
                    parent.unit = Unit()
            return
        if frame is None or not frame.unit.changes:
            return
        if self.mode == "outbox":
            log.error(
                "livesync: %d change(s) were flushed after the outbox rows were written and are lost: %s",
                len(frame.unit.changes),
                _describe(frame.unit.changes),
            )
            return
        self._publish(frame.unit.changes)

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        self._frames(session).pop(transaction, None)  # rolled back (or done): its changes are dropped

    # -- internals --------------------------------------------------------------------

    def _frames(self, session: Session) -> dict[SessionTransaction, _Frame]:
        frames: dict[SessionTransaction, _Frame] = session.info.setdefault(self, {})
        return frames

    def _frame(self, session: Session, transaction: SessionTransaction | None = None) -> _Frame:
        transaction = transaction or _innermost(session)
        frames = self._frames(session)
        frame = frames.get(transaction)
        if frame is None:
            frame = frames[transaction] = _Frame()
        return frame

    def _rows_written(self, session: Session, frame: _Frame) -> bool:
        """Outbox mode: the root transaction's rows are written (its commit is under way), new ones go at once."""
        return self.mode == "outbox" and bool(frame.prepares) and not _innermost(session).nested

    def _write(self, connection: Connection, unit: Unit) -> None:
        if unit.changes:
            from livesync.outbox.writer import write  # direct mode does without the outbox's modules

            write(connection, unit.changes, namespace=self.namespace, table=self.table)

    def _publish(self, changes: list[Triple]) -> None:
        assert self.publisher is not None
        try:
            for start in range(0, len(changes), MAX_BATCH):
                self.publisher.emit_validated(changes[start : start + MAX_BATCH])
        except Exception as exc:
            # after the commit: raising would leave the session half-committed, and the data is in
            if self.on_error is not None:
                self.on_error(changes, exc)
                return
            log.exception(
                "livesync: the changes of a committed transaction were not published (%d change(s): %s)",
                len(changes),
                _describe(changes),
            )


def _innermost(session: Session) -> SessionTransaction:
    """The innermost savepoint, else the session's transaction."""
    transaction = session.get_nested_transaction() or session.get_transaction()
    assert transaction is not None, "called inside a transaction"
    return transaction


def _real_parent(transaction: SessionTransaction) -> SessionTransaction:
    """The savepoint or root transaction around ``transaction`` (flushes' subtransactions skipped)."""
    parent = transaction.parent
    assert parent is not None
    while not (parent.nested or parent.parent is None):
        parent = parent.parent
        assert parent is not None
    return parent


def _merge(child: Unit, parent: Unit) -> None:
    for type_, id_, mask in child.changes:
        parent.emit(type_, id_, *flag_names(mask))


def _describe(changes: Sequence[Triple], limit: int = 10) -> str:
    shown = ", ".join(f"{type_} {id_!r} {'+'.join(flag_names(mask))}" for type_, id_, mask in changes[:limit])
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


__all__ = ["ErrorHandler", "LiveSync", "Mode"]
