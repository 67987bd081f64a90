"""Fixtures of the reliability suite: private Redis servers and real livesync processes.

Everything here runs for real: ``redis-server`` processes the tests may restart, and
``livesync`` workers, schedulers and publishers as separate processes that get real
signals. Each process's output goes to a log file under the test's tmp_path, so a
failing test can show it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.processes import TESTS_DIR, Processes
from support.servers import RedisServer, free_port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private AOF redis-server for one test, stopped afterwards."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def base_env(namespace: str) -> dict[str, str]:
    """Environment of the test's processes: its namespace and queue, the tests on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
    env.update(
        {
            "LIVESYNC_NAMESPACE": namespace,
            "LIVESYNC_QUEUE": f"q-{namespace}",
            # the suite's held backend is an import path: support.held_backend:HeldBackend
            "LIVESYNC_ALLOWED_IMPORTS": "support",
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
