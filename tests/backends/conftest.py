"""Fixtures of the backend tests that reach SQL servers (the ``sql`` backend and its reindex), once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, inspect
from support.sql_databases import DIALECTS, admin_engine, drop_table, reachable_url, unique_table


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of one test database per dialect; skipped, with the reason, where its server does not answer."""
    return reachable_url(request.param, tmp_path)


@pytest.fixture
def admin(database_url: str) -> Iterator[Engine]:
    """An engine of the test database, for setting tables up and reading them behind the backend's back."""
    engine = admin_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def table(admin: Engine) -> Iterator[str]:
    """A table name of this test's own; it and every table named after it (reindex generations) are dropped after."""
    name = unique_table()
    yield name
    for found in inspect(admin).get_table_names():
        if found.startswith(name):
            drop_table(admin, found)
