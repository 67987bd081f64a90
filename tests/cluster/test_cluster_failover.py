"""A master of the cluster SIGKILLed mid-run: its replica takes over and nothing acknowledged is lost.

One scenario (a module fixture, ~30 s) and several tests reading what it measured. The
namespace has 6 partitions spread over the 3 masters; the victim is the master of
partition 0. Three publisher processes publish with ``wait_replicas=1`` (every publish
is on the replica before it returns) and ``retries=5``; only calls that returned are
logged as published, a call that raised is kept aside as "uncertain" (it may or may not
have landed). Two workers and the scheduler run three jsonl agents; a fourth agent,
``idle``, is paused with its pointers set before the failover, so it holds the track
(nothing it has not read is pruned) and its pointers must come through unchanged. A run
lock (``SET PX`` + ``WAIT 1``) is held on the victim's slot.

Timeline: publish -> SIGKILL the victim -> wait (bounded) until its replica is master and
every node says ``cluster_state:ok`` -> check pointers and lock on the promoted node ->
restart the old master (it rejoins as a replica) -> a fresh publisher publishes over every
partition, and an in-process publisher created before the kill (the "veteran") publishes
in the victim's partitions again -> publishers end -> wait until every active agent is
at every head. The tracks' contents after the idle agent's pointers are then compared
with what the publishers logged, and each target with the tracks' contents.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from cluster.conftest import (
    ClusterProcesses,
    RedisClusterServers,
    cluster_process_env,
    run_ok,
    spread_namespace,
)
from redis.crc import key_slot
from reliability.checker import check, load_published, load_records, log_published
from support.publisher import owned_publisher_argv
from support.waiting import wait_for

from livesync import Publisher
from livesync.errors import AgentBusy
from livesync.lock import RunLock
from livesync.manager import SyncManager
from livesync.namespace import partition_of

PARTITIONS = 6
AGENTS = ("search", "archive", "mirror")
IDLE = "idle"
PUBLISHERS = 3
PUBLISH_SECONDS = 12.0
PUBLISH_RATE = 60  # changes/s per publisher
OBJECTS = 300  # per publisher
KILL_AFTER = 2.5  # seconds of publishing before the kill
FAILOVER_TIMEOUT = 20.0
REJOIN_TIMEOUT = 20.0
DRAIN_TIMEOUT = 60.0
LOCK_PX = 120_000
#: RQ retries are off: a run failed by the failover is enqueued again by the next tick. (With
#: retry intervals > 0, `livesync worker` runs no RQ scheduler, so a retry would never be enqueued.)
STACK_ENV = {
    "LIVESYNC_TICK_INTERVAL": "1",
    "LIVESYNC_WINDOW": "50",
    "LIVESYNC_BATCH_SIZE": "20",
    "LIVESYNC_LOCK_TTL": "3",
    "LIVESYNC_RETRY_MAX": "0",
}

pytestmark = pytest.mark.timeout(150)


@dataclass
class Failover:
    """What the scenario did and measured."""

    namespace: str
    victim: int
    promoted: int
    victim_partitions: list[int]
    failover_s: float = 0.0
    rejoin_s: float = 0.0
    ok_at: float = 0.0  # wall clock: the cluster was ok again with the replica promoted
    idle_before: list[int] = field(default_factory=list)
    idle_after: list[int] = field(default_factory=list)
    lock_key: str = ""
    lock_token: str = ""
    lock_on_promoted: tuple[bytes | None, int] = (None, -2)
    lock_refused_by_livesync: bool = False
    heads_at_ok: list[int] = field(default_factory=list)
    heads_at_end: list[int] = field(default_factory=list)
    summaries: list[dict[str, Any]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    targets: dict[str, Path] = field(default_factory=dict)
    stored: dict[tuple[int, int], tuple[str, Any, frozenset[str]]] = field(default_factory=dict)
    uncertain: list[tuple[str, Any, frozenset[str]]] = field(default_factory=list)
    last_success: dict[str, float] = field(default_factory=dict)
    veteran_errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def failover(
    redis_cluster: RedisClusterServers, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Failover]:
    tmp_path = tmp_path_factory.mktemp("failover")
    namespace = spread_namespace(redis_cluster, f"f{uuid.uuid4().hex[:10]}", PARTITIONS)
    partition_masters = redis_cluster.partition_masters(namespace, PARTITIONS)
    victim = partition_masters[0]
    run = Failover(
        namespace,
        victim,
        redis_cluster.replica_of(victim),
        [p for p, port in enumerate(partition_masters) if port == victim],
    )
    url = redis_cluster.url(avoid=victim)
    env = cluster_process_env(url, redis_url, namespace)
    processes = ClusterProcesses(tmp_path, {**env, **STACK_ENV})
    try:
        run_scenario(redis_cluster, processes, run, url, tmp_path)
        yield run
    finally:
        processes.stop_all()
        delete_queue_keys(redis_url, namespace)


def run_scenario(
    cluster: RedisClusterServers, processes: ClusterProcesses, run: Failover, url: str, tmp_path: Path
) -> None:
    manager = SyncManager(cluster.client(avoid=run.victim), run.namespace)
    run_ok(processes, "init", "--partitions", str(PARTITIONS), "--granularity", "1")
    run.targets = {agent: tmp_path / f"{agent}.jsonl" for agent in (*AGENTS, IDLE)}
    for agent, target in run.targets.items():
        run_ok(processes, "agent", "add", agent, "--backend", "jsonl", "--option", f"path={target}",
               "--update-time", "0")  # fmt: skip

    # the idle agent reads a first batch, then is paused: its pointers must survive unchanged
    seed_log, veteran_log, after_log = (tmp_path / f"published-{name}.jsonl" for name in ("seed", "veteran", "after"))
    publish_logged(Publisher.from_url(url, run.namespace, wait_replicas=1), seed_log,
                   [("category", 9_000_000 + number, ["created"]) for number in range(120)])  # fmt: skip
    run_ok(processes, "agent", "run", IDLE)
    run_ok(processes, "agent", "pause", IDLE)
    run.idle_before = manager.pointers(IDLE)
    assert all(run.idle_before), run.idle_before

    # an in-process publisher that learns the topology before the kill, in the victim's partitions
    veteran = Publisher.from_url(url, run.namespace, wait_replicas=1, retries=5)
    veteran_objects = [("event", 7_000_000 + number) for number in range(300)]
    veteran_objects = [key for key in veteran_objects if partition_of(*key, PARTITIONS) in run.victim_partitions]
    publish_logged(veteran, veteran_log, [(type_, id_, ["created"]) for type_, id_ in veteran_objects[:10]])

    # a run lock held on the victim's slot, on its replica before the kill
    run.lock_key, run.lock_token = manager.track(0).keys.lock(IDLE), secrets.token_hex(16)
    with cluster.node(run.victim).client() as node:
        pipe = node.pipeline(transaction=False)
        pipe.set(run.lock_key, run.lock_token, nx=True, px=LOCK_PX)
        pipe.wait(1, 2000)
        assert pipe.execute() == [True, 1]

    processes.livesync("worker-1", "worker")
    processes.livesync("worker-2", "worker", env={"LIVESYNC_WINDOW": "23", "LIVESYNC_BATCH_SIZE": "7"})
    processes.livesync("scheduler", "scheduler")
    run.logs = [seed_log, veteran_log, after_log]
    publishers = []
    for number in range(PUBLISHERS):
        log = tmp_path / f"published-{number}.jsonl"
        run.logs.append(log)
        argv = owned_publisher_argv(
            url, run.namespace, log, number=number, seconds=PUBLISH_SECONDS, rate=PUBLISH_RATE, objects=OBJECTS,
            wait_replicas=1, retries=5,
        )  # fmt: skip
        publishers.append(processes.start(f"publisher-{number}", argv))
    time.sleep(KILL_AFTER)

    # the kill, and the replica's promotion
    killed = time.monotonic()
    cluster.node(run.victim).kill()
    promoted = cluster.node(run.promoted)
    wait_for(lambda: promoted.role() == "master" and cluster.state_ok(), FAILOVER_TIMEOUT,
             f"replica {run.promoted} to replace master {run.victim}", interval=0.02)  # fmt: skip
    run.failover_s = time.monotonic() - killed
    run.ok_at = time.time()
    fresh = SyncManager(cluster.client(avoid=run.victim), run.namespace)
    run.heads_at_ok = [track.head() for track in fresh.tracks()]
    run.idle_after = fresh.pointers(IDLE)
    with promoted.client() as node:
        run.lock_on_promoted = (node.get(run.lock_key), int(node.pttl(run.lock_key)))
    try:
        RunLock(fresh.track(0), IDLE, ttl=5, renew=False).acquire().release()
    except AgentBusy:
        run.lock_refused_by_livesync = True

    # the old master comes back as a replica of the promoted one
    cluster.node(run.victim).start()
    rejoin = time.monotonic()
    cluster.wait_ok(REJOIN_TIMEOUT)
    run.rejoin_s = time.monotonic() - rejoin
    assert cluster.node(run.victim).role() == "slave"

    # a fresh client publishes (and waits for the new replica) in every partition
    publish_logged(Publisher.from_url(url, run.namespace, wait_replicas=1, wait_timeout=2.0), after_log,
                   [("attachment", 8_000_000 + number, ["created"]) for number in range(120)])  # fmt: skip
    # and the veteran publishes again in the victim's partitions, one object at a time
    for type_, id_ in veteran_objects[10:20]:
        try:
            publish_logged(veteran, veteran_log, [(type_, id_, ["created"])])
        except Exception as exc:  # may or may not have landed: kept aside like the publishers' failed calls
            run.veteran_errors.append(f"{type(exc).__name__}: {exc}"[:300])
            run.uncertain.append((type_, id_, frozenset({"created"})))

    for publisher in publishers:
        code = publisher.wait(PUBLISH_SECONDS + 60)
        assert code == 0, f"{publisher.name} exited with {code}:\n{publisher.output()[-3000:]}"
        run.summaries.append(json.loads(publisher.output().strip().splitlines()[-1]))
    wait_drained(fresh, processes, DRAIN_TIMEOUT)
    run.heads_at_end = [track.head() for track in fresh.tracks()]
    run.last_success = {agent: fresh.get_agent(agent).last_success_at or 0.0 for agent in AGENTS}
    # what the track holds after the idle agent's pointers: nothing of it was pruned
    for track in fresh.tracks():
        for change in track.iter_changes(after=run.idle_before[track.partition]):
            run.stored[(track.partition, change.seq)] = (change.type, change.id, frozenset(change.flag_names))
    for number in range(PUBLISHERS):
        uncertain = tmp_path / f"published-{number}.jsonl.uncertain"
        if uncertain.exists():
            for line in uncertain.read_text().splitlines():
                run.uncertain += [(t, i, frozenset(f)) for t, i, f in json.loads(line)["items"]]
    figures = {
        "victim": run.victim,
        "victim_partitions": run.victim_partitions,
        "promoted": run.promoted,
        "failover_s": round(run.failover_s, 2),
        "rejoin_s": round(run.rejoin_s, 2),
        "heads_at_ok": run.heads_at_ok,
        "heads_at_end": run.heads_at_end,
        "publishers": [{k: v for k, v in summary.items() if k != "failures"} for summary in run.summaries],
        "veteran_errors": run.veteran_errors[:2],
    }
    (tmp_path / "failover.json").write_text(json.dumps(figures, indent=1))
    print(f"failover: {json.dumps(figures)}")


def publish_logged(pub: Publisher, log: Path, items: list[tuple[str, Any, list[str]]]) -> None:
    """Publish ``items`` in one call and log them as published (the call returned)."""
    seqs = pub.emit_many(items)
    log_published(
        log, [(partition_of(t, i, PARTITIONS), seq) for seq, (t, i, _) in zip(seqs, items, strict=True)], items
    )


def drained(manager: SyncManager) -> bool:
    try:
        for track in manager.tracks():
            head = track.head()
            pointers = track.pointers()
            if any(pointers.get(agent, -1) < head for agent in AGENTS):
                return False
    except redis.RedisError:
        return False
    return True


def wait_drained(manager: SyncManager, processes: ClusterProcesses, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not drained(manager):
        if time.monotonic() > deadline:
            where = {t.partition: {"head": t.head(), "pointers": t.pointers()} for t in manager.tracks()}
            tails = "\n".join(f"--- {proc.name}\n{proc.output()[-2000:]}" for proc in processes.started)
            raise AssertionError(f"agents did not reach the head within {timeout}s: {where}\n{tails}")
        time.sleep(0.2)


def delete_queue_keys(redis_url: str, namespace: str) -> None:
    with contextlib.closing(redis.Redis.from_url(redis_url)) as client:
        doomed = list(client.scan_iter(match=f"rq:*{namespace}*", count=1000))
        for start in range(0, len(doomed), 500):
            client.delete(*doomed[start : start + 500])


# -- the tests -------------------------------------------------------------------------------


def test_the_replica_takes_over_within_the_bound(failover: Failover, redis_cluster: RedisClusterServers) -> None:
    assert failover.failover_s < FAILOVER_TIMEOUT
    slot = key_slot(f"livesync:{{{failover.namespace}:0}}:seq".encode())
    assert redis_cluster.master_of_slot(slot) == failover.promoted
    assert redis_cluster.node(failover.promoted).role() == "master"
    assert redis_cluster.node(failover.victim).role() == "slave"


def test_pointers_and_locks_survive_the_failover(failover: Failover) -> None:
    # the paused agent's pointers, read before the kill and after the promotion, are equal
    assert failover.idle_after == failover.idle_before
    # the lock held on the victim's slot is on the promoted replica, with its TTL, and livesync honours it
    token, pttl = failover.lock_on_promoted
    assert token == failover.lock_token.encode()
    assert 0 < pttl <= LOCK_PX
    assert failover.lock_refused_by_livesync


def test_nothing_acknowledged_is_lost(failover: Failover) -> None:
    # every publish that returned (it waited for the replica) is stored at its seq, after the failover too
    published = load_published(failover.logs)
    missing = []
    logged = set()
    for (type_, id_), changes in published.items():
        for seq, flags in changes:
            partition = partition_of(type_, id_, PARTITIONS)
            logged.add((partition, seq))
            if seq > failover.idle_before[partition] and failover.stored.get((partition, seq)) != (type_, id_, flags):
                missing.append((partition, seq, type_, id_, sorted(flags), failover.stored.get((partition, seq))))
    assert not missing, f"{len(missing)} acknowledged changes lost or changed, e.g. {missing[:5]}"
    # and what the track holds beyond them comes from calls that raised (or a retry that stored one twice)
    known = set(failover.uncertain) | {
        (type_, id_, flags) for (type_, id_), changes in published.items() for _seq, flags in changes
    }
    unexplained = [(where, change) for where, change in failover.stored.items() if where not in logged]
    unexplained = [(where, change) for where, change in unexplained if change not in known]
    assert not unexplained, f"changes nobody published: {unexplained[:5]}"


def test_every_stored_change_reaches_every_agent(failover: Failover) -> None:
    # published = the seed (all read by the idle agent) + everything the track holds after it
    published = load_published(failover.logs[:1])
    for (partition, seq), (type_, id_, flags) in sorted(failover.stored.items()):
        published.setdefault((type_, id_), []).append((seq, flags))
        assert partition_of(type_, id_, PARTITIONS) == partition
    for changes in published.values():
        changes.sort(key=lambda change: change[0])
    for agent in AGENTS:
        report = check(published, load_records(failover.targets[agent]))
        assert report.ok, f"{agent}: {report.summary()}\n" + "\n".join(report.problems[:10])


def test_runs_continue_after_the_failover(failover: Failover) -> None:
    # the victim's partitions got changes after the promotion, and every agent delivered them
    for partition in failover.victim_partitions:
        assert failover.heads_at_end[partition] > failover.heads_at_ok[partition]
    assert all(last > failover.ok_at for last in failover.last_success.values()), failover.last_success


def test_publishers_with_wait_replicas_recover_after_the_failover(failover: Failover) -> None:
    # a publisher that knew the old topology publishes again once the cluster is ok
    assert not failover.veteran_errors, f"{len(failover.veteran_errors)} of 10 failed: {failover.veteran_errors[:2]}"
    # and no publisher process's call that started once the cluster was ok again (1 s of grace) failed
    late = [
        (number, failure)
        for number, summary in enumerate(failover.summaries)
        for failure in summary["failures"]
        if failure[0] > failover.ok_at + 1.0
    ]
    assert not late, f"{len(late)} publishes failed after the failover, e.g. {late[:3]}"
