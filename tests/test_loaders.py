"""Loaders (DESIGN.md "Documents: loaders"): one call per batch, documents on records,
missing objects uploaded as deleted, loader failures fail the batch and lose nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from click.testing import Result
from support import loaders
from support.backends import RecordingBackend

from livesync import Publisher, SyncManager
from livesync.agent import Agent
from livesync.errors import ConfigurationError, ImportNotAllowed, LoaderError, UnknownLoader
from livesync.export import export_agent
from livesync.loaders import NamedLoader, load_documents, load_loader
from livesync.records import Record
from livesync.runner import run_agent

ALLOWED = ["support.loaders"]


@pytest.fixture(autouse=True)
def empty_source() -> Iterator[None]:
    loaders.SOURCE.clear()
    loaders.CALLS.clear()
    yield
    loaders.SOURCE.clear()
    loaders.CALLS.clear()


@pytest.fixture
def loading_manager(real_redis: redis.Redis, namespace: str) -> SyncManager:
    manager = SyncManager(real_redis, namespace, allowed_imports=ALLOWED)
    manager.add_agent(Agent(id="search", backend="null", loader="support.loaders:load"))
    return manager


def record(id_: Any, action: str = "created", version: int = 10) -> Record:
    return Record("event", id_, action, (action,), 1, version)  # type: ignore[arg-type]


def named(function: Callable[..., Any]) -> NamedLoader:
    return NamedLoader("test", function)


# -- load_documents -----------------------------------------------------------------------


def test_documents_are_loaded_in_one_call_for_the_created_and_updated_records_of_a_batch() -> None:
    loaders.SOURCE.update({("event", 1): {"title": "one"}, ("event", "e-2"): {"title": "two"}})
    batch = [record(1), record("e-2", "updated"), record(3, "deleted")]

    loaded = load_documents(batch, named(loaders.load))

    assert loaders.CALLS == [[("event", 1), ("event", "e-2")]]  # one call; deletes are not loaded
    assert [(r.id, r.action, r.document) for r in loaded] == [
        (1, "created", {"title": "one"}),
        ("e-2", "created", {"title": "two"}),  # a document is the whole state: see the test below
        (3, "deleted", None),
    ]


def test_an_object_the_loader_does_not_return_or_maps_to_none_is_uploaded_as_deleted() -> None:
    batch = [record(1), record(2, "updated")]

    loaded = load_documents(batch, named(lambda keys: {("event", 2): None}))

    assert [(r.id, r.action, r.document, r.version) for r in loaded] == [
        (1, "deleted", None, 10),
        (2, "deleted", None, 10),
    ]


def test_an_updated_record_with_a_document_is_uploaded_as_created_so_an_object_becoming_visible_arrives() -> None:
    # Given an object the agent could not see before (its target holds no live copy), now visible
    became_visible = Record("event", 1, "updated", ("protection_changed",), 4, 10)
    loaded = load_documents([became_visible], named(lambda keys: {("event", 1): {"title": "now public"}}))

    # Then its record carries the whole current document as a create: targets apply it even
    # where they hold no live object (an `updated` they would drop); versions still guard it
    assert [(r.action, r.changes, r.document, r.version) for r in loaded] == [
        ("created", ("protection_changed",), {"title": "now public"}, 10)
    ]


def test_keys_match_with_the_ids_type_so_a_string_id_is_not_an_integer_one() -> None:
    loaded = load_documents([record(42)], named(lambda keys: {("event", "42"): {"title": "x"}}))
    assert loaded[0].action == "deleted"


def test_a_batch_of_deletes_does_not_call_the_loader() -> None:
    loaded = load_documents([record(1, "deleted")], named(loaders.broken))
    assert loaded == [record(1, "deleted")]


def test_a_failing_loader_raises_loader_error_naming_it_with_the_cause() -> None:
    with pytest.raises(
        LoaderError, match=r"loader 'test' failed on a batch of 1 objects: .*db.internal:5432 is down"
    ) as info:
        load_documents([record(1)], named(loaders.broken))
    assert isinstance(info.value.__cause__, ConnectionError)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([("event", 1)], r"returned list, not a mapping"),
        ({("event", 1): "a title"}, r"returned str for \('event', 1\), not a dict"),
    ],
)
def test_a_loader_answer_that_is_not_documents_raises_loader_error(answer: object, message: str) -> None:
    with pytest.raises(LoaderError, match=message):
        load_documents([record(1)], named(lambda keys: answer))


# -- naming a loader ----------------------------------------------------------------------


def test_load_loader_refuses_unknown_names_paths_outside_the_allow_list_and_non_callables() -> None:
    with pytest.raises(UnknownLoader, match=r"unknown loader 'nosuch'"):
        load_loader("nosuch")
    with pytest.raises(ImportNotAllowed):
        load_loader("support.loaders:load", allowed_imports=[])
    with pytest.raises(ConfigurationError, match=r"loader 'support.loaders:NOT_CALLABLE' is not callable"):
        load_loader("support.loaders:NOT_CALLABLE", allowed_imports=ALLOWED)


def test_adding_an_agent_with_an_unknown_loader_is_refused_and_nothing_is_stored(
    real_redis: redis.Redis, namespace: str
) -> None:
    manager = SyncManager(real_redis, namespace, allowed_imports=ALLOWED)
    with pytest.raises(UnknownLoader):
        manager.add_agent(Agent(id="search", backend="null", loader="nosuch"))
    assert manager.list_agents() == []


# -- runs, exports, requeues --------------------------------------------------------------


def test_a_run_uploads_records_with_their_documents_and_deletes_objects_gone_from_the_source(
    loading_manager: SyncManager, namespace: str, real_redis: redis.Redis
) -> None:
    # Given two objects changed on the track; only the first still exists in the source
    publisher = Publisher(real_redis, namespace)
    publisher.emit("event", 1, "created")
    publisher.emit("event", 2, "title_changed")
    loaders.SOURCE[("event", 1)] = {"title": "Kickoff"}
    backend = RecordingBackend("search")

    # When the agent runs
    result = run_agent(loading_manager, "search", backend=backend)

    # Then the backend got the document of the first and a delete for the second
    assert [(r.id, r.action, r.document) for r in backend.records] == [
        (1, "created", {"title": "Kickoff"}),
        (2, "deleted", None),
    ]
    assert result.pointer_after == 2


def test_a_failing_loader_fails_the_run_keeps_the_pointer_and_the_next_run_delivers(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given an agent whose loader's database is down
    manager = SyncManager(real_redis, namespace, allowed_imports=ALLOWED)
    manager.add_agent(Agent(id="search", backend="null", loader="support.loaders:broken"))
    Publisher(real_redis, namespace).emit("event", 1, "created")
    backend = RecordingBackend("search")

    # When it runs, the run fails with the loader named, nothing uploaded, the pointer kept
    with pytest.raises(LoaderError, match=r"loader 'support\.loaders:broken' failed"):
        run_agent(manager, "search", backend=backend)
    assert backend.records == []
    assert manager.pointers("search") == [0]
    assert "db.internal:5432 is down" in (manager.get_agent("search").last_error or "")

    # And once the loader works again, the next run delivers the change
    loaders.SOURCE[("event", 1)] = {"title": "back"}
    manager.redis.hset(manager.keys.agent("search"), "loader", "support.loaders:load")
    run_agent(manager, "search", backend=backend)
    assert [(r.id, r.document) for r in backend.records] == [(1, {"title": "back"})]


def test_an_export_uploads_documents_from_the_loader(real_redis: redis.Redis, namespace: str) -> None:
    manager = SyncManager(real_redis, namespace, allowed_imports=ALLOWED)
    manager.add_agent(Agent(id="search", backend="null", loader="support.loaders:load", state="needs_export"))
    loaders.SOURCE.update({("event", 1): {"title": "one"}, ("event", 2): {"title": "two"}})
    backend = RecordingBackend("search")

    export_agent(manager, "search", [("event", 1), ("event", 2), ("event", 3)], backend=backend)

    assert sorted((r.id, r.action, r.document is not None) for r in backend.records) == [
        (1, "created", True),
        (2, "created", True),
        (3, "deleted", False),
    ]


# -- CLI ----------------------------------------------------------------------------------


def test_agent_add_with_loader_is_shown_by_agent_show(cli: Callable[..., Result]) -> None:
    env = {"LIVESYNC_ALLOWED_IMPORTS": "support.loaders"}
    added = cli("agent", "add", "search", "--backend", "null", "--loader", "support.loaders:load", extra_env=env)
    assert added.exit_code == 0, added.output
    shown = cli("agent", "show", "search", extra_env=env)
    assert shown.exit_code == 0, shown.output
    assert "loader:" in shown.output and "support.loaders:load" in shown.output


def test_agent_add_with_an_unknown_loader_exits_2_naming_it(cli: Callable[..., Result]) -> None:
    result = cli("agent", "add", "search", "--backend", "null", "--loader", "nosuch")
    assert result.exit_code == 2
    assert "unknown loader 'nosuch'" in result.output
