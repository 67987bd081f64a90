"""The ``opensearch`` backend's answers osmem-server does not give, options, secrets and TLS.

A real HTTP server (pytest-httpserver) answers as OpenSearch does for 5xx, 429 items,
413, 401 and TLS; what OpenSearch itself does is in ``test_opensearch.py``.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer
from support.servers import free_port
from werkzeug import Request, Response

from livesync.backends import check_options, create_backend, parse_options, prepare_options, reference_options
from livesync.backends.opensearch import OpenSearchBackend
from livesync.errors import BackendError, ConfigurationError, RecordRejected
from livesync.records import Action, Record

V = 1_764_633_600_000_000
PASSWORD = "pw-Secret-4711"


def record(id: int | str, action: Action, version: int, document: dict[str, Any] | None = None) -> Record:
    return Record("event", id, action, (action,), 1, V + version, document)


def upload(backend: OpenSearchBackend, *batches: list[Record]) -> None:
    with backend:
        for batch in batches:
            backend.upload(batch)


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
    assert not isinstance(caught.value, RecordRejected)


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
        with pytest.raises(BackendError, match=r"no answer within 0\.3s"), backend:
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
    with pytest.raises(BackendError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"), backend:
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
        ({"url": "http://host:9200", "index": "docs", "password": "p"}, "needs a username"),
        ({"url": "http://u:p@host:9200", "index": "docs", "username": "u", "password": "p"}, "not both"),
        ({"url": "http://host:9200", "index": "docs", "timeout": "0"}, "option 'timeout'"),
        ({"url": "http://host:9200", "index": "docs", "refresh_interval": "1s"}, "unknown option"),
    ],
)
def test_bad_options_are_refused_naming_the_option(raw: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem) as caught:
        parse_options(OpenSearchBackend, raw)
    assert "p@host" not in str(caught.value)


def test_a_password_reference_unresolvable_where_the_agent_is_added_is_left_to_the_workers() -> None:
    raw = {"url": "https://h:9200", "index": "docs", "username": "admin", "password": "@env:LIVESYNC_TEST_UNSET"}
    notes = check_options(OpenSearchBackend, raw, environ={})
    assert notes == [
        "option 'password': environment variable LIVESYNC_TEST_UNSET is not set (from @env:LIVESYNC_TEST_UNSET): "
        "it must be resolvable where the agent runs"
    ]


def test_ca_certs_is_made_absolute_when_the_agent_is_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]
) -> None:
    shutil.copy(certificate[0], tmp_path / "ca.pem")
    monkeypatch.chdir(tmp_path)
    stored = prepare_options(OpenSearchBackend, {"url": "https://h:9200", "index": "docs", "ca_certs": "ca.pem"})
    assert stored["ca_certs"] == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigurationError, match="option 'ca_certs'"):
        prepare_options(OpenSearchBackend, {"url": "https://h:9200", "index": "docs", "ca_certs": "missing.pem"})
