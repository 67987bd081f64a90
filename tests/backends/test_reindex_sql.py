"""``agent reindex`` on the ``sql`` backend, on SQLite, PostgreSQL and MariaDB: a new table renamed into place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, select, text
from support.reindex_scenarios import AGENT, Objects, ReindexScenarios, Source

from livesync.backends.sql_mirror import mirror_table
from livesync.manager import SyncManager
from livesync.reindex import reindex_agent


def rows(admin: Engine, name: str) -> Objects:
    with admin.connect() as connection:
        found = connection.execute(select(mirror_table(name))).all()
    return {f"{row.type}:{row.id}": row.document for row in found if not row.deleted}


class TestSqlReindex(ReindexScenarios):
    @pytest.fixture
    def agent_backend(self, database_url: str, table: str) -> tuple[str, dict[str, str]]:
        return "sql", {"url": database_url, "table": table, "create": "true"}

    @pytest.fixture
    def read_objects(self, admin: Engine, table: str) -> Callable[[str | None], Objects]:
        return lambda name: rows(admin, name or table)

    @pytest.fixture
    def generation_exists(self, admin: Engine) -> Callable[[str], bool]:
        return lambda name: bool(inspect(admin).has_table(name))

    # -- what is particular to tables: the names, and what the new table takes over

    def test_the_old_table_is_kept_as_table_o_token_beside_the_mirror(
        self, manager: SyncManager, live: Any, admin: Engine, table: str
    ) -> None:
        result = reindex_agent(manager, AGENT, Source(), source_name="scenario")

        assert result.generation.startswith(f"{table}_r") and result.retired == result.generation.replace("_r", "_o")
        names = set(inspect(admin).get_table_names())
        assert {table, result.retired} <= names and result.generation not in names

    def test_an_index_the_operator_added_comes_along_where_the_database_copies_it(
        self, manager: SyncManager, live: Any, admin: Engine, table: str
    ) -> None:
        with admin.begin() as connection:
            connection.execute(text(f"CREATE INDEX {table}_by_version ON {table} (version)"))

        reindex_agent(manager, AGENT, Source(), source_name="scenario", drop_old=True)

        indexed = [index["column_names"] for index in inspect(admin).get_indexes(table)]
        if admin.dialect.name == "sqlite":
            assert indexed == []  # SQLite's new table has the mirror's own shape (no LIKE there)
        else:
            assert ["version"] in indexed
