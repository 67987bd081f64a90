"""What one relay benchmark run owns (tables, namespaces, connections), shared by the rate and latency figures."""

from __future__ import annotations

import uuid
from typing import Any

from benchmarks.baseline import iter_batches
from livesync.connection import connect
from livesync.outbox import create_table, emit_many, relay_engine
from livesync.urls import mask_url
from livesync.workload import iter_changes


def engine_url(url: str) -> str:
    """``url`` with SQLAlchemy's psycopg (3) driver when it names plain ``postgresql``; ValueError for others."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"the relay figure needs PostgreSQL, not {mask_url(url)}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def driver_url(url: str) -> str:
    """``url`` as libpq takes it (psycopg's own connect)."""
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class RelayRun:
    """What one benchmark run owns: its prefix, tables, namespaces; :meth:`cleanup` removes them all."""

    def __init__(self, url: str, redis_url: str) -> None:
        import psycopg

        self.url = engine_url(url)
        self.redis_url = redis_url
        self.redis: Any = connect(redis_url, check=True)
        self.admin = psycopg.connect(driver_url(self.url), connect_timeout=5, autocommit=True)
        self.prefix = f"bench_{uuid.uuid4().hex[:8]}"
        self.tables: list[str] = []

    def names(self, label: str) -> tuple[str, str]:
        """A new (table, namespace) of this run."""
        table = f"{self.prefix}_relay_{label}"
        self.tables.append(table)
        return table, table.replace("_", "-")

    def fill(self, table: str, namespace: str, rows: int) -> None:
        """Create ``table`` and write ``rows`` outbox rows of the workload into it (untimed), then ANALYZE it."""
        engine = relay_engine(self.url)
        try:
            create_table(engine, table)
            with engine.begin() as connection:
                for batch in iter_batches(iter_changes(rows, max(1, rows // 5), seed=rows), 5_000):
                    emit_many(connection, batch, namespace=namespace, table=table)
        finally:
            engine.dispose()
        self.admin.execute(f"ANALYZE {table}")

    def cleanup(self) -> None:
        """Drop the run's tables and delete its keys (every key holding the prefix's namespaces)."""
        try:
            for table in self.tables:
                self.admin.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            self.admin.close()
            doomed = list(self.redis.scan_iter(match=f"*{self.prefix.replace('_', '-')}*", count=1000))
            for start in range(0, len(doomed), 500):
                self.redis.delete(*doomed[start : start + 500])
            self.redis.close()
