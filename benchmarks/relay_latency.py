"""The latency half of ``--targets relay``: commit-to-track latency of a real ``livesync relay`` process.

See :mod:`benchmarks.target_relay` (figure ``T_relay_latency``): a writer thread commits
one outbox row per transaction at :data:`LATENCY_RATE` rows/s while this process polls
the track's head every :data:`WATCH_PAUSE` s; latency = first read on the track - the
writer's ``COMMIT`` returned, both on this process's ``perf_counter``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks.relay_run import RelayRun
from livesync import defaults
from livesync.keys import namespace_keys
from livesync.outbox import create_table, emit, relay_engine
from livesync.outbox.publish import RelayPublisher
from livesync.track import Track
from livesync.urls import mask_url

#: Rows per relay batch (``--batch``): the relay's default, as in the rate figure.
BATCH = defaults.RELAY_BATCH
#: Writer rate (rows/s, one transaction each).
LATENCY_RATE = 200
#: ``LIVESYNC_RELAY_POLL`` of the latency runs: the default, then a short one.
POLLS = (defaults.RELAY_POLL, 0.05)
#: Seconds between two looks at the track's head while no change is new.
WATCH_PAUSE = 0.001
#: Seconds a relay process may take to start, and every change to arrive after the writer's last.
STARTUP_BOUND, ARRIVAL_BOUND = 60.0, 60.0


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
