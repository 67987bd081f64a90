"""An evicting Redis is refused: workers, scheduler, tick, status and publishers check the policy.

With ``maxmemory`` and an evicting ``maxmemory-policy`` Redis deletes meta, pointers and
heads without an error, so livesync requires ``noeviction`` unless the operator allows
eviction explicitly (``LIVESYNC_ALLOW_EVICTION``, ``Publisher(allow_eviction=True)``).
Everything here runs on a PRIVATE redis-server (the policy is changed with CONFIG SET,
which the shared test Redis must never see).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rq.serializers import JSONSerializer
from support.servers import RedisServer, free_port

from livesync import Publisher, jobs
from livesync.cli import main
from livesync.config import Settings
from livesync.errors import EvictingRedis
from livesync.manager import Agent, SyncManager
from livesync.metrics import make_registry
from livesync.redis_policy import check_eviction, read_policy
from livesync.scheduler import build_scheduler
from livesync.worker import LiveSyncSimpleWorker, LiveSyncWorker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the module, with maxmemory set (the policy decides per test)."""
    directory = tmp_path_factory.mktemp("redis")
    server = RedisServer(directory, free_port(), extra=["--appendonly", "no", "--maxmemory", "256mb"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    """A fresh client of the private server (the verdict is cached per client); emptied afterwards."""
    client = server.client()
    yield client
    client.config_set("maxmemory-policy", "noeviction")
    client.flushall()  # the private server only
    client.close()


@pytest.fixture
def fresh(server: RedisServer) -> Iterator[redis.Redis]:
    """Another client, which has not read the policy yet (the fixtures' client may have)."""
    with closing(server.client()) as client:
        yield client


def set_policy(client: redis.Redis, policy: str) -> None:
    client.config_set("maxmemory-policy", policy)


@pytest.fixture
def server_settings(server: RedisServer, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    for name in ("_settings", "_redis", "_rq_redis"):
        monkeypatch.setattr(jobs, name, None)
    yield Settings(redis_url=server.url, namespace=namespace, queue=f"q-{namespace}", retry_max=0)
    jobs.clear_configuration()


@pytest.fixture
def namespace_with_agent(client: redis.Redis, namespace: str, tmp_path: Path) -> SyncManager:
    """A namespace with one change and a jsonl agent that has not read it (made while noeviction)."""
    Publisher(client, namespace).emit("event", 1, "created")
    manager = SyncManager(client, namespace)
    manager.add_agent(Agent(id="a", backend="jsonl", options={"path": str(tmp_path / "a.jsonl")}), start="tail")
    return manager


def cli(settings: Settings, *args: str, allow: bool = False) -> Result:
    env = {
        "LIVESYNC_REDIS_URL": settings.redis_url,
        "LIVESYNC_NAMESPACE": settings.namespace,
        "LIVESYNC_QUEUE": settings.queue,
        "LIVESYNC_ALLOW_EVICTION": "1" if allow else "0",
    }
    return CliRunner().invoke(main, list(args), env=env)


def warnings_about_eviction(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "maxmemory-policy" in r.message]


def assert_refusal(message: str, policy: str = "allkeys-lru") -> None:
    assert f"maxmemory-policy {policy}" in message
    assert "set maxmemory-policy noeviction" in message
    assert "lose changes silently" in message


# --- the check itself ------------------------------------------------------------------------


def test_an_evicting_policy_is_refused_with_a_message_naming_the_setting(client: redis.Redis) -> None:
    # Given a Redis with maxmemory-policy allkeys-lru
    set_policy(client, "allkeys-lru")
    # When it is checked
    with pytest.raises(EvictingRedis) as info:
        check_eviction(client, url="redis://:hunter2@127.0.0.1:1234/0")
    # Then the refusal names the URL (masked), the policy, noeviction and the override
    message = str(info.value)
    assert_refusal(message)
    assert "redis://:***@127.0.0.1:1234/0" in message and "hunter2" not in message
    assert "LIVESYNC_ALLOW_EVICTION=1" in message


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-ttl"])
def test_every_evicting_policy_is_refused(client: redis.Redis, policy: str) -> None:
    # Given a Redis with an evicting policy (volatile-*: the run locks have TTLs)
    set_policy(client, policy)
    # Then the check refuses it
    with pytest.raises(EvictingRedis) as info:
        check_eviction(client)
    assert_refusal(str(info.value), policy)


def test_noeviction_passes_the_check(client: redis.Redis) -> None:
    # Given a Redis with noeviction
    set_policy(client, "noeviction")
    # Then the check passes and reports the policy
    policy = check_eviction(client)
    assert (policy.policy, policy.evicting) == ("noeviction", False)


def test_the_policy_is_read_once_per_client(client: redis.Redis, server: RedisServer) -> None:
    # Given a fresh client of a noeviction Redis
    with closing(server.client()) as fresh:
        before = int(client.info("commandstats")["cmdstat_info"]["calls"])
        # When the policy is checked three times
        for _ in range(3):
            check_eviction(fresh)
        after = int(client.info("commandstats")["cmdstat_info"]["calls"])
    # Then it cost one INFO (plus the INFO commandstats of this test)
    assert after - before == 1 + 1


def test_fakeredis_without_the_field_counts_as_safe(fake_redis: Any) -> None:
    # Given the embedded fakeredis, which does not report maxmemory_policy
    # Then the check passes, the policy unknown
    policy = check_eviction(fake_redis)
    assert (policy.policy, policy.evicting) == (None, False)


# --- worker start ------------------------------------------------------------------------


@pytest.mark.parametrize("worker_class", [LiveSyncSimpleWorker, LiveSyncWorker])
def test_worker_start_refuses_an_evicting_redis(
    client: redis.Redis,
    fresh: redis.Redis,
    server_settings: Settings,
    namespace_with_agent: SyncManager,
    worker_class: type[Any],
) -> None:
    # Given a worker configured on a Redis with allkeys-lru
    set_policy(client, "allkeys-lru")
    jobs.configure(server_settings, redis=fresh, rq_redis=fresh)
    worker = worker_class([jobs.make_queue(server_settings, fresh)], connection=fresh, serializer=JSONSerializer)
    # When it starts, it refuses, naming the setting
    with pytest.raises(EvictingRedis) as info:
        worker.work(burst=True)
    assert_refusal(str(info.value))


def test_worker_command_refuses_an_evicting_redis_in_one_line(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager
) -> None:
    # Given a Redis with allkeys-lru
    set_policy(client, "allkeys-lru")
    # When `livesync worker --burst` starts
    result = cli(server_settings, "worker", "--burst", "--simple", "--name", f"w-{uuid.uuid4().hex[:8]}")
    # Then it refuses with one line naming the setting (a configuration problem: exit 2)
    assert result.exit_code == 2, result.output
    assert_refusal(result.output)
    assert "Traceback" not in result.output


def test_worker_runs_and_warns_once_when_eviction_is_allowed(
    client: redis.Redis,
    fresh: redis.Redis,
    server_settings: Settings,
    namespace_with_agent: SyncManager,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a Redis with allkeys-lru and settings that explicitly allow eviction
    set_policy(client, "allkeys-lru")
    allowed = server_settings.model_copy(update={"allow_eviction": True})
    jobs.configure(allowed, redis=fresh, rq_redis=fresh)
    queue = jobs.make_queue(allowed, fresh)
    jobs.enqueue_due(namespace_with_agent, queue, allowed)
    # When two workers of this process run (burst)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            LiveSyncSimpleWorker([queue], connection=fresh, serializer=JSONSerializer).work(burst=True)
    # Then the run happened and one warning named the policy
    assert namespace_with_agent.track(0).pointer("a") == 1
    [warning] = warnings_about_eviction(caplog)
    assert_refusal(warning)


def test_worker_runs_on_noeviction_without_a_warning(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis with noeviction and a queued run
    jobs.configure(server_settings, redis=client, rq_redis=client)
    queue = jobs.make_queue(server_settings, client)
    jobs.enqueue_due(namespace_with_agent, queue, server_settings)
    # When a worker runs
    with caplog.at_level(logging.WARNING):
        LiveSyncSimpleWorker([queue], connection=client, serializer=JSONSerializer).work(burst=True)
    # Then the run happened without a warning
    assert namespace_with_agent.track(0).pointer("a") == 1
    assert warnings_about_eviction(caplog) == []


# --- scheduler and tick --------------------------------------------------------------------


def test_scheduler_start_refuses_an_evicting_redis(client: redis.Redis, server_settings: Settings) -> None:
    # Given a Redis with volatile-lru (the run locks have TTLs)
    set_policy(client, "volatile-lru")
    # When the scheduler is built, it refuses
    with pytest.raises(EvictingRedis) as info:
        build_scheduler(server_settings, client)
    assert_refusal(str(info.value), "volatile-lru")


def test_scheduler_starts_when_eviction_is_allowed(
    client: redis.Redis, server_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis with volatile-lru and eviction allowed
    set_policy(client, "volatile-lru")
    with caplog.at_level(logging.WARNING):
        scheduler = build_scheduler(server_settings.model_copy(update={"allow_eviction": True}), client)
    # Then the scheduler has its tick and a warning was logged
    assert [job.name for job in scheduler.get_jobs()] == [f"livesync-tick-{server_settings.namespace}"]
    assert len(warnings_about_eviction(caplog)) == 1


def test_tick_command_refuses_an_evicting_redis(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager
) -> None:
    # Given a namespace on a Redis with allkeys-lfu
    set_policy(client, "allkeys-lfu")
    # When `livesync tick` runs
    result = cli(server_settings, "tick")
    # Then it refuses in one line and enqueued nothing
    assert result.exit_code == 2, result.output
    assert_refusal(result.output, "allkeys-lfu")
    assert client.llen(f"rq:queue:{server_settings.queue}") == 0


def test_tick_job_refuses_an_evicting_redis(
    client: redis.Redis, fresh: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager
) -> None:
    # Given a namespace on a Redis with allkeys-lru, ticked by `rq cron` or a plain RQ worker
    set_policy(client, "allkeys-lru")
    jobs.configure(server_settings, redis=fresh, rq_redis=fresh)
    # When the tick job runs, it refuses before pruning or enqueueing anything
    with pytest.raises(EvictingRedis) as info:
        jobs.tick(server_settings.namespace)
    assert_refusal(str(info.value))
    assert client.llen(f"rq:queue:{server_settings.queue}") == 0


def test_tick_command_runs_and_warns_when_eviction_is_allowed(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a namespace on a Redis with allkeys-lfu and LIVESYNC_ALLOW_EVICTION=1
    set_policy(client, "allkeys-lfu")
    # When `livesync tick` runs
    with caplog.at_level(logging.WARNING):
        result = cli(server_settings, "tick", allow=True)
    # Then it enqueued the due run and warned
    assert result.exit_code == 0, result.output
    assert client.llen(f"rq:queue:{server_settings.queue}") == 1
    assert len(warnings_about_eviction(caplog)) == 1


# --- publishers --------------------------------------------------------------------------


def test_publisher_from_url_refuses_an_evicting_redis(server: RedisServer, client: redis.Redis) -> None:
    # Given a Redis with allkeys-lru
    set_policy(client, "allkeys-lru")
    # When a publisher is created, it refuses, naming its own override
    with pytest.raises(EvictingRedis) as info:
        Publisher.from_url(server.url, namespace="ns")
    assert_refusal(str(info.value))
    assert "allow_eviction=True" in str(info.value)
    # And nothing was written
    assert client.dbsize() == 0


def test_publisher_publishes_and_warns_once_when_eviction_is_allowed(
    server: RedisServer, client: redis.Redis, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis with allkeys-lru
    set_policy(client, "allkeys-lru")
    # When a publisher that allows eviction emits twice
    with caplog.at_level(logging.WARNING):
        publisher = Publisher.from_url(server.url, namespace=namespace, allow_eviction=True)
        seqs = [publisher.emit("event", 1, "created"), publisher.emit("event", 2, "created")]
    # Then both were published and one warning was logged
    assert seqs == [1, 2]
    assert len(warnings_about_eviction(caplog)) == 1
    publisher.close()


def test_publisher_checks_once_at_creation_not_per_emit(server: RedisServer, client: redis.Redis) -> None:
    # Given a publisher of a noeviction Redis
    publisher = Publisher.from_url(server.url, namespace="ns")
    before = int(client.info("commandstats")["cmdstat_info"]["calls"])
    # When it emits a hundred times
    for index in range(100):
        publisher.emit("event", index, "created")
    # Then no emit read the policy again (the one INFO is this test's own)
    assert int(client.info("commandstats")["cmdstat_info"]["calls"]) - before == 1
    publisher.close()


def test_publisher_of_an_unreachable_redis_is_still_created() -> None:
    # Given a URL nobody answers: creation succeeds, the check waits for the first use
    publisher = Publisher.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="ns")
    assert publisher.namespace == "ns"


def test_publisher_created_while_redis_was_down_checks_at_first_use(tmp_path: Path) -> None:
    # Given a publisher created while its Redis was down
    late = RedisServer(tmp_path, free_port(), extra=["--appendonly", "no", "--maxmemory", "64mb"])
    publisher = Publisher.from_url(late.url, namespace="ns")
    # When Redis comes up with allkeys-lru and the publisher emits
    late.start()
    try:
        with closing(late.client()) as admin:
            admin.config_set("maxmemory-policy", "allkeys-lru")
            with pytest.raises(EvictingRedis):
                publisher.emit("event", 1, "created")
            # Then nothing was written
            assert admin.dbsize() == 0
    finally:
        publisher.close()
        late.stop()


# --- status and metrics ------------------------------------------------------------------------


def test_status_shows_the_evicting_policy_and_exits_non_zero(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager
) -> None:
    # Given a namespace on a Redis with allkeys-lru
    set_policy(client, "allkeys-lru")
    # When `livesync status --json` runs
    result = cli(server_settings, "status", "--json")
    # Then it still prints the whole status, with the policy shown
    data = json.loads(result.stdout)
    assert data["redis"]["maxmemory_policy"] == "allkeys-lru"
    assert data["redis"]["evicting"] is True
    assert [agent["id"] for agent in data["agents"]] == ["a"]
    # And the refusal follows on stderr, exit 2
    assert result.exit_code == 2
    assert_refusal(result.stderr)


def test_status_table_shows_the_policy_prominently(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager
) -> None:
    # Given a namespace on a Redis with allkeys-lru
    set_policy(client, "allkeys-lru")
    # When `livesync status` runs as a table
    result = cli(server_settings, "status")
    # Then the first line says the Redis may evict, and the agents are still listed
    assert result.stdout.splitlines()[0].startswith("WARNING: Redis")
    assert_refusal(result.stdout.splitlines()[0])
    assert any(row.startswith("a ") for row in result.stdout.splitlines())
    assert result.exit_code == 2


def test_status_with_eviction_allowed_shows_it_and_succeeds(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager
) -> None:
    # Given a namespace on a Redis with allkeys-lru and eviction allowed
    set_policy(client, "allkeys-lru")
    # When `livesync status --json` runs
    result = cli(server_settings, "status", "--json", allow=True)
    # Then it succeeds and shows the policy and that eviction is allowed
    assert result.exit_code == 0, result.output
    redis_data = json.loads(result.stdout)["redis"]
    assert (redis_data["maxmemory_policy"], redis_data["evicting"], redis_data["eviction_allowed"]) == (
        "allkeys-lru",
        True,
        True,
    )


def test_status_on_noeviction_shows_the_policy(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager
) -> None:
    result = cli(server_settings, "status", "--json")
    assert result.exit_code == 0, result.output
    redis_data = json.loads(result.stdout)["redis"]
    assert (redis_data["maxmemory_policy"], redis_data["evicting"]) == ("noeviction", False)


def scrape(settings: Settings, client: redis.Redis) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(make_registry(settings, redis=client, rq_redis=client)).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def evicting_samples(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[str, float]:
    gauge = "livesync_redis_evicting"
    return {dict(labels)["policy"]: value for (name, labels), value in samples.items() if name == gauge}


def test_metrics_show_the_policy_and_follow_a_change(
    client: redis.Redis, server_settings: Settings, namespace_with_agent: SyncManager
) -> None:
    # Given a namespace on a noeviction Redis: the gauge is 0
    assert evicting_samples(scrape(server_settings, client)) == {"noeviction": 0.0}
    # When the policy becomes allkeys-lru, the next scrape shows 1 with the policy, livesync_up stays 1
    set_policy(client, "allkeys-lru")
    samples = scrape(server_settings, client)
    assert evicting_samples(samples) == {"allkeys-lru": 1.0}
    assert samples[("livesync_up", frozenset({("namespace", server_settings.namespace)}))] == 1.0


def test_read_policy_refresh_sees_a_changed_policy(client: redis.Redis) -> None:
    assert read_policy(client).policy == "noeviction"
    set_policy(client, "allkeys-lru")
    assert read_policy(client).policy == "noeviction"  # cached
    assert read_policy(client, refresh=True).policy == "allkeys-lru"


def test_publish_command_refuses_an_evicting_redis_naming_the_setting(
    client: redis.Redis, server_settings: Settings
) -> None:
    # Given a Redis with allkeys-lru
    set_policy(client, "allkeys-lru")
    # When `livesync publish` runs, it refuses naming LIVESYNC_ALLOW_EVICTION and writes nothing
    result = cli(server_settings, "publish", "event", "1", "created")
    assert result.exit_code == 2, result.output
    assert_refusal(result.output)
    assert "LIVESYNC_ALLOW_EVICTION=1" in result.output
    assert client.dbsize() == 0
    # And with LIVESYNC_ALLOW_EVICTION=1 it publishes
    assert cli(server_settings, "publish", "event", "1", "created", allow=True).exit_code == 0
