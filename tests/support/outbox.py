"""Reading back what the relay did: the track's changes, the rows left in an outbox table."""

from __future__ import annotations

from typing import Any

import redis
from sqlalchemy import Engine, select

from livesync.changes import flag_names
from livesync.keys import namespace_keys
from livesync.outbox import outbox_table
from livesync.track import Track
from support.sql_databases import reachable_url


def track_changes(
    real_redis: redis.Redis, namespace: str, partitions: int = 1
) -> list[tuple[str, Any, tuple[str, ...]]]:
    """Every change on the namespace's track as ``(type, id, flag names)``, partition by partition, in seq order."""
    keys = namespace_keys(namespace)
    return [
        (change.type, change.id, flag_names(change.flags))
        for p in range(partitions)
        for change in Track(real_redis, keys.partition(p), 60).iter_changes()
    ]


def outbox_ids(engine: Engine, table_name: str) -> list[int]:
    """The ids of the rows left in the outbox."""
    table = outbox_table(table_name)
    with engine.connect() as connection:
        return [row.id for row in connection.execute(select(table.c.id).order_by(table.c.id))]


#: The test database of a dialect; the test is skipped (saying why) when it does not answer.
database_url = reachable_url
