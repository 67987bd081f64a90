"""Fixtures of the Redis Cluster suite: a real 3-master, 3-replica cluster on loopback ports.

Every node is a ``redis-server --cluster-enabled yes`` process with its own directory,
``nodes.conf`` and AOF under the module's tmp dir; ``redis-cli --cluster create`` joins
them (one replica per master) and the fixture waits until every node reports
``cluster_state:ok`` and every replica's link to its master is up. The node timeout is
2 s, so a killed master's replica takes over within a few seconds. The cluster is
module-scoped (creation takes a few seconds); tests use their own namespaces. The RQ
queue lives on the plain test Redis (``LIVESYNC_RQ_URL``): RQ does not support clusters.

The cluster tests' publisher processes are ``support.publisher owned`` (see there).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot
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
