"""Shared fixtures: a real Redis for everything, fakeredis for the embedded fallback.

The real Redis comes from ``LIVESYNC_TEST_REDIS_URL`` (``scripts/test`` sets it,
starting a private server when none answers). Each test gets its own namespace and
RQ queue name, and every key of them is deleted afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

REDIS_URL = os.environ.get("LIVESYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real test Redis; the session fails (not skips) when it does not answer."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"test Redis at {REDIS_URL} does not answer ({exc}); run the suite with scripts/test")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def real_redis(redis_url: str, namespace: str) -> Iterator[redis.Redis]:
    """A client of the real test Redis; the test's namespace is deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    _delete_namespace(client, namespace)
    client.close()


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """An in-process fakeredis (with Lua) of its own."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


@pytest.fixture(params=["real", "fake"])
def any_redis(request: pytest.FixtureRequest) -> Any:
    """The same test on the real Redis and on fakeredis (the embedded fallback)."""
    if request.param == "real":
        return request.getfixturevalue("real_redis")
    return request.getfixturevalue("fake_redis")


_SUITES = {"reliability": pytest.mark.reliability, "cluster": pytest.mark.cluster}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of ``tests/reliability`` and ``tests/cluster`` by their folder.

    ``scripts/test --fast`` (``-m "not reliability and not cluster and not slow"``)
    leaves them out of a developer's loop; ``scripts/test`` and CI run them all.
    """
    for item in items:
        folder = item.path.parent.name
        if folder in _SUITES:
            item.add_marker(_SUITES[folder])


def _delete_namespace(client: redis.Redis, namespace: str) -> None:
    doomed = list(client.scan_iter(match=f"livesync:{{{namespace}*", count=1000))
    doomed += list(client.scan_iter(match=f"rq:*{namespace}*", count=1000))
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start : start + 500])
