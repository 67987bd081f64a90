"""The outbox's databases: SQLite (a file of the test), PostgreSQL and MariaDB (the machine's servers).

Each test gets an outbox table of its own (``ls_<hex>``), dropped afterwards: the
servers are shared with other tests and sessions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine
from support.outbox import database_url
from support.processes import TESTS_DIR, Processes
from support.sql_databases import DIALECTS, drop_table, unique_table

from livesync.outbox import create_table, relay_engine
from livesync.outbox.publish import RelayPublisher
from livesync.outbox.relay import Relay


@pytest.fixture(params=DIALECTS)
def outbox_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of one dialect's test database (the test runs on each)."""
    return database_url(request.param, tmp_path)


@pytest.fixture
def table_name() -> str:
    """An outbox table name no other test uses."""
    return unique_table()


@pytest.fixture
def outbox_engine(outbox_url: str, table_name: str) -> Iterator[Engine]:
    """The relay's engine on the test database, with the test's outbox table created (dropped afterwards)."""
    engine = relay_engine(outbox_url)
    create_table(engine, table_name)
    yield engine
    drop_table(engine, table_name)
    engine.dispose()


@pytest.fixture
def make_relay(real_redis: redis.Redis, namespace: str, table_name: str) -> Callable[..., Relay]:
    """``make_relay(engine, **options)``: a relay of the test's namespace and table."""

    def make(engine: Engine, **options: Any) -> Relay:
        partitions = options.pop("partitions", None)
        publisher = RelayPublisher(real_redis, namespace, partitions=partitions)
        return Relay(engine, publisher, table=table_name, **options)

    return make


@pytest.fixture
def relay_processes(tmp_path: Path, redis_url: str, namespace: str) -> Iterator[Processes]:
    """Start real processes on the test's Redis and namespace; all are stopped when the test ends."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
    env.update(
        LIVESYNC_REDIS_URL=redis_url,
        LIVESYNC_NAMESPACE=namespace,
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])),
        PYTHONUNBUFFERED="1",
    )
    procs = Processes(tmp_path, env)
    yield procs
    procs.stop_all()
