"""Fixtures of the CLI tests: the environment, an in-process invoker, a populated namespace."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner, Result

from livesync.cli import main

from .helpers import Invoke, jsonl, line, ok


@pytest.fixture
def env(redis_url: str, namespace: str) -> dict[str, str]:
    """The environment that points the CLI at the test Redis, namespace and queue."""
    return {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": f"q-{namespace}"}


@pytest.fixture
def cli(env: dict[str, str], namespace: str, real_redis: redis.Redis) -> Iterator[Invoke]:
    """Invoke ``livesync ARGS...`` in-process; the namespace and queue are deleted afterwards."""
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None, extra_env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, env={**env, **(extra_env or {})})

    yield invoke
    real_redis.srem("rq:queues", f"rq:queue:q-{namespace}")


@pytest.fixture
def populated(cli: Invoke) -> Invoke:
    """A namespace with three changes and one agent ``a`` at the tail."""
    ok(cli("publish", "--file", "-", input=jsonl(*(line("event", n, "created") for n in (1, 2, 3)))))
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    return cli
