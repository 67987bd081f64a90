"""The webhook backend and its signing helpers, against a real HTTP server on loopback."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from livesync import Publisher, deadletters
from livesync.backends import create_backend, load_backend, parse_options
from livesync.backends.deadline import DeadlineBackend as _DeadlineBackend
from livesync.backends.webhook import WebhookBackend
from livesync.errors import ConfigurationError, LiveSyncError, RecordRejected
from livesync.manager import Agent, SyncManager
from livesync.records import Record
from livesync.runner import run_agent
from livesync.signing import SignatureError, WebhookError, sign, verify

SECRET = "s3cret"
AGENT = "hooked"
FAST = {"backoff": 0.001}


def records() -> list[Record]:
    return [
        Record(type="event", id=42, action="updated", changes=("title_changed",), seq=7, version=7),
        Record(type="contribution", id="c-é", action="deleted", changes=("deleted",), seq=9, version=9),
        Record(type="event", id=43, action="created", changes=("created", "data_changed"), seq=12, version=12),
    ]


def make_backend(url: str, **options: Any) -> WebhookBackend:
    raw = {"url": url, "secret": SECRET, **FAST, **options}
    return WebhookBackend(AGENT, WebhookBackend.Options.model_validate(raw))


@dataclass
class Seen:
    """What a capturing handler received, request by request."""

    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for body in self.bodies]

    def capture(self, request: Request) -> None:
        self.bodies.append(request.get_data())
        self.headers.append(dict(request.headers))


def capture(httpserver: HTTPServer, answer: Callable[[Request, int], Response]) -> Seen:
    """Route /hook to ``answer(request, n)`` (n: 1-based request count), keeping every request."""
    seen = Seen()

    def handler(request: Request) -> Response:
        seen.capture(request)
        return answer(request, len(seen.bodies))

    httpserver.expect_request("/hook", method="POST").respond_with_handler(handler)
    return seen


def signed(body: bytes, timestamp: int, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", **sign(body, secret, timestamp)}


@pytest.fixture
def hook_url(httpserver: HTTPServer) -> str:
    return httpserver.url_for("/hook")


# Delivery and signature


def test_delivered_batch_is_signed_json_that_verify_accepts(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target that accepts everything and keeps what it was sent
    seen = capture(httpserver, lambda request, n: Response("ok", 200))

    # When a batch is uploaded
    before = int(time.time())
    with make_backend(hook_url) as backend:
        backend.upload(records())

    # Then one POST arrived with the contract body and headers, and verify accepts it
    assert len(seen.bodies) == 1
    body, headers = seen.bodies[0], seen.headers[0]
    assert seen.payloads[0] == {"agent": AGENT, "records": [record.to_dict() for record in records()]}
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Livesync-Agent"] == AGENT
    assert headers["X-Livesync-Signature"].startswith("sha256=")
    assert before <= int(headers["X-Livesync-Timestamp"]) <= time.time()
    verify(body, headers, SECRET)


def test_verify_accepts_headers_in_any_case() -> None:
    # Given a body signed now, its headers spelt in lower case
    body = b'{"agent":"a","records":[]}'
    headers = {key.lower(): value for key, value in signed(body, int(time.time())).items()}

    # When / Then verify accepts it
    verify(body, headers, SECRET)


def test_verify_rejects_tampered_body() -> None:
    # Given headers signed for one body
    now = int(time.time())
    headers = signed(b'{"records":[1]}', now)

    # When / Then another body with the same headers is refused
    with pytest.raises(SignatureError, match="does not match"):
        verify(b'{"records":[2]}', headers, SECRET, now=now)


def test_verify_rejects_wrong_secret() -> None:
    # Given a body signed with another secret
    now = int(time.time())
    body = b'{"records":[]}'
    headers = signed(body, now, secret="other")

    # When / Then verify with our secret refuses it
    with pytest.raises(SignatureError, match="does not match"):
        verify(body, headers, SECRET, now=now)


@pytest.mark.parametrize("missing", ["X-Livesync-Signature", "X-Livesync-Timestamp"])
def test_verify_rejects_missing_header(missing: str) -> None:
    # Given a signed request that lost one of its headers
    now = int(time.time())
    body = b"{}"
    headers = signed(body, now)
    del headers[missing]

    # When / Then verify names the missing header
    with pytest.raises(SignatureError, match=f"missing {missing}"):
        verify(body, headers, SECRET, now=now)


@pytest.mark.parametrize(
    "value",
    ["", "sha256=", "md5=" + "0" * 64, "0" * 64, "sha256=" + "z" * 64, "sha256=" + "0" * 63],
)
def test_verify_rejects_malformed_signature_header(value: str) -> None:
    # Given a request whose signature header is not sha256=<64 hex digits>
    now = int(time.time())
    headers = {**signed(b"{}", now), "X-Livesync-Signature": value}

    # When / Then verify refuses it as malformed
    with pytest.raises(SignatureError, match="malformed X-Livesync-Signature"):
        verify(b"{}", headers, SECRET, now=now)


@pytest.mark.parametrize("value", ["", "soon", "12.5", "-5"])
def test_verify_rejects_malformed_timestamp_header(value: str) -> None:
    # Given a request whose timestamp header is not unix seconds
    now = int(time.time())
    headers = {**signed(b"{}", now), "X-Livesync-Timestamp": value}

    # When / Then verify refuses it as malformed
    with pytest.raises(SignatureError, match="malformed X-Livesync-Timestamp"):
        verify(b"{}", headers, SECRET, now=now)


def test_verify_rejects_stale_timestamp() -> None:
    # Given a correctly signed request from 301 seconds ago
    now = int(time.time())
    body = b"{}"
    headers = signed(body, now - 301)

    # When / Then verify with max_age 300 refuses it as stale, but accepts it at 300 seconds
    with pytest.raises(SignatureError, match="stale or replayed"):
        verify(body, headers, SECRET, max_age=300, now=now)
    verify(body, headers, SECRET, max_age=300, now=now - 1)


def test_verify_rejects_timestamp_too_far_in_the_future() -> None:
    # Given a correctly signed request dated 301 seconds ahead
    now = int(time.time())
    body = b"{}"
    headers = signed(body, now + 301)

    # When / Then verify with max_age 300 refuses it
    with pytest.raises(SignatureError, match="in the future"):
        verify(body, headers, SECRET, max_age=300, now=now)


def test_signature_error_and_webhook_error_are_livesync_errors() -> None:
    # Given / When / Then both errors sit in the one error tree
    assert issubclass(SignatureError, LiveSyncError)
    assert issubclass(WebhookError, LiveSyncError)


# Retries


def test_server_error_is_retried_until_delivered(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target that answers 503 twice, then 200
    seen = capture(httpserver, lambda request, n: Response("busy", 503 if n <= 2 else 200))

    # When a batch is uploaded
    with make_backend(hook_url) as backend:
        backend.upload(records())

    # Then it was sent exactly three times, each attempt signed and carrying the whole batch
    assert len(seen.bodies) == 3
    assert len(httpserver.log) == 3
    for body, headers in zip(seen.bodies, seen.headers, strict=True):
        verify(body, headers, SECRET)
        assert len(json.loads(body)["records"]) == 3


def test_server_error_every_time_raises_webhook_error_after_all_attempts(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target that always answers 500
    seen = capture(httpserver, lambda request, n: Response("database down", 500))

    # When a batch is uploaded with max_retries 2
    with make_backend(hook_url, max_retries=2) as backend, pytest.raises(WebhookError) as info:
        backend.upload(records())

    # Then it gave up after 3 attempts with a message naming URL, status and attempts, not the secret
    assert len(seen.bodies) == 3
    message = str(info.value)
    assert "HTTP 500" in message
    assert "database down" in message
    assert "3 attempt(s)" in message
    assert hook_url in message
    assert SECRET not in message
    assert (info.value.status, info.value.attempts) == (500, 3)


def test_too_many_requests_is_retried(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target that answers 429 once (Retry-After 0), then 200
    def answer(request: Request, n: int) -> Response:
        return Response("slow down", 429, headers={"Retry-After": "0"}) if n == 1 else Response("ok")

    seen = capture(httpserver, answer)

    # When a batch is uploaded
    with make_backend(hook_url) as backend:
        backend.upload(records())

    # Then the batch was sent again, whole, and accepted
    assert len(seen.bodies) == 2
    assert seen.payloads[0] == seen.payloads[1]


def test_request_timeout_answer_is_retried(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target that answers 408 once, then 200
    def answer(request: Request, n: int) -> Response:
        return Response("timeout", 408) if n == 1 else Response("ok")

    seen = capture(httpserver, answer)

    # When a batch is uploaded
    with make_backend(hook_url) as backend:
        backend.upload(records())

    # Then it was sent again and accepted
    assert len(seen.bodies) == 2


@pytest.mark.parametrize("status", [401, 403, 404, 405, 410])
def test_target_refusing_every_request_fails_the_batch_without_dead_letters(
    httpserver: HTTPServer, hook_url: str, status: int
) -> None:
    # Given a target that refuses the request as a whole (wrong url or secret)
    seen = capture(httpserver, lambda request, n: Response("no", status))

    # When a batch of several records is uploaded
    with make_backend(hook_url) as backend, pytest.raises(WebhookError) as excinfo:
        backend.upload(records())

    # Then nothing counts (no per-record rejection), after one request, and the error says why
    assert not isinstance(excinfo.value, RecordRejected)
    assert len(seen.bodies) == 1
    assert f"HTTP {status}" in str(excinfo.value)
    assert "url and secret" in str(excinfo.value)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event blocked handlers wait on; set at teardown so the server is free for the next test."""
    event = threading.Event()
    yield event
    event.set()


def test_timeout_is_retried_then_raises_webhook_error(
    httpserver: HTTPServer, hook_url: str, release: threading.Event
) -> None:
    # Given a target that holds every request longer than the backend's timeout
    done = threading.Semaphore(0)

    def stall(request: Request, n: int) -> Response:
        release.wait(30)  # until the test lets it go
        done.release()
        return Response("too late")

    capture(httpserver, stall)

    # When a batch is uploaded with a 0.2 s timeout and one retry
    with make_backend(hook_url, timeout=0.2, max_retries=1) as backend, pytest.raises(WebhookError) as info:
        backend.upload(records())

    # Then both attempts timed out and the error says so, without waiting for the slow target
    # (which is still holding both requests: neither has been answered)
    message = str(info.value)
    assert "timed out after 0.2s" in message
    assert "2 attempt(s)" in message
    assert info.value.status is None
    assert not done.acquire(blocking=False)
    # (let the server finish both stalled requests before the next test uses it)
    release.set()
    for _ in range(2):
        assert done.acquire(timeout=5)


def test_connection_refused_is_retried_then_raises_webhook_error() -> None:
    # Given a loopback port nobody listens on
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    # When a batch is uploaded there
    with make_backend(f"http://127.0.0.1:{port}/hook", max_retries=2) as backend, pytest.raises(WebhookError) as info:
        backend.upload(records())

    # Then every attempt failed to connect and the error names the attempts
    assert "request failed (ConnectError" in str(info.value)
    assert "3 attempt(s)" in str(info.value)


def test_redirect_is_not_followed_and_fails_the_batch(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target that redirects elsewhere
    seen = capture(httpserver, lambda request, n: Response("", 307, headers={"Location": "/elsewhere"}))

    # When a batch is uploaded
    with make_backend(hook_url) as backend, pytest.raises(WebhookError, match=r"HTTP 307.*not followed"):
        backend.upload(records())

    # Then it was sent once and the redirect was not followed
    assert len(seen.bodies) == 1
    assert [request.path for request, _response in httpserver.log] == ["/hook"]


# 4xx: finding the records the target refuses


def refusing(ids: set[object], status: int = 422) -> Callable[[Request, int], Response]:
    """A target refusing any request that holds a record whose id is in ``ids``."""

    def answer(request: Request, n: int) -> Response:
        bad = [record["id"] for record in json.loads(request.get_data())["records"] if record["id"] in ids]
        if bad:
            return Response(f"invalid record(s): {bad}", status)
        return Response("ok")

    return answer


def test_client_error_on_batch_sends_records_one_at_a_time_and_rejects_refused_ones(
    httpserver: HTTPServer, hook_url: str
) -> None:
    # Given a target that refuses record "c-é" with 422 and accepts the others
    seen = capture(httpserver, refusing({"c-é"}))
    batch = records()

    # When the batch is uploaded
    with make_backend(hook_url) as backend, pytest.raises(RecordRejected) as info:
        backend.upload(batch)

    # Then the batch POST was followed by one signed POST per record
    assert [len(payload["records"]) for payload in seen.payloads] == [3, 1, 1, 1]
    for body, headers in zip(seen.bodies, seen.headers, strict=True):
        verify(body, headers, SECRET)
    # and exactly the refused record is rejected, with status and body excerpt
    assert info.value.rejections == [(batch[1], "HTTP 422: invalid record(s): ['c-é']")]
    # and the others were delivered on their own
    delivered = [payload["records"][0] for payload in seen.payloads[1:] if payload["records"][0]["id"] != "c-é"]
    assert delivered == [batch[0].to_dict(), batch[2].to_dict()]


def test_rejection_reason_keeps_the_first_200_characters_of_the_body(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target refusing one record with a long body
    capture(httpserver, lambda request, n: Response("x" * 500, 400))
    record = records()[0]

    # When that single record is uploaded
    with make_backend(hook_url) as backend, pytest.raises(RecordRejected) as info:
        backend.upload([record])

    # Then the reason is the status and the first 200 characters
    assert info.value.rejections == [(record, "HTTP 400: " + "x" * 200)]


def test_client_error_on_single_record_batch_rejects_it_without_resending(
    httpserver: HTTPServer, hook_url: str
) -> None:
    # Given a target that refuses record 42
    seen = capture(httpserver, refusing({42}))
    record = records()[0]

    # When a batch holding only that record is uploaded
    with make_backend(hook_url) as backend, pytest.raises(RecordRejected) as info:
        backend.upload([record])

    # Then it was sent once and rejected
    assert len(seen.bodies) == 1
    assert [rejected for rejected, _reason in info.value.rejections] == [record]


def test_client_error_on_batch_with_every_record_accepted_alone_returns(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target that refuses the first (whole) request only
    seen = capture(httpserver, lambda request, n: Response("try smaller", 413) if n == 1 else Response("ok"))

    # When a batch is uploaded
    with make_backend(hook_url) as backend:
        backend.upload(records())

    # Then every record was delivered on its own and nothing is rejected
    assert [len(payload["records"]) for payload in seen.payloads] == [3, 1, 1, 1]


def test_server_error_while_isolating_records_raises_webhook_error(httpserver: HTTPServer, hook_url: str) -> None:
    # Given a target that refuses the batch with 422 and then fails with 500
    seen = capture(httpserver, lambda request, n: Response("bad", 422) if n == 1 else Response("down", 500))

    # When the batch is uploaded with one retry
    with make_backend(hook_url, max_retries=1) as backend, pytest.raises(WebhookError, match="HTTP 500"):
        backend.upload(records())

    # Then the first single record was tried twice and the batch failed as a whole (nothing counts)
    assert [len(payload["records"]) for payload in seen.payloads] == [3, 1, 1]


# Through the runner, with real Redis


@pytest.fixture
def webhook_agent(manager: SyncManager, hook_url: str) -> str:
    """A webhook agent reading from the tail, its options as strings (as from the CLI)."""
    options = {"url": hook_url, "secret": SECRET, "timeout": "1", "backoff": "0.001", "max_retries": "1"}
    manager.add_agent(Agent(id=AGENT, backend="webhook", options=options), start="tail")
    return AGENT


def test_run_agent_delivers_published_changes_to_the_webhook(
    httpserver: HTTPServer, manager: SyncManager, publisher: Publisher, webhook_agent: str
) -> None:
    # Given five published changes and a target that accepts everything
    seen = capture(httpserver, lambda request, n: Response("ok"))
    seqs = publisher.emit_many([("event", i, ["created"]) for i in range(5)])

    # When the agent runs
    result = run_agent(manager, webhook_agent, 0)

    # Then the records arrived, signed, and the pointer moved to the head
    assert [record["id"] for payload in seen.payloads for record in payload["records"]] == [0, 1, 2, 3, 4]
    verify(seen.bodies[0], seen.headers[0], SECRET)
    assert result.records == 5
    assert manager.pointers(webhook_agent) == [seqs[-1]]


def test_run_agent_with_failing_webhook_keeps_pointer_and_records_the_status(
    httpserver: HTTPServer, manager: SyncManager, publisher: Publisher, webhook_agent: str
) -> None:
    # Given pending changes and a target that always answers 500
    seen = capture(httpserver, lambda request, n: Response("boom", 500))
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])

    # When the agent runs
    with pytest.raises(WebhookError):
        run_agent(manager, webhook_agent, 0)

    # Then it tried max_retries + 1 times, the pointer did not move and last_error names the status
    assert len(seen.bodies) == 2
    assert manager.pointers(webhook_agent) == [0]
    stored = manager.get_agent(webhook_agent)
    assert stored.last_error is not None
    assert "HTTP 500" in stored.last_error
    assert SECRET not in stored.last_error


def test_run_agent_dead_letters_records_the_webhook_rejects(
    httpserver: HTTPServer, manager: SyncManager, publisher: Publisher, webhook_agent: str
) -> None:
    # Given five published changes and a target refusing events 1 and 3 with 422
    seen = capture(httpserver, refusing({1, 3}))
    seqs = publisher.emit_many([("event", i, ["created"]) for i in range(5)])

    # When the agent runs
    result = run_agent(manager, webhook_agent, 0)

    # Then the refused records are dead letters with status and body excerpt
    letters = deadletters.entries(manager, webhook_agent)
    assert sorted(letter["record"]["id"] for letter in letters) == [1, 3]
    assert {letter["reason"] for letter in letters} == {
        "HTTP 422: invalid record(s): [1]",
        "HTTP 422: invalid record(s): [3]",
    }
    # and the others were delivered on their own, and the pointer moved past all of them
    accepted = [
        payload["records"][0]["id"] for payload in seen.payloads[1:] if payload["records"][0]["id"] not in {1, 3}
    ]
    assert accepted == [0, 2, 4]
    assert (result.records, result.rejected) == (3, 2)
    assert manager.pointers(webhook_agent) == [seqs[-1]]


# Options


def test_load_backend_finds_webhook_by_entry_point() -> None:
    # Given / When the backend is looked up by name
    backend_cls = load_backend("webhook")

    # Then it is the webhook backend
    assert backend_cls is WebhookBackend
    assert backend_cls.name == "webhook"


def test_missing_url_and_secret_raise_configuration_error_naming_them() -> None:
    # Given / When options without url and secret are parsed
    with pytest.raises(ConfigurationError) as info:
        parse_options(WebhookBackend, {})

    # Then the error names both
    assert "option 'url'" in str(info.value)
    assert "option 'secret'" in str(info.value)


def test_empty_secret_is_refused() -> None:
    # Given / When / Then an empty secret is a configuration error
    with pytest.raises(ConfigurationError, match="option 'secret': must not be empty"):
        parse_options(WebhookBackend, {"url": "https://example.org/hook", "secret": ""})


@pytest.mark.parametrize("url", ["ftp://example.org/hook", "file:///etc/passwd", "example.org/hook", "https://"])
def test_non_http_url_is_refused(url: str) -> None:
    # Given / When / Then a URL that is not http(s) with a host is a configuration error naming the option
    with pytest.raises(ConfigurationError, match="option 'url'"):
        parse_options(WebhookBackend, {"url": url, "secret": SECRET})


def test_string_options_from_the_cli_are_coerced() -> None:
    # Given options as the CLI passes them, all strings
    raw = {"url": "https://example.org/hook", "secret": SECRET, "timeout": "2.5", "max_retries": "3", "backoff": "0"}

    # When they are parsed
    options = parse_options(WebhookBackend, raw)

    # Then they have their types
    assert isinstance(options, WebhookBackend.Options)
    assert (options.timeout, options.max_retries, options.backoff) == (2.5, 3, 0.0)
    assert options.secret.get_secret_value() == SECRET


def test_defaults_are_ten_second_timeout_five_retries_half_second_backoff() -> None:
    # Given / When only url and secret are given
    options = parse_options(WebhookBackend, {"url": "http://example.org/hook", "secret": SECRET})

    # Then the documented defaults apply
    assert isinstance(options, WebhookBackend.Options)
    assert (options.timeout, options.max_retries, options.backoff) == (10.0, 5, 0.5)


# The secret never shows


def test_secret_and_url_credentials_never_appear_in_options_repr() -> None:
    # Given a backend whose URL carries credentials and a token
    backend = create_backend(
        "webhook", AGENT, {"url": "https://user:pw0rd@example.org/hook?token=t0ken", "secret": SECRET}
    )

    # When its options and the backend are printed
    shown = " ".join([repr(backend.options), str(backend.options), repr(backend)])

    # Then neither the secret nor the URL's credentials or query show
    assert SECRET not in shown
    assert "pw0rd" not in shown
    assert "t0ken" not in shown
    assert "example.org/hook" in shown


def test_webhook_error_hides_secret_and_url_credentials(httpserver: HTTPServer) -> None:
    # Given a target that always fails, reached through a URL with credentials and a token
    capture(httpserver, lambda request, n: Response("down", 502))
    url = httpserver.url_for("/hook").replace("http://", "http://user:pw0rd@") + "?token=t0ken"

    # When a batch fails for good
    with make_backend(url, max_retries=0) as backend, pytest.raises(WebhookError) as info:
        backend.upload(records())

    # Then the message names the redacted URL and status, and hides secret, password and token
    message = str(info.value)
    assert "HTTP 502" in message
    assert "/hook?***" in message
    for hidden in (SECRET, "pw0rd", "t0ken"):
        assert hidden not in message


def test_cli_never_prints_the_webhook_secret_or_url_credentials(
    real_redis: redis.Redis, redis_url: str, namespace: str
) -> None:
    # Given a webhook agent added through the CLI with a secret and a URL carrying credentials
    from click.testing import CliRunner

    from livesync.cli import main

    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace}
    runner = CliRunner()
    added = runner.invoke(
        main,
        ["agent", "add", "hook", "--backend", "webhook", "--json", "--option", "secret=s3cret-value",
         "--option", "url=https://user:pa55word@example.org/h?token=t0ken"],
        env=env,
    )  # fmt: skip
    # When the agent is shown, as text and as JSON
    shown = runner.invoke(main, ["agent", "show", "hook"], env=env)
    shown_json = runner.invoke(main, ["agent", "show", "hook", "--json"], env=env)
    # Then none of the secrets appears anywhere
    for result in (added, shown, shown_json):
        assert result.exit_code == 0, result.output
        for secret in ("s3cret-value", "pa55word", "t0ken"):
            assert secret not in result.output
    assert json.loads(shown_json.output)["options"]["secret"] == "***"


# Hostile targets: dripping answers, huge bodies, refusing everything


@dataclass
class Served:
    """What a raw target did: bytes it managed to send, and whether the client hung up."""

    sent: int = 0
    hung_up: threading.Event = field(default_factory=threading.Event)
    requests: int = 0


class RawTarget:
    """A loopback HTTP/1.1 target answering every request with ``answer(socket, served)``.

    The handler reads the request (headers and Content-Length body) first, like a real
    server. Errors from writing to a client that hung up end that connection quietly and
    set ``served.hung_up``.
    """

    def __init__(self, answer: Callable[[socket.socket, Served], None]) -> None:
        self.served = Served()
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                reader = conn.makefile("rb")
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                reader.read(length)
                self.served.requests += 1
                self.answer(conn, self.served)
            except OSError:  # the client hung up
                self.served.hung_up.set()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.acceptor.join(timeout=5)
        for thread in self.threads:
            thread.join(timeout=15)


@pytest.fixture
def raw_target() -> Iterator[Callable[[Callable[[socket.socket, Served], None]], RawTarget]]:
    targets: list[RawTarget] = []

    def start(answer: Callable[[socket.socket, Served], None]) -> RawTarget:
        targets.append(RawTarget(answer))
        return targets[-1]

    yield start
    for target in targets:
        target.close()


DRIP_SECONDS = 0.3
DRIP_BYTES = 34  # about 10 s of dripping


def drip(conn: socket.socket, served: Served, data: bytes) -> None:
    for index in range(len(data)):
        conn.sendall(data[index : index + 1])
        served.sent += 1
        time.sleep(DRIP_SECONDS)


def test_answer_dripping_its_body_fails_the_attempt_at_the_deadline(raw_target: Any) -> None:
    # Given a target that sends its headers, then one body byte every 0.3 s for ~10 s
    def answer(conn: socket.socket, served: Served) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % DRIP_BYTES)
        drip(conn, served, b"x" * DRIP_BYTES)

    target = raw_target(answer)

    # When a batch is uploaded with a 1 s read timeout (never reached) and a 2 s deadline
    with make_backend(target.url, timeout=1, deadline=2, max_retries=0) as backend, pytest.raises(WebhookError) as info:
        backend.upload(records())

    # Then the attempt failed for the deadline, before the drip ended (bytes were still unsent)
    assert "2s deadline" in str(info.value)
    assert info.value.status is None
    # and the client hung up on the target
    assert target.served.hung_up.wait(timeout=10)
    assert target.served.sent < DRIP_BYTES


def test_answer_dripping_its_status_line_fails_the_attempt_at_the_deadline(raw_target: Any) -> None:
    # Given a target that drips even its status line and headers, one byte every 0.3 s
    def answer(conn: socket.socket, served: Served) -> None:
        drip(conn, served, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: " + b"p" * 20 + b"\r\n\r\nok")

    target = raw_target(answer)

    # When a batch is uploaded with a 1 s read timeout (never reached) and a 2 s deadline
    answer_bytes = len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Padding: " + b"p" * 20 + b"\r\n\r\nok")
    with make_backend(target.url, timeout=1, deadline=2, max_retries=0) as backend, pytest.raises(WebhookError) as info:
        backend.upload(records())

    # Then the attempt failed for the deadline, before the answer was complete (the client hung up)
    assert "2s deadline" in str(info.value)
    assert target.served.hung_up.wait(timeout=10)
    assert target.served.sent < answer_bytes


def test_each_retry_gets_its_own_deadline_and_a_later_fast_answer_is_delivered(raw_target: Any) -> None:
    # Given a target that drips its first answer and answers the second one at once
    def answer(conn: socket.socket, served: Served) -> None:
        if served.requests == 1:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % DRIP_BYTES)
            drip(conn, served, b"x" * DRIP_BYTES)
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    target = raw_target(answer)

    # When a batch is uploaded with one retry
    with make_backend(target.url, timeout=1, deadline=1, max_retries=1) as backend:
        backend.upload(records())

    # Then the second attempt delivered it
    assert target.served.requests == 2


BIG = 50 * 1024 * 1024


def huge_answer(status: bytes) -> Callable[[socket.socket, Served], None]:
    """An answer with a 50 MB body, counting what the client took before it hung up."""
    chunk = b"x" * 65536

    def answer(conn: socket.socket, served: Served) -> None:
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % BIG)
        while served.sent < BIG:
            conn.sendall(chunk)
            served.sent += len(chunk)

    return answer


def test_huge_error_body_is_not_read_whole(raw_target: Any) -> None:
    # Given a target refusing a record with a 400 whose body is 50 MB
    target = raw_target(huge_answer(b"400 Bad Request"))
    record = records()[0]

    # When that record is uploaded
    with make_backend(target.url) as backend, pytest.raises(RecordRejected) as info:
        backend.upload([record])

    # Then the reason keeps the excerpt, and the client hung up long before the body's end
    assert info.value.rejections == [(record, "HTTP 400: " + "x" * 200)]
    assert target.served.hung_up.wait(timeout=10)
    assert target.served.sent < BIG / 2


def test_huge_success_body_is_not_read_whole(raw_target: Any) -> None:
    # Given a target accepting batches with a 50 MB body
    target = raw_target(huge_answer(b"200 OK"))

    # When a batch is uploaded
    with make_backend(target.url) as backend:
        backend.upload(records())

    # Then the client did not take the whole body
    assert target.served.hung_up.wait(timeout=10)
    assert target.served.sent < BIG / 2


def test_target_refusing_every_record_alone_fails_the_batch_instead_of_rejecting_them(
    httpserver: HTTPServer, hook_url: str
) -> None:
    # Given a target answering 400 to every request
    seen = capture(httpserver, lambda request, n: Response("schema mismatch: expected 'items'", 400))

    # When a batch is uploaded
    with make_backend(hook_url) as backend, pytest.raises(WebhookError) as info:
        backend.upload(records())

    # Then the batch and each record were tried, and the batch failed as a whole, naming status and excerpt
    assert not isinstance(info.value, RecordRejected)
    assert [len(payload["records"]) for payload in seen.payloads] == [3, 1, 1, 1]
    message = str(info.value)
    assert "HTTP 400" in message
    assert "schema mismatch: expected 'items'" in message
    assert "every record" in message
    assert info.value.status == 400


def test_run_against_a_target_refusing_everything_fails_without_dead_letters(
    httpserver: HTTPServer, manager: SyncManager, publisher: Publisher, webhook_agent: str
) -> None:
    # Given pending changes and a target that answers 400 to everything
    capture(httpserver, lambda request, n: Response("bad request", 400))
    publisher.emit_many([("event", i, ["created"]) for i in range(5)])

    # When the agent runs
    with pytest.raises(WebhookError, match="HTTP 400"):
        run_agent(manager, webhook_agent, 0)

    # Then the run failed: the pointer stayed and nothing went to the dead-letter list
    assert manager.pointers(webhook_agent) == [0]
    assert deadletters.entries(manager, webhook_agent) == []
    stored = manager.get_agent(webhook_agent)
    assert stored.last_error is not None and "HTTP 400" in stored.last_error


def test_deadline_defaults_to_three_times_the_timeout() -> None:
    options = parse_options(WebhookBackend, {"url": "http://example.org/hook", "secret": SECRET, "timeout": "4"})
    assert isinstance(options, WebhookBackend.Options)
    assert options.request_deadline == 12.0


def test_deadline_option_is_coerced_and_must_be_positive() -> None:
    options = parse_options(WebhookBackend, {"url": "http://example.org/hook", "secret": SECRET, "deadline": "2.5"})
    assert isinstance(options, WebhookBackend.Options)
    assert options.request_deadline == 2.5
    with pytest.raises(ConfigurationError, match="option 'deadline'"):
        parse_options(WebhookBackend, {"url": "http://example.org/hook", "secret": SECRET, "deadline": "0"})


def test_deadline_covers_every_connection_pool_including_proxies(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given proxies in the environment (httpx then keeps one connection pool per proxy)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")

    # When the backend opens its client
    with (
        caplog.at_level(logging.WARNING, logger="livesync.backends.webhook"),
        make_backend("https://example.org/h") as backend,
    ):
        client = backend._client
        assert client is not None
        transports = [client._transport, *(t for t in client._mounts.values() if t is not None)]
        backends = [getattr(getattr(transport, "_pool", None), "_network_backend", None) for transport in transports]

    # Then every pool's network layer enforces the deadline, and nothing was reported missing
    assert len(backends) == 3
    assert all(isinstance(network, _DeadlineBackend) for network in backends)
    assert caplog.messages == []


def test_compressed_error_body_is_not_decoded_for_the_excerpt(raw_target: Any) -> None:
    # Given a target refusing a record with a gzip body (although the backend asks for identity)
    def answer(conn: socket.socket, served: Served) -> None:
        body = gzip.compress(b"x" * 100_000)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body))
        conn.sendall(body)

    target = raw_target(answer)
    record = records()[0]

    # When that record is uploaded
    with make_backend(target.url) as backend, pytest.raises(RecordRejected) as info:
        backend.upload([record])

    # Then the reason names the encoding instead of an excerpt
    assert info.value.rejections == [(record, "HTTP 400: <gzip-encoded body>")]
