"""The relay for operators: the CLI, the RQ job, the outbox's lag in status and metrics (SQLite)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from click.testing import Result
from prometheus_client import generate_latest
from rq import Queue
from rq.job import JobStatus
from rq.serializers import JSONSerializer
from sqlalchemy import Engine
from support.outbox import database_url, outbox_ids, track_changes

from livesync import jobs
from livesync.config import Settings
from livesync.metrics import make_registry
from livesync.outbox import emit_many
from livesync.worker import LiveSyncSimpleWorker


@pytest.fixture
def outbox_url(tmp_path: Path) -> str:
    return database_url("sqlite", tmp_path)


def write(engine: Engine, namespace: str, table_name: str, count: int) -> None:
    with engine.begin() as connection:
        emit_many(connection, [("event", i, ["created"]) for i in range(count)], namespace=namespace, table=table_name)


def test_relay_once_relays_and_prints_a_summary(
    cli: Callable[..., Result], outbox_url: str, outbox_engine: Engine, table_name: str, real_redis: redis.Redis,
    namespace: str,
) -> None:  # fmt: skip
    write(outbox_engine, namespace, table_name, 3)
    result = cli("relay", "--db", outbox_url, "--table", table_name, "--once", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"batches": 1, "published": 3, "already": 0}
    assert len(track_changes(real_redis, namespace)) == 3


def test_relay_reads_the_database_from_the_settings(
    cli: Callable[..., Result], outbox_url: str, outbox_engine: Engine, table_name: str, namespace: str
) -> None:
    write(outbox_engine, namespace, table_name, 2)
    result = cli("relay", "--once", extra_env={"LIVESYNC_OUTBOX_URL": outbox_url, "LIVESYNC_OUTBOX_TABLE": table_name})
    assert result.exit_code == 0, result.output
    assert "relayed 2 change(s)" in result.output


def test_relay_without_a_database_is_bad_usage(cli: Callable[..., Result]) -> None:
    result = cli("relay", "--once")
    assert result.exit_code == 2
    assert "no outbox database: pass --db URL or set LIVESYNC_OUTBOX_URL" in result.output


def test_relay_on_an_unreachable_database_fails_with_the_password_masked(cli: Callable[..., Result]) -> None:
    result = cli("relay", "--once", "--db", "postgresql+psycopg://user:s3cret@127.0.0.1:9/none")
    assert result.exit_code == 1
    assert "outbox database postgresql+psycopg://user:***@127.0.0.1:9/none" in result.output
    assert "s3cret" not in result.output


def test_status_shows_the_outbox_lag_the_relay_reported(
    cli: Callable[..., Result], outbox_url: str, outbox_engine: Engine, table_name: str, namespace: str
) -> None:
    write(outbox_engine, namespace, table_name, 4)
    assert cli("relay", "--db", outbox_url, "--table", table_name, "--once", "--batch", "2").exit_code == 0
    write(outbox_engine, namespace, table_name, 1)  # not relayed: the report said 0 rows
    data = json.loads(cli("status", "--json").output)
    assert data["outbox"]["rows"] == 0
    assert data["outbox"]["oldest_age_seconds"] == 0.0
    text = cli("status").output
    assert "outbox: 0 row(s) waiting, oldest 0.0s; reported by relay " in text


def test_status_without_a_relay_shows_no_outbox(cli: Callable[..., Result], real_redis: redis.Redis) -> None:
    assert cli("publish", "event", "1", "created").exit_code == 0
    data = json.loads(cli("status", "--json").output)
    assert data["outbox"] is None
    assert "outbox:" not in cli("status").output


def test_metrics_export_the_outbox_lag(
    settings: Settings, outbox_url: str, outbox_engine: Engine, table_name: str, real_redis: redis.Redis,
    namespace: str,
) -> None:  # fmt: skip
    from livesync.outbox.relay import open_relay

    write(outbox_engine, namespace, table_name, 3)
    relay = open_relay(settings, real_redis, url=outbox_url, table=table_name)
    assert relay.publisher.meta  # the namespace exists (a scrape reads existing namespaces only)
    relay.report()
    text = generate_latest(make_registry(settings, redis=real_redis)).decode()
    assert f'livesync_outbox_rows{{namespace="{namespace}"}} 3.0' in text
    assert f'livesync_outbox_oldest_age_seconds{{namespace="{namespace}"}}' in text
    assert f'livesync_outbox_report_age_seconds{{namespace="{namespace}"}}' in text


def test_the_relay_job_drains_the_outbox_of_the_workers_settings(
    configure_jobs: Callable[..., Settings], outbox_url: str, outbox_engine: Engine, table_name: str,
    real_redis: redis.Redis, namespace: str,
) -> None:  # fmt: skip
    settings = configure_jobs(namespace, outbox_url=outbox_url, outbox_table=table_name)
    write(outbox_engine, namespace, table_name, 5)
    queue: Queue = jobs.make_queue(settings, connection=real_redis)
    job = queue.enqueue(jobs.RELAY, args=(namespace,))
    worker = LiveSyncSimpleWorker([queue], connection=real_redis, serializer=JSONSerializer, name=f"w-{namespace}")
    worker.work(burst=True)
    assert job.get_status() == JobStatus.FINISHED, job.latest_result()
    assert job.return_value() == {"namespace": namespace, "batches": 1, "published": 5, "already": 0}
    assert outbox_ids(outbox_engine, table_name) == []
    assert len(track_changes(real_redis, namespace)) == 5


def test_the_outbox_url_is_never_printed_with_its_password() -> None:
    settings = Settings(outbox_url="postgresql+psycopg://app:s3cret@db/app")
    assert settings.masked()["outbox_url"] == "postgresql+psycopg://app:***@db/app"
    assert "s3cret" not in repr(settings)
