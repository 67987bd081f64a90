"""``livesync metrics``: the Prometheus collector, its HTTP server and the CLI command.

Scrapes run against the real test Redis in the test's own namespace and RQ queue; the
exposition text is parsed back with prometheus-client's own parser, so every value is
checked by metric name and labels rather than by string matching.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
import httpx
import pytest
import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rq import Worker
from rq.serializers import JSONSerializer

from livesync import Publisher, jobs
from livesync.cli import main
from livesync.cli.serve import COMMANDS, dashboard, metrics
from livesync.config import Settings
from livesync.keys import namespace_keys
from livesync.manager import Agent, SyncManager
from livesync.metrics import make_registry, serve
from livesync.runner import run_agent

UNREACHABLE_URL = "redis://:hunter2@127.0.0.1:1/0"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics_settings(namespace: str, redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, namespace=namespace, queue=f"q-{namespace}")


def scrape(settings: Settings, real_redis: redis.Redis | None = None) -> Samples:
    """One scrape through a fresh registry, parsed: (name, labels) -> value."""
    text = generate_latest(make_registry(settings, redis=real_redis)).decode()
    return parse(text)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _labels in samples}


class Served:
    """A ``serve`` function running in a thread: the lines it announced and a way to wait for them."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread()
        self._announced = threading.Event()

    def announce(self, line: str) -> None:
        self.lines.append(line)
        self._announced.set()

    def first_line(self) -> str:
        assert self._announced.wait(10), "the server announced nothing within 10 s"
        return self.lines[0]


@contextmanager
def serving(serve_function: Callable[..., None], settings: Settings, **kwargs: Any) -> Iterator[Served]:
    """Run ``serve_function(settings, "127.0.0.1", 0, ...)`` in a thread; stop it and wait for it on exit."""
    served = Served()
    served.thread = threading.Thread(
        target=serve_function,
        args=(settings, "127.0.0.1", 0),
        kwargs={"stop": served.stop, "announce": served.announce, **kwargs},
    )
    served.thread.start()
    try:
        yield served
    finally:
        served.stop.set()
        served.thread.join(timeout=10)
    assert not served.thread.is_alive(), "the server did not stop"


def start_cli(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m livesync ARGS`` and return the process with the first line it printed."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("LIVESYNC_", "RQ_DASHBOARD_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "livesync", *args],
        env={**base, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    if not ready:
        proc.kill()
        pytest.fail(f"livesync {' '.join(args)} printed nothing within 15 s")
    line = proc.stdout.readline()
    if not line:
        _out, err = proc.communicate(timeout=5)
        pytest.fail(f"livesync {' '.join(args)} exited with {proc.returncode}: {err}")
    return proc, line.strip()


def stop_cli(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM the server; its exit code and standard error."""
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def url_in(line: str) -> str:
    return next(word for word in line.split() if word.startswith("http://"))


# The collector


def test_scrape_reports_track_agents_and_counters_of_the_namespace(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher, metrics_settings: Settings, namespace: str
) -> None:
    # Given three changes, two agents from the tail, one paused and one that ran once, then two more changes
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    manager.add_agent(Agent(id="archive", backend="null"), start="tail")
    manager.set_state("archive", "paused")
    run_agent(manager, "search", 0)
    publisher.emit_many([("event", 7, ["title_changed"]), ("event", 8, ["created"])])

    # When Prometheus scrapes
    samples = scrape(metrics_settings, real_redis)

    # Then the track, each agent and the queue are reported with the namespace label
    ns = {"namespace": namespace}
    search, archive = {**ns, "agent": "search"}, {**ns, "agent": "archive"}
    assert value(samples, "livesync_up", **ns) == 1
    assert value(samples, "livesync_head", **ns, partition="0") == 5
    assert value(samples, "livesync_stored_changes", **ns, partition="0") == 5
    assert value(samples, "livesync_track_memory_bytes", **ns, partition="0") > 0
    assert value(samples, "livesync_agent_pointer", **search, partition="0") == 3
    assert value(samples, "livesync_agent_pointer", **archive, partition="0") == 0
    assert value(samples, "livesync_agent_lag_changes", **search) == 2
    assert value(samples, "livesync_agent_lag_changes", **archive) == 5
    assert 0 <= value(samples, "livesync_agent_lag_seconds", **search) < 60
    assert value(samples, "livesync_agent_state", **archive, state="paused") == 1
    assert value(samples, "livesync_agent_state", **archive, state="active") == 0
    assert value(samples, "livesync_agent_state", **search, state="active") == 1
    assert (
        sum(value(samples, "livesync_agent_state", **search, state=s) for s in ("paused", "needs_export", "gap")) == 0
    )
    assert value(samples, "livesync_agent_dead_letters", **search) == 0
    assert value(samples, "livesync_agent_runs_total", **search) == 1
    assert value(samples, "livesync_agent_runs_total", **archive) == 0
    assert value(samples, "livesync_agent_failures_total", **search) == 0
    assert value(samples, "livesync_agent_records_total", **search) == 3
    assert value(samples, "livesync_agent_changes_total", **search) == 3
    assert value(samples, "livesync_agent_last_success_timestamp_seconds", **search) == pytest.approx(
        time.time(), abs=60
    )
    assert ("livesync_agent_last_run_timestamp_seconds", frozenset(archive.items())) not in samples  # never ran
    queue = {**ns, "queue": f"q-{namespace}"}
    for status in ("queued", "started", "scheduled", "failed"):
        assert value(samples, "livesync_queue_jobs", **queue, status=status) == 0
    assert value(samples, "livesync_workers", **queue) == 0


def test_counters_are_typed_as_counters_and_the_rest_as_gauges(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher, metrics_settings: Settings
) -> None:
    # Given a namespace with one agent
    publisher.emit("event", 1, "created")
    manager.add_agent(Agent(id="search", backend="null"), start="tail")

    # When scraped
    families = {
        f.name: f.type
        for f in text_string_to_metric_families(
            generate_latest(make_registry(metrics_settings, redis=real_redis)).decode()
        )
    }

    # Then the run counters are counters (exposed with _total) and everything else a gauge
    counters = {"livesync_agent_runs", "livesync_agent_failures", "livesync_agent_records", "livesync_agent_changes"}
    assert {name for name, kind in families.items() if kind == "counter"} == counters
    assert {"livesync_head", "livesync_agent_lag_seconds", "livesync_agent_state", "livesync_workers"} <= {
        name for name, kind in families.items() if kind == "gauge"
    }


def test_each_partition_gets_its_own_series(
    real_redis: redis.Redis, namespace: str, metrics_settings: Settings, manager: SyncManager
) -> None:
    # Given a namespace of two partitions with changes on both and an agent that read all of them
    two = SyncManager(real_redis, namespace, partitions=2)
    two.add_agent(Agent(id="search", backend="null"), start="head")
    publisher = Publisher(real_redis, namespace)
    publisher.emit_many([("event", i, ["created"]) for i in range(20)])
    heads = [track.head() for track in two.tracks()]
    assert all(heads) and sum(heads) == 20
    for partition in (0, 1):
        run_agent(two, "search", partition)

    # When scraped
    samples = scrape(metrics_settings, real_redis)

    # Then head and pointer are reported per partition
    for partition, head in enumerate(heads):
        labels = {"namespace": namespace, "partition": str(partition)}
        assert value(samples, "livesync_head", **labels) == head
        assert value(samples, "livesync_agent_pointer", **labels, agent="search") == head
    assert value(samples, "livesync_agent_lag_changes", namespace=namespace, agent="search") == 0
    assert value(samples, "livesync_agent_lag_seconds", namespace=namespace, agent="search") == 0


def test_queue_series_count_queued_runs_and_workers(
    real_redis: redis.Redis, manager: SyncManager, publisher: Publisher, metrics_settings: Settings, namespace: str
) -> None:
    # Given an agent with pending changes, its run enqueued by a tick, and a registered worker
    publisher.emit("event", 1, "created")
    manager.add_agent(Agent(id="search", backend="null", update_time=0), start="tail")
    queue = jobs.make_queue(metrics_settings, real_redis)
    assert len(jobs.enqueue_due(manager, queue, metrics_settings)) == 1
    worker = Worker([queue], connection=real_redis, serializer=JSONSerializer, name=f"w-{namespace}")
    worker.register_birth()  # type: ignore[no-untyped-call]
    try:
        # When scraped
        samples = scrape(metrics_settings, real_redis)
    finally:
        worker.register_death()  # type: ignore[no-untyped-call]

    # Then the queue reports one queued job and one worker
    labels = {"namespace": namespace, "queue": f"q-{namespace}"}
    assert value(samples, "livesync_queue_jobs", **labels, status="queued") == 1
    assert value(samples, "livesync_queue_jobs", **labels, status="failed") == 0
    assert value(samples, "livesync_workers", **labels) == 1


def test_unreachable_redis_gives_up_0_not_an_error(namespace: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given settings pointing at a Redis that does not answer (with a password in its URL)
    settings = Settings(redis_url=UNREACHABLE_URL, namespace=namespace)
    registry = make_registry(settings)

    # When scraped twice
    with caplog.at_level(logging.DEBUG, logger="livesync.metrics"):
        first = parse(generate_latest(registry).decode())
        second = parse(generate_latest(registry).decode())

    # Then each scrape succeeds with livesync_up 0 and nothing else but its duration
    for samples in (first, second):
        assert value(samples, "livesync_up", namespace=namespace) == 0
        assert names(samples) == {"livesync_up", "livesync_scrape_duration_seconds"}
    # and the reason is logged once as a warning, with the password masked
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "127.0.0.1:1" in warnings[0].getMessage()
    assert "hunter2" not in caplog.text and "***" in caplog.text


def test_missing_namespace_gives_up_0_and_is_not_created(
    real_redis: redis.Redis, metrics_settings: Settings, namespace: str
) -> None:
    # Given a namespace nobody created
    # When scraped
    samples = scrape(metrics_settings, real_redis)

    # Then up is 0 and the scrape wrote nothing (a scrape never creates a namespace)
    assert value(samples, "livesync_up", namespace=namespace) == 0
    assert not real_redis.exists(namespace_keys(namespace).meta)
    assert not list(real_redis.scan_iter(match=f"livesync:{{{namespace}*"))


def test_scrape_recovers_when_the_namespace_appears(
    real_redis: redis.Redis, metrics_settings: Settings, publisher: Publisher, namespace: str
) -> None:
    # Given a registry that already scraped a missing namespace
    registry = make_registry(metrics_settings, redis=real_redis)
    assert value(parse(generate_latest(registry).decode()), "livesync_up", namespace=namespace) == 0

    # When the namespace gets a change and Prometheus scrapes again
    publisher.emit("event", 1, "created")
    samples = parse(generate_latest(registry).decode())

    # Then the same registry reports it
    assert value(samples, "livesync_up", namespace=namespace) == 1
    assert value(samples, "livesync_head", namespace=namespace, partition="0") == 1


# The HTTP server


def test_serve_answers_scrapes_over_http_until_stopped(
    real_redis: redis.Redis, publisher: Publisher, metrics_settings: Settings, namespace: str
) -> None:
    # Given a namespace with a change, served on a free port in a thread
    publisher.emit("event", 1, "created")
    with serving(serve, metrics_settings) as server:
        url = url_in(server.first_line())

        # When Prometheus scrapes over HTTP
        response = httpx.get(url, timeout=10)

        # Then it gets the exposition format with the namespace's figures
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = parse(response.text)
        assert value(samples, "livesync_up", namespace=namespace) == 1
        assert value(samples, "livesync_head", namespace=namespace, partition="0") == 1
        # and only livesync's series: no process or platform collectors
        assert all(name.startswith("livesync_") for name in names(samples))

    # And once stopped, the port is closed
    assert not server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_serve_announces_its_url_with_the_redis_password_masked(namespace: str) -> None:
    # Given settings whose Redis URL holds a password
    settings = Settings(redis_url=UNREACHABLE_URL, namespace=namespace)

    # When the server starts
    with serving(serve, settings) as server:
        line = server.first_line()

        # Then the announced line names the URL and the masked Redis URL
        assert url_in(line).startswith("http://127.0.0.1:") and url_in(line).endswith("/metrics")
        assert "redis://:***@127.0.0.1:1/0" in line and "hunter2" not in line
        # and with Redis down, scrapes still answer 200 with livesync_up 0
        response = httpx.get(url_in(line), timeout=10)
        assert response.status_code == 200
        assert value(parse(response.text), "livesync_up", namespace=namespace) == 0


# The CLI command


def test_metrics_and_dashboard_are_livesync_commands() -> None:
    assert [command.name for command in COMMANDS] == ["metrics", "dashboard"]
    assert [metrics, dashboard] == COMMANDS
    ctx = click.Context(main)
    assert main.get_command(ctx, "metrics") is metrics
    assert main.get_command(ctx, "dashboard") is dashboard


def test_metrics_command_binds_loopback_by_default_and_explains_exposure() -> None:
    # Given the click command
    options = {param.name: param for param in metrics.params}

    # Then it listens on 127.0.0.1:9468 unless told otherwise
    assert options["host"].default == "127.0.0.1"
    assert options["port"].default == 9468
    # and --help says what a non-loopback address means
    help_text = metrics.get_help(click.Context(metrics, info_name="metrics"))
    assert "non-loopback" in help_text and "/metrics" in help_text and "livesync_up 0" in help_text


def test_metrics_command_serves_until_sigterm(
    real_redis: redis.Redis, publisher: Publisher, redis_url: str, namespace: str
) -> None:
    # Given a namespace with two changes
    publisher.emit_many([("event", 1, ["created"]), ("event", 2, ["created"])])

    # When `livesync metrics --port 0` runs as a real process
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": f"q-{namespace}"}
    proc, line = start_cli(["metrics", "--port", "0"], env)
    try:
        # Then it announces a loopback URL and serves the namespace's metrics there
        url = url_in(line)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        samples = parse(httpx.get(url, timeout=10).text)
        assert value(samples, "livesync_head", namespace=namespace, partition="0") == 2
    finally:
        # and SIGTERM stops it cleanly
        code, err = stop_cli(proc)
    assert code == 0, err


def test_metrics_command_rejects_a_port_in_use(redis_url: str, namespace: str) -> None:
    # Given a port some other server holds
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace}
    first, line = start_cli(["metrics", "--port", "0"], env)
    try:
        port = url_in(line).split(":")[2].split("/")[0]

        # When a second server wants it
        second = subprocess.run(
            [sys.executable, "-m", "livesync", "metrics", "--port", port],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        stop_cli(first)

    # Then it fails with exit 1 and a one-line reason
    assert second.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
    assert "Traceback" not in second.stderr
