"""Shared fixtures: a real Redis for everything, fakeredis for the embedded fallback.

The real Redis comes from ``LIVESYNC_TEST_REDIS_URL`` (``scripts/test`` sets it,
starting a private server when none answers). Each test gets its own namespace and
RQ queue name, and every key of them is deleted afterwards.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from click.testing import CliRunner, Result
from rq import Queue
from support.servers import TEST_REDIS_URL as REDIS_URL

from livesync import jobs
from livesync.cli import main
from livesync.client import Publisher
from livesync.config import Settings
from livesync.keys import PartitionKeys, namespace_keys
from livesync.manager import Agent, SyncManager
from livesync.track import Track


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


@pytest.fixture
def redis_server_binary() -> str:
    """Path of the redis-server binary; the test is skipped where there is none."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not on PATH")
    return path


@pytest.fixture
def manager(real_redis: redis.Redis, namespace: str) -> SyncManager:
    """A manager of the test's namespace on the real Redis (default partitions and buckets)."""
    return SyncManager(real_redis, namespace)


@pytest.fixture
def publisher(real_redis: redis.Redis, namespace: str) -> Publisher:
    """A publisher of the test's namespace on the real Redis (default partitions and buckets)."""
    return Publisher(real_redis, namespace)


@pytest.fixture
def search_manager(manager: SyncManager) -> SyncManager:
    """The test's manager with one null agent ``search`` reading from the tail."""
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    return manager


@pytest.fixture
def search_track(search_manager: SyncManager) -> Track:
    """Partition 0 of the ``search`` agent's namespace."""
    return search_manager.track(0)


@pytest.fixture
def keys(namespace: str) -> PartitionKeys:
    """Keys of partition 0 of the test's namespace."""
    return namespace_keys(namespace).partition(0)


@pytest.fixture
def configure_jobs(real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Settings]]:
    """Configure ``jobs`` on the real Redis: ``configure_jobs(namespace, **fields)`` returns the Settings.

    The queue is ``q-<namespace>`` and jobs are not retried unless ``fields`` say so.
    Afterwards ``jobs`` is reset (its module state restored), its stop flag cleared and
    the queue and worker names this namespace registered are forgotten.
    """
    for name in ("_settings", "_redis", "_rq_redis"):
        monkeypatch.setattr(jobs, name, None)
    made: list[Settings] = []

    def configure(namespace: str, **fields: Any) -> Settings:
        settings = Settings(**{"namespace": namespace, "queue": f"q-{namespace}", "retry_max": 0, **fields})
        jobs.configure(settings, redis=real_redis)
        made.append(settings)
        return settings

    yield configure
    jobs.clear_configuration()
    jobs.STOP.clear()
    for settings in made:
        real_redis.srem("rq:queues", f"rq:queue:{settings.queue}")
        real_redis.srem("rq:workers", f"rq:worker:w-{settings.namespace}")


@pytest.fixture
def settings(request: pytest.FixtureRequest, namespace: str, configure_jobs: Callable[..., Settings]) -> Settings:
    """Jobs configured for the test's namespace; a module's ``pytest.mark.jobs_settings(**fields)`` adds fields."""
    marker = request.node.get_closest_marker("jobs_settings")
    return configure_jobs(namespace, **(marker.kwargs if marker else {}))


@pytest.fixture
def queue(settings: Settings, real_redis: redis.Redis) -> Queue:
    """The RQ queue of the test's ``settings``."""
    return jobs.make_queue(settings, connection=real_redis)


@pytest.fixture
def cli_environment(redis_url: str, namespace: str) -> dict[str, str]:
    """The environment that points the CLI at the test Redis, namespace and queue."""
    return {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": f"q-{namespace}"}


@pytest.fixture
def cli(cli_environment: dict[str, str], namespace: str, real_redis: redis.Redis) -> Iterator[Callable[..., Result]]:
    """Invoke ``livesync ARGS...`` in-process; the namespace and queue are deleted afterwards."""
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None, extra_env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, env={**cli_environment, **(extra_env or {})})

    yield invoke
    real_redis.srem("rq:queues", f"rq:queue:q-{namespace}")


@pytest.fixture
def postgres_url(tmp_path: Path) -> str:
    """The PostgreSQL test database; the test is skipped, saying why, when it does not answer."""
    from support.sql_databases import reachable_url

    return reachable_url("postgresql", tmp_path)


@pytest.fixture(scope="session")
def opensearch_cluster() -> Iterator[Any]:
    """An OpenSearch-compatible cluster for the session: osmem-server on loopback, unless one is named."""
    pytest.importorskip("opensearchpy", reason="the opensearch extra is not installed")
    from support.opensearch_server import Cluster, opensearch_url

    with opensearch_url() as url:
        yield Cluster(url)


_SUITES = {"reliability": pytest.mark.reliability, "cluster": pytest.mark.cluster, "backends": pytest.mark.targets}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "jobs_settings(**fields): Settings fields of the settings fixture")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of ``tests/reliability``, ``tests/cluster`` and ``tests/backends`` by their folder.

    ``scripts/test --fast`` (``-m "not reliability and not cluster and not targets and
    not slow"``) leaves them out of a developer's loop; ``scripts/test`` and CI run them all.
    """
    for item in items:
        folder = item.path.parent.name
        if folder in _SUITES:
            item.add_marker(_SUITES[folder])


def _delete_namespace(client: redis.Redis, namespace: str) -> None:
    doomed = list(client.scan_iter(match=f"livesync:{{{namespace}*", count=1000))
    doomed += list(client.scan_iter(match=f"rq:*{namespace}*", count=1000))
    client.srem("rq:queues", f"rq:queue:q-{namespace}")
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start : start + 500])
