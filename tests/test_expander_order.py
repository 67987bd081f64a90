"""Expanders with P > 1 keep per-object order at a target (DESIGN.md, invariants 6 and 7's
"Versions and epochs"; README "Rule for backends").

An expanded change keeps the seq and version of the change that caused it. Versions come
from the server's clock, so a target that keeps the highest version per object (and never
lets an ``updated`` record create an object) orders an object's expanded records with its
own records, although they come from different partitions read in any order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.version_target import VersionTarget

from livesync import Publisher
from livesync import manager as manager_module
from livesync.changes import Change
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of
from livesync.records import ObjectId
from livesync.runner import run_agent

ObjectKey = tuple[str, ObjectId]


def ids_in_other_partitions(partitions: int) -> tuple[int, int]:
    """A category id and an event id that live in different partitions."""
    for category in range(100):
        for event in range(100):
            if partition_of("category", category, partitions) != partition_of("event", event, partitions):
                return category, event
    raise AssertionError("no pair found")


def use_expander(monkeypatch: pytest.MonkeyPatch, expander: object) -> None:
    """Register ``expander`` under the name "test" (tests do not install entry points)."""

    def load(name: str, allowed_imports: object = ()) -> object:
        assert name == "test"
        return expander

    monkeypatch.setattr(manager_module, "load_expander", load)


def drain(
    manager: SyncManager, agent_id: str, target: VersionTarget, order: Iterable[int], window: int = 10_000
) -> None:
    """Run the agent's partitions in ``order`` until every pointer is at its head."""
    for partition in order:
        run_agent(manager, agent_id, partition, window=window, backend=target)
    for track in manager.tracks():
        while (track.pointer(agent_id) or 0) < track.head():
            run_agent(manager, agent_id, track.partition, window=window, backend=target)


@pytest.mark.parametrize("category_partition_first", [True, False])
def test_event_deleted_after_its_category_moved_is_not_resurrected(
    real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch, category_partition_first: bool
) -> None:
    # Given 2 partitions, a category and its event in different partitions, and an expander
    # that turns every category change into "its event moved"
    category, event = ids_in_other_partitions(2)
    category_partition = partition_of("category", category, 2)
    event_partition = partition_of("event", event, 2)

    def expander(change: Change) -> Iterator[tuple[str, ObjectId, list[str]]]:
        if change.type == "category":
            yield ("event", event, ["moved"])

    use_expander(monkeypatch, expander)
    manager = SyncManager(real_redis, namespace, partitions=2)
    manager.add_agent(Agent(id="search", backend="null", expander="test"), start="tail")
    publisher = Publisher(real_redis, namespace)
    target = VersionTarget()
    # the category's partition is far ahead in seqs: its seqs say nothing about time
    publisher.emit_many([("category", category, ["data_changed"])] * 50)
    publisher.emit("event", event, "created")
    drain(manager, "search", target, [category_partition, event_partition])
    assert ("event", event) in target.live

    # When the category moves, then the event is deleted, and the partitions run in either order
    publisher.emit("category", category, "moved")
    publisher.emit("event", event, "deleted")
    order = [category_partition, event_partition] if category_partition_first else [event_partition, category_partition]
    drain(manager, "search", target, order)

    # Then the event stays deleted at the target
    assert ("event", event) not in target.live
    expanded = [r for r in target.records if r.id == event and r.action == "updated"]
    [deleted] = [r for r in target.records if r.id == event and r.action == "deleted"]
    assert expanded and max(r.version for r in expanded) < deleted.version
    assert max(r.seq for r in expanded) > deleted.seq  # seqs alone would have ordered them wrong


CATEGORIES = 2
EVENTS = 4


@pytest.mark.slow  # 100 examples of real runs: seconds of CPU, left out of scripts/test --fast
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_target_live_set_matches_the_source_for_any_partitions_expander_and_run_order(
    real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, data: st.DataObject
) -> None:
    # Given P partitions, events each in a category, and an expander that turns a category
    # change into changes of its events that exist at read time (as an application's query does)
    partitions = data.draw(st.integers(1, 4), label="partitions")
    membership = data.draw(
        st.lists(st.integers(0, CATEGORIES - 1), min_size=EVENTS, max_size=EVENTS), label="category of each event"
    )
    expanded_flag = data.draw(st.sampled_from(["moved", "data_changed", "protection_changed"]), label="flag")
    window = data.draw(st.integers(1, 8), label="window")
    source: set[ObjectKey] = set()  # the live set of the source: every raw change replayed in publish order
    existed: set[ObjectKey] = set()

    def expander(change: Change) -> Iterator[tuple[str, ObjectId, list[str]]]:
        if change.type == "category":
            for event, category in enumerate(membership):
                if category == change.id and ("event", event) in source:
                    yield ("event", event, [expanded_flag])

    use_expander(monkeypatch, expander)
    namespace = f"t{uuid.uuid4().hex[:12]}"
    try:
        manager = SyncManager(real_redis, namespace, partitions=partitions)
        manager.add_agent(Agent(id="search", backend="null", expander="test"), start="tail")
        publisher = Publisher(real_redis, namespace)
        target = VersionTarget()

        # When random publishes are interleaved with runs of random partitions
        for _step in range(data.draw(st.integers(1, 30), label="steps")):
            if data.draw(st.booleans(), label="publish?"):
                batch = []
                for _item in range(data.draw(st.integers(1, 4), label="batch size")):
                    key = data.draw(
                        st.one_of(
                            st.tuples(st.just("event"), st.integers(0, EVENTS - 1)),
                            st.tuples(st.just("category"), st.integers(0, CATEGORIES - 1)),
                        ),
                        label="object",
                    )
                    flag = data.draw(st.sampled_from(possible_flags(key, source, existed)), label="flag")
                    batch.append((key[0], key[1], [flag]))
                    replay(source, existed, key, flag)
                    if key[0] == "category" and flag == "data_changed":
                        # busy categories: their partition's seqs run ahead of the events'
                        batch += [(key[0], key[1], [flag])] * data.draw(st.integers(0, 8), label="repeats")
                publisher.emit_many(batch)
            else:
                partition = data.draw(st.integers(0, partitions - 1), label="run partition")
                run_agent(manager, "search", partition, window=window, backend=target)
        order = data.draw(st.permutations(range(partitions)), label="drain order")
        drain(manager, "search", target, order, window)

        # Then the target's live set is the source's
        assert target.live == source
    finally:
        doomed = list(real_redis.scan_iter(match=f"livesync:{{{namespace}*", count=1000))
        if doomed:
            real_redis.delete(*doomed)


def possible_flags(key: ObjectKey, source: set[ObjectKey], existed: set[ObjectKey]) -> list[str]:
    """Flags an application can publish for ``key`` in its current state."""
    if key in source:
        return ["deleted", "data_changed", "moved"]
    if key in existed:
        return ["undeleted", "data_changed"]
    return ["created", "data_changed"]


def replay(source: set[ObjectKey], existed: set[ObjectKey], key: ObjectKey, flag: str) -> None:
    """Apply one raw change to the source's live set."""
    if flag in ("created", "undeleted"):
        source.add(key)
        existed.add(key)
    elif flag == "deleted":
        source.discard(key)
