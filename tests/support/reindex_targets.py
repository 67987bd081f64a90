"""Real targets with generations for the reindex reliability test: read through the name readers use.

:class:`SqlTarget` is a ``sql`` mirror table on PostgreSQL, whose generations are tables
(the new one renamed into the mirror's name at the swap); :class:`SearchTarget` an alias
of one index on an OpenSearch-compatible server, whose generations are indices (the alias
moves at the swap). Each says what readers must see while a reindex builds its new
generation and after it swapped it in, and removes every generation it created.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, inspect

from livesync.backends.sql_generations import retired_table
from support.real_targets import RealTarget, opensearch_target, sql_target
from support.sql_databases import drop_table, unique_table


class Target:
    """A real target with generations: read through the name readers use, generations looked up by name."""

    real: RealTarget
    original: str
    """The live generation before the reindex."""
    drop_old: bool

    def exists(self, generation: str) -> bool:
        raise NotImplementedError

    def assert_building(self, generation: str) -> None:
        """Mid-export: the new generation exists beside the old one, which readers still see."""
        raise NotImplementedError

    def assert_swapped(self, result: dict[str, Any]) -> None:
        """After the reindex: readers see the new generation; the old one is kept, or dropped with --drop-old."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove every generation of the target."""
        raise NotImplementedError


class SqlTarget(Target):
    """The ``sql`` mirror table on PostgreSQL: a generation is a table, renamed into the mirror's name at the swap."""

    drop_old = False

    def __init__(self, url: str, admin: Engine) -> None:
        self.admin = admin
        self.original = unique_table()
        self.real = sql_target("postgresql", url, self.original, admin)

    def tables(self) -> set[str]:
        return {name for name in inspect(self.admin).get_table_names() if name.startswith(self.original)}

    def exists(self, generation: str) -> bool:
        return generation in self.tables()

    def assert_building(self, generation: str) -> None:
        assert self.tables() == {self.original, generation}, "the new table beside the mirror, nothing renamed yet"

    def assert_swapped(self, result: dict[str, Any]) -> None:
        # the new table now is the mirror table; the old one stays under its retired name without --drop-old
        assert not result["dropped"]
        assert self.tables() == {self.original, result["retired"]}, self.tables()
        assert result["retired"] == retired_table(result["generation"])

    def cleanup(self) -> None:
        for name in self.tables():
            drop_table(self.admin, name)


class SearchTarget(Target):
    """An alias of one index on osmem-server: a generation is an index, the alias moves at the swap."""

    drop_old = True

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.alias = cluster.new_index()
        self.original = self.alias.removesuffix("-alias") + "-1"
        self.real = opensearch_target("opensearch", cluster, self.alias, tombstones=True)
        self.seen = {self.original}

    def behind_alias(self) -> list[str]:
        return sorted(self.cluster.client().indices.get_alias(name=self.alias))

    def exists(self, generation: str) -> bool:
        self.seen.add(generation)
        return bool(self.cluster.client().indices.exists(index=generation))

    def assert_building(self, generation: str) -> None:
        assert self.exists(generation) and self.behind_alias() == [self.original], "readers still on the old index"

    def assert_swapped(self, result: dict[str, Any]) -> None:
        assert self.behind_alias() == [result["generation"]]
        assert result["dropped"] and result["retired"] == self.original
        assert not self.exists(self.original), "--drop-old leaves no old index"

    def cleanup(self) -> None:
        for index in self.seen:
            self.cluster.client().indices.delete(index=index, ignore=404)
