"""Reindex scenarios every backend with generations must pass, run against its real server.

A test module subclasses :class:`ReindexScenarios` and provides the fixtures::

    agent_backend   -> (backend name, options): an agent's backend on a target empty at the start
    read_objects    -> Callable[[str | None], dict[str, dict]]: the live objects of a generation
                       (None: what readers of the target see: the alias, the mirror table),
                       keyed "type:id", each its document without livesync's own fields
    generation_exists -> Callable[[str], bool]

The "application database" is :data:`support.loaders.SOURCE`, read by the agent's loader
``support.loaders:load``; the reindex's source lists its keys in a stable (sorted) order.
What happens during the reindex (publishing, live runs, a crash) is injected by the
source as it yields, so every step is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from livesync.client import Publisher
from livesync.manager import Agent, SyncManager
from livesync.reindex import reindex_agent
from livesync.reindex_state import load_state
from livesync.runner import run_agent
from support import loaders

Objects = dict[str, dict[str, Any]]
AGENT = "search"


def document(number: int, shape: int, title: str = "") -> dict[str, Any]:
    return {"title": title or f"event {number}", "shape": shape}


def key(number: int) -> str:
    return f"event:{number}"


class Source:
    """The reindex's source: the database's keys in order, calling ``hooks[n]`` before yielding the ``n``-th."""

    def __init__(self, hooks: dict[int, Callable[[], None]] | None = None) -> None:
        self.hooks = hooks or {}
        self.yielded: list[tuple[str, Any]] = []

    def __call__(self) -> Iterator[tuple[str, Any]]:
        return self.objects()

    def objects(self) -> Iterator[tuple[str, Any]]:
        for index, item in enumerate(sorted(loaders.SOURCE, key=lambda k: (k[0], k[1])), 1):
            hook = self.hooks.pop(index, None)
            if hook is not None:
                hook()
            self.yielded.append(item)
            yield item


class Crash(Exception):
    """The source's database going away in the middle of an export."""


class ReindexScenarios:
    """Reindex behaviours every backend with generations shows (see the module docstring)."""

    partitions = 2

    @pytest.fixture
    def agent_backend(self) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    @pytest.fixture
    def read_objects(self) -> Callable[[str | None], Objects]:
        raise NotImplementedError

    @pytest.fixture
    def generation_exists(self) -> Callable[[str], bool]:
        raise NotImplementedError

    @pytest.fixture
    def manager(self, real_redis: redis.Redis, namespace: str) -> SyncManager:
        return SyncManager(real_redis, namespace, partitions=self.partitions, allowed_imports=("support",))

    @pytest.fixture
    def live(
        self, manager: SyncManager, real_redis: redis.Redis, namespace: str, agent_backend: tuple[str, dict[str, str]]
    ) -> Iterator[Publisher]:
        """Twenty events synced to the target in shape 1 by the live agent; the database now says shape 2."""
        loaders.SOURCE.clear()
        loaders.CALLS.clear()
        backend, options = agent_backend
        manager.add_agent(Agent(id=AGENT, backend=backend, options=options, loader="support.loaders:load"))
        publisher = Publisher(real_redis, namespace)
        for number in range(1, 21):
            loaders.SOURCE[("event", number)] = document(number, 1)
            publisher.emit("event", number, "created")
        self.run_live(manager)
        for number in range(1, 21):  # a new document shape: what a reindex is for
            loaders.SOURCE[("event", number)] = document(number, 2)
        yield publisher
        loaders.SOURCE.clear()
        loaders.CALLS.clear()

    @staticmethod
    def run_live(manager: SyncManager) -> None:
        for partition in range(manager.partitions):
            run_agent(manager, AGENT, partition)

    @staticmethod
    def expected() -> Objects:
        return {f"{type_}:{id_}": dict(doc) for (type_, id_), doc in loaders.SOURCE.items()}

    # -- the scenarios -----------------------------------------------------------------------

    def test_updates_published_during_the_export_are_in_the_new_generation_after_the_swap(
        self, manager: SyncManager, live: Publisher, read_objects: Callable[[str | None], Objects]
    ) -> None:
        # Given changes published while the export is halfway: an update of an object exported
        # already, one of an object still to come, a delete and a create; live runs go on
        def meanwhile() -> None:
            loaders.SOURCE[("event", 3)] = document(3, 2, "renamed three")
            live.emit("event", 3, "title_changed")
            loaders.SOURCE[("event", 15)] = document(15, 2, "renamed fifteen")
            live.emit("event", 15, "title_changed")
            del loaders.SOURCE[("event", 4)]
            live.emit("event", 4, "deleted")
            loaders.SOURCE[("event", 21)] = document(21, 2)
            live.emit("event", 21, "created")
            self.run_live(manager)

        # When the agent is reindexed
        result = reindex_agent(manager, AGENT, Source({10: meanwhile}), source_name="scenario", batch_size=4)

        # Then readers see the new generation, complete and current
        assert read_objects(None) == self.expected()
        assert result.generation and result.retired and not result.dropped
        assert (result.objects, result.changes) == (20, 4)

    def test_changes_the_agent_had_not_delivered_are_in_the_new_generation_and_later_runs_write_it(
        self, manager: SyncManager, live: Publisher, read_objects: Callable[[str | None], Objects]
    ) -> None:
        # Given a change published during the export that no live run delivered before the swap
        def meanwhile() -> None:
            loaders.SOURCE[("event", 7)] = document(7, 2, "late seven")
            live.emit("event", 7, "title_changed")

        result = reindex_agent(manager, AGENT, Source({5: meanwhile}), source_name="scenario", batch_size=4)
        assert read_objects(None)[key(7)] == document(7, 2, "late seven")

        # When, after the swap, one more change is published and the live agent runs
        loaders.SOURCE[("event", 8)] = document(8, 2, "later eight")
        live.emit("event", 8, "title_changed")
        self.run_live(manager)

        # Then it lands in the new generation, and the old one is left as the swap left it
        assert read_objects(None) == self.expected()
        old = read_objects(result.retired)
        assert (old[key(7)], old[key(8)]) == (document(7, 1), document(8, 1))

    def test_the_old_generation_is_what_readers_see_until_the_swap(
        self,
        manager: SyncManager,
        live: Publisher,
        read_objects: Callable[[str | None], Objects],
        generation_exists: Callable[[str], bool],
    ) -> None:
        before = read_objects(None)
        seen: dict[str, Any] = {}

        def halfway() -> None:
            state = load_state(manager, AGENT)
            assert state is not None
            seen["generation"] = state.generation
            seen["exists"] = generation_exists(state.generation)
            seen["readers"] = read_objects(None)
            seen["new"] = read_objects(state.generation)

        result = reindex_agent(manager, AGENT, Source({12: halfway}), source_name="scenario", batch_size=4)

        # Then halfway readers saw the old generation untouched, the new one half-built beside it
        assert before == {key(number): document(number, 1) for number in range(1, 21)}
        assert seen["exists"] and seen["readers"] == before
        assert set(seen["new"]) == {key(number) for number in range(1, 9)}  # two batches of four, so far
        assert all(doc["shape"] == 2 for doc in seen["new"].values())
        # and after the swap the old generation is kept, as it was
        assert result.generation == seen["generation"]
        assert read_objects(result.retired) == before

    def test_a_reindex_killed_mid_export_resumes_after_the_last_batch_accepted_and_completes(
        self, manager: SyncManager, live: Publisher, read_objects: Callable[[str | None], Objects]
    ) -> None:
        # Given a reindex whose source dies after ten objects (two batches of four accepted)
        def crash() -> None:
            raise Crash("database went away")

        with pytest.raises(Crash):
            reindex_agent(manager, AGENT, Source({11: crash}), source_name="scenario", batch_size=4)
        state = load_state(manager, AGENT)
        assert state is not None
        assert (state.phase, state.exported, state.last) == ("export", 8, ("event", 8))
        loaders.SOURCE[("event", 2)] = document(2, 2, "changed while down")
        live.emit("event", 2, "title_changed")
        loaders.CALLS.clear()

        # When it is run again
        result = reindex_agent(manager, AGENT, Source(), source_name="scenario", batch_size=4)

        # Then it continued in the same generation after object 8, and completed
        assert result.resumed and result.generation == state.generation
        exported = [key for call in loaders.CALLS for key in call]
        assert ("event", 1) not in exported and ("event", 9) in exported
        assert read_objects(None) == self.expected()
        assert load_state(manager, AGENT) is None

    def test_drop_old_drops_the_old_generation_after_the_swap(
        self,
        manager: SyncManager,
        live: Publisher,
        read_objects: Callable[[str | None], Objects],
        generation_exists: Callable[[str], bool],
    ) -> None:
        result = reindex_agent(manager, AGENT, Source(), source_name="scenario", drop_old=True)

        assert result.dropped
        assert not generation_exists(result.retired)
        assert read_objects(None) == self.expected()

    def test_a_second_reindex_replaces_the_first_generation(
        self, manager: SyncManager, live: Publisher, read_objects: Callable[[str | None], Objects]
    ) -> None:
        first = reindex_agent(manager, AGENT, Source(), source_name="scenario", drop_old=True)
        loaders.SOURCE[("event", 1)] = document(1, 3)
        second = reindex_agent(manager, AGENT, Source(), source_name="scenario", drop_old=True)

        assert second.generation != first.generation
        assert read_objects(None) == self.expected()
