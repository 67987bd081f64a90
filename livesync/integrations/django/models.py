"""The outbox as a Django model: the ``livesync_outbox`` table that ``livesync.outbox`` defines, row for row.

Django writes the rows (outbox mode); the relay (``manage.py livesync_relay`` or
``livesync relay --db URL``) reads them with SQLAlchemy's definition of the same table
(:func:`livesync.outbox.outbox_table`), so the columns, their types and the index match it.
"""

from __future__ import annotations

from django.db import models

from livesync import defaults
from livesync.changes import MAX_ID_LENGTH


class OutboxRow(models.Model):
    """One change waiting for the relay: object ``(type, object_id)``, ``flags`` a bit mask of livesync's flags."""

    id = models.BigAutoField(primary_key=True)  # AUTOINCREMENT on SQLite: ids never reused, the relay's order
    namespace = models.CharField(max_length=64)
    type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=MAX_ID_LENGTH)
    integer_id = models.BooleanField()  # 42 and "42" are different objects
    flags = models.IntegerField()
    created_us = models.BigIntegerField()  # the writer's clock, microseconds since 1970 (the relay's lag)

    class Meta:
        db_table = defaults.OUTBOX_TABLE
        indexes = [models.Index(fields=["namespace", "id"], name=f"{defaults.OUTBOX_TABLE}_namespace_id")]

    def __str__(self) -> str:
        return f"{self.namespace}: {self.type} {self.object_id} ({self.flags})"
