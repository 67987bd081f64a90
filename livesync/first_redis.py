"""A Redis for the demo and for trying livesync out: the configured one if it answers,
else a private ``redis-server`` on a temporary unix socket, else in-process fakeredis.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livesync.connection import connect
from livesync.errors import LiveSyncError, RedisUnavailable
from livesync.urls import mask_url

START_TIMEOUT = 10.0


@dataclass
class FirstRedis:
    """A Redis client with the URL other processes can reach it at (None for fakeredis).

    ``fallback`` says why the configured URL was not used (its password masked), or is
    None when it was.
    """

    client: Any
    url: str | None
    description: str
    fallback: str | None = None


@contextlib.contextmanager
def first_redis(url: str) -> Iterator[FirstRedis]:
    """Yield the first Redis that works: ``url``, a private redis-server, fakeredis.

    A ``url`` that does not answer is a reason to fall back (named in ``fallback``); a
    malformed one raises :class:`~livesync.errors.ConfigurationError` instead.
    """
    try:
        client = connect(url, check=True)
    except RedisUnavailable as exc:
        # the message names the masked URL; a fallback the user is not told about hides a misconfiguration
        fallback = str(exc).rstrip(". ")
    else:
        yield FirstRedis(client, url, f"the Redis at {mask_url(url)}")
        client.close()
        return
    server = shutil.which("redis-server")
    if server:
        with private_redis_server(server) as (client, socket_url, pid):
            yield FirstRedis(client, socket_url, f"a private redis-server (pid {pid}) on {socket_url}", fallback)
        return
    try:
        import fakeredis
    except ImportError as exc:
        raise LiveSyncError(
            f"no Redis answers at {mask_url(url)}, no redis-server is on PATH and fakeredis is not installed; "
            "start Redis, install redis-server, or pip install 'fakeredis[lua]'"
        ) from exc
    yield FirstRedis(fakeredis.FakeRedis(), None, "an in-process fakeredis (no redis-server on PATH)", fallback)


@contextlib.contextmanager
def private_redis_server(server: str) -> Iterator[tuple[Any, str, int]]:
    """Start ``redis-server`` on a unix socket in a temporary directory; stop it after."""
    directory = Path(tempfile.mkdtemp(prefix="livesync-redis-"))
    socket_path = directory / "redis.sock"
    process = subprocess.Popen(
        [
            server,
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"unix://{socket_path}"
    try:
        client = _wait_until_up(url, process)
        yield client, url, process.pid
        client.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _wait_until_up(url: str, process: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise LiveSyncError(f"redis-server exited with code {process.returncode} before answering")
        try:
            return connect(url, check=True)
        except RedisUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
