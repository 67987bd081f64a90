"""Where a reindex starts: the export's version must not be older than a change the export's documents hold.

``Reindex.begin`` reads each partition's clock (the export's version) and then its head
(the start position: the catch-up sends what comes after it), in two round trips. A change
published between the two reads is at or below the start position, so the catch-up never
sends it, while its version is above the export's. The export's document holds it (loaded
later), but with the lower version: once the agent delivered it to the old generation
before the swap, the new generation keeps that object at a version below its latest
change's (``checker.check_target`` calls it stale), and a write of a version in between
would win over it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, select
from support import loaders
from support.reindex_scenarios import Source

from livesync.backends.sql_mirror import mirror_table
from livesync.client import Publisher
from livesync.manager import Agent, SyncManager
from livesync.reindex import reindex_agent
from livesync.runner import run_agent
from livesync.track import Track

AGENT = "search"
TABLE = "mirror"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    loaders.SOURCE.clear()
    yield f"sqlite:///{tmp_path / 'mirror.db'}"
    loaders.SOURCE.clear()
    loaders.CALLS.clear()


def versions(database: str) -> dict[str, int]:
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(mirror_table(TABLE))).all()
    finally:
        engine.dispose()
    return {f"{row.type}:{row.id}": row.version for row in rows}


def test_a_change_published_while_the_reindex_reads_where_it_starts_is_not_older_than_the_export(
    real_redis: redis.Redis, namespace: str, database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an agent (sql on SQLite, a loader) that delivered event 1
    manager = SyncManager(real_redis, namespace, allowed_imports=("support",))
    publisher = Publisher(real_redis, namespace)
    options = {"url": database, "table": TABLE, "create": "true"}
    manager.add_agent(Agent(id=AGENT, backend="sql", options=options, loader="support.loaders:load"))
    loaders.SOURCE[("event", 1)] = {"title": "one"}
    publisher.emit("event", 1, "created")
    run_agent(manager, AGENT)

    # When event 1 changes just as the reindex reads where it starts (it read the clock and then the head in
    # two round trips, and a change between them was never caught up, its version above the export's) ...
    clock_and_head = Track.clock_and_head
    changed: list[int] = []  # the change's version

    def read_after_a_change(track: Track) -> tuple[int, int]:
        if not changed:
            loaders.SOURCE[("event", 1)] = {"title": "one, renamed"}
            seq = publisher.emit("event", 1, "title_changed")
            changed.extend(change.version for change in track.iter_changes(seq - 1, seq))
        return clock_and_head(track)

    monkeypatch.setattr(Track, "clock_and_head", read_after_a_change)
    # ... and the agent delivers that change to the old generation before the swap
    deliver: dict[int, Any] = {1: lambda: run_agent(manager, AGENT)}
    reindex_agent(manager, AGENT, Source(deliver), source_name="s")
    monkeypatch.undo()

    # Then the new generation holds event 1 at the version of that change at least: the clock and the head are
    # read in one MGET, so a change is either before both (exported at a version above it) or after both
    assert changed
    assert all(versions(database)["event:1"] >= version for version in changed)
