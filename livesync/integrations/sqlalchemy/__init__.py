"""SQLAlchemy 2 ORM sessions publishing their registered models' changes on commit.

::

    from livesync.client import Publisher
    from livesync.integrations.sqlalchemy import LiveSync

    sync = LiveSync(publisher=Publisher.from_url(url, namespace="app"))  # direct mode
    sync = LiveSync("outbox", namespace="app")                          # or outbox mode
    sync.register(Event, "event", flags={"title": "title_changed", "updated_at": None},
                  soft_delete="deleted_at", published="is_public")
    sync.register(Category, "category", cascade={"events": None})
    sync.attach(SessionLocal)  # a sessionmaker, a Session subclass, or one Session

Each flush adds the inserts (``created``), updates (the mapped flags, from the attributes'
history: setting a loaded attribute to its value changes nothing) and deletes
(``deleted``) of registered objects to the changes of the innermost transaction, merged
per object like :meth:`Publisher.collect`. A released savepoint hands its changes to its
parent; a rolled-back one (or transaction) drops them. A commit publishes them once
(**direct**), or they are written to the ``livesync_outbox`` table just before the
commit, on the session's connection, so they commit with the data (**outbox**).

Direct mode's trade-off: the publish happens after the database committed, so a process
that dies in between loses the transaction's changes, and a publish that fails (Redis
unreachable) cannot undo the commit: it is logged (or handed to ``on_error``), never
raised from ``commit()``. Outbox mode has neither gap.

``update()``/``delete()`` statements bypass the flush: name their objects with
:meth:`LiveSync.emit_for` (a select, run before the statement) or :meth:`LiveSync.emit_many`.
"""

from livesync.integrations.sqlalchemy.session import ErrorHandler, LiveSync, Mode

__all__ = ["ErrorHandler", "LiveSync", "Mode"]
