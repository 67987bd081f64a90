"""Prometheus metrics of a namespace, computed from :func:`livesync.status.namespace_status` on every scrape.

``livesync metrics`` serves them at ``http://HOST:PORT/metrics``. There is no
background thread and no cache: each scrape reads Redis once through the same code
as ``livesync status``, so both always agree. When Redis does not answer (or the
namespace does not exist) a scrape still succeeds and reports ``livesync_up 0``.

Every series carries the label ``namespace``; partition series add ``partition``,
agent series add ``agent``, queue series add ``queue``. The outbox series come from the
last relay's report (:mod:`livesync.outbox.lag`) and are absent while no relay reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIServer

import redis as redis_lib
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from livesync import defaults, jobs
from livesync.config import Settings
from livesync.connection import connect_queue, connect_track
from livesync.errors import LiveSyncError, describe
from livesync.manager import STATES, SyncManager
from livesync.redis_policy import SAFE_POLICY
from livesync.signals import stop_on_signals, wait_until
from livesync.status import namespace_status
from livesync.urls import mask_url

log = logging.getLogger(__name__)


#: Queue figures of :func:`livesync.status.queue_status` exported as ``livesync_queue_jobs{status=...}``.
QUEUE_STATUSES = ("queued", "started", "scheduled", "failed")


class LiveSyncCollector:
    """A prometheus-client collector: one namespace's status, read from Redis at each scrape.

    ``redis`` / ``rq_redis`` are ready clients (tests); by default they are opened
    lazily from ``settings.redis_url`` and ``settings.queue_url``.
    """

    def __init__(self, settings: Settings, *, redis: Any = None, rq_redis: Any = None) -> None:
        self.settings = settings
        self._redis = redis
        self._rq_redis = rq_redis
        self._last_problem: str | None = None
        self._lock = threading.Lock()  # the HTTP server answers scrapes in threads

    # -- prometheus-client protocol -----------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        """The metric names, without touching Redis (used when the collector is registered)."""
        return list(_Families(self.settings.namespace).all())

    def collect(self) -> Iterable[Metric]:
        """Read the namespace's status and return every family; ``livesync_up 0`` on failure."""
        with self._lock:
            return self._collect()

    # -- internals ----------------------------------------------------------------------

    def _collect(self) -> list[Metric]:
        clock = time.perf_counter()
        namespace = self.settings.namespace
        families = _Families(namespace)
        try:
            data = self._status()
        except (redis_lib.RedisError, LiveSyncError, OSError) as exc:
            self._problem(f"cannot read namespace {namespace!r} at {self._where()}: {describe(exc)}")
            data = None
        except Exception as exc:  # a scrape must never take the server down
            self._problem(f"scrape of namespace {namespace!r} failed: {describe(exc)}", exc_info=True)
            data = None
        else:
            if data is None:
                self._problem(f"namespace {namespace!r} does not exist at {self._where()}")
            elif self._last_problem is not None:
                log.warning("metrics of namespace %r are back", namespace)
                self._last_problem = None
        if data is not None:
            families.fill(data)
        families.up.add_metric([namespace], 1 if data is not None else 0)
        families.duration.add_metric([namespace], time.perf_counter() - clock)
        return list(families.all() if data is not None else (families.up, families.duration))

    def _status(self) -> dict[str, Any] | None:
        if self._redis is None:
            self._redis = connect_track(self.settings)
        if self._rq_redis is None:
            self._rq_redis = connect_queue(self.settings) if self.settings.rq_url else self._redis
        # A fresh manager per scrape: the namespace may have been destroyed and re-created meanwhile.
        manager = SyncManager(self._redis, self.settings.namespace)
        if not manager.exists():  # namespace_status would create it: a scrape must not write
            return None
        return namespace_status(
            manager, jobs.make_queue(self.settings, self._rq_redis), allow_eviction=self.settings.allow_eviction
        )

    def _where(self) -> str:
        urls = {mask_url(self.settings.redis_url), mask_url(self.settings.queue_url)}
        return " and ".join(sorted(urls))

    def _problem(self, message: str, *, exc_info: bool = False) -> None:
        """Log a failed scrape: a warning when the problem is new, debug while it lasts."""
        level = logging.DEBUG if message == self._last_problem and not exc_info else logging.WARNING
        log.log(level, "%s; reporting livesync_up 0", message, exc_info=exc_info)
        self._last_problem = message


class _Families:
    """The metric families of one scrape."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        ns, part, agent = ["namespace"], ["namespace", "partition"], ["namespace", "agent"]
        self.up = GaugeMetricFamily(
            "livesync_up", "1 when the last scrape read the namespace from Redis, else 0 (see the log)", labels=ns
        )
        self.duration = GaugeMetricFamily("livesync_scrape_duration_seconds", "Seconds the last scrape took", labels=ns)
        self.head = GaugeMetricFamily("livesync_head", "Last seq handed out in the partition", labels=part)
        self.stored = GaugeMetricFamily("livesync_stored_changes", "Changes stored on the partition", labels=part)
        self.memory = GaugeMetricFamily(
            "livesync_track_memory_bytes", "Redis memory of the partition's track", labels=part
        )
        self.pointer = GaugeMetricFamily(
            "livesync_agent_pointer", "Last seq the agent acknowledged in the partition", labels=[*agent, "partition"]
        )
        self.lag_changes = GaugeMetricFamily(
            "livesync_agent_lag_changes", "Changes the agent has not acknowledged yet", labels=agent
        )
        self.lag_seconds = GaugeMetricFamily(
            "livesync_agent_lag_seconds",
            "Age of the oldest change the agent has not acknowledged (0: none)",
            labels=agent,
        )
        self.partition_lag_changes = GaugeMetricFamily(
            "livesync_agent_partition_lag_changes",
            "Changes of the partition the agent has not acknowledged yet",
            labels=[*agent, "partition"],
        )
        self.partition_lag_seconds = GaugeMetricFamily(
            "livesync_agent_partition_lag_seconds",
            "Age of the oldest change of the partition the agent has not acknowledged (0: none)",
            labels=[*agent, "partition"],
        )
        self.state = GaugeMetricFamily(
            "livesync_agent_state", "1 for the agent's current state, 0 for the others", labels=[*agent, "state"]
        )
        self.dead_letters = GaugeMetricFamily(
            "livesync_agent_dead_letters", "Records on the agent's dead-letter list", labels=agent
        )
        self.last_run = GaugeMetricFamily(
            "livesync_agent_last_run_timestamp_seconds", "Unix time the agent's last run started", labels=agent
        )
        self.last_success = GaugeMetricFamily(
            "livesync_agent_last_success_timestamp_seconds", "Unix time the agent's last run succeeded", labels=agent
        )
        self.runs = CounterMetricFamily("livesync_agent_runs", "Runs of the agent", labels=agent)
        self.failures = CounterMetricFamily("livesync_agent_failures", "Failed runs of the agent", labels=agent)
        self.records = CounterMetricFamily("livesync_agent_records", "Records the agent uploaded", labels=agent)
        self.changes = CounterMetricFamily("livesync_agent_changes", "Changes the agent read", labels=agent)
        self.queue_jobs = GaugeMetricFamily(
            "livesync_queue_jobs",
            "Jobs of the RQ queue: queued, started (running), scheduled (retry backoff), failed",
            labels=["namespace", "queue", "status"],
        )
        self.workers = GaugeMetricFamily(
            "livesync_workers", "RQ workers listening on the queue", labels=["namespace", "queue"]
        )
        self.outbox_rows = GaugeMetricFamily(
            "livesync_outbox_rows", "Outbox rows waiting for the relay, at the last relay's report", labels=ns
        )
        self.outbox_age = GaugeMetricFamily(
            "livesync_outbox_oldest_age_seconds", "Age of the oldest outbox row waiting (0: none)", labels=ns
        )
        self.outbox_report_age = GaugeMetricFamily(
            "livesync_outbox_report_age_seconds", "Seconds since a relay last reported the outbox's lag", labels=ns
        )
        self.evicting = GaugeMetricFamily(
            "livesync_redis_evicting",
            "1 when the Redis node's maxmemory-policy may evict livesync's keys (not noeviction), else 0",
            labels=["namespace", "node", "policy"],
        )

    def all(self) -> Iterator[Metric]:
        yield from (self.up, self.duration, self.head, self.stored, self.memory, self.pointer)
        yield from (self.lag_changes, self.lag_seconds, self.partition_lag_changes, self.partition_lag_seconds)
        yield from (self.state, self.dead_letters, self.last_run)
        yield from (self.last_success, self.runs, self.failures, self.records, self.changes)
        yield from (self.queue_jobs, self.workers, self.evicting)
        yield from (self.outbox_rows, self.outbox_age, self.outbox_report_age)

    def fill(self, data: dict[str, Any]) -> None:
        """Add the samples of one :func:`namespace_status` result."""
        ns = self.namespace
        partitions = [str(p["partition"]) for p in data["partitions"]]
        for item, partition in zip(data["partitions"], partitions, strict=True):
            self.head.add_metric([ns, partition], item["head"])
            self.stored.add_metric([ns, partition], item["stored"])
            if item["memory_bytes"] is not None:
                self.memory.add_metric([ns, partition], item["memory_bytes"])
        for agent in data["agents"]:
            labels = [ns, agent["id"]]
            for partition, pointer in zip(partitions, agent["pointers"], strict=True):
                if pointer is not None:  # None: a corrupt pointer, shown by the state "corrupt"
                    self.pointer.add_metric([*labels, partition], pointer)
            self.lag_changes.add_metric(labels, agent["lag_changes"])
            self.lag_seconds.add_metric(labels, agent["lag_seconds"] or 0.0)
            for item in agent["partitions"]:
                self.partition_lag_changes.add_metric([*labels, str(item["partition"])], item["lag_changes"])
                self.partition_lag_seconds.add_metric([*labels, str(item["partition"])], item["lag_seconds"] or 0.0)
            for state in STATES:
                self.state.add_metric([*labels, state], 1 if agent["state"] == state else 0)
            self.dead_letters.add_metric(labels, agent["dead_letters"])
            if agent["last_run_at"] is not None:
                self.last_run.add_metric(labels, agent["last_run_at"])
            if agent["last_success_at"] is not None:
                self.last_success.add_metric(labels, agent["last_success_at"])
            self.runs.add_metric(labels, agent["runs"])
            self.failures.add_metric(labels, agent["failures"])
            self.records.add_metric(labels, agent["records"])
            self.changes.add_metric(labels, agent["changes"])
        for node in data["redis"]["nodes"]:
            policy = node["maxmemory_policy"]
            evicting = policy is not None and policy != SAFE_POLICY
            self.evicting.add_metric([ns, node["node"], policy or "unknown"], 1 if evicting else 0)
        outbox = data["outbox"]
        if outbox is not None:
            self.outbox_rows.add_metric([ns], outbox["rows"])
            self.outbox_age.add_metric([ns], outbox["oldest_age_seconds"])
            self.outbox_report_age.add_metric([ns], outbox["report_age_seconds"])
        queue = data["queue"]
        if queue is not None:
            for status in QUEUE_STATUSES:
                self.queue_jobs.add_metric([ns, queue["name"], status], queue[status])
            self.workers.add_metric([ns, queue["name"]], queue["workers"])


def make_registry(settings: Settings, *, redis: Any = None, rq_redis: Any = None) -> CollectorRegistry:
    """A registry holding only livesync's collector (no process or platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LiveSyncCollector(settings, redis=redis, rq_redis=rq_redis))
    return registry


@dataclass
class MetricsServer:
    """A running metrics HTTP server (a daemon thread); :meth:`close` stops it."""

    server: WSGIServer
    thread: threading.Thread
    host: str

    @property
    def port(self) -> int:
        """The port it listens on (the one chosen when started with port 0)."""
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        """The URL Prometheus scrapes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start(
    settings: Settings,
    host: str = defaults.METRICS_HOST,
    port: int = defaults.METRICS_PORT,
    *,
    registry: CollectorRegistry | None = None,
) -> MetricsServer:
    """Start serving ``/metrics`` in a daemon thread and return at once (port 0: any free port)."""
    registry = registry if registry is not None else make_registry(settings)
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, host)


def serve(
    settings: Settings,
    host: str = defaults.METRICS_HOST,
    port: int = defaults.METRICS_PORT,
    *,
    stop: threading.Event | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve ``/metrics`` until SIGINT or SIGTERM (or until ``stop`` is set), then shut down.

    ``announce`` receives the start-up line (the URL and the masked Redis URL); without
    it the line is logged.
    """
    with stop_on_signals(stop) as stopped:
        server = start(settings, host, port)
        try:
            where = f"namespace {settings.namespace} ({mask_url(settings.redis_url)})"
            (announce or log.info)(f"serving metrics of {where} at {server.url}")
            wait_until(stopped)
        finally:
            server.close()
