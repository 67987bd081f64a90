"""Private redis-servers on free loopback ports, for the tests that restart, fill or break Redis."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from support.waiting import wait_for

#: The shared test Redis (``scripts/test`` sets the variable, starting a private server when none answers).
TEST_REDIS_URL = os.environ.get("LIVESYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class RedisServer:
    """A private redis-server on a loopback port, with AOF fsynced on every write."""

    directory: Path
    port: int
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_connect_timeout=2)

    def start(self) -> None:
        """Start (or start again, on the same data) and wait until it answers."""
        server = shutil.which("redis-server")
        assert server, "redis-server is not on PATH"
        with (self.directory / "redis.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [server, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                 "--appendonly", "yes", "--appendfsync", "always", "--save", "", *self.extra],
                stdout=log, stderr=log,
            )  # fmt: skip
        wait_for(self._answers, 15, f"redis-server on port {self.port}")

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        """SIGKILL the server: a crash; what AOF fsynced survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM the server and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def restart(self, *, crash: bool = True) -> None:
        """Kill (or stop) the server and start it again on the same port and data."""
        self.kill() if crash else self.stop()
        self.start()
