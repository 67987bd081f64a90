"""Publishing on commit: the changes of an application's registered models, per transaction.

- :mod:`livesync.integrations.sqlalchemy`: SQLAlchemy 2 ORM sessions (flush events).
- :mod:`livesync.integrations.django`: a Django app (``post_save``/``post_delete`` signals).

Both offer two modes (DESIGN.md, "Publishing on commit"):

- **direct**: a transaction's changes, merged per object, are published once after its
  commit; a rollback (of the transaction or of a savepoint) drops its part. A process
  that dies between the commit and the publish loses that transaction's changes
  (at-most-once), and a publish that fails after the commit cannot undo it: it is logged.
- **outbox**: the changes are written to the ``livesync_outbox`` table in the
  transaction itself, so they commit or roll back with it; ``livesync relay`` moves
  committed rows to the track exactly once.

The shared part, what a write of a registered model means, is :mod:`livesync.integrations.rules`.
"""
