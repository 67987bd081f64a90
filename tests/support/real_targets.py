"""Real targets for the reliability suite: how an agent writes to one, and how the test reads it back.

A :class:`RealTarget` is what a test needs of a target: the ``agent add`` arguments
that make an agent write to it, and ``read()``, the target's state now as
``(type, str(id)) -> TargetState`` (live objects, and tombstones where the target keeps
them), the form :func:`reliability.checker.check_target` compares with the source.
:func:`latest_changes` is the source's side that only the track knows: the version of
each object's latest change (the track must still hold every change: give the
namespace an agent that never runs, so nothing is pruned).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, select

from livesync.backends.sql_mirror import mirror_table
from livesync.manager import SyncManager
from livesync.testing import TargetState
from support.opensearch_server import Cluster

TargetKey = tuple[str, str]
State = dict[TargetKey, TargetState]


@dataclass
class RealTarget:
    """A target an agent writes to and the test reads back."""

    name: str
    backend: str
    options: list[str]
    """``KEY=VALUE`` options of ``agent add``."""
    read: Callable[[], State]

    def agent_args(self) -> list[str]:
        """``--backend NAME --option KEY=VALUE ...`` of ``livesync agent add``."""
        return ["--backend", self.backend, *(arg for option in self.options for arg in ("--option", option))]


def sql_target(name: str, url: str, table: str, admin: Engine) -> RealTarget:
    """A ``sql`` mirror table (created by the backend), read back with ``admin``."""

    def read() -> State:
        with admin.connect() as connection:
            rows = connection.execute(select(mirror_table(table))).all()
        return {(row.type, row.id): TargetState(row.version, not row.deleted, row.document) for row in rows}

    return RealTarget(name, "sql", [f"url={url}", f"table={table}", "create=true", "timeout=10"], read)


def opensearch_target(name: str, cluster: Cluster, index: str, *, tombstones: bool) -> RealTarget:
    """An ``opensearch`` index (or alias), read back with a refreshed search of every document."""

    def read() -> State:
        state = {}
        for version, body in cluster.documents(index).values():
            fields = body.pop("_livesync")
            live = fields["action"] != "deleted"
            state[fields["type"], fields["id"]] = TargetState(version, live, body if live else None)
        return state

    options = [f"url={cluster.url}", f"index={index}", f"tombstones={str(tombstones).lower()}"]
    return RealTarget(name, "opensearch", options, read)


def latest_changes(manager: SyncManager) -> dict[TargetKey, tuple[int, int]]:
    """``(seq, version)`` of every object's latest stored change, keyed as targets key objects."""
    latest: dict[TargetKey, tuple[int, int]] = {}
    for track in manager.tracks():
        for change in track.iter_changes(0):
            latest[(change.type, str(change.id))] = (change.seq, change.version)
    return latest


def drained(manager: SyncManager, agent_id: str) -> bool:
    """Whether the agent's pointer is at the head of every partition (the head read after the pointer)."""
    for track in manager.tracks():
        pointer = track.pointer(agent_id)
        if pointer is None or pointer < track.head():
            return False
    return True
