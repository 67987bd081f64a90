"""The backend contract (:mod:`livesync.testing`) on every built-in backend of the base install.

- ``null`` and ``debug`` keep nothing to read back: only the upload outcomes are checked.
- ``jsonl`` is read back the way its consumers read it: replaying the file in order under
  the version rule of :class:`~livesync.backends.base.Backend` (the file is a log of
  records, never rewritten; :func:`livesync.testing.apply_version_rule` is that rule). A
  record that cannot be encoded as JSON is refused; a failing ``fsync`` (the disk) breaks it.
- ``webhook`` posts to a pytest-httpserver receiver that applies the same rule on each
  batch it answers 2xx, refuses a whole request with a 422 when one of its records is one
  it will not take (so the backend sends the records one at a time and dead-letters those
  refused alone), and answers 503 while broken.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from livesync.backends.base import Backend
from livesync.backends.debug import DebugBackend
from livesync.backends.jsonl import JsonlBackend
from livesync.backends.null import NullBackend
from livesync.backends.webhook import WebhookBackend
from livesync.records import Record
from livesync.testing import BackendContract, TargetState, apply_version_rule

State = dict[tuple[str, str], TargetState]


class TestNullContract(BackendContract):
    @pytest.fixture
    def make_backend(self) -> Callable[[], Backend]:
        return lambda: NullBackend("contract", NullBackend.Options())

    @pytest.fixture
    def read_target(self) -> None:
        return None


class TestDebugContract(BackendContract):
    @pytest.fixture
    def make_backend(self) -> Callable[[], Backend]:
        return lambda: DebugBackend("contract", DebugBackend.Options(), stream=io.StringIO())

    @pytest.fixture
    def read_target(self) -> None:
        return None


class TestJsonlContract(BackendContract):
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "archive" / "records.jsonl"

    @pytest.fixture
    def make_backend(self, path: Path) -> Callable[[], Backend]:
        return lambda: JsonlBackend("contract", JsonlBackend.Options(path=path))

    @pytest.fixture
    def read_target(self, path: Path) -> Callable[[], State]:
        def read() -> State:
            if not path.exists():
                return {}
            lines = path.read_text(encoding="utf-8").splitlines()
            return apply_version_rule({}, [Record.from_dict(json.loads(line)) for line in lines])

        return read

    @pytest.fixture
    def refused_record(self) -> Callable[[Record], Record]:
        # a set is no JSON value: the backend refuses the record, the rest of its batch lands
        return lambda record: record._replace(document={"tags": {"not", "json"}})

    @pytest.fixture
    def broken_target(self) -> Callable[[], AbstractContextManager[object]]:
        @contextmanager
        def disk_failing() -> Iterator[None]:
            def fsync(fd: int) -> None:
                raise OSError(errno.EIO, "Input/output error (the disk failed the fsync)")

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(os, "fsync", fsync)
                yield

        return disk_failing


class Receiver:
    """A webhook endpoint keeping what it accepted under the version rule."""

    REFUSE = "refuse-me"

    def __init__(self) -> None:
        self.state: State = {}
        self.broken = False

    def handle(self, request: Request) -> Response:
        if self.broken:
            return Response("down for maintenance", status=503)
        records = [Record.from_dict(data) for data in json.loads(request.get_data())["records"]]
        refused = [record for record in records if (record.document or {}).get(self.REFUSE)]
        if refused:
            # all or nothing per request, as a receiver validating its input first does
            return Response(f"record {refused[0].type} {refused[0].id} is invalid", status=422)
        apply_version_rule(self.state, records)
        return Response("ok", status=200)


class TestWebhookContract(BackendContract):
    @pytest.fixture
    def server(self) -> Iterator[HTTPServer]:
        # a private server: the unreachable case stops it and starts it again on its port
        server = HTTPServer(host="127.0.0.1", port=0)
        server.start()
        try:
            yield server
        finally:
            if server.is_running():
                server.stop()

    @pytest.fixture
    def receiver(self, server: HTTPServer) -> Receiver:
        receiver = Receiver()
        server.expect_request("/hook", method="POST").respond_with_handler(receiver.handle)
        return receiver

    @pytest.fixture
    def make_backend(self, server: HTTPServer, receiver: Receiver) -> Callable[[], Backend]:
        options = WebhookBackend.Options(
            url=server.url_for("/hook"), secret="contract-secret", timeout=5, max_retries=1, backoff=0
        )
        return lambda: WebhookBackend("contract", options)

    @pytest.fixture
    def read_target(self, receiver: Receiver) -> Callable[[], State]:
        return lambda: dict(receiver.state)

    @pytest.fixture
    def refused_record(self) -> Callable[[Record], Record]:
        return lambda record: record._replace(document={Receiver.REFUSE: True})

    @pytest.fixture(params=["answering-503", "unreachable"])
    def broken_target(
        self, request: pytest.FixtureRequest, server: HTTPServer, receiver: Receiver
    ) -> Callable[[], AbstractContextManager[object]]:
        @contextmanager
        def answering_503() -> Iterator[None]:
            receiver.broken = True
            try:
                yield
            finally:
                receiver.broken = False

        @contextmanager
        def unreachable() -> Iterator[None]:
            server.stop()  # nothing listens on its port
            try:
                yield
            finally:
                server.start()

        return answering_503 if request.param == "answering-503" else unreachable
