"""Every real target ends as the source, whatever the interleaving (DESIGN.md invariant 6, "Versions and
epochs"; issue 11, part 2).

A hypothesis property drives random sequences of operations on a namespace of 1 to 3
partitions: an application publishing random changes of events and categories (a valid
lifecycle each, from :mod:`test_expander_order`), agents run on random partitions with
random windows and batch sizes, an expander that turns a category's change into changes
of its live events (in other partitions), and Redis losing its recent writes. Three
agents read the namespace, each with a target of its own:

- ``mirror``: the ``sql`` backend on a SQLite file, with a loader (the source's documents);
- ``archive``: the ``jsonl`` backend with the same loader, read back with
  :func:`~livesync.testing.apply_version_rule`;
- ``plain``: the ``jsonl`` backend without a loader (no documents: the live set only).

After every partition of every agent is drained, each target holds exactly the source's
live objects; where it has documents, each live object's is the source's current one,
never an older one; every live object's version is at least that of the object's own
last change; and the mirror only ever moves forward (after every run, no row's version
and no document's revisions went back).

**Redis losing its recent writes** is modelled exactly (:mod:`support.snapshots`): a
snapshot of the namespace's keys is taken, more happens, and the snapshot is restored.
Either the whole namespace goes back (a restart from an older RDB/AOF, a failover to a
lagging replica: pointers and acks go back with the tracks, a consistent older state that
runs simply continue from), or only some partitions' tracks while the agents' pointers
stay (a head rewound under its pointers: runs stop the agent in ``rollback``, the operator
recovers it with ``agent reset --to tail``, and ``init --repair`` where a head was lost, as
README's "Agent states" says). The application's database keeps what Redis lost, and
changes Redis lost are lost for livesync, so the application publishes the objects they
touched again (``created`` for a live one, ``deleted`` for a gone one: what an outbox that
keeps its rows, or an operator's re-export of those objects, does) and goes on. What the
property pins is that nothing a target got before the loss (records of the lost changes,
resends of stored ones after a reset, seqs handed out again) outranks what is published
after it, and nothing published after it is skipped.

With losses it found two bugs, now fixed (their minimal examples are in
:mod:`test_versions_regressions`): reduce folded a create and a delete of one window into
nothing, and prune deleted changes handed out again under a lagging agent's pointer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, select
from support import loaders
from support.snapshots import Snapshot, keys_of
from test_expander_order import ObjectKey, possible_flags, replay, use_expander

from livesync import Publisher
from livesync.backends.sql_mirror import mirror_table
from livesync.changes import Change
from livesync.errors import AgentNotRunnable, HeadLost
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of
from livesync.records import ObjectId, Record
from livesync.repair import repair_meta
from livesync.runner import run_agent
from livesync.testing import TargetState, apply_version_rule

#: Left out of scripts/test --fast: hypothesis over real runs and Redis losses: seconds of CPU each.
pytestmark = pytest.mark.slow

CATEGORIES = 2
EVENTS = 4
MODIFIES = ("data_changed", "moved", "title_changed")
AGENTS = ("mirror", "archive", "plain")
TABLE = "livesync_mirror"

Item = tuple[str, ObjectId, list[str]]
State = dict[tuple[str, str], TargetState]


@dataclass
class Source:
    """The application's database: which objects live, each one's revision, each event's category."""

    membership: list[int]
    live: set[ObjectKey] = field(default_factory=set)
    existed: set[ObjectKey] = field(default_factory=set)
    revisions: dict[ObjectKey, int] = field(default_factory=dict)

    def change(self, key: ObjectKey, flag: str) -> None:
        """Commit one change of ``key`` (before it is published, as on commit)."""
        replay(self.live, self.existed, key, flag)
        self.revisions[key] = self.revisions.get(key, 0) + 1

    def document(self, key: ObjectKey) -> dict[str, Any]:
        """A live object's document: its revision, and an event's category's revision too."""
        type_, id_ = key
        document: dict[str, Any] = {"type": type_, "id": id_, "rev": self.revisions[key]}
        if type_ == "event":
            category = self.membership[int(id_)]
            document |= {"category": category, "category_rev": self.revisions.get(("category", category), 0)}
        return document

    def documents(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every live object's document, keyed as targets key them: ``(type, str(id))``."""
        return {(type_, str(id_)): self.document((type_, id_)) for type_, id_ in self.live}

    def commit(self) -> None:
        """Make the agents' loader (:mod:`support.loaders`) find the documents of now."""
        loaders.SOURCE.clear()
        loaders.SOURCE.update({key: self.document(key) for key in self.live})


@dataclass(frozen=True)
class Published:
    """One change as Redis stored it."""

    key: ObjectKey
    partition: int
    version: int


class Scenario:
    """One example: the namespace, its three agents and their targets, the source, what Redis holds."""

    def __init__(self, client: redis.Redis, name: str, partitions: int, source: Source, files: Path) -> None:
        self.client, self.name, self.partitions, self.source = client, name, partitions, source
        self.mirror_url = f"sqlite:///{files / name}.db"
        self.archive, self.plain = files / f"{name}-archive.jsonl", files / f"{name}-plain.jsonl"
        self.manager = SyncManager(client, name, partitions=partitions, allowed_imports=["support.loaders"])
        loader = "support.loaders:load"
        for agent in (
            Agent(id="mirror", backend="sql", options={"url": self.mirror_url, "create": True}, loader=loader),
            Agent(id="archive", backend="jsonl", options={"path": str(self.archive)}, loader=loader),
            Agent(id="plain", backend="jsonl", options={"path": str(self.plain)}),
        ):
            self.manager.add_agent(agent.model_copy(update={"expander": "test"}), start="tail")
        self.publisher = Publisher(client, name)
        self.stored: list[Published] = []
        self.lost: dict[ObjectKey, None] = {}  # objects whose changes Redis lost, to publish again
        self.mirror: State = {}
        self.repaired = False  # whether the operator ran 'init --repair'

    def publish(self, items: list[Item]) -> None:
        """Publish ``items`` (already committed to the source), after the objects Redis lost."""
        batch = [(t, i, ["created" if (t, i) in self.source.live else "deleted"]) for t, i in self.lost] + items
        self.lost.clear()
        self.source.commit()
        try:
            seqs = self.publisher.emit_many(batch)
        except HeadLost:
            # a head lost under its pointers: the operator runs 'livesync init --repair', and the
            # application publishes the batch again (partitions stored before the refusal get duplicates)
            event("a head was lost: init --repair")
            repair_meta(self.client, self.manager.keys, partitions=self.partitions)
            self.repaired = True
            seqs = self.publisher.emit_many(batch)
        for (type_, id_, _flags), seq in zip(batch, seqs, strict=True):
            partition = partition_of(type_, id_, self.partitions)
            version = self.manager.track(partition).version_at(seq)
            assert version is not None
            self.stored.append(Published((type_, id_), partition, version))

    def run(self, agent_id: str, partition: int, window: int = 10_000, batch_size: int = 100) -> None:
        """Run the agent once; reset it to the tail when it stops in rollback, as the operator does."""
        try:
            run_agent(self.manager, agent_id, partition, window=window, batch_size=batch_size)
        except AgentNotRunnable:
            # a partition rewound under the agent (or, after 'init --repair' gave a lost head back, seqs
            # below it lost for an agent that had not read them: a gap): the operator resets it to the tail
            stopped = self.manager.get_agent(agent_id)
            assert stopped.state in ("rollback", "gap" if self.repaired else "rollback"), stopped.last_error
            how = "a pointer beyond the head" if "beyond" in str(stopped.last_error) else "seqs handed out again"
            event(f"an agent stopped in {stopped.state}" + (f": {how}" if stopped.state == "rollback" else ""))
            self.manager.reset_agent(agent_id, "tail")
        if agent_id == "mirror":
            now = read_mirror(self.mirror_url)
            check_moves_forward(self.mirror, now)
            self.mirror = now

    def lose(self, snapshot: Snapshot, kept: int, partitions: set[int] | None) -> None:
        """Restore ``snapshot`` (of the first ``kept`` stored changes): all of it, or the tracks of ``partitions``."""
        snapshot.restore(None if partitions is None else sorted(partitions))
        gone = [p for p in self.stored[kept:] if partitions is None or p.partition in partitions]
        self.stored = self.stored[:kept] + [p for p in self.stored[kept:] if p not in gone]
        self.lost.update((p.key, None) for p in gone)
        event(f"Redis lost {'no' if not gone else 'some'} changes ({'namespace' if partitions is None else 'tracks'})")

    def drain(self, orders: dict[str, list[int]]) -> None:
        """Publish what is still to publish again, then run every agent's partitions until all are at the head."""
        if self.lost:
            self.publish([])
        for agent_id, order in orders.items():
            for partition in order:
                self.run(agent_id, partition)
            for track in self.manager.tracks():
                while (track.pointer(agent_id) or 0) != track.head():
                    self.run(agent_id, track.partition)
            assert self.manager.get_agent(agent_id).state == "active"

    def check(self) -> None:
        """Each target holds the source's live objects, their current documents, versions not below their last."""
        expected = self.source.documents()
        last = {(p.key[0], str(p.key[1])): p.version for p in self.stored}
        targets = {"mirror": self.mirror, "archive": read_jsonl(self.archive), "plain": read_jsonl(self.plain)}
        for target, state in targets.items():
            live = {key: held for key, held in state.items() if held.live}
            assert sorted(live) == sorted(expected), f"{target} holds other objects than the source"
            if target != "plain":
                assert {key: held.document for key, held in live.items()} == expected, f"{target}: documents"
            for key, held in live.items():
                assert held.version >= last[key], f"{target}: {key} holds a version below its last change's"

    def delete(self) -> None:
        """Delete every key of the namespace."""
        doomed = keys_of(self.client, self.name)
        if doomed:
            self.client.delete(*doomed)


def read_mirror(url: str) -> State:
    """The mirror table's rows as target states."""
    engine = create_engine(url)
    try:
        if not inspect(engine).has_table(TABLE):
            return {}  # no run of the mirror agent had anything to send yet
        with engine.connect() as connection:
            rows = connection.execute(select(mirror_table(TABLE))).all()
    finally:
        engine.dispose()
    return {(row.type, row.id): TargetState(row.version, not row.deleted, row.document) for row in rows}


def read_jsonl(path: Path) -> State:
    """A jsonl file's records, applied in order under the version rule (how its readers rebuild the state)."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    return apply_version_rule({}, [Record.from_dict(json.loads(line)) for line in lines])


def check_moves_forward(before: State, after: State) -> None:
    """No row vanished, no version went back, no live document's revisions went back."""
    for key, old in before.items():
        new = after.get(key)
        assert new is not None, f"{key} vanished from the mirror"
        assert new.version >= old.version, f"{key}: version went back from {old.version} to {new.version}"
        if old.live and new.live and old.document and new.document:
            for part in ("rev", "category_rev"):
                assert new.document.get(part, 0) >= old.document.get(part, 0), f"{key}: {old} -> {new}"


def play(data: st.DataObject, scenario: Scenario, most: int, label: str) -> None:
    """Up to ``most`` random steps: a publish of 1-4 changes, or one run of a random agent and partition."""
    source = scenario.source
    for _step in range(data.draw(st.integers(0, most), label=label)):
        if data.draw(st.booleans(), label="publish?"):
            items: list[Item] = []
            for _item in range(data.draw(st.integers(1, 4), label="changes")):
                key = data.draw(
                    st.one_of(
                        st.tuples(st.just("event"), st.integers(0, EVENTS - 1)),
                        st.tuples(st.just("category"), st.integers(0, CATEGORIES - 1)),
                    ),
                    label="object",
                )
                flag = data.draw(st.sampled_from(possible_flags(key, source.live, source.existed)), label="flag")
                if flag in ("data_changed", "moved"):
                    flag = data.draw(st.sampled_from(MODIFIES), label="modify")
                source.change(key, flag)
                items.append((key[0], key[1], [flag]))
            scenario.publish(items)
        else:
            agent_id = data.draw(st.sampled_from(AGENTS), label="agent")
            partition = data.draw(st.integers(0, scenario.partitions - 1), label="partition")
            window = data.draw(st.integers(1, 8), label="window")
            scenario.run(agent_id, partition, window, data.draw(st.integers(1, 5), label="batch size"))


PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
#: What the example may do to Redis after its snapshot in each round.
LOSSES = ("none", "namespace", "tracks")


@PROPERTY
@given(data=st.data())
def test_every_target_ends_as_the_source_across_partitions_and_expanders(
    real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: st.DataObject
) -> None:
    play_example(data, real_redis, monkeypatch, tmp_path, losses=("none",))


@PROPERTY
@given(data=st.data())
def test_every_target_ends_as_the_source_when_redis_loses_its_recent_writes(
    real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data: st.DataObject
) -> None:
    play_example(data, real_redis, monkeypatch, tmp_path, losses=LOSSES)


def play_example(
    data: st.DataObject,
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    losses: Sequence[str],
) -> None:
    """One example of the property (see the module's docstring), Redis losing writes as ``losses`` allow."""
    # Given P partitions, events each in a category, an expander that turns a category's change into
    # a change of each of its live events (the application's query at read time), and three agents
    partitions = data.draw(st.integers(1, 3), label="partitions")
    membership = data.draw(
        st.lists(st.integers(0, CATEGORIES - 1), min_size=EVENTS, max_size=EVENTS), label="categories"
    )
    expanded_flag = data.draw(st.sampled_from(MODIFIES), label="expanded flag")
    source = Source(membership)

    def expander(change: Change) -> Iterator[Item]:
        if change.type == "category":
            for event_id, category in enumerate(membership):
                if category == change.id and ("event", event_id) in source.live:
                    yield ("event", event_id, [expanded_flag])

    use_expander(monkeypatch, expander)
    scenario = Scenario(client, f"t{uuid.uuid4().hex[:12]}", partitions, source, tmp_path)
    try:
        # When random publishes and runs go on, while Redis loses what followed a snapshot (or not)
        for _round in range(data.draw(st.integers(1, 2), label="rounds")):
            play(data, scenario, 8, "steps")
            loss = data.draw(st.sampled_from(losses), label="Redis loses")
            snapshot, kept = Snapshot.take(client, scenario.name) if loss != "none" else None, len(scenario.stored)
            play(data, scenario, 8, "steps after the snapshot")
            if snapshot is None:
                continue
            if loss == "namespace":
                scenario.lose(snapshot, kept, None)
            else:
                rewound = data.draw(st.sets(st.integers(0, partitions - 1), min_size=1), label="rewound partitions")
                scenario.lose(snapshot, kept, rewound)
        play(data, scenario, 6, "steps after the loss")
        # And every partition of every agent is drained, in random orders
        scenario.drain({agent: data.draw(st.permutations(range(partitions)), label=agent) for agent in AGENTS})

        # Then each target holds the source's live objects with their current documents
        scenario.check()
    finally:
        loaders.SOURCE.clear()
        scenario.delete()
