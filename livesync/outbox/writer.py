"""Writing changes to the outbox, inside the caller's database transaction.

The rows commit or roll back with the application's own writes; ``livesync relay``
publishes the committed ones. Every change is validated first, as
:meth:`livesync.Publisher.emit_many` does: one invalid change raises
:class:`~livesync.InvalidChange` naming its index and field, and nothing is written.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from livesync import defaults
from livesync.changes import Item, Triple, validate
from livesync.client import validate_items
from livesync.keys import check_namespace_name
from livesync.outbox.table import TABLE, outbox_table
from livesync.records import ObjectId


def emit(
    connection: Connection | Session,
    type: str,
    id: ObjectId,
    *changes: str,
    namespace: str = defaults.NAMESPACE,
    table: str = TABLE,
) -> None:
    """Write one change of object ``(type, id)`` to the outbox, in ``connection``'s transaction.

    ``connection`` is a SQLAlchemy :class:`~sqlalchemy.Connection` or ORM
    :class:`~sqlalchemy.orm.Session`; the row is committed (or rolled back) with it.
    """
    write(connection, [validate(type, id, changes)], namespace=namespace, table=table)


def emit_many(
    connection: Connection | Session,
    items: Iterable[Item],
    *,
    namespace: str = defaults.NAMESPACE,
    table: str = TABLE,
) -> int:
    """Write a batch of changes to the outbox in ``connection``'s transaction; return how many.

    Items are ``(type, id, [flags])`` tuples or ``{"type", "id", "changes"}`` dicts, as
    for :meth:`livesync.Publisher.emit_many`; they are relayed in this order.
    """
    return write(connection, validate_items(items), namespace=namespace, table=table)


def write(
    connection: Connection | Session, triples: list[Triple], *, namespace: str = defaults.NAMESPACE, table: str = TABLE
) -> int:
    """Insert validated ``(type, id, flag mask)`` triples as outbox rows (one statement); return how many."""
    check_namespace_name(namespace)
    if not triples:
        return 0
    created_us = time.time_ns() // 1000
    rows: list[dict[str, Any]] = [
        {
            "namespace": namespace,
            "type": type_,
            "object_id": str(id_),
            "integer_id": isinstance(id_, int),
            "flags": mask,
            "created_us": created_us,
        }
        for type_, id_, mask in triples
    ]
    connection.execute(insert(outbox_table(table)), rows)
    return len(rows)
