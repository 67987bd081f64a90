"""The transactional outbox: changes written in the application's transaction, relayed exactly once.

::

    from livesync import outbox

    outbox.create_table(engine)                       # once (idempotent)
    with engine.begin() as connection:                # the application's transaction
        connection.execute(update(events)...)
        outbox.emit(connection, "event", 42, "title_changed", namespace="demo")

``livesync relay --db URL`` (or the RQ job ``livesync.jobs.relay``) publishes the
committed rows to the track and deletes them; :mod:`livesync.outbox.relay` says why
nothing is lost or sent twice, and why one object's changes keep their order.

Needs SQLAlchemy (``livesync[sql]``), imported on first use of a name below:
:mod:`livesync.outbox.lag`, which status and metrics read, does without.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livesync.outbox.writer import emit, emit_many
    from livesync.outbox.publish import RelayPublisher
    from livesync.outbox.relay import Relay, Summary
    from livesync.outbox.table import TABLE, create_table, outbox_table, relay_engine

_NAMES = {
    "TABLE": "livesync.outbox.table",
    "create_table": "livesync.outbox.table",
    "outbox_table": "livesync.outbox.table",
    "relay_engine": "livesync.outbox.table",
    "emit": "livesync.outbox.writer",
    "emit_many": "livesync.outbox.writer",
    "RelayPublisher": "livesync.outbox.publish",
    "Relay": "livesync.outbox.relay",
    "Summary": "livesync.outbox.relay",
}


def __getattr__(name: str) -> Any:
    module = _NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'livesync.outbox' has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("sqlalchemy"):
            raise
        raise ImportError(f"livesync.outbox.{name} needs SQLAlchemy: pip install 'livesync[sql]'") from exc


__all__ = [
    "TABLE",
    "Relay",
    "RelayPublisher",
    "Summary",
    "create_table",
    "emit",
    "emit_many",
    "outbox_table",
    "relay_engine",
]
