"""The ``opensearch`` backend against a real OpenSearch-compatible server (osmem-server on loopback).

Answers osmem-server cannot be made to give (5xx, 429 items, 413, TLS) come from
pytest-httpserver, a real HTTP server speaking the bulk API's answers.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from support.opensearch_server import Cluster, opensearch_url
from support.servers import free_port
from werkzeug import Request, Response

from livesync.backends import create_backend, parse_options, prepare_options, reference_options
from livesync.backends.opensearch import OpenSearchBackend
from livesync.errors import BackendError, ConfigurationError, RecordRejected
from livesync.records import Action, Record

V = 1_764_633_600_000_000  # versions are server microseconds
PASSWORD = "pw-Secret-4711"


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    with opensearch_url() as url:
        yield Cluster(url)


@pytest.fixture
def index(cluster: Cluster) -> str:
    """A new index behind an alias; the alias is what the backend writes to."""
    return cluster.new_index()


@pytest.fixture
def make_backend(cluster: Cluster, index: str) -> Callable[..., OpenSearchBackend]:
    def make(**options: Any) -> OpenSearchBackend:
        return OpenSearchBackend("agent", OpenSearchBackend.Options(**{"url": cluster.url, "index": index, **options}))

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
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(make_backend(), [Record("event", 7, "created", ("created",), 42, V + 10, {"title": "Opening"})])

    held = cluster.get(index, "event:7")
    assert held is not None
    assert held["_version"] == V + 10
    assert held["_source"] == {
        "title": "Opening",
        "_livesync": {"type": "event", "id": "7", "action": "created", "changes": ["created"], "seq": 42,
                      "version": V + 10},
    }  # fmt: skip


def test_a_record_without_a_document_lands_as_livesync_fields_alone(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(make_backend(), [record("e-2", "created", 10)])

    held = cluster.get(index, "event:e-2")
    assert held is not None
    assert set(held["_source"]) == {"_livesync"}
    assert held["_source"]["_livesync"]["id"] == "e-2"


def test_an_update_replaces_the_document_and_a_delete_removes_it(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(
        make_backend(),
        [record(1, "created", 10, {"title": "a"}), record(2, "created", 11, {"title": "b"})],
        [record(1, "updated", 20, {"title": "a2"}), record(2, "deleted", 21)],
    )

    documents = cluster.documents(index)
    assert set(documents) == {"event:1"}
    version, body = documents["event:1"]
    assert (version, body["title"], body["_livesync"]["action"]) == (V + 20, "a2", "updated")


def test_writes_through_the_alias_land_in_the_index_behind_it(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(make_backend(), [record(1, "created", 10, {"title": "a"})])

    behind = index.removesuffix("-alias") + "-1"
    assert set(cluster.documents(behind)) == {"event:1"}


def test_a_small_bulk_limit_splits_the_batch_and_all_of_it_lands(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    batch = [record(number, "created", number, {"text": "x" * 300}) for number in range(1, 41)]
    upload(make_backend(bulk_bytes=1024), batch)

    assert set(cluster.documents(index)) == {f"event:{number}" for number in range(1, 41)}


# -- versions ----------------------------------------------------------------------------------


def test_stale_writes_are_dropped_and_the_batch_is_accepted(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(make_backend(), [record(1, "created", 30, {"title": "v30"}), record(2, "created", 30, {"title": "v30"})])

    # older states of both, from a lagging partition: 409s, which are no failure
    upload(
        make_backend(),
        [record(1, "created", 10, {"title": "v10"}), record(1, "updated", 20, {"title": "v20"})],
        [record(2, "deleted", 20)],
    )

    documents = cluster.documents(index)
    assert {doc_id: (version, body["title"]) for doc_id, (version, body) in documents.items()} == {
        "event:1": (V + 30, "v30"),
        "event:2": (V + 30, "v30"),
    }


def test_a_resent_batch_changes_nothing(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    batch = [record(1, "created", 10, {"title": "a"}), record(2, "deleted", 11), record(3, "created", 12)]
    upload(make_backend(), batch, batch)
    upload(make_backend(), batch)

    assert {doc_id: version for doc_id, (version, _body) in cluster.documents(index).items()} == {
        "event:1": V + 10,
        "event:3": V + 12,
    }


@pytest.mark.parametrize("document", [{"title": "v30"}, None], ids=["with-document", "without-document"])
def test_an_update_for_an_absent_object_creates_nothing(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend], document: dict[str, Any] | None
) -> None:
    upload(make_backend(), [record(1, "updated", 30, document)])
    assert cluster.documents(index) == {}

    # nor did it leave its version behind: an older create still lands
    upload(make_backend(), [record(1, "created", 20, {"title": "v20"})])
    assert cluster.get(index, "event:1") is not None


def test_an_update_after_a_create_in_the_same_batch_applies(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    upload(make_backend(), [record(1, "created", 10, {"title": "v10"}), record(1, "updated", 20, {"title": "v20"})])

    held = cluster.get(index, "event:1")
    assert held is not None
    assert (held["_version"], held["_source"]["title"]) == (V + 20, "v20")


def test_a_delete_tombstone_guards_for_gc_deletes_then_a_stale_create_resurrects(cluster: Cluster) -> None:
    # what the README states: OpenSearch keeps a delete's version for index.gc_deletes only (0s here)
    index = cluster.new_index(settings={"index": {"gc_deletes": "0s"}})
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=cluster.url, index=index))
    upload(backend, [record(1, "created", 10, {"title": "v10"})], [record(1, "deleted", 30)])

    upload(backend, [record(1, "created", 20, {"title": "stale"})])

    held = cluster.get(index, "event:1")
    assert held is not None and held["_source"]["title"] == "stale"


def test_tombstone_documents_keep_the_delete_version_past_gc_deletes(cluster: Cluster) -> None:
    index = cluster.new_index(settings={"index": {"gc_deletes": "0s"}})
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=cluster.url, index=index, tombstones=True))
    upload(backend, [record(1, "created", 10, {"title": "v10"})], [record(1, "deleted", 30)])

    upload(backend, [record(1, "created", 20, {"title": "stale"})], [record(1, "updated", 40, {"title": "v40"})])

    held = cluster.get(index, "event:1")
    assert held is not None
    assert held["_version"] == V + 30
    assert held["_source"] == {"_livesync": {"type": "event", "id": "1", "action": "deleted",
                                             "changes": ["deleted"], "seq": 1, "version": V + 30}}  # fmt: skip
    # a newer create brings it back
    upload(backend, [record(1, "created", 50, {"title": "v50"})])
    held = cluster.get(index, "event:1")
    assert held is not None and held["_source"]["title"] == "v50"


# -- refusals and failures ---------------------------------------------------------------------


@pytest.fixture
def typed_index(cluster: Cluster) -> str:
    return cluster.new_index(mappings={"properties": {"count": {"type": "integer"}}})


def test_items_the_mapping_refuses_are_rejected_by_name_and_the_rest_lands(cluster: Cluster, typed_index: str) -> None:
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=cluster.url, index=typed_index))
    good = [record(number, "created", number, {"count": number}) for number in (1, 2, 3)]
    bad = [record(101, "created", 101, {"count": "many"}), record(102, "created", 102, {"count": {"a": 1}})]

    with pytest.raises(RecordRejected) as caught, backend:
        backend.upload([good[0], bad[0], good[1], bad[1], good[2]])

    assert [rejected for rejected, _reason in caught.value.rejections] == bad
    assert all("mapper_parsing_exception" in reason for _record, reason in caught.value.rejections)
    assert set(cluster.documents(typed_index)) == {"event:1", "event:2", "event:3"}


def test_records_that_cannot_be_documents_are_rejected_before_sending(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    bad = [
        record(1, "created", 10, {"_livesync": "mine"}),
        record(2, "created", 11, {"ratio": float("nan")}),
        record(3, "created", 12, {"when": object()}),
        record("x" * 600, "created", 13),
    ]
    with pytest.raises(RecordRejected) as caught, make_backend() as backend:
        backend.upload([*bad, record(5, "created", 15, {"fine": True})])

    reasons = dict((rejected.id, reason) for rejected, reason in caught.value.rejections)
    assert list(reasons) == [1, 2, 3, "x" * 600]
    assert "_livesync" in reasons[1] and "JSON" in reasons[2] and "JSON" in reasons[3] and "512" in reasons["x" * 600]
    assert set(cluster.documents(index)) == {"event:5"}


def test_a_batch_refused_whole_fails_without_dead_lettering(cluster: Cluster, typed_index: str) -> None:
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=cluster.url, index=typed_index))
    with pytest.raises(BackendError, match="refused every record of a batch of 2"), backend:
        backend.upload([record(1, "created", 1, {"count": "x"}), record(2, "created", 2, {"count": "y"})])


def test_a_mapping_that_refuses_the_livesync_key_fails_the_batch(cluster: Cluster) -> None:
    index = cluster.new_index(mappings={"dynamic": "strict", "properties": {"title": {"type": "text"}}})
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=cluster.url, index=index))
    with pytest.raises(BackendError, match="_livesync") as caught, backend:
        backend.upload([record(1, "created", 1, {"title": "a"})])
    assert not isinstance(caught.value, RecordRejected)


def test_an_alias_without_a_write_index_fails_the_batch(cluster: Cluster) -> None:
    client = cluster.client()
    first, second = cluster.new_index(alias=False), cluster.new_index(alias=False)
    client.indices.put_alias(index=f"{first},{second}", name=f"{first}-both")
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=cluster.url, index=f"{first}-both"))
    with pytest.raises(BackendError, match="write index"), backend:
        backend.upload([record(1, "created", 1)])


def test_a_read_only_index_fails_the_batch_and_the_resend_lands(
    cluster: Cluster, index: str, make_backend: Callable[..., OpenSearchBackend]
) -> None:
    batch = [record(1, "created", 1, {"title": "a"}), record(2, "created", 2, {"title": "b"})]
    with cluster.read_only(index), pytest.raises(BackendError, match="cluster_block_exception"):
        upload(make_backend(), batch)

    upload(make_backend(), batch)
    assert set(cluster.documents(index)) == {"event:1", "event:2"}


def test_an_unreachable_server_fails_the_batch_naming_the_masked_url(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}"
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=url, index="docs", timeout=2))
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as caught, backend:
        backend.upload([record(1, "created", 1), record(2, "updated", 2)])

    assert "cannot connect" in str(caught.value)
    assert "http://admin:***@127.0.0.1" in str(caught.value)
    assert PASSWORD not in str(caught.value) and PASSWORD not in caplog.text


# -- answers osmem-server does not give: a real HTTP server with OpenSearch's answers ----------


def bulk_answer(*items: dict[str, Any]) -> Response:
    return Response(json.dumps({"errors": True, "items": list(items)}), content_type="application/json")


def test_a_busy_item_fails_the_whole_batch(httpserver: HTTPServer) -> None:
    rejected = {"type": "es_rejected_execution_exception", "reason": "rejected execution of bulk"}
    httpserver.expect_request("/docs/_bulk", method="POST").respond_with_response(
        bulk_answer({"index": {"status": 201}}, {"index": {"status": 429, "error": rejected}})
    )
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=httpserver.url_for("/"), index="docs"))
    with pytest.raises(BackendError, match="429") as caught, backend:
        backend.upload([record(1, "created", 1), record(2, "created", 2)])
    assert not isinstance(caught.value, RecordRejected)


@pytest.mark.parametrize("status", [500, 503, 401, 403])
def test_an_error_answer_fails_the_whole_batch(httpserver: HTTPServer, status: int) -> None:
    error = {"error": {"type": "some_exception", "reason": "nope"}, "status": status}
    httpserver.expect_request("/docs/_bulk").respond_with_json(error, status=status)
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=httpserver.url_for("/"), index="docs"))
    with pytest.raises(BackendError, match=f"HTTP {status}: some_exception: nope") as caught, backend:
        backend.upload([record(1, "created", 1)])
    assert caught.value.status == status


def test_no_answer_within_the_timeout_fails_the_batch(httpserver: HTTPServer) -> None:
    release = threading.Event()

    def hang(_request: Request) -> Response:
        release.wait(10)
        return bulk_answer()

    httpserver.expect_request("/docs/_bulk").respond_with_handler(hang)
    backend = OpenSearchBackend(
        "agent", OpenSearchBackend.Options(url=httpserver.url_for("/"), index="docs", timeout=0.3)
    )
    try:
        with pytest.raises(BackendError, match="no answer within 0.3s"), backend:
            backend.upload([record(1, "created", 1)])
    finally:
        release.set()


def test_a_request_too_large_for_the_target_is_halved_until_each_part_is_taken(httpserver: HTTPServer) -> None:
    taken: list[str] = []

    def limited(request: Request) -> Response:
        if len(request.get_data()) > 1500:
            return Response(json.dumps({"error": "request body is too large", "status": 413}), status=413)
        actions = [json.loads(line) for line in request.get_data().splitlines()[::2]]
        taken.extend(action["index"]["_id"] for action in actions)
        return bulk_answer(*({"index": {"status": 201}} for _ in actions))

    httpserver.expect_request("/docs/_bulk").respond_with_handler(limited)
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=httpserver.url_for("/"), index="docs"))
    alone = record(9, "created", 9, {"text": "y" * 2000})
    with pytest.raises(RecordRejected) as caught, backend:
        backend.upload([record(number, "created", number, {"text": "x" * 300}) for number in range(8)] + [alone])

    assert [rejected for rejected, _reason in caught.value.rejections] == [alone]
    assert "413" in caught.value.rejections[0][1]
    assert taken == [f"event:{number}" for number in range(8)]  # all of the rest, in order


@pytest.mark.parametrize("refresh", [False, True])
def test_refresh_waits_for_searches_only_when_asked(httpserver: HTTPServer, refresh: bool) -> None:
    httpserver.expect_request("/docs/_bulk").respond_with_json({"errors": False, "items": [{"index": {"status": 201}}]})
    options = OpenSearchBackend.Options(url=httpserver.url_for("/"), index="docs", refresh=refresh)
    upload(OpenSearchBackend("agent", options), [record(1, "created", 1)])

    ((request, _response),) = httpserver.log
    assert request.args.get("refresh") == ("wait_for" if refresh else None)


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH: no certificate for the TLS tests")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[HTTPServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server = HTTPServer(host="127.0.0.1", port=free_port(), ssl_context=context)
    server.expect_request("/docs/_bulk").respond_with_json({"errors": False, "items": [{"index": {"status": 201}}]})
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def test_tls_verification_is_on_by_default() -> None:
    options = OpenSearchBackend.Options(url="https://search.example:9200", index="docs")
    assert options.verify_certs is True and options.ca_certs is None


def test_an_untrusted_certificate_fails_the_batch(tls_server: HTTPServer) -> None:
    url = f"https://127.0.0.1:{tls_server.port}"
    backend = OpenSearchBackend("agent", OpenSearchBackend.Options(url=url, index="docs"))
    with pytest.raises(BackendError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"), backend:
        backend.upload([record(1, "created", 1)])
    assert tls_server.log == []


def test_the_certificate_given_in_ca_certs_is_trusted(tls_server: HTTPServer, certificate: tuple[Path, Path]) -> None:
    url = f"https://127.0.0.1:{tls_server.port}"
    upload(OpenSearchBackend("agent", OpenSearchBackend.Options(url=url, index="docs", ca_certs=str(certificate[0]))),
           [record(1, "created", 1)])  # fmt: skip
    assert len(tls_server.log) == 1


def test_verify_certs_false_accepts_any_certificate(tls_server: HTTPServer) -> None:
    url = f"https://127.0.0.1:{tls_server.port}"
    upload(OpenSearchBackend("agent", OpenSearchBackend.Options(url=url, index="docs", verify_certs=False)),
           [record(1, "created", 1)])  # fmt: skip
    assert len(tls_server.log) == 1


# -- options and secrets -----------------------------------------------------------------------


def test_the_password_is_sent_as_basic_auth_and_never_shown(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/docs/_bulk").respond_with_json(
        {"error": {"type": "security_exception", "reason": "unauthorized"}, "status": 401}, status=401
    )
    options = OpenSearchBackend.Options(url=httpserver.url_for("/"), index="docs", username="admin", password=PASSWORD)
    backend = OpenSearchBackend("agent", options)
    with pytest.raises(BackendError) as caught, backend:
        backend.upload([record(1, "created", 1)])

    sent = httpserver.log[0][0].headers["Authorization"]
    assert sent == "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    for shown in (str(caught.value), repr(backend), repr(options), str(options)):
        assert PASSWORD not in shown


def test_credentials_in_the_url_are_masked_in_repr_and_messages() -> None:
    options = OpenSearchBackend.Options(url=f"https://admin:{PASSWORD}@search.example:9200", index="docs")
    backend = OpenSearchBackend("agent", options)
    assert PASSWORD not in repr(options) and PASSWORD not in repr(backend)
    assert backend.url == "https://admin:***@search.example:9200"


def test_password_and_url_take_secret_references(monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer) -> None:
    assert {"url", "password"} <= reference_options(OpenSearchBackend)
    monkeypatch.setenv("OS_PASSWORD", PASSWORD)
    backend = create_backend(
        "opensearch", "agent", {"url": httpserver.url_for("/"), "index": "docs", "username": "u",
                                "password": "@env:OS_PASSWORD"},
    )  # fmt: skip
    assert isinstance(backend, OpenSearchBackend)
    assert backend.options.password is not None and backend.options.password.get_secret_value() == PASSWORD


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"url": "ftp://host", "index": "docs"}, "option 'url'"),
        ({"url": "http://host:port", "index": "docs"}, "option 'url'"),
        ({"url": "http://host:9200", "index": "a,b"}, "option 'index'"),
        ({"url": "http://host:9200", "index": "docs", "username": "u"}, "go together"),
        ({"url": "http://u:p@host:9200", "index": "docs", "username": "u", "password": "p"}, "not both"),
        ({"url": "http://host:9200", "index": "docs", "timeout": "0"}, "option 'timeout'"),
        ({"url": "http://host:9200", "index": "docs", "refresh_interval": "1s"}, "unknown option"),
    ],
)
def test_bad_options_are_refused_naming_the_option(raw: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        parse_options(OpenSearchBackend, raw)
    assert "p@host" not in str(caught.value)


def test_ca_certs_is_made_absolute_when_the_agent_is_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]
) -> None:
    shutil.copy(certificate[0], tmp_path / "ca.pem")
    monkeypatch.chdir(tmp_path)
    stored = prepare_options(OpenSearchBackend, {"url": "https://h:9200", "index": "docs", "ca_certs": "ca.pem"})
    assert stored["ca_certs"] == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigurationError, match="option 'ca_certs'"):
        prepare_options(OpenSearchBackend, {"url": "https://h:9200", "index": "docs", "ca_certs": "missing.pem"})
