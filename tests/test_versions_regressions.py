"""Minimal examples of a target left out of step with the source for good (DESIGN.md invariants 2 and 6).

The first four are what :mod:`test_versions_property` found, shrunk by hand: a target holding
an object the source deleted (reduce folded a window's create and delete into nothing), and
an agent skipping changes published after a rewind (prune deleted them under its pointer).
The last one is the same property's question asked of a loader with visibility (an agent's
access): an object hidden and then visible again must come back. Each failed before its fix.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import redis
from support import loaders
from support.backends import BackendDown
from support.snapshots import Snapshot
from support.version_target import VersionTarget

from livesync import Publisher
from livesync.errors import AgentNotRunnable
from livesync.export import export_agent
from livesync.manager import Agent, SyncManager
from livesync.records import Record
from livesync.runner import run_agent

HIDDEN_FOR_GOOD = pytest.mark.xfail(
    strict=True,
    reason="a loader that leaves out an object the agent may not see turns its record into a delete (a tombstone "
    "at the target); when the object becomes visible again its change is a modify, loaded as an 'updated', which "
    "the version rule ignores for an object the target does not hold live: it never comes back",
)


# --- a create and a delete folded into nothing although the target has the object ------------


class WrittenThenLost(VersionTarget):
    """A target whose first batch is written but whose answer is lost (a timeout after the commit,
    a worker killed before the ack): the run fails and the batch is sent again, as at-least-once says."""

    def __init__(self) -> None:
        super().__init__()
        self.answers_lost = 1

    def upload(self, records: Sequence[Record]) -> None:
        super().upload(records)
        if self.answers_lost:
            self.answers_lost -= 1
            raise BackendDown("the target wrote the batch, then the connection dropped before it answered")


def test_a_delete_after_a_create_the_target_got_but_never_acked_reaches_the_target(
    manager: SyncManager, publisher: Publisher
) -> None:
    # Given an event the target got, in a batch whose answer was lost (so the pointer stayed before it)
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    target = WrittenThenLost()
    publisher.emit("event", 1, "created")
    with pytest.raises(BackendDown):
        run_agent(manager, "search", backend=target)
    assert target.live == {("event", 1)} and manager.pointers("search") == [0]
    # When the event is deleted and the agent runs again (its window: the create again, then the delete)
    publisher.emit("event", 1, "deleted")
    run_agent(manager, "search", backend=target)
    # Then the event left the target
    assert target.live == set()


def test_an_object_exported_then_deleted_leaves_the_target(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent waiting for its export, and an event created meanwhile (pending behind the pointer)
    manager.add_agent(Agent(id="search", backend="null", state="needs_export"), start="head")
    target = VersionTarget()
    publisher.emit("event", 1, "created")
    # When the export lists the event (it exists), then the event is deleted and the agent runs
    export_agent(manager, "search", [("event", 1)], backend=target)
    assert target.live == {("event", 1)}
    publisher.emit("event", 1, "deleted")
    run_agent(manager, "search", backend=target)
    # Then the event left the target
    assert target.live == set()


def test_a_delete_after_redis_lost_the_ack_of_its_create_reaches_the_target(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher, namespace: str
) -> None:
    # Given an event the target got, and a Redis restarted from a snapshot taken before the ack
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    target = VersionTarget()
    publisher.emit("event", 1, "created")
    snapshot = Snapshot.take(real_redis, namespace)
    run_agent(manager, "search", backend=target)
    snapshot.restore()
    assert target.live == {("event", 1)} and manager.pointers("search") == [0]
    # When the event is deleted and the agent runs (the restored pointer is consistent: no rollback)
    publisher.emit("event", 1, "deleted")
    run_agent(manager, "search", backend=target)
    # Then the event left the target
    assert target.live == set()


# --- changes handed out again at seqs a lagging agent's pointer already passed ----------------


def test_changes_published_after_a_rewind_reach_every_agent_although_another_drained_them_first(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher, namespace: str
) -> None:
    # Given two agents that read seqs 1..3, and a partition whose track went back to seq 1 under their pointers
    first, second = VersionTarget(), VersionTarget()
    for agent_id in ("first", "second"):
        manager.add_agent(Agent(id=agent_id, backend="null"), start="tail")
    publisher.emit("event", 1, "created")
    snapshot = Snapshot.take(real_redis, namespace)
    publisher.emit_many([("event", 2, ["created"]), ("event", 3, ["created"])])
    run_agent(manager, "first", backend=first)
    run_agent(manager, "second", backend=second)
    snapshot.restore(partitions=[0])
    # And two new events published since, at seqs 2 and 3 again
    assert publisher.emit_many([("event", 10, ["created"]), ("event", 11, ["created"])]) == [2, 3]
    # When the first agent stops in rollback, is reset to the tail by the operator and drains
    with pytest.raises(AgentNotRunnable, match="handed out again"):
        run_agent(manager, "first", backend=first)
    manager.reset_agent("first", "tail")
    run_agent(manager, "first", backend=first)
    assert {("event", 10), ("event", 11)} <= first.live
    # Then the second agent still gets the new events (or stops in rollback), never skips them
    try:
        run_agent(manager, "second", backend=second)
    except AgentNotRunnable:
        manager.reset_agent("second", "tail")
        run_agent(manager, "second", backend=second)
    assert {("event", 10), ("event", 11)} <= second.live


# --- an object the loader hid comes back with a modify ----------------------------------------------


def test_an_object_the_agent_may_see_again_returns_to_its_target(real_redis: redis.Redis, namespace: str) -> None:
    # Given an agent whose loader leaves out what it may not see, and a public event at its target
    manager = SyncManager(real_redis, namespace, allowed_imports=["support.loaders"])
    manager.add_agent(Agent(id="public", backend="null", loader="support.loaders:load"), start="tail")
    publisher, target = Publisher(real_redis, namespace), VersionTarget()
    try:
        loaders.SOURCE[("event", 1)] = {"title": "Launch"}
        publisher.emit("event", 1, "created")
        run_agent(manager, "public", backend=target)
        # And the event made private: its protection_changed is loaded as a delete, it left the target
        del loaders.SOURCE[("event", 1)]
        publisher.emit("event", 1, "protection_changed")
        run_agent(manager, "public", backend=target)
        assert target.live == set()
        # When it is made public again
        loaders.SOURCE[("event", 1)] = {"title": "Launch"}
        publisher.emit("event", 1, "protection_changed")
        run_agent(manager, "public", backend=target)
        # Then it is back at the target
        assert target.live == {("event", 1)}
    finally:
        loaders.SOURCE.clear()
