"""The typesense backend against a real Typesense server (started on loopback when none is configured)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pytest_httpserver import HTTPServer
from support.servers import free_port
from support.typesense_server import TypesenseServer, typesense_server
from werkzeug import Request, Response

from livesync.backends import create_backend, reference_options
from livesync.backends.typesense import TOMBSTONES_SUFFIX, TypesenseBackend, _held
from livesync.errors import BackendError, ConfigurationError, RecordRejected
from livesync.records import Record
from livesync.testing import BackendContract, TargetState

BASE = 1_764_633_600_000_000
Make = Callable[..., TypesenseBackend]
RESERVED = ("id", "livesync_type", "livesync_id", "livesync_version")


def record(type: str, id: int | str, action: str, version: int, document: dict[str, Any] | None = None) -> Record:
    changes = {"created": ("created",), "updated": ("data_changed",), "deleted": ("deleted",)}[action]
    return Record(type, id, action, changes, seq=version, version=BASE + version, document=document)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TypesenseServer]:
    with typesense_server(tmp_path_factory.mktemp("typesense")) as running:
        yield running


class Admin:
    """The server seen through its HTTP API directly: what landed, and another writer."""

    def __init__(self, server: TypesenseServer) -> None:
        self.client = httpx.Client(base_url=server.url, headers={"X-TYPESENSE-API-KEY": server.api_key}, timeout=10)

    def export(self, collection: str) -> dict[str, dict[str, Any]]:
        """``{id: document}`` of the collection, empty when it does not exist."""
        answer = self.client.get(f"/collections/{collection}/documents/export")
        if answer.status_code == 404:
            return {}
        answer.raise_for_status()
        return {doc["id"]: doc for doc in map(json.loads, answer.text.splitlines())}

    def upsert(self, collection: str, document: dict[str, Any]) -> None:
        self.client.post(
            f"/collections/{collection}/documents", params={"action": "upsert"}, json=document
        ).raise_for_status()

    def create(self, schema: dict[str, Any]) -> None:
        self.client.post("/collections", json=schema).raise_for_status()

    def schema(self, collection: str) -> dict[str, Any]:
        answer = self.client.get(f"/collections/{collection}")
        answer.raise_for_status()
        return dict(answer.json())

    def drop(self, collection: str) -> None:
        self.client.delete(f"/collections/{collection}")


@pytest.fixture
def admin(server: TypesenseServer) -> Iterator[Admin]:
    admin = Admin(server)
    yield admin
    admin.client.close()


@pytest.fixture
def collection(admin: Admin) -> Iterator[str]:
    """A collection name nobody used; both collections behind it are dropped afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    admin.drop(name)
    admin.drop(name + TOMBSTONES_SUFFIX)


@pytest.fixture
def make_backend(server: TypesenseServer, collection: str) -> Callable[..., TypesenseBackend]:
    def make(**options: Any) -> TypesenseBackend:
        fields = {"url": server.url, "api_key": server.api_key, "collection": collection, "create": True}
        fields.update(options)
        return TypesenseBackend("search", TypesenseBackend.Options(**fields))

    return make


def body(document: dict[str, Any]) -> dict[str, Any]:
    """The document as the loader gave it: without livesync's fields and Typesense's flattened copies."""
    kept = {key: value for key, value in document.items() if key not in RESERVED}
    # Typesense 0.24 stores a flattened "a.b" copy of null values inside nested objects
    return {key: value for key, value in kept.items() if not ("." in key and key.split(".")[0] in kept)}


def target_state(admin: Admin, collection: str) -> dict[tuple[str, str], tuple[int, bool, dict[str, Any] | None]]:
    """(type, id) -> (version - BASE, live, body) as the backend reads the target."""
    documents = admin.export(collection)
    tombstones = admin.export(collection + TOMBSTONES_SUFFIX)
    state = {}
    for key in documents.keys() | tombstones.keys():
        doc, grave = documents.get(key), tombstones.get(key)
        found = _held(doc and doc["livesync_version"], grave and grave["livesync_version"])
        assert found is not None
        source = doc if found.live else grave
        assert source is not None
        state[(source["livesync_type"], source["livesync_id"])] = (
            found.version - BASE,
            found.live,
            body(doc) if found.live and doc else None,
        )
    return state


def upload(backend: TypesenseBackend, *batches: list[Record]) -> None:
    with backend:
        for batch in batches:
            backend.upload(batch)


# -- what lands ---------------------------------------------------------------------------------


def test_created_updated_and_deleted_land_as_documents_and_tombstones(
    make_backend: Make, admin: Admin, collection: str
) -> None:
    upload(
        make_backend(),
        [record("event", 1, "created", 10, {"title": "Opening", "id": 99}), record("event", "e-2", "created", 11)],
        [record("event", 1, "updated", 20, {"title": "Moved"}), record("event", "e-2", "deleted", 21)],
    )
    documents = admin.export(collection)
    assert documents == {
        "event:1": {
            "id": "event:1",
            "title": "Moved",
            "livesync_type": "event",
            "livesync_id": "1",
            "livesync_version": BASE + 20,
        }
    }
    assert admin.export(collection + TOMBSTONES_SUFFIX) == {
        "event:e-2": {"id": "event:e-2", "livesync_type": "event", "livesync_id": "e-2", "livesync_version": BASE + 21}
    }


def test_a_record_without_a_document_stores_an_empty_body(make_backend: Make, admin: Admin, collection: str) -> None:
    upload(make_backend(), [record("event", 1, "created", 10, {"title": "A"})], [record("event", 1, "updated", 20)])
    assert target_state(admin, collection) == {("event", "1"): (20, True, {})}


def test_create_true_makes_an_auto_schema_with_livesync_fields(
    make_backend: Make, admin: Admin, collection: str
) -> None:
    upload(make_backend(), [record("event", 1, "created", 10, {"title": "A", "place": {"room": "B"}})])
    schema = admin.schema(collection)
    fields = {field["name"]: field["type"] for field in schema["fields"]}
    assert fields[".*"] == "auto"
    assert fields["livesync_version"] == "int64"
    assert fields["livesync_type"] == "string"
    assert schema["enable_nested_fields"] is True


def test_odd_ids_are_written_read_and_deleted(make_backend: Make, admin: Admin, collection: str) -> None:
    odd = ["a,b]", "a`b", "a/b?c#d", "Zürich ✓", "x" * 300, "a b"]
    upload(make_backend(), [record("event", name, "created", 10, {"n": index}) for index, name in enumerate(odd)])
    upload(make_backend(), [record("event", name, "created", 5, {"n": -1}) for name in odd])  # stale: read back
    upload(make_backend(), [record("event", name, "deleted", 20) for name in odd])
    assert target_state(admin, collection) == {("event", name): (20, False, None) for name in odd}
    assert admin.export(collection) == {}


# -- stale writes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("together", [True, False], ids=["one-batch", "separate-batches"])
def test_stale_updates_creates_and_deletes_are_dropped(
    make_backend: Make, admin: Admin, collection: str, together: bool
) -> None:
    newer = [record("event", 1, "created", 10, {"v": 10}), record("event", 1, "updated", 30, {"v": 30})]
    stale = [
        record("event", 1, "updated", 20, {"v": 20}),
        record("event", 1, "created", 25, {"v": 25}),
        record("event", 1, "deleted", 29),
    ]
    upload(make_backend(), *([newer + stale] if together else [newer, stale]))
    assert target_state(admin, collection) == {("event", "1"): (30, True, {"v": 30})}


def test_a_tombstone_keeps_a_late_stale_create_out(make_backend: Make, admin: Admin, collection: str) -> None:
    upload(make_backend(), [record("event", 1, "created", 10, {"v": 10}), record("event", 1, "deleted", 30)])
    upload(make_backend(), [record("event", 1, "created", 20, {"v": 20})])
    assert target_state(admin, collection) == {("event", "1"): (30, False, None)}
    assert admin.export(collection) == {}
    upload(make_backend(), [record("event", 1, "created", 40, {"v": 40})])
    assert target_state(admin, collection) == {("event", "1"): (40, True, {"v": 40})}


def test_an_update_for_an_absent_object_creates_nothing_even_with_a_document(
    make_backend: Make, admin: Admin, collection: str
) -> None:
    upload(make_backend(), [record("event", 1, "updated", 30, {"v": 30}), record("event", 2, "deleted", 5)])
    upload(make_backend(), [record("event", 2, "updated", 30, {"v": 30})])
    assert target_state(admin, collection) == {("event", "2"): (5, False, None)}
    upload(make_backend(), [record("event", 1, "created", 20, {"v": 20})])  # no version was kept for it
    assert target_state(admin, collection)[("event", "1")] == (20, True, {"v": 20})


def test_an_interrupted_delete_is_finished_by_the_next_batch_on_the_object(
    make_backend: Make, admin: Admin, collection: str
) -> None:
    # Given a tombstone written and its document left behind (a crash between the two writes)
    upload(make_backend(), [record("event", 1, "created", 10, {"v": 10})])
    grave = {"id": "event:1", "livesync_type": "event", "livesync_id": "1", "livesync_version": BASE + 20}
    admin.upsert(collection + TOMBSTONES_SUFFIX, grave)
    # When the delete is sent again (stale now: its tombstone holds its version)
    upload(make_backend(), [record("event", 1, "deleted", 20)])
    # Then the document is gone and the tombstone stays
    assert admin.export(collection) == {}
    assert target_state(admin, collection) == {("event", "1"): (20, False, None)}


def test_a_delete_never_removes_a_newer_document_written_meanwhile(
    make_backend: Make, admin: Admin, collection: str
) -> None:
    class Racing(TypesenseBackend):
        """Another writer creates the object at a newer version between this batch's read and its delete."""

        def _delete(self, client: Any, bounds: Any) -> None:
            newer = {"id": "event:1", "livesync_type": "event", "livesync_id": "1", "livesync_version": BASE + 40}
            admin.upsert(collection, {**newer, "v": 40})
            super()._delete(client, bounds)

    upload(make_backend(), [record("event", 1, "created", 10, {"v": 10})])
    upload(Racing("search", make_backend().options), [record("event", 1, "deleted", 30)])
    assert target_state(admin, collection) == {("event", "1"): (40, True, {"v": 40})}


# -- refusals and failures ------------------------------------------------------------------------


def test_documents_the_schema_refuses_are_rejected_and_the_rest_lands(
    make_backend: Make, admin: Admin, collection: str
) -> None:
    upload(make_backend(), [record("event", 1, "created", 10, {"title": "typed string by the first document"})])
    good = [record("event", number, "created", 20, {"title": f"e{number}"}) for number in (2, 3, 4)]
    bad = [record("event", number, "created", 20, {"title": ["not", "a", "string"]}) for number in (5, 6)]
    with pytest.raises(RecordRejected) as caught, make_backend() as backend:
        backend.upload([good[0], bad[0], good[1], bad[1], good[2]])
    assert [rejected for rejected, _reason in caught.value.rejections] == bad
    assert all("title" in reason for _record, reason in caught.value.rejections)
    assert {key[1] for key, state in target_state(admin, collection).items() if state[1]} == {"1", "2", "3", "4"}


def test_a_document_holding_livesync_fields_is_rejected(make_backend: Make, admin: Admin, collection: str) -> None:
    clash = record("event", 2, "created", 10, {"livesync_version": 1})
    with pytest.raises(RecordRejected) as caught, make_backend() as backend:
        backend.upload([record("event", 1, "created", 10, {"title": "A"}), clash])
    assert caught.value.rejections == [(clash, caught.value.rejections[0][1])]
    assert "livesync_version" in caught.value.rejections[0][1]
    assert set(target_state(admin, collection)) == {("event", "1")}


def test_a_schema_refusing_every_document_fails_the_batch_without_rejections(
    make_backend: Make, admin: Admin, collection: str
) -> None:
    admin.create(
        {
            "name": collection,
            "fields": [{"name": "livesync_version", "type": "int64"}, {"name": "title", "type": "int32"}],
        }
    )
    batch = [record("event", number, "created", 10, {"title": "words"}) for number in (1, 2)]
    with pytest.raises(BackendError, match="refused every document"), make_backend(create=False) as backend:
        backend.upload(batch)


def test_a_missing_collection_fails_without_create(make_backend: Make, collection: str) -> None:
    with pytest.raises(BackendError, match=f"collection '{collection}' does not exist"):
        make_backend(create=False).open()


def test_a_collection_without_an_int64_version_field_is_refused(
    make_backend: Make, admin: Admin, collection: str
) -> None:
    admin.create({"name": collection, "fields": [{"name": ".*", "type": "auto"}]})
    with pytest.raises(BackendError, match="livesync_version"):
        make_backend(create=False).open()


def test_a_stopped_server_fails_the_batch_as_a_whole_and_the_resend_lands(
    server: TypesenseServer, make_backend: Make, admin: Admin, collection: str
) -> None:
    if server.external:
        pytest.skip("the configured Typesense server cannot be stopped by the tests")
    batch = [record("event", 1, "created", 10, {"v": 10}), record("event", 2, "deleted", 11)]
    backend = make_backend(max_retries=0, timeout=2)
    backend.open()
    try:
        with server.stopped(), pytest.raises(BackendError) as caught:
            backend.upload(batch)
    finally:
        backend.close()
    assert not isinstance(caught.value, RecordRejected)
    assert server.api_key not in str(caught.value)
    upload(make_backend(), batch)
    assert target_state(admin, collection) == {("event", "1"): (10, True, {"v": 10}), ("event", "2"): (11, False, None)}


def test_nothing_listening_fails_open(make_backend: Make) -> None:
    backend = make_backend(url=f"http://127.0.0.1:{free_port()}", max_retries=0, timeout=2)
    with pytest.raises(BackendError, match="could not read collection") as caught:
        backend.open()
    backend.close()
    assert backend.options.api_key.get_secret_value() not in str(caught.value)


def test_a_wrong_api_key_fails_and_is_never_printed(make_backend: Make) -> None:
    backend = make_backend(api_key="wrong-key-s3cr3t")
    with pytest.raises(BackendError) as caught:
        backend.open()
    assert "wrong-key-s3cr3t" not in str(caught.value)
    assert "wrong-key-s3cr3t" not in repr(backend) and "wrong-key-s3cr3t" not in repr(backend.options)


def _answering(httpserver: HTTPServer, status: int, import_answer: str | None = None) -> None:
    """A stand-in for Typesense that has the collections and answers searches, then fails imports."""
    schema = {"name": "c", "fields": [{"name": "livesync_version", "type": "int64", "index": True}]}
    httpserver.expect_request("/collections/c").respond_with_json(schema)
    httpserver.expect_request(f"/collections/c{TOMBSTONES_SUFFIX}").respond_with_json(schema)
    httpserver.expect_request("/multi_search").respond_with_handler(
        lambda request: Response(
            json.dumps({"results": [{"hits": []} for _search in json.loads(request.get_data())["searches"]]})
        )
    )
    if import_answer is None:
        httpserver.expect_request("/collections/c/documents/import").respond_with_data("busy", status=status)
    else:
        httpserver.expect_request("/collections/c/documents/import").respond_with_data(import_answer)


def test_a_5xx_fails_the_batch_as_a_whole(httpserver: HTTPServer) -> None:
    _answering(httpserver, 503)
    options = TypesenseBackend.Options(url=httpserver.url_for("/"), api_key="k" * 20, collection="c", max_retries=0)
    with pytest.raises(BackendError, match="HTTP 503") as caught, TypesenseBackend("a", options) as backend:
        backend.upload([record("event", 1, "created", 10, {"v": 1})])
    assert not isinstance(caught.value, RecordRejected)


def test_a_5xx_is_retried_and_the_retry_lands(httpserver: HTTPServer) -> None:
    httpserver.expect_oneshot_request("/collections/c/documents/import").respond_with_data("busy", status=503)
    _answering(httpserver, 200, '{"success": true}')
    options = TypesenseBackend.Options(url=httpserver.url_for("/"), api_key="k" * 20, collection="c", max_retries=1)
    with TypesenseBackend("a", options) as backend:
        backend.upload([record("event", 1, "created", 10, {"v": 1})])
    imports = [request for request, _response in httpserver.log if request.path.endswith("/import")]
    assert len(imports) == 2


def test_a_server_fault_on_one_imported_document_fails_the_batch(httpserver: HTTPServer) -> None:
    answer = '{"success": true}\n{"success": false, "code": 500, "error": "disk full"}'
    _answering(httpserver, 200, answer)
    options = TypesenseBackend.Options(url=httpserver.url_for("/"), api_key="k" * 20, collection="c", max_retries=0)
    batch = [record("event", 1, "created", 10, {"v": 1}), record("event", 2, "created", 10, {"v": 2})]
    with pytest.raises(BackendError, match="disk full") as caught, TypesenseBackend("a", options) as backend:
        backend.upload(batch)
    assert not isinstance(caught.value, RecordRejected)


def test_a_server_that_does_not_answer_in_time_fails_the_batch(httpserver: HTTPServer) -> None:
    released = threading.Event()

    def hang(_request: Request) -> Response:
        released.wait(10)
        return Response("late")

    httpserver.expect_request("/collections/c").respond_with_handler(hang)
    options = TypesenseBackend.Options(
        url=httpserver.url_for("/"), api_key="k" * 20, collection="c", max_retries=0, timeout=0.2
    )
    try:
        with pytest.raises(BackendError, match="Timeout"):
            TypesenseBackend("a", options).open()
    finally:
        released.set()


# -- options --------------------------------------------------------------------------------------


def test_the_key_and_url_take_references_and_the_key_is_never_shown(tmp_path: Path) -> None:
    assert {"api_key", "url"} <= reference_options(TypesenseBackend)
    secret = tmp_path / "key"
    secret.write_text("s3cr3t-from-file\n")
    backend = create_backend(
        "typesense", "a", {"url": "http://127.0.0.1:8108", "api_key": f"@file:{secret}", "collection": "c"}
    )
    assert isinstance(backend, TypesenseBackend)
    assert backend.options.api_key.get_secret_value() == "s3cr3t-from-file"
    assert "s3cr3t" not in repr(backend) and "s3cr3t" not in repr(backend.options)


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"url": "ftp://host"}, "option 'url'"),
        ({"url": "http://user:pw@host:8108"}, "must not hold credentials"),
        ({"collection": "a/b"}, "option 'collection'"),
        ({"api_key": ""}, "option 'api_key'"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict[str, str], problem: str) -> None:
    raw = {"url": "http://127.0.0.1:8108", "api_key": "k", "collection": "c", **options}
    with pytest.raises(ConfigurationError, match=problem) as caught:
        create_backend("typesense", "a", raw)
    assert "pw" not in str(caught.value)


# -- the backend contract -------------------------------------------------------------------------


class TestTypesenseContract(BackendContract):
    @pytest.fixture
    def make_backend(self, make_backend: Make) -> Make:
        return make_backend

    @pytest.fixture
    def read_target(self, admin: Admin, collection: str) -> Callable[[], dict[tuple[str, str], TargetState]]:
        def read() -> dict[tuple[str, str], TargetState]:
            return {
                key: TargetState(BASE + version, live, document)
                for key, (version, live, document) in target_state(admin, collection).items()
            }

        return read

    @pytest.fixture
    def refused_record(self, admin: Admin, collection: str) -> Callable[[Record], Record]:
        # the collection types `title` as a string; a list is refused for good
        fields = [{"name": "livesync_version", "type": "int64"}, {"name": "title", "type": "string", "optional": True}]
        admin.create({"name": collection, "fields": fields})
        return lambda refused: refused._replace(document={"title": ["not", "a", "string"]})

    @pytest.fixture
    def broken_target(self, server: TypesenseServer) -> Callable[[], AbstractContextManager[None]] | None:
        return None if server.external else server.stopped
