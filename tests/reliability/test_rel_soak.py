"""Soak: steady publishing with the stack running; lag and memory stay bounded, nothing is lost.

A private AOF redis-server, two ``livesync worker``, ``livesync scheduler`` ticking every
second, one jsonl agent, no retention, 1 s buckets. One ``support.publisher shared`` publishes
about ``RATE`` changes/s for ``LIVESYNC_SOAK_SECONDS`` (default 60) while the test samples,
every second, the lag (head - pointer, summed over the partitions) and the memory of the
track's keys (``Track.memory_usage``: MEMORY USAGE of head, bucket index and buckets).

The lag bound. A change published at time t is read by the first run of its partition
that starts after t. Runs are enqueued by the ticks (every ``TICK_INTERVAL`` s) unless
one is still queued or running, so a change waits at most one tick for a run to be
enqueued, one more when a run was still busy then, plus the queue latency of the tick
and run jobs (a forked work horse each) and the run itself. At steady state a run
handles about ``RATE * TICK_INTERVAL`` changes in well under a second; ``SLACK_SECONDS``
covers queue latency and run time on a loaded 2-core CI machine. The publisher writes in
calls of up to 200 changes at once (``emit_many``), which land in one step. So::

    lag <= RATE * (2 * TICK_INTERVAL + SLACK_SECONDS) + MAX_CALL

A stalled pipeline (a worker stuck, ticks no longer enqueuing) grows the lag without bound
and fails this within seconds.

The memory bound. Without retention, a bucket goes only once every pointer is past it
(the prune after each run and each tick). With 1 s buckets the track then holds the
unread changes plus at most the partly-read bucket: a few seconds' worth, whatever the
duration. So the stored changes stay under the lag bound plus a bucket's worth, the
largest memory sample of the last third of the soak is at most twice the largest of the
first third (plus a constant for allocator noise), and once publishing stops and the
agent catches up the track is empty.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from checker import check, load_published, load_records
from support.publisher import shared_publisher_argv
from support.waiting import wait_for

from livesync.manager import SyncManager

if TYPE_CHECKING:
    from support.processes import Processes
    from support.servers import RedisServer

AGENT = "sink"
PARTITIONS = 2
GRANULARITY = 1
RATE = 200  # changes/s
CHANGES_PER_OBJECT = 12  # the checker's cost grows steeply with changes per object: more objects for longer soaks
TICK_INTERVAL = 1
SLACK_SECONDS = 3
MAX_CALL = 200  # the most changes one publisher call stores (support.publisher's emit_many)
LAG_BOUND = RATE * (2 * TICK_INTERVAL + SLACK_SECONDS) + MAX_CALL
STORED_BOUND = LAG_BOUND + RATE * 2 * GRANULARITY
MEMORY_SLACK = 64 * 1024  # bytes: allocator and encoding noise between two samples
DRAIN_TIMEOUT = 60.0
STACK_ENV = {
    "LIVESYNC_TICK_INTERVAL": str(TICK_INTERVAL),
    "LIVESYNC_WINDOW": "50",
    "LIVESYNC_BATCH_SIZE": "20",
}


def soak_seconds() -> float:
    """How long to publish: ``LIVESYNC_SOAK_SECONDS``, default 60."""
    return float(os.environ.get("LIVESYNC_SOAK_SECONDS", "60"))


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(soak_seconds() + 180),
]


@dataclass
class Sample:
    """One second of the soak."""

    at: float  # seconds since publishing started
    lag: int  # head - pointer, summed over the partitions
    stored: int  # changes stored on the track
    memory: int  # bytes of the track's keys


def test_steady_publishing_keeps_lag_and_memory_bounded(
    redis_server: RedisServer, processes: Processes, tmp_path: Path, namespace: str
) -> None:
    seconds = soak_seconds()
    objects = max(1000, int(RATE * seconds / CHANGES_PER_OBJECT))
    env = {"LIVESYNC_REDIS_URL": redis_server.url, **STACK_ENV}
    run_ok(processes, env, "init", "--partitions", str(PARTITIONS), "--granularity", str(GRANULARITY))
    target = tmp_path / f"{AGENT}.jsonl"
    run_ok(processes, env, "agent", "add", AGENT, "--backend", "jsonl", "--option", f"path={target}",
           "--update-time", "0")  # fmt: skip
    processes.livesync("worker-1", "worker", env=env)
    processes.livesync("worker-2", "worker", env=env)
    processes.livesync("scheduler", "scheduler", env=env)
    manager = SyncManager(redis_server.client(), namespace)

    # When: one publisher publishes steadily while the test samples every second
    log = tmp_path / "published.jsonl"
    argv = shared_publisher_argv(
        redis_server.url, namespace, log, seed=7, seconds=seconds, rate=RATE, objects=objects, partitions=PARTITIONS
    )
    publisher = processes.start("publisher", argv)
    samples = sample_while(publisher.alive, manager)
    assert publisher.wait(30) == 0, f"the publisher failed:\n{publisher.output()[-3000:]}"

    # Then: the agent catches up and the track empties
    wait_for(
        lambda: lag(manager) == 0, DRAIN_TIMEOUT, "the agent to reach the head", 0.2, lambda: diagnosis(processes, env)
    )
    wait_for(lambda: stored(manager) == 0, 10, "the read buckets to be pruned", 0.2, lambda: diagnosis(processes, env))
    report = check(load_published([log]), load_records(target))

    third = max(1, len(samples) // 3)
    figures: dict[str, Any] = {
        "test": "soak",
        "seconds": seconds,
        "rate": RATE,
        "objects": objects,
        "changes_published": report.changes,
        "records": report.records,
        "duplicates": report.duplicates,
        "lost": report.lost,
        "samples": len(samples),
        "lag_max": max(s.lag for s in samples),
        "lag_bound": LAG_BOUND,
        "stored_max_last_third": max(s.stored for s in samples[-third:]),
        "stored_bound": STORED_BOUND,
        "memory_first": samples[0].memory,
        "memory_max_first_third": max(s.memory for s in samples[:third]),
        "memory_max_last_third": max(s.memory for s in samples[-third:]),
        "memory_last": samples[-1].memory,
    }
    print(f"soak: {report.summary()}")
    print(json.dumps(figures))
    write_report(figures)
    (tmp_path / "samples.json").write_text(json.dumps([asdict(s) for s in samples]))

    assert len(samples) >= seconds * 0.8, f"only {len(samples)} samples in {seconds}s"
    assert figures["lag_max"] <= LAG_BOUND, f"lag exceeded {LAG_BOUND}: {worst(samples, 'lag')}"
    assert figures["stored_max_last_third"] <= STORED_BOUND, f"track kept too much: {worst(samples, 'stored')}"
    assert figures["memory_max_last_third"] <= 2 * figures["memory_max_first_third"] + MEMORY_SLACK, (
        f"track memory grew: {figures}"
    )
    assert report.ok, f"{report.summary()}\n  " + "\n  ".join(report.problems[:10])
    assert_clean_logs(processes)


def run_ok(processes: Processes, env: dict[str, str], *args: str) -> None:
    done = processes.run(*args, env=env)
    assert done.returncode == 0, f"livesync {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def lag(manager: SyncManager) -> int:
    """Changes not yet acknowledged, summed over the partitions (pointer read before head)."""
    total = 0
    for track in manager.tracks():
        pointer = track.pointer(AGENT) or 0
        total += track.head() - pointer
    return total


def stored(manager: SyncManager) -> int:
    return sum(track.size() for track in manager.tracks())


def sample_while(running: Any, manager: SyncManager) -> list[Sample]:
    """Sample lag, stored changes and memory every second while ``running()``."""
    samples: list[Sample] = []
    start = time.monotonic()
    tick = start
    while running():
        samples.append(
            Sample(
                at=round(time.monotonic() - start, 2),
                lag=lag(manager),
                stored=stored(manager),
                memory=sum(track.memory_usage() for track in manager.tracks()),
            )
        )
        tick += 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
    return samples


def worst(samples: list[Sample], field: str) -> str:
    top = sorted(samples, key=lambda s: getattr(s, field), reverse=True)[:5]
    return ", ".join(f"{getattr(s, field)} at {s.at}s" for s in top)


def diagnosis(processes: Processes, env: dict[str, str]) -> str:
    """What a timed-out wait shows: ``livesync status`` and the tail of every process's log."""
    status = processes.run("status", env=env)
    tails = "\n".join(f"--- {proc.name}\n{proc.output()[-1500:]}" for proc in processes.started)
    return f"{status.stdout}{status.stderr}\n{tails}"


def assert_clean_logs(processes: Processes) -> None:
    """No process logged a traceback or an error."""
    dirty = {
        proc.name: [line for line in proc.output().splitlines() if "Traceback" in line or "ERROR" in line][:5]
        for proc in processes.started
    }
    dirty = {name: lines for name, lines in dirty.items() if lines}
    assert not dirty, f"errors in process logs: {dirty}"


def write_report(figures: dict[str, Any]) -> None:
    """Append the figures as one JSON line to $LIVESYNC_RELIABILITY_REPORT, when set."""
    path = os.environ.get("LIVESYNC_RELIABILITY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(figures) + "\n")
