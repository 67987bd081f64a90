"""``scripts/bench.py --targets relay``: one tiny real run reports its figures and ratio, and leaves nothing behind.

Nothing here asserts on timings: the run is on the machine's PostgreSQL and the test
Redis, and the test checks what it reports and what it cleans up, not how fast.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from sqlalchemy import text
from support.sql_databases import POSTGRES_URL, admin_engine, unreachable

from benchmarks import relay_latency, relay_run, target_sql
from benchmarks import target_relay as figure
from benchmarks.report import Results
from benchmarks.targets import run_targets


def test_the_bench_redis_url_reaches_the_figures_that_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, dict[str, Any]] = {}

    def relay_measure(results: Results, *, quick: bool, repeats: int, url: str | None, redis_url: str | None) -> None:
        calls["relay"] = {"url": url, "redis_url": redis_url}

    def sql_measure(results: Results, *, quick: bool, repeats: int, url: str | None = None) -> None:
        calls["sql"] = {"url": url}  # takes no redis_url: given one, this call would fail

    monkeypatch.setattr(figure, "measure", relay_measure)
    monkeypatch.setattr(target_sql, "measure", sql_measure)
    code = run_targets(["relay", "sql"], quick=True, repeats=1, json_path=None, urls={"relay": "postgresql://db/x"},
                       redis_url="redis://bench:6379/3")  # fmt: skip
    assert code == 0
    assert calls == {"relay": {"url": "postgresql://db/x", "redis_url": "redis://bench:6379/3"}, "sql": {"url": None}}


def test_livesync_bench_hands_its_redis_url_to_the_relay_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from livesync.cli import main

    seen: list[str | None] = []

    def relay_measure(results: Results, *, quick: bool, repeats: int, url: str | None, redis_url: str | None) -> None:
        seen.append(redis_url)

    monkeypatch.setattr(figure, "measure", relay_measure)
    result = CliRunner().invoke(main, ["--redis-url", "redis://bench:6379/5", "bench", "--targets", "relay"])
    assert result.exit_code == 0, result.output
    assert seen == ["redis://bench:6379/5"]


def test_the_figure_takes_postgresql_urls_only() -> None:
    assert relay_run.engine_url("postgresql://u@db:5432/app") == "postgresql+psycopg://u@db:5432/app"
    assert relay_run.engine_url("postgresql+psycopg://u:pw@db/app") == "postgresql+psycopg://u:pw@db/app"
    assert relay_run.driver_url("postgresql+psycopg://u:pw@db/app") == "postgresql://u:pw@db/app"
    with pytest.raises(ValueError, match="needs PostgreSQL"):
        relay_run.engine_url("mysql+pymysql://root@127.0.0.1/test")


@pytest.mark.slow
def test_a_tiny_relay_run_reports_rate_ratio_and_latencies_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    why = unreachable(POSTGRES_URL)
    if why:
        pytest.skip(why)
    monkeypatch.setattr(figure, "ROWS_QUICK", 1_200)  # 3 batches of 500 on each side
    monkeypatch.setattr(figure, "LATENCY_SECONDS_QUICK", 0.25)  # 50 changes at 200/s
    runs: list[relay_run.RelayRun] = []

    class RecordedRun(relay_run.RelayRun):
        def __init__(self, url: str, redis_url: str) -> None:
            super().__init__(url, redis_url)
            runs.append(self)

    monkeypatch.setattr(figure, "RelayRun", RecordedRun)
    results = Results()

    figure.measure(results, quick=True, repeats=2, url=POSTGRES_URL, redis_url=redis_url)

    rate = results.figures["T_relay"]
    assert (rate["rows"], rate["batch_size"]) == (1_200, 500)
    assert len(rate["relay_seconds"]) == len(rate["raw_seconds"]) == len(rate["peer_seconds"]) == 2  # every round
    relay, raw, peer = rate["relay_changes_per_second"], rate["raw_rows_per_second"], rate["peer_changes_per_second"]
    assert relay > 0 and raw > 0 and peer > 0
    assert rate["ratio"] == pytest.approx(relay / raw, rel=1e-3)
    assert rate["ratio_to_peer"] == pytest.approx(relay / peer, rel=1e-3)
    [target] = results.targets
    assert target.limit == 0.7 and target.value == pytest.approx(rate["ratio"], rel=1e-3)
    latencies = results.figures["T_relay_latency"]
    assert [latency["poll_seconds"] for latency in latencies] == list(relay_latency.POLLS)
    for latency in latencies:
        assert latency["changes"] == 50 and latency["rate_asked"] == 200
        assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert len(results.rows) == 2 + len(relay_latency.POLLS)
    assert "x raw SKIP LOCKED + DELETE loop" in results.rows[0][3] and "x peer" in results.rows[1][3]
    # nothing of the run is left: its tables, its namespaces' keys
    [run] = runs
    engine = admin_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            left = connection.execute(
                text("SELECT tablename FROM pg_tables WHERE tablename LIKE :prefix"), {"prefix": f"{run.prefix}%"}
            ).all()
    finally:
        engine.dispose()
    assert left == []
    client = redis.Redis.from_url(redis_url)
    try:
        assert list(client.scan_iter(match=f"*{run.prefix.replace('_', '-')}*")) == []
    finally:
        client.close()
