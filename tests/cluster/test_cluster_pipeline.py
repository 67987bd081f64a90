"""The whole pipeline on a real Redis Cluster: 6 partitions over 3 masters, real processes.

The track lives on the cluster (``LIVESYNC_REDIS_URL=redis+cluster://...``), the RQ queue on
the plain test Redis (``LIVESYNC_RQ_URL``). Three publisher processes (each with objects of
its own, mixing ``emit``, ``emit_many`` and ``collect()``), two ``livesync worker`` processes
(with different windows, so runs cut windows differently), ``livesync scheduler`` ticking
every second and three jsonl agents. Nobody calls ``run``: the scheduler and the workers must
bring every agent to the head of every partition, and each target is checked against what
the publishers logged (``reliability.checker``: nothing lost, every record explained,
records of each object in seq order).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from cluster.conftest import ClusterProcesses, RedisClusterServers, run_ok
from reliability.checker import Report, check, load_published, load_records
from support.publisher import owned_publisher_argv

from livesync.manager import SyncManager

PARTITIONS = 6
GRANULARITY = 1
AGENTS = ("search", "archive", "mirror")
PUBLISHERS = 3
PUBLISH_SECONDS = 4.0
PUBLISH_RATE = 150  # changes/s per publisher
OBJECTS = 200  # per publisher
DRAIN_TIMEOUT = 60.0
STACK_ENV = {"LIVESYNC_TICK_INTERVAL": "1", "LIVESYNC_WINDOW": "50", "LIVESYNC_BATCH_SIZE": "20"}
SECOND_WORKER_ENV = {"LIVESYNC_WINDOW": "23", "LIVESYNC_BATCH_SIZE": "7"}

pytestmark = pytest.mark.timeout(120)


def test_pipeline_on_a_cluster_delivers_everything_in_order(
    redis_cluster: RedisClusterServers, cluster_processes: ClusterProcesses, cluster_namespace: str, tmp_path: Path
) -> None:
    # Given: a namespace whose 6 partitions land on different masters (the server's CLUSTER KEYSLOT says so)
    slots = []
    with redis_cluster.alive_nodes()[0].client() as node:
        for p in range(PARTITIONS):
            slots.append(int(node.execute_command("CLUSTER", "KEYSLOT", f"livesync:{{{cluster_namespace}:{p}}}:seq")))
    masters = [redis_cluster.master_of_slot(slot) for slot in slots]
    print(f"partition slots {slots} on masters {masters}")
    assert len(set(masters)) >= 2, f"all 6 partitions on one master: {masters}"

    # And: three jsonl agents, two workers, the scheduler
    run_ok(cluster_processes, "init", "--partitions", str(PARTITIONS), "--granularity", str(GRANULARITY))
    targets = {agent: tmp_path / f"{agent}.jsonl" for agent in AGENTS}
    for agent, target in targets.items():
        run_ok(cluster_processes, "agent", "add", agent, "--backend", "jsonl", "--option", f"path={target}",
               "--update-time", "0")  # fmt: skip
    cluster_processes.livesync("worker-1", "worker", env=STACK_ENV)
    cluster_processes.livesync("worker-2", "worker", env={**STACK_ENV, **SECOND_WORKER_ENV})
    cluster_processes.livesync("scheduler", "scheduler", env=STACK_ENV)

    # When: three publisher processes publish at once
    url = redis_cluster.url()
    logs = [tmp_path / f"published-{number}.jsonl" for number in range(PUBLISHERS)]
    publishers = []
    for number, log in enumerate(logs):
        argv = owned_publisher_argv(
            url, cluster_namespace, log, number=number, seconds=PUBLISH_SECONDS, rate=PUBLISH_RATE, objects=OBJECTS
        )
        publishers.append(cluster_processes.start(f"publisher-{number}", argv))
    summaries = []
    for publisher in publishers:
        code = publisher.wait(PUBLISH_SECONDS + 60)
        assert code == 0, f"{publisher.name} exited with {code}:\n{publisher.output()[-3000:]}"
        summaries.append(json.loads(publisher.output().strip().splitlines()[-1]))
    published_at = time.monotonic()
    assert all(summary["failed_calls"] == 0 for summary in summaries), summaries

    # Then: the scheduler and workers bring every agent to the head of every partition
    manager = SyncManager(redis_cluster.client(), cluster_namespace)
    wait_drained(manager, cluster_processes, DRAIN_TIMEOUT)
    drained_after = time.monotonic() - published_at
    heads = [track.head() for track in manager.tracks()]
    assert all(heads), f"a partition got no change: {heads}"
    for p, head in enumerate(heads):  # each head sits on the master of its slot
        with redis_cluster.node(masters[p]).client() as node:
            assert int(node.get(f"livesync:{{{cluster_namespace}:{p}}}:seq") or 0) == head

    # And: each target got every change, each object's records in seq order
    published = load_published(logs)
    failures = []
    figures: dict[str, Any] = {"heads": heads, "drained_after_s": round(drained_after, 2), "agents": {}}
    for agent, target in targets.items():
        report = check(published, load_records(target))
        figures["agents"][agent] = report.summary()
        if not report.ok:
            failures.append(describe(agent, report))
    print(json.dumps(figures))
    assert sum(heads) == sum(len(changes) for changes in published.values())
    assert not failures, "\n".join(failures)
    assert_clean_logs(cluster_processes)


def drained(manager: SyncManager) -> bool:
    """Whether every agent's pointer is at the head of every partition."""
    for track in manager.tracks():
        head = track.head()
        pointers = track.pointers()
        if len(pointers) < len(AGENTS) or any(pointer < head for pointer in pointers.values()):
            return False
    return True


def wait_drained(manager: SyncManager, processes: ClusterProcesses, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not drained(manager):
        if time.monotonic() > deadline:
            where = {t.partition: {"head": t.head(), "pointers": t.pointers()} for t in manager.tracks()}
            tails = "\n".join(f"--- {proc.name}\n{proc.output()[-1500:]}" for proc in processes.started)
            raise AssertionError(f"agents did not reach the head within {timeout}s: {where}\n{tails}")
        time.sleep(0.2)


def describe(agent: str, report: Report) -> str:
    problems = "\n  ".join(report.problems[:10])
    return f"agent {agent}: {report.summary()}\n  {problems}"


def assert_clean_logs(processes: ClusterProcesses) -> None:
    """No process logged a traceback or an error."""
    dirty = {
        proc.name: [line for line in proc.output().splitlines() if "Traceback" in line or "ERROR" in line][:5]
        for proc in processes.started
    }
    dirty = {name: lines for name, lines in dirty.items() if lines}
    assert not dirty, f"errors in process logs: {dirty}"
