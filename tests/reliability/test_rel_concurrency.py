"""Concurrency: four publishers on shared objects, three agents, two workers, one scheduler.

Everything runs as real processes on a private AOF redis-server: ``livesync worker`` x2
(one with a smaller window, so the same agent's runs cut windows differently from run to
run), ``livesync scheduler`` ticking every second, and four ``support.publisher shared`` at
once, each mixing ``emit``, ``emit_many`` and ``collect()`` over the same objects (the
publishers coordinate so the merged stream stays valid; see ``support.publisher shared``). With
a window of 50 changes and batches of 20 records, each run goes through many windows and
acks while the publishers write to the same partitions and the other agents' runs prune
the same buckets (1 s buckets).

Nobody calls ``run``: the scheduler and the workers must bring every agent's pointer to
the head of both partitions. Then each agent's jsonl target is checked against the
published changes by ``checker.check``: nothing lost, every record explained.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from checker import Report, check, load_published, load_records
from support.publisher import shared_publisher_argv

from livesync.manager import SyncManager

if TYPE_CHECKING:
    from support.processes import Processes
    from support.servers import RedisServer

PARTITIONS = 2
GRANULARITY = 1  # many buckets: runs of different agents prune under each other's reads
AGENTS = ("search", "archive", "mirror")
PUBLISHERS = 4
PUBLISH_SECONDS = 4.0
PUBLISH_RATE = 300  # changes/s per publisher
OBJECTS = 400  # shared by all publishers
DRAIN_TIMEOUT = 60.0
STACK_ENV = {"LIVESYNC_TICK_INTERVAL": "1", "LIVESYNC_WINDOW": "50", "LIVESYNC_BATCH_SIZE": "20"}
#: The second worker cuts windows elsewhere: the same agent's runs alternate between both.
SECOND_WORKER_ENV = {"LIVESYNC_WINDOW": "23", "LIVESYNC_BATCH_SIZE": "7"}

pytestmark = pytest.mark.timeout(120)


def test_concurrent_publishers_and_workers_lose_nothing(
    redis_server: RedisServer, processes: Processes, tmp_path: Path, namespace: str
) -> None:
    # Given: the namespace, three full jsonl agents, two workers and the scheduler
    env = {"LIVESYNC_REDIS_URL": redis_server.url, **STACK_ENV}
    run_ok(processes, env, "init", "--partitions", str(PARTITIONS), "--granularity", str(GRANULARITY))
    targets = {agent: tmp_path / f"{agent}.jsonl" for agent in AGENTS}
    for agent, target in targets.items():
        run_ok(processes, env, "agent", "add", agent, "--backend", "jsonl", "--option", f"path={target}",
               "--update-time", "0")  # fmt: skip
    workers = [
        processes.livesync("worker-1", "worker", env=env),
        processes.livesync("worker-2", "worker", env={**env, **SECOND_WORKER_ENV}),
    ]
    processes.livesync("scheduler", "scheduler", env=env)

    # When: four publishers change the same objects at once
    logs = [tmp_path / f"published-{number}.jsonl" for number in range(PUBLISHERS)]
    publishers = [
        processes.start(
            f"publisher-{number}",
            shared_publisher_argv(
                redis_server.url,
                namespace,
                log,
                seed=1000 + number,
                seconds=PUBLISH_SECONDS,
                rate=PUBLISH_RATE,
                objects=OBJECTS,
                partitions=PARTITIONS,
            ),
        )
        for number, log in enumerate(logs)
    ]
    for publisher in publishers:
        code = publisher.wait(PUBLISH_SECONDS + 60)
        assert code == 0, f"{publisher.name} exited with {code}:\n{publisher.output()[-3000:]}"
    published_at = time.monotonic()

    # Then: every agent reaches the head of every partition by the scheduler's ticks alone
    manager = SyncManager(redis_server.client(), namespace)
    wait_drained(manager, processes, env, DRAIN_TIMEOUT)
    drained_after = time.monotonic() - published_at

    published = load_published(logs)
    shared = shared_objects(logs)
    assert shared > OBJECTS // 2, f"only {shared} objects were changed by several publishers: no overlap tested"
    figures: dict[str, Any] = {
        "test": "concurrency",
        "publishers": PUBLISHERS,
        "changes_published": sum(len(changes) for changes in published.values()),
        "objects": len(published),
        "objects_shared": shared,
        "heads": [track.head() for track in manager.tracks()],
        "drained_after_s": round(drained_after, 2),
        "runs_per_worker": {worker.name: completed_runs(worker.output()) for worker in workers},
        "agents": {},
    }
    failures = []
    for agent, target in targets.items():
        report = check(published, load_records(target))
        stats = manager.get_agent(agent)
        figures["agents"][agent] = {
            "records": report.records,
            "duplicates": report.duplicates,
            "lost": report.lost,
            "problems": len(report.problems),
            "runs": stats.runs,
            "failures": stats.failures,
        }
        print(f"{agent}: {report.summary()}; {stats.runs} runs, {stats.failures} failed")
        if not report.ok:
            failures.append(describe(agent, report))
    print(json.dumps(figures))
    write_report(figures)
    assert not failures, "\n".join(failures)
    # both window sizes were used: the same agent's windows were cut differently
    assert all(figures["runs_per_worker"].values()), f"a worker ran nothing: {figures['runs_per_worker']}"
    assert_clean_logs(processes)


def run_ok(processes: Processes, env: dict[str, str], *args: str) -> None:
    done = processes.run(*args, env=env)
    assert done.returncode == 0, f"livesync {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def drained(manager: SyncManager) -> bool:
    """Whether every agent's pointer is at the head of every partition."""
    for track in manager.tracks():
        head = track.head()
        pointers = track.pointers()
        if len(pointers) < len(AGENTS) or any(pointer < head for pointer in pointers.values()):
            return False
    return True


def wait_drained(manager: SyncManager, processes: Processes, env: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not drained(manager):
        if time.monotonic() > deadline:
            where = {
                track.partition: {"head": track.head(), "pointers": track.pointers()} for track in manager.tracks()
            }
            status = processes.run("status", env=env)
            tails = "\n".join(f"--- {proc.name}\n{proc.output()[-1500:]}" for proc in processes.started)
            raise AssertionError(
                f"agents did not reach the head within {timeout}s: {where}\n{status.stdout}{status.stderr}\n{tails}"
            )
        time.sleep(0.2)


def shared_objects(logs: list[Path]) -> int:
    """How many objects more than one publisher changed."""
    publishers: dict[tuple[str, Any], set[int]] = defaultdict(set)
    for number, log in enumerate(logs):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            publishers[(entry["type"], entry["id"])].add(number)
    return sum(len(numbers) > 1 for numbers in publishers.values())


def completed_runs(worker_log: str) -> int:
    """How many run jobs a worker completed (RQ logs one line per job)."""
    return worker_log.count("Successfully completed livesync run")


def describe(agent: str, report: Report) -> str:
    problems = "\n  ".join(report.problems[:10])
    return f"agent {agent}: {report.summary()}\n  {problems}"


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
