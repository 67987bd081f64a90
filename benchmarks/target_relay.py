"""``--targets relay``: the outbox relay on PostgreSQL, its rate against a raw claim-and-delete loop, its latency.

Rate (figure ``T_relay``). Both sides drain a table of their own holding the same
``rows`` outbox rows (the workload of ``livesync demo``: ``rows`` changes over
``rows / 5`` objects, written with :func:`livesync.outbox.emit_many` and ``ANALYZE``-d
before the clock starts), in batches of :data:`BATCH` rows, one transaction per batch:

- livesync: :meth:`livesync.outbox.relay.Relay.drain` into a fresh namespace of the
  bench's Redis: claim the first rows by id ``FOR UPDATE SKIP LOCKED``, validate them,
  the per-object order check, one ``relay.lua`` call per partition (the changes onto
  the track *and* a mark per row), ``DELETE`` of the rows, commit, then ``ZREM`` of the
  marks; the lag report (a ``count(*)``) too, as the real relay does;
- raw: psycopg driven directly, the floor any relay of this table pays: ``SELECT`` of
  the same columns ``WHERE namespace = %s ORDER BY id LIMIT batch FOR UPDATE SKIP
  LOCKED``, ``DELETE ... WHERE id = ANY(%s)`` of the ids read, ``COMMIT``, until a
  ``SELECT`` finds nothing. It publishes nothing: the ratio is the part of the
  database's own rate that is left once livesync's work (validation, order check,
  the exactly-once publish, the marks) is added.

The two alternate (a round each, the order swapped every round), ``repeats`` times; the
fastest run of each side is kept. Every run gets a table (``bench_<id>_relay_...``) and
namespace of its own; tables are dropped and keys deleted at the end, also on error.

Latency (figure ``T_relay_latency``). A real ``livesync relay`` process (``python -m
livesync relay``, ``LIVESYNC_RELAY_POLL`` = each of :data:`POLLS`) relays a fresh
table while a writer thread commits one outbox row per transaction at
:data:`LATENCY_RATE` rows/s (an absolute schedule; the rate reached is reported) and
this process polls the track's head every :data:`WATCH_PAUSE` s. Latency = when the
change was first read on the track - when its ``COMMIT`` returned, both on this
process's ``perf_counter``; p50 / p99 / max over every change (a single run per poll,
resolution about one watch pause plus a head read). With the default poll an idle relay
looks every 0.5 s, and that is what the figure mostly shows.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.baseline import iter_batches
from benchmarks.report import Results, Target, progress
from livesync import defaults
from livesync.connection import connect
from livesync.keys import namespace_keys
from livesync.outbox import create_table, emit, emit_many, relay_engine
from livesync.outbox.publish import RelayPublisher
from livesync.outbox.relay import Relay
from livesync.track import Track
from livesync.urls import mask_url, redact_url
from livesync.workload import iter_changes

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GOAL = 0.7
#: Rows per batch on both sides: the relay's default (``LIVESYNC_RELAY_BATCH``).
BATCH = defaults.RELAY_BATCH
ROWS, ROWS_QUICK = 50_000, 5_000
#: Writer rate (rows/s, one transaction each) and seconds of writing per latency run.
LATENCY_RATE = 200
LATENCY_SECONDS, LATENCY_SECONDS_QUICK = 10.0, 2.0
#: ``LIVESYNC_RELAY_POLL`` of the latency runs: the default, then a short one.
POLLS = (defaults.RELAY_POLL, 0.05)
#: Seconds between two looks at the track's head while no change is new.
WATCH_PAUSE = 0.001
#: Seconds a relay process may take to start, and every change to arrive after the writer's last.
STARTUP_BOUND, ARRIVAL_BOUND = 60.0, 60.0
_COLUMNS = "id, type, object_id, integer_id, flags, created_us"


def engine_url(url: str) -> str:
    """``url`` with SQLAlchemy's psycopg (3) driver when it names plain ``postgresql``; ValueError for others."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"the relay figure needs PostgreSQL, not {mask_url(url)}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def driver_url(url: str) -> str:
    """``url`` as libpq takes it (psycopg's own connect)."""
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class RelayRun:
    """What one benchmark run owns: its prefix, tables, namespaces; :meth:`cleanup` removes them all."""

    def __init__(self, url: str, redis_url: str) -> None:
        import psycopg

        self.url = engine_url(url)
        self.redis_url = redis_url
        self.redis: Any = connect(redis_url, check=True)
        self.admin = psycopg.connect(driver_url(self.url), connect_timeout=5, autocommit=True)
        self.prefix = f"bench_{uuid.uuid4().hex[:8]}"
        self.tables: list[str] = []

    def names(self, label: str) -> tuple[str, str]:
        """A new (table, namespace) of this run."""
        table = f"{self.prefix}_relay_{label}"
        self.tables.append(table)
        return table, table.replace("_", "-")

    def fill(self, table: str, namespace: str, rows: int) -> None:
        """Create ``table`` and write ``rows`` outbox rows of the workload into it (untimed), then ANALYZE it."""
        engine = relay_engine(self.url)
        try:
            create_table(engine, table)
            with engine.begin() as connection:
                for batch in iter_batches(iter_changes(rows, max(1, rows // 5), seed=rows), 5_000):
                    emit_many(connection, batch, namespace=namespace, table=table)
        finally:
            engine.dispose()
        self.admin.execute(f"ANALYZE {table}")

    def cleanup(self) -> None:
        """Drop the run's tables and delete its keys (every key holding the prefix's namespaces)."""
        try:
            for table in self.tables:
                self.admin.execute(f"DROP TABLE IF EXISTS {table}")
        finally:
            self.admin.close()
            doomed = list(self.redis.scan_iter(match=f"*{self.prefix.replace('_', '-')}*", count=1000))
            for start in range(0, len(doomed), 500):
                self.redis.delete(*doomed[start : start + 500])
            self.redis.close()


# -- the rate -------------------------------------------------------------------------------------


def run_livesync(run: RelayRun, table: str, namespace: str, rows: int) -> float:
    """Seconds :meth:`Relay.drain` takes to move ``table``'s rows to a fresh namespace."""
    engine = relay_engine(run.url)
    try:
        publisher = RelayPublisher(run.redis, namespace)
        publisher.meta  # noqa: B018 - the namespace is created before the clock starts
        with engine.connect():  # the pool's first connection, as for the raw side
            pass
        relay = Relay(engine, publisher, table=table, batch=BATCH)
        started = time.perf_counter()
        summary = relay.drain()
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    head = Track(run.redis, namespace_keys(namespace).partition(0), defaults.GRANULARITY).head()
    if summary.published != rows or head != rows:
        raise RuntimeError(f"relay run {table}: published {summary.published}, track head {head}, expected {rows}")
    return seconds


def run_raw(run: RelayRun, table: str, namespace: str, rows: int) -> float:
    """Seconds the raw psycopg claim-and-delete loop takes to empty ``table``."""
    import psycopg

    with psycopg.connect(driver_url(run.url), connect_timeout=5) as connection:
        claim = f"SELECT {_COLUMNS} FROM {table} WHERE namespace = %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
        remove = f"DELETE FROM {table} WHERE id = ANY(%s)"
        deleted = 0
        started = time.perf_counter()
        with connection.cursor() as cursor:
            while True:
                cursor.execute(claim, (namespace, BATCH))
                claimed = cursor.fetchall()
                if not claimed:
                    connection.commit()
                    break
                cursor.execute(remove, ([row[0] for row in claimed],))
                deleted += cursor.rowcount
                connection.commit()
        seconds = time.perf_counter() - started
    if deleted != rows:
        raise RuntimeError(f"raw run {table}: deleted {deleted} rows, expected {rows}")
    return seconds


def measure_rate(run: RelayRun, rows: int, repeats: int) -> dict[str, Any]:
    """Figure T_relay: both sides alternating, ``repeats`` rounds; the JSON section."""
    seconds: dict[str, list[float]] = {"livesync": [], "raw": []}
    for repeat in range(repeats):
        for side in ("livesync", "raw") if repeat % 2 == 0 else ("raw", "livesync"):
            table, namespace = run.names(f"{side}_{repeat}")
            run.fill(table, namespace, rows)
            runner = run_livesync if side == "livesync" else run_raw
            seconds[side].append(runner(run, table, namespace, rows))
            run.admin.execute(f"DROP TABLE {table}")
        progress(f"relay target round {repeat + 1}: relay {seconds['livesync'][-1]:.2f} s, "
                 f"raw loop {seconds['raw'][-1]:.2f} s")  # fmt: skip
    relay_rate, raw_rate = rows / min(seconds["livesync"]), rows / min(seconds["raw"])
    return {
        "rows": rows,
        "batch_size": BATCH,
        "relay_seconds": [round(s, 4) for s in seconds["livesync"]],
        "raw_seconds": [round(s, 4) for s in seconds["raw"]],
        "relay_changes_per_second": round(relay_rate, 1),
        "raw_rows_per_second": round(raw_rate, 1),
        "ratio": round(relay_rate / raw_rate, 4),
    }


# -- the latency ----------------------------------------------------------------------------------


@contextmanager
def relay_process(run: RelayRun, table: str, namespace: str, poll: float) -> Iterator[subprocess.Popen[bytes]]:
    """A ``livesync relay`` process on ``table`` and ``namespace``, ready (it reported once); stopped after."""
    env = dict(os.environ, LIVESYNC_REDIS_URL=run.redis_url, LIVESYNC_NAMESPACE=namespace,
               LIVESYNC_RELAY_POLL=str(poll))  # fmt: skip
    argv = [sys.executable, "-m", "livesync", "relay", "--db", run.url, "--table", table, "--batch", str(BATCH)]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + STARTUP_BOUND
            while not run.redis.exists(namespace_keys(namespace).outbox):  # its first lag report
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    output = log.read().decode(errors="replace").replace(run.url, mask_url(run.url))
                    raise RuntimeError(f"livesync relay did not start (exit {process.poll()}): {output[-2000:]}")
                time.sleep(0.05)
            yield process
        finally:
            process.terminate()  # warm: the batch in progress finishes
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)


def write_steadily(url: str, table: str, namespace: str, count: int, rate: float, committed: dict[int, float]) -> None:
    """Commit ``count`` outbox rows, one per transaction, at ``rate`` per second; note when each COMMIT returned."""
    from sqlalchemy import create_engine

    engine = create_engine(url)  # the application's engine: no READ COMMITTED override, no pre-ping
    try:
        with engine.connect():
            pass
        started = time.perf_counter()
        for number in range(1, count + 1):
            pause = started + (number - 1) / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            with engine.begin() as connection:
                emit(connection, "event", number, "created", namespace=namespace, table=table)
            committed[number] = time.perf_counter()
    finally:
        engine.dispose()


def watch(
    run: RelayRun, namespace: str, count: int, seen: dict[Any, float], writer: threading.Thread, failed: list[Any]
) -> None:
    """Note when each change is first read on the track, until all ``count`` are there (bounded).

    Returns early when the writer ``failed`` (the caller raises its error).
    """
    track = Track(run.redis, namespace_keys(namespace).partition(0), defaults.GRANULARITY)
    last = 0
    deadline: float | None = None
    while len(seen) < count:
        head = track.head()
        if head > last:
            now = time.perf_counter()
            for change in track.iter_changes(after=last):
                seen.setdefault(change.id, now)
                last = change.seq
            continue
        if failed:
            return
        if deadline is None and not writer.is_alive():
            deadline = time.monotonic() + ARRIVAL_BOUND
        if deadline is not None and time.monotonic() > deadline:
            raise RuntimeError(f"relay latency: {count - len(seen)} of {count} changes never reached the track")
        time.sleep(WATCH_PAUSE)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def measure_latency(run: RelayRun, seconds: float, poll: float) -> dict[str, Any]:
    """One latency run at ``poll``: the JSON section."""
    count = max(1, round(LATENCY_RATE * seconds))
    table, namespace = run.names(f"latency_{len(run.tables)}")
    engine = relay_engine(run.url)
    try:
        create_table(engine, table)
    finally:
        engine.dispose()
    RelayPublisher(run.redis, namespace).meta  # noqa: B018 - one partition, made before the relay starts
    committed: dict[int, float] = {}
    seen: dict[Any, float] = {}
    failure: list[BaseException] = []

    def writer_body() -> None:
        try:
            write_steadily(run.url, table, namespace, count, LATENCY_RATE, committed)
        except BaseException as exc:  # handed to the main thread, which raises it
            failure.append(exc)

    with relay_process(run, table, namespace, poll):
        writer = threading.Thread(target=writer_body, name="relay-bench-writer", daemon=True)
        started = time.perf_counter()
        writer.start()
        try:
            watch(run, namespace, count, seen, writer, failure)
        finally:
            writer.join(timeout=ARRIVAL_BOUND)
        if failure:
            raise failure[0]
        wrote = max(committed.values()) - started
    latencies = [seen[number] - committed[number] for number in range(1, count + 1)]
    return {
        "poll_seconds": poll,
        "changes": count,
        "rate_asked": LATENCY_RATE,
        "rate_reached": round(count / wrote, 1) if wrote > 0 else None,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


# -- the figure -----------------------------------------------------------------------------------


def measure(
    results: Results, *, quick: bool, repeats: int, url: str | None = None, redis_url: str | None = None
) -> None:
    """Add the ``relay`` figures, rows and target to ``results`` (PostgreSQL at ``url``, the bench's Redis)."""
    if redis_url is None:
        from livesync.config import load_settings

        redis_url = load_settings().redis_url
    run = RelayRun(url or DEFAULT_URL, redis_url)
    try:
        rate = measure_rate(run, ROWS_QUICK if quick else ROWS, repeats)
        latencies = [measure_latency(run, LATENCY_SECONDS_QUICK if quick else LATENCY_SECONDS, p) for p in POLLS]
    finally:
        run.cleanup()
    results.figures["T_relay"] = {"url": redact_url(run.url), "redis_url": redact_url(redis_url), **rate}
    results.figures["T_relay_latency"] = latencies
    results.row(
        "T",
        f"relay, PostgreSQL outbox -> track, {rate['rows']:,} rows (batch {rate['batch_size']})",
        f"{rate['relay_changes_per_second']:,.0f} ch/s",
        f"{rate['ratio']:.2f}x raw SKIP LOCKED + DELETE loop ({rate['raw_rows_per_second']:,.0f} rows/s)",
        f"best of {repeats}, alternating",
    )
    for latency in latencies:
        results.row(
            "T",
            f"  commit -> track at {latency['rate_asked']}/s, relay poll {latency['poll_seconds']:g} s",
            f"p50 {latency['p50_ms']:,.1f} ms",
            f"p99 {latency['p99_ms']:,.1f} ms, max {latency['max_ms']:,.1f} ms ({latency['changes']:,} changes, "
            f"{latency['rate_reached']}/s reached)",
            "single run",
        )
    results.targets.append(Target(f"relay from the PostgreSQL outbox >= {GOAL} x raw claim + delete loop",
                                  rate["ratio"], GOAL))  # fmt: skip
