"""The ``opensearch`` backend against a real OpenSearch-compatible server (osmem-server on loopback).

The answers osmem-server cannot be made to give (5xx, 429 items, 413, TLS) are in
``test_opensearch_answers.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import pytest
from support.opensearch_server import Cluster
from support.servers import free_port

from livesync.backends.opensearch import OpenSearchBackend
from livesync.errors import BackendError, RecordRejected
from livesync.records import Action, Record
from livesync.testing import BackendContract, TargetState

V = 1_764_633_600_000_000  # versions are server microseconds
PASSWORD = "pw-Secret-4711"


@pytest.fixture
def index(opensearch_cluster: Cluster) -> str:
    """A new index behind an alias; the alias is what the backend writes to."""
    return opensearch_cluster.new_index()


@pytest.fixture
def new_backend(opensearch_cluster: Cluster, index: str) -> Callable[..., OpenSearchBackend]:
    def make(**options: Any) -> OpenSearchBackend:
        return OpenSearchBackend(
            "agent", OpenSearchBackend.Options(**{"url": opensearch_cluster.url, "index": index, **options})
        )

    return make


def record(
    id: int | str, action: Action, version: int, document: dict[str, Any] | None = None, type: str = "event"
) -> Record:
    changes = {"created": ("created",), "updated": ("data_changed",), "deleted": ("deleted",)}[action]
    return Record(type, id, action, changes, 1, V + version, document)


def upload(backend: OpenSearchBackend, *batches: list[Record]) -> None:
    with backend:
        for batch in batches:
            backend.upload(batch)


# -- what lands --------------------------------------------------------------------------------


def test_a_created_record_lands_as_its_document_plus_livesync_fields_at_its_version(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(new_backend(), [Record("event", 7, "created", ("created",), 42, V + 10, {"title": "Opening"})])

    held = opensearch_cluster.get(index, "event:7")
    assert held is not None
    assert held["_version"] == V + 10
    assert held["_source"] == {
        "title": "Opening",
        "_livesync": {"type": "event", "id": "7", "action": "created", "changes": ["created"], "seq": 42,
                      "version": V + 10},
    }  # fmt: skip


def test_a_record_without_a_document_lands_as_livesync_fields_alone(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(new_backend(), [record("e-2", "created", 10)])

    held = opensearch_cluster.get(index, "event:e-2")
    assert held is not None
    assert set(held["_source"]) == {"_livesync"}
    assert held["_source"]["_livesync"]["id"] == "e-2"


def test_an_update_replaces_the_document_and_a_delete_removes_it(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(
        new_backend(),
        [record(1, "created", 10, {"title": "a"}), record(2, "created", 11, {"title": "b"})],
        [record(1, "updated", 20, {"title": "a2"}), record(2, "deleted", 21)],
    )

    documents = opensearch_cluster.documents(index)
    assert set(documents) == {"event:1"}
    version, body = documents["event:1"]
    assert (version, body["title"], body["_livesync"]["action"]) == (V + 20, "a2", "updated")


def test_writes_through_the_alias_land_in_the_index_behind_it(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(new_backend(), [record(1, "created", 10, {"title": "a"})])

    behind = index.removesuffix("-alias") + "-1"
    assert set(opensearch_cluster.documents(behind)) == {"event:1"}


def test_a_small_bulk_limit_splits_the_batch_and_all_of_it_lands(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    batch = [record(number, "created", number, {"text": "x" * 300}) for number in range(1, 41)]
    upload(new_backend(bulk_bytes=1024), batch)

    assert set(opensearch_cluster.documents(index)) == {f"event:{number}" for number in range(1, 41)}


# -- versions ----------------------------------------------------------------------------------


def test_stale_writes_are_dropped_and_the_batch_is_accepted(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(new_backend(), [record(1, "created", 30, {"title": "v30"}), record(2, "created", 30, {"title": "v30"})])

    # older states of both, from a lagging partition: 409s, which are no failure
    upload(
        new_backend(),
        [record(1, "created", 10, {"title": "v10"}), record(1, "updated", 20, {"title": "v20"})],
        [record(2, "deleted", 20)],
    )

    documents = opensearch_cluster.documents(index)
    assert {doc_id: (version, body["title"]) for doc_id, (version, body) in documents.items()} == {
        "event:1": (V + 30, "v30"),
        "event:2": (V + 30, "v30"),
    }


def test_a_resent_batch_changes_nothing(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    batch = [record(1, "created", 10, {"title": "a"}), record(2, "deleted", 11), record(3, "created", 12)]
    upload(new_backend(), batch, batch)
    upload(new_backend(), batch)

    assert {doc_id: version for doc_id, (version, _body) in opensearch_cluster.documents(index).items()} == {
        "event:1": V + 10,
        "event:3": V + 12,
    }


@pytest.mark.parametrize("document", [{"title": "v30"}, None], ids=["with-document", "without-document"])
def test_an_update_for_an_absent_object_creates_nothing(
    opensearch_cluster: Cluster,
    index: str,
    new_backend: Callable[..., OpenSearchBackend],
    document: dict[str, Any] | None,
) -> None:
    upload(new_backend(), [record(1, "updated", 30, document)])
    assert opensearch_cluster.documents(index) == {}

    # nor did it leave its version behind: an older create still lands
    upload(new_backend(), [record(1, "created", 20, {"title": "v20"})])
    assert opensearch_cluster.get(index, "event:1") is not None


def test_an_update_after_a_create_in_the_same_batch_applies(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(new_backend(), [record(1, "created", 10, {"title": "v10"}), record(1, "updated", 20, {"title": "v20"})])

    held = opensearch_cluster.get(index, "event:1")
    assert held is not None
    assert (held["_version"], held["_source"]["title"]) == (V + 20, "v20")


def test_a_delete_tombstone_guards_for_gc_deletes_then_a_stale_create_resurrects(opensearch_cluster: Cluster) -> None:
    # what the README states: OpenSearch keeps a delete's version for index.gc_deletes only (0s here)
    index = opensearch_cluster.new_index(settings={"index": {"gc_deletes": "0s"}})
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=opensearch_cluster.url, index=index))
    upload(backend, [record(1, "created", 10, {"title": "v10"})], [record(1, "deleted", 30)])

    upload(backend, [record(1, "created", 20, {"title": "stale"})])

    held = opensearch_cluster.get(index, "event:1")
    assert held is not None and held["_source"]["title"] == "stale"


def test_tombstone_documents_keep_the_delete_version_past_gc_deletes(opensearch_cluster: Cluster) -> None:
    index = opensearch_cluster.new_index(settings={"index": {"gc_deletes": "0s"}})
    backend = OpenSearchBackend(
        "agent", OpenSearchBackend.Options(url=opensearch_cluster.url, index=index, tombstones=True)
    )
    upload(backend, [record(1, "created", 10, {"title": "v10"})], [record(1, "deleted", 30)])

    upload(backend, [record(1, "created", 20, {"title": "stale"})], [record(1, "updated", 40, {"title": "v40"})])

    held = opensearch_cluster.get(index, "event:1")
    assert held is not None
    assert held["_version"] == V + 30
    assert held["_source"] == {"_livesync": {"type": "event", "id": "1", "action": "deleted",
                                             "changes": ["deleted"], "seq": 1, "version": V + 30}}  # fmt: skip
    # a newer create brings it back
    upload(backend, [record(1, "created", 50, {"title": "v50"})])
    held = opensearch_cluster.get(index, "event:1")
    assert held is not None and held["_source"]["title"] == "v50"


# -- refusals and failures ---------------------------------------------------------------------


@pytest.fixture
def typed_index(opensearch_cluster: Cluster) -> str:
    return opensearch_cluster.new_index(mappings={"properties": {"count": {"type": "integer"}}})


def test_items_the_mapping_refuses_are_rejected_by_name_and_the_rest_lands(
    opensearch_cluster: Cluster, typed_index: str
) -> None:
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=opensearch_cluster.url, index=typed_index))
    good = [record(number, "created", number, {"count": number}) for number in (1, 2, 3)]
    bad = [record(101, "created", 101, {"count": "many"}), record(102, "created", 102, {"count": {"a": 1}})]

    with pytest.raises(RecordRejected) as caught, backend:
        backend.upload([good[0], bad[0], good[1], bad[1], good[2]])

    assert [rejected for rejected, _reason in caught.value.rejections] == bad
    assert all("mapper_parsing_exception" in reason for _record, reason in caught.value.rejections)
    assert set(opensearch_cluster.documents(typed_index)) == {"event:1", "event:2", "event:3"}


def test_records_that_cannot_be_documents_are_rejected_before_sending(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    bad = [
        record(1, "created", 10, {"_livesync": "mine"}),
        record(2, "created", 11, {"ratio": float("nan")}),
        record(3, "created", 12, {"when": object()}),
        record("x" * 600, "created", 13),
    ]
    with pytest.raises(RecordRejected) as caught, new_backend() as backend:
        backend.upload([*bad, record(5, "created", 15, {"fine": True})])

    reasons = dict((rejected.id, reason) for rejected, reason in caught.value.rejections)
    assert list(reasons) == [1, 2, 3, "x" * 600]
    assert "_livesync" in reasons[1] and "JSON" in reasons[2] and "JSON" in reasons[3] and "512" in reasons["x" * 600]
    assert set(opensearch_cluster.documents(index)) == {"event:5"}


def test_a_batch_refused_whole_fails_without_dead_lettering(opensearch_cluster: Cluster, typed_index: str) -> None:
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=opensearch_cluster.url, index=typed_index))
    with pytest.raises(BackendError, match="refused every record of a batch of 2"), backend:
        backend.upload([record(1, "created", 1, {"count": "x"}), record(2, "created", 2, {"count": "y"})])


def test_a_mapping_that_refuses_the_livesync_key_fails_the_batch(opensearch_cluster: Cluster) -> None:
    index = opensearch_cluster.new_index(mappings={"dynamic": "strict", "properties": {"title": {"type": "text"}}})
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=opensearch_cluster.url, index=index))
    with pytest.raises(BackendError, match="_livesync") as caught, backend:
        backend.upload([record(1, "created", 1, {"title": "a"})])
    assert not isinstance(caught.value, RecordRejected)


def test_an_alias_without_a_write_index_fails_the_batch(opensearch_cluster: Cluster) -> None:
    client = opensearch_cluster.client()
    first, second = opensearch_cluster.new_index(alias=False), opensearch_cluster.new_index(alias=False)
    client.indices.put_alias(index=f"{first},{second}", name=f"{first}-both")
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=opensearch_cluster.url, index=f"{first}-both"))
    with pytest.raises(BackendError, match="write index"), backend:
        backend.upload([record(1, "created", 1)])


def test_a_read_only_index_fails_the_batch_and_the_resend_lands(
    opensearch_cluster: Cluster, index: str, new_backend: Callable[..., OpenSearchBackend]
) -> None:
    batch = [record(1, "created", 1, {"title": "a"}), record(2, "created", 2, {"title": "b"})]
    with opensearch_cluster.read_only(index), pytest.raises(BackendError, match="cluster_block_exception"):
        upload(new_backend(), batch)

    upload(new_backend(), batch)
    assert set(opensearch_cluster.documents(index)) == {"event:1", "event:2"}


def test_an_unreachable_server_fails_the_batch_naming_the_masked_url(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}"
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=url, index="docs", timeout=2))
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as caught, backend:
        backend.upload([record(1, "created", 1), record(2, "updated", 2)])

    assert "cannot connect" in str(caught.value)
    assert "http://admin:***@127.0.0.1" in str(caught.value)
    assert PASSWORD not in str(caught.value) and PASSWORD not in caplog.text


# -- the backend contract ------------------------------------------------------------------


class TestOpenSearchContract(BackendContract):
    """Deletes delete (versions guarded for ``index.gc_deletes``, far longer than a test)."""

    tombstones: ClassVar[bool] = False

    @pytest.fixture
    def contract_index(self, opensearch_cluster: Cluster) -> str:
        return opensearch_cluster.new_index(mappings={"properties": {"title": {"type": "text"}}})

    @pytest.fixture
    def make_backend(self, opensearch_cluster: Cluster, contract_index: str) -> Callable[[], OpenSearchBackend]:
        options = OpenSearchBackend.Options(
            url=opensearch_cluster.url, index=contract_index, tombstones=self.tombstones
        )
        return lambda: OpenSearchBackend("contract", options)

    @pytest.fixture
    def read_target(
        self, opensearch_cluster: Cluster, contract_index: str
    ) -> Callable[[], dict[tuple[str, str], TargetState]]:
        def read() -> dict[tuple[str, str], TargetState]:
            state = {}
            for version, body in opensearch_cluster.documents(contract_index).values():
                fields = body.pop("_livesync")
                live = fields["action"] != "deleted"
                state[fields["type"], fields["id"]] = TargetState(version, live, body if live else None)
            return state

        return read

    @pytest.fixture
    def refused_record(self) -> Callable[[Record], Record]:
        return lambda record: record._replace(document={"title": {"not": "text"}})

    @pytest.fixture
    def broken_target(
        self, opensearch_cluster: Cluster, contract_index: str
    ) -> Callable[[], AbstractContextManager[None]]:
        return lambda: opensearch_cluster.read_only(contract_index)


class TestOpenSearchTombstoneContract(TestOpenSearchContract):
    """Deletes leave tombstone documents, which the contract reads back as ``live=False``."""

    tombstones = True


# -- from the command line ---------------------------------------------------------------------


def test_an_agent_added_from_the_command_line_syncs_into_the_index(
    cli: Callable[..., Any], opensearch_cluster: Cluster, index: str
) -> None:
    def ok(*args: str) -> str:
        result = cli(*args)
        assert result.exit_code == 0, result.output
        return str(result.output)

    ok("publish", "event", "0", "created")  # the namespace exists; the agent starts after this change
    options = ["--option", f"url={opensearch_cluster.url}", "--option", f"index={index}"]
    ok("agent", "add", "search", "--backend", "opensearch", *options)  # from the head: only what follows
    ok("publish", "event", "1", "created")
    ok("publish", "event", "2", "created")
    ok("publish", "event", "3", "created")
    ok("agent", "run", "search")
    ok("publish", "event", "2", "deleted")
    ok("publish", "event", "3", "data_changed")
    ok("agent", "run", "search")

    documents = opensearch_cluster.documents(index)
    assert set(documents) == {"event:1", "event:3"}
    assert documents["event:3"][1]["_livesync"]["action"] == "updated"
    assert documents["event:3"][0] == documents["event:3"][1]["_livesync"]["version"]


def test_agent_show_hides_the_url_password_and_keeps_references(cli: Callable[..., Any]) -> None:
    added = cli(
        "agent", "add", "search", "--backend", "opensearch", "--option", "url=https://admin:pw-in-url-4711@os.example:9200",
        "--option", "index=docs", "--option", "username=admin", "--option", "password=@env:OS_PASSWORD",
    )  # fmt: skip
    assert added.exit_code == 2 and "not both" in added.output and "pw-in-url-4711" not in added.output

    added = cli(
        "agent", "add", "search", "--backend", "opensearch", "--option", "url=https://admin:pw-in-url-4711@os.example:9200",
        "--option", "index=docs",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    shown = cli("agent", "show", "search")
    assert shown.exit_code == 0, shown.output
    assert "pw-in-url-4711" not in added.output + shown.output
    assert "os.example:9200" in shown.output


def test_a_filtered_alias_hides_tombstones_from_searches(opensearch_cluster: Cluster) -> None:
    # the README's recipe for tombstones=true: write through one alias, search through a filtered one
    mappings = {"properties": {"_livesync": {"properties": {"action": {"type": "keyword"}}}}}
    index = opensearch_cluster.new_index(mappings=mappings)
    behind = index.removesuffix("-alias") + "-1"
    hidden = {"bool": {"must_not": {"term": {"_livesync.action": "deleted"}}}}
    opensearch_cluster.client().indices.put_alias(index=behind, name=f"{behind}-search", body={"filter": hidden})
    backend = OpenSearchBackend(
        "agent", OpenSearchBackend.Options(url=opensearch_cluster.url, index=index, tombstones=True)
    )
    upload(backend, [record(1, "created", 10, {"title": "a"}), record(2, "created", 11, {"title": "b"})],
           [record(2, "deleted", 20)])  # fmt: skip

    assert set(opensearch_cluster.documents(index)) == {"event:1", "event:2"}  # the tombstone is stored
    assert set(opensearch_cluster.documents(f"{behind}-search")) == {"event:1"}  # and never found
