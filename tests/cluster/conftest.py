"""Fixtures of the Redis Cluster suite: a real 3-master, 3-replica cluster on loopback ports.

Every node is a ``redis-server --cluster-enabled yes`` process with its own directory,
``nodes.conf`` and AOF under the module's tmp dir; ``redis-cli --cluster create`` joins
them (one replica per master) and the fixture waits until every node reports
``cluster_state:ok`` and every replica's link to its master is up. The node timeout is
2 s, so a killed master's replica takes over within a few seconds. The cluster is
module-scoped (creation takes a few seconds); tests use their own namespaces. The RQ
queue lives on the plain test Redis (``LIVESYNC_RQ_URL``): RQ does not support clusters.

This file is also the publisher process of the cluster tests (``python -m
cluster.conftest publish ...``, with ``tests`` on ``PYTHONPATH``): reliability's
``publisher_proc.py`` coordinates through a plain Redis client, which a cluster URL is not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot
from reliability.checker import log_published
from support.processes import TESTS_DIR, Proc, Processes
from support.servers import free_port
from support.waiting import wait_for

from livesync.keys import namespace_keys

NODE_TIMEOUT_MS = 2000
MASTERS = 3
#: Longest the fixture waits for a node to answer or the cluster to be ok.
STARTUP_TIMEOUT = 30.0


@dataclass
class ClusterNode:
    """One ``redis-server`` of the cluster: its ports, directory and process."""

    port: int
    bus_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or start again, on the same ``nodes.conf`` and AOF)."""
        server = shutil.which("redis-server")
        assert server, "redis-server is not on PATH"
        with (self.directory / "redis.log").open("ab") as log:
            self.process = subprocess.Popen(
                [server, "--port", str(self.port), "--cluster-port", str(self.bus_port), "--bind", "127.0.0.1",
                 "--dir", str(self.directory), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--appendonly", "yes", "--save", "",
                 "--repl-diskless-sync-delay", "0",
                 "--daemonize", "no"],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip

    def client(self, timeout: float = 2.0) -> redis.Redis:
        """A plain client of this node alone (no redirections followed)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=timeout, socket_timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def answers(self) -> bool:
        if not self.alive():
            return False
        try:
            with contextlib.closing(self.client()) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False

    def info(self, section: str) -> dict[str, Any]:
        with contextlib.closing(self.client()) as client:
            return dict(client.info(section))

    def cluster_info(self) -> dict[str, str]:
        """``CLUSTER INFO`` of this node as a dict."""
        with contextlib.closing(self.client()) as client:
            raw = client.execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def role(self) -> str:
        """``master`` or ``slave`` (INFO replication)."""
        return str(self.info("replication")["role"])

    def kill(self) -> None:
        """SIGKILL: a crash of this node."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(timeout=10)


@dataclass
class RedisClusterServers:
    """The nodes of a test cluster, their topology, and a few operations on it."""

    nodes: list[ClusterNode]
    directory: Path
    created_in: float = 0.0
    killed: set[int] = field(default_factory=set)

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_for(node.answers, STARTUP_TIMEOUT, f"cluster node {node.address} to answer", interval=0.05)
        started = time.monotonic()
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not on PATH"
        created = subprocess.run(
            [cli, "--cluster", "create", *(node.address for node in self.nodes), "--cluster-replicas", "1",
             "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        (self.directory / "create.log").write_text(created.stdout + created.stderr)
        assert created.returncode == 0, f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}"
        self.wait_ok(STARTUP_TIMEOUT)
        self.created_in = time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM every node, wait (bounded), SIGKILL what is left."""
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                with contextlib.suppress(ProcessLookupError):
                    node.process.terminate()
        deadline = time.monotonic() + 10
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(timeout=10)

    # -- state --------------------------------------------------------------------------

    def alive_nodes(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.alive()]

    def node(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def state_ok(self) -> bool:
        """Every running node says ``cluster_state:ok`` and all of them agree on the masters."""
        try:
            if any(node.cluster_info().get("cluster_state") != "ok" for node in self.alive_nodes()):
                return False
            views = {tuple(sorted(self.slot_ranges(node).items())) for node in self.alive_nodes()}
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return len(views) == 1

    def replicas_linked(self) -> bool:
        """Every running replica's link to its master is up."""
        try:
            for node in self.alive_nodes():
                info = node.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        return True

    def wait_ok(self, timeout: float) -> None:
        """Wait (bounded) for ``cluster_state:ok`` on every running node and linked replicas."""
        wait_for(lambda: self.state_ok() and self.replicas_linked(), timeout, "cluster_state:ok on every node", 0.05)

    def slot_ranges(self, node: ClusterNode | None = None) -> dict[tuple[int, int], int]:
        """``(first slot, last slot) -> master port`` as ``node`` (default: any running one) sees it."""
        node = node or self.alive_nodes()[0]
        with contextlib.closing(node.client()) as client:
            raw = client.execute_command("CLUSTER", "SLOTS")
        return {(int(entry[0]), int(entry[1])): int(entry[2][1]) for entry in raw}

    def master_of_slot(self, slot: int) -> int:
        """Port of the master serving ``slot``."""
        for (first, last), port in self.slot_ranges().items():
            if first <= slot <= last:
                return port
        raise AssertionError(f"slot {slot} is not served")

    def masters(self) -> list[int]:
        return sorted(set(self.slot_ranges().values()))

    def replica_of(self, master_port: int) -> int:
        """Port of the (running) replica of ``master_port``."""
        for node in self.alive_nodes():
            info = node.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == master_port:
                return node.port
        raise AssertionError(f"master {master_port} has no running replica")

    def url(self, avoid: int | None = None) -> str:
        """``redis+cluster://`` URL of a running node (not ``avoid``, a node about to be killed)."""
        port = next(node.port for node in self.alive_nodes() if node.port != avoid)
        return f"redis+cluster://127.0.0.1:{port}/0"

    def client(self, avoid: int | None = None) -> redis.RedisCluster:
        """A cluster client (bytes responses, as livesync uses)."""
        port = next(node.port for node in self.alive_nodes() if node.port != avoid)
        return redis.RedisCluster(host="127.0.0.1", port=port, socket_connect_timeout=2)

    def partition_masters(self, namespace: str, partitions: int) -> list[int]:
        """The master port serving each partition's hash tag ``{ns:p}``."""
        keys = namespace_keys(namespace)
        return [self.master_of_slot(key_slot(keys.partition(p).seq.encode())) for p in range(partitions)]


def require_redis_binaries() -> None:
    """Skip (locally) or fail (in CI) when redis-server / redis-cli are not on PATH."""
    missing = [name for name in ("redis-server", "redis-cli") if shutil.which(name) is None]
    if missing:
        message = f"{' and '.join(missing)} not on PATH: the Redis Cluster tests need a real cluster"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must provide it)")
        pytest.skip(message)


def start_cluster(directory: Path) -> RedisClusterServers:
    """Start 6 nodes and create the 3-master, 3-replica cluster; one retry if a port got taken."""
    require_redis_binaries()
    for attempt in range(2):
        nodes = []
        for number in range(MASTERS * 2):
            node_dir = directory / f"try{attempt}-node{number}"
            node_dir.mkdir(parents=True)
            nodes.append(ClusterNode(free_port(), free_port(), node_dir))
        cluster = RedisClusterServers(nodes, directory)
        try:
            cluster.start()
            return cluster
        except AssertionError:
            cluster.stop()
            if attempt:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A 3-master, 3-replica Redis Cluster for the module's tests, torn down after them."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    print(f"cluster created in {cluster.created_in:.2f}s: masters {cluster.masters()}")
    try:
        yield cluster
    finally:
        cluster.stop()


def spread_namespace(cluster: RedisClusterServers, base: str, partitions: int) -> str:
    """A namespace starting with ``base`` whose partitions land on every master.

    A random namespace puts 6 partitions on one master with probability ~0.4 %; picking
    one that spans all masters makes the cross-node part of every test certain.
    """
    masters = set(cluster.masters())
    for suffix in range(200):
        candidate = f"{base}s{suffix}"
        if set(cluster.partition_masters(candidate, partitions)) == masters:
            return candidate
    raise AssertionError(f"no namespace {base}s* spreads {partitions} partitions over {sorted(masters)}")


@pytest.fixture
def cluster_namespace(redis_cluster: RedisClusterServers, namespace: str, real_redis: redis.Redis) -> str:
    """The test's namespace, chosen so its 6 partitions span all 3 masters.

    Depends on ``real_redis`` so the RQ keys of the queue ``q-<namespace>`` on the plain
    test Redis are deleted after the test.
    """
    return spread_namespace(redis_cluster, namespace, 6)


class ClusterProcesses(Processes):
    """Processes of a test; the parent closes its copy of each log file at once."""

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.tmp_path / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv, cwd=TESTS_DIR.parent, env={**self.env, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        proc = Proc(name, process, log)
        self.started.append(proc)
        return proc


def cluster_process_env(url: str, rq_url: str, namespace: str) -> dict[str, str]:
    """Environment of livesync processes: the track on the cluster ``url``, the queue on ``rq_url``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
    env.update(
        {
            "LIVESYNC_REDIS_URL": url,
            "LIVESYNC_RQ_URL": rq_url,
            "LIVESYNC_NAMESPACE": namespace,
            "LIVESYNC_QUEUE": f"q-{namespace}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def cluster_env(redis_cluster: RedisClusterServers, cluster_namespace: str, redis_url: str) -> dict[str, str]:
    """Environment of the test's livesync processes: the cluster's track, the plain Redis's queue."""
    return cluster_process_env(redis_cluster.url(), redis_url, cluster_namespace)


@pytest.fixture
def cluster_processes(tmp_path: Path, cluster_env: dict[str, str]) -> Iterator[ClusterProcesses]:
    """Start processes for a test; every one of them is stopped when it ends."""
    procs = ClusterProcesses(tmp_path, cluster_env)
    yield procs
    procs.stop_all()


def run_ok(processes: Processes, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run a livesync command; fail with its output unless it exits 0. Returns stdout."""
    done = processes.run(*args, env=env, timeout=timeout)
    assert done.returncode == 0, f"livesync {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def publisher_argv(
    url: str, namespace: str, log: Path, *, number: int, seconds: float, rate: float, objects: int, **extra: Any
) -> list[str]:
    """argv of a publisher process (``python -m cluster.conftest publish``)."""
    argv = [
        sys.executable, "-m", "cluster.conftest", "publish", "--url", url, "--namespace", namespace,
        "--log", str(log), "--number", str(number), "--seconds", str(seconds), "--rate", str(rate),
        "--objects", str(objects),
    ]  # fmt: skip
    for name, value in extra.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


# -- the publisher process -------------------------------------------------------------------

TYPES = ("event", "contribution", "category", "attachment")
MODIFICATIONS = ("data_changed", "title_changed", "protection_changed", "acl_changed", "location_changed")


def next_change(state: str, rng: random.Random) -> tuple[list[str], str]:
    """Flags of one valid change of an object in ``state`` and the state after it."""
    extra = [rng.choice(MODIFICATIONS)] if rng.random() < 0.3 else []
    if state == "absent":
        return ["created", *extra], "live"
    if state == "deleted":
        return [rng.choice(("undeleted", "created")), *extra], "live"
    if state == "unpublished":
        return ["published"], "live"
    roll = rng.random()
    if roll < 0.08:
        return ["deleted"], "deleted"
    if roll < 0.12:
        return ["unpublished"], "unpublished"
    if roll < 0.3:
        return sorted({"moved", *extra}), "live"
    return sorted(set(rng.sample(MODIFICATIONS, rng.choice((1, 1, 2))))), "live"


def publish_main(argv: list[str]) -> int:
    """Publish a valid stream over objects of this process alone, logging what returned.

    Each process owns its objects (``number`` is part of every id), so its own states
    keep every object's stream valid without coordination. A call that raised may or
    may not have landed (in part: ``emit_many`` writes one partition after the other),
    so it is not logged as published: its items go to ``<log>.uncertain`` and its
    objects are never changed again (their state is unknown). An object gets at most
    ``--max-changes`` changes, so the checker's work per object stays small.
    """
    from livesync import Publisher
    from livesync.changes import flag_names
    from livesync.namespace import partition_of

    parser = argparse.ArgumentParser(prog="cluster.conftest publish")
    for name in ("--url", "--namespace", "--log"):
        parser.add_argument(name, required=True)
    for name in ("--number", "--objects"):
        parser.add_argument(name, type=int, required=True)
    for name in ("--seconds", "--rate"):
        parser.add_argument(name, type=float, required=True)
    parser.add_argument("--wait-replicas", type=int, default=0)
    parser.add_argument("--wait-timeout", type=float, default=1.0)
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--max-changes", type=int, default=8, help="changes per object at most (keeps checks fast)")
    parser.add_argument("--failure-pause", type=float, default=0.2, help="seconds to wait after a call that raised")
    args = parser.parse_args(argv)

    rng = random.Random(args.number)
    pub = Publisher.from_url(
        args.url, args.namespace, retries=args.retries, wait_replicas=args.wait_replicas, wait_timeout=args.wait_timeout
    )
    partitions = pub.meta.partitions
    pool: list[tuple[str, Any]] = []
    for index in range(args.objects):
        type_ = TYPES[index % len(TYPES)]
        pool.append((type_, f"p{args.number}-{index}" if type_ == "contribution" else args.number * 1_000_000 + index))
    states: dict[tuple[str, Any], str] = {}
    unknown: set[tuple[str, Any]] = set()  # objects of calls that raised: their state is unknown
    changed: dict[tuple[str, Any], int] = {}  # objects with max_changes changes are left alone
    log, uncertain = Path(args.log), Path(args.log + ".uncertain")
    log.touch()
    summary: dict[str, Any] = {"published": 0, "calls": 0, "failed_calls": 0, "errors": {}}
    failures: list[tuple[float, str, list[int]]] = []  # (wall clock at the call's start, error, partitions)
    slowest = 0.0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < args.seconds:
        ahead = summary["published"] - elapsed * args.rate
        if ahead > 0:
            time.sleep(min(ahead / args.rate, args.seconds - elapsed))
            continue
        free = [key for key in pool if key not in unknown and changed.get(key, 0) < args.max_changes]
        if not free:
            break
        kind = rng.choices(("emit", "emit_many", "collect"), (5, 2, 3))[0]
        picked = [free[rng.randrange(len(free))] for _ in range(rng.randint(3, 15) if kind == "emit_many" else 1)]
        items: list[tuple[str, Any, list[str]]] = []
        called, called_at = time.monotonic(), time.time()
        try:
            if kind == "collect":
                with pub.collect() as unit:
                    for key in [key for key in picked for _ in range(rng.randint(2, 5))]:
                        flags, states[key] = next_change(states.get(key, "absent"), rng)
                        unit.emit(key[0], key[1], *flags)
                    # collect() merges or splits: log what it actually publishes
                    items = [(t, i, list(flag_names(mask))) for t, i, mask in unit.changes]
                seqs = unit.seqs
            else:
                previous = {key: states.get(key, "absent") for key in picked}
                for key in picked:
                    flags, previous[key] = next_change(previous[key], rng)
                    items.append((key[0], key[1], flags))
                seqs = pub.emit_many(items) if kind == "emit_many" else [pub.emit(*items[0][:2], *items[0][2])]
                states.update(previous)
        except Exception as exc:  # a failed call: unknown whether (part of) it landed
            summary["failed_calls"] += 1
            name = type(exc).__name__
            summary["errors"][name] = summary["errors"].get(name, 0) + 1
            if kind == "collect":
                items = [(t, i, list(flag_names(mask))) for t, i, mask in unit.changes]
            failures.append((round(called_at, 3), name, sorted({partition_of(t, i, partitions) for t, i, _ in items})))
            with uncertain.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"at": time.time(), "error": f"{name}: {exc}"[:500], "items": items}) + "\n")
            unknown.update(picked)
            time.sleep(args.failure_pause)
            continue
        slowest = max(slowest, time.monotonic() - called)
        for type_, id_, _flags in items:
            changed[(type_, id_)] = changed.get((type_, id_), 0) + 1
        where = [(partition_of(t, i, partitions), seq) for seq, (t, i, _) in zip(seqs, items, strict=True)]
        log_published(log, where, items)
        summary["published"] += len(seqs)
        summary["calls"] += 1
    summary.update(
        unknown=len(unknown),
        failures=failures,
        slowest_call_s=round(slowest, 3),
        seconds=round(time.monotonic() - start, 3),
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["publish"]:
        sys.exit("usage: python -m cluster.conftest publish --url URL --namespace NS --log PATH ...")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(publish_main(sys.argv[2:]))
