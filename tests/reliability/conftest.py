"""Fixtures of the reliability suite: private Redis servers and real livesync processes.

Everything here runs for real: ``redis-server`` processes the tests may restart, and
``livesync`` workers, schedulers and publishers as separate processes that get real
signals. Each process's output goes to a log file under the test's tmp_path, so a
failing test can show it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO = TESTS_DIR.parent
LIVESYNC = [sys.executable, "-m", "livesync"]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private AOF redis-server for one test, stopped afterwards."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port())
    server.start()
    yield server
    server.stop()


@dataclass
class Proc:
    """A livesync (or any) process of a test, with its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Processes:
    """Starts processes with the test's environment and stops every one of them after."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.started: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp_path / f"{name}.log"
        with log.open("ab") as out:  # the child keeps its own copy
            process = subprocess.Popen(
                argv, cwd=REPO, env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        proc = Proc(name, process, log)
        self.started.append(proc)
        return proc

    def livesync(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        return self.start(name, [*LIVESYNC, *args], env)

    def run(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a livesync command to completion."""
        return subprocess.run(
            [*LIVESYNC, *args], cwd=REPO, env={**self.env, **(env or {})}, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.started:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                proc.wait(remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def base_env(namespace: str) -> dict[str, str]:
    """Environment of the test's processes: its namespace and queue, the tests on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
    env.update(
        {
            "LIVESYNC_NAMESPACE": namespace,
            "LIVESYNC_QUEUE": f"q-{namespace}",
            # the suite's held backend is an import path: reliability.held_backend:HeldBackend
            "LIVESYNC_ALLOWED_IMPORTS": "reliability",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def processes(tmp_path: Path, base_env: dict[str, str]) -> Iterator[Processes]:
    """Start processes for a test; all of them are stopped when it ends."""
    procs = Processes(tmp_path, base_env)
    yield procs
    procs.stop_all()
