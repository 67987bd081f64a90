"""docker-compose.cluster.yml, checked without a Docker engine (the helpers are tests/test_compose.py's).

The livesync services must run real ``livesync`` commands (``--help`` works) from the same
image as docker-compose.yml, with ``LIVESYNC_*`` variables that are settings and make a
valid cluster configuration (track on the cluster, RQ on ``rq-redis``, P = 6). The
redis nodes' flags are started on the local ``redis-server`` and read back, and the
cluster-init script is run against 6 local nodes started with those flags: it must
create a cluster of 3 masters and 3 replicas, and do nothing the second time.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from test_compose import (
    DASHBOARD_VARIABLES,
    LIVESYNC_SERVICES,
    ROOT,
    as_argv,
    build_of,
    environment_of,
    image_process,
    interpolate,
    option_value,
    redis_flags,
    run_help,
)

from livesync.config import Settings

CLUSTER_COMPOSE = ROOT / "docker-compose.cluster.yml"
NODES = [f"redis-node-{number}" for number in range(1, 7)]
#: Flags that name where a server listens or writes: replaced when a node runs here.
LOCAL_ONLY = {"port", "bind", "dir", "unixsocket", "daemonize", "logfile", "pidfile"}


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    data = yaml.safe_load(CLUSTER_COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services in the cluster compose file"
    return data


def defaults(value: str) -> str:
    """``value`` as Compose interpolates it with nothing set in the operator's environment."""
    return interpolate(str(value), {"LIVESYNC_DASHBOARD_PASSWORD": "secret"})


def init_script(cluster: dict[str, Any]) -> str:
    """The cluster-init shell script, interpolated as Compose does (``$$`` -> ``$``)."""
    argv = as_argv(cluster["services"]["cluster-init"]["command"])
    assert argv[:2] == ["sh", "-c"] and len(argv) == 3, argv
    return defaults(argv[2])


def create_line(script: str) -> list[str]:
    lines = [line.strip() for line in script.splitlines() if "--cluster create" in line]
    assert len(lines) == 1, f"expected one `redis-cli --cluster create` line, got {lines}"
    return shlex.split(lines[0])


def node_port(service: dict[str, Any]) -> int:
    return int(option_value(as_argv(service["command"]), "--port") or 6379)


# -- topology ----------------------------------------------------------------------------------


def test_cluster_topology(cluster: dict[str, Any]) -> None:
    services = cluster["services"]
    assert set(services) == {*NODES, "cluster-init", "rq-redis", *LIVESYNC_SERVICES}
    for name in [*NODES, "cluster-init", "rq-redis"]:
        assert str(services[name]["image"]).startswith("redis:"), name
    assert services["cluster-init"].get("restart") == "no", "cluster-init is a one-shot"
    assert services["cluster-init"]["depends_on"] == {node: {"condition": "service_healthy"} for node in NODES}
    for name in LIVESYNC_SERVICES:
        depends = services[name].get("depends_on")
        assert depends == {
            "cluster-init": {"condition": "service_completed_successfully"},
            "rq-redis": {"condition": "service_healthy"},
        }, f"{name} must wait for the cluster to be created and the queue's Redis: {depends}"
    declared = set(cluster.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts the undeclared named volume {source}"


def test_livesync_services_use_the_image_of_docker_compose_yml(cluster: dict[str, Any]) -> None:
    single = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    expected = build_of(single["services"]["worker"])
    for name in LIVESYNC_SERVICES:
        assert build_of(cluster["services"][name]) == expected, name
        assert cluster["services"][name].get("image") == single["services"]["worker"].get("image"), name


def test_worker_scales(cluster: dict[str, Any]) -> None:
    worker = cluster["services"]["worker"]
    assert "container_name" not in worker and not worker.get("ports")
    assert "deploy" not in worker or "replicas" not in (worker["deploy"] or {})


@pytest.mark.parametrize("name", sorted(LIVESYNC_SERVICES))
def test_livesync_service_command_works(cluster: dict[str, Any], name: str) -> None:
    argv = image_process(cluster["services"][name])
    assert argv[: len(LIVESYNC_SERVICES[name])] == LIVESYNC_SERVICES[name], argv
    result = run_help(argv)
    assert result.returncode == 0, f"`{shlex.join(argv)} --help` failed:\n{result.stdout}{result.stderr}"
    assert "Usage: livesync" in result.stdout


@pytest.mark.parametrize("name", ["dashboard", "metrics"])
def test_servers_publish_on_the_host_loopback_only(cluster: dict[str, Any], name: str) -> None:
    service = cluster["services"][name]
    argv = image_process(service)
    assert option_value(argv, "--host") == "0.0.0.0", argv
    published = [str(mapping).rsplit(":", 1)[-1] for mapping in service.get("ports") or []]
    assert option_value(argv, "--port") in published, service.get("ports")
    assert all(str(mapping).startswith("127.0.0.1:") for mapping in service["ports"]), service["ports"]


@pytest.mark.parametrize("name", sorted(LIVESYNC_SERVICES))
def test_livesync_environment_is_a_valid_cluster_configuration(
    cluster: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = cluster["services"]
    environment = environment_of(services[name])
    unknown = {
        key
        for key in environment
        if key.startswith("LIVESYNC_")
        and key not in DASHBOARD_VARIABLES
        and key.removeprefix("LIVESYNC_").lower() not in Settings.model_fields
    }
    assert not unknown, f"{name} sets variables livesync does not read: {sorted(unknown)}"
    assert not DASHBOARD_VARIABLES & set(environment) or name == "dashboard", name
    for key in [key for key in os.environ if key.startswith("LIVESYNC_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, defaults(value))
    settings = Settings()
    assert settings.cluster and settings.redis_url == "redis+cluster://redis-node-1:6379/0"
    assert settings.rq_url == "redis://rq-redis:6379/0" and settings.queue_url == settings.rq_url
    assert settings.partitions == 6
    for url in (settings.redis_url, settings.queue_url):
        host, _, port = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].partition(":")
        assert host in services, f"{name}: {url} points at {host}, which is no service"
        if host in NODES:
            assert int(port) == node_port(services[host])


# -- the redis nodes and rq-redis ------------------------------------------------------------------


def test_cluster_nodes_are_persistent_healthchecked_and_fixed(cluster: dict[str, Any]) -> None:
    services = cluster["services"]
    commands = {node: as_argv(services[node]["command"]) for node in NODES}
    assert len({tuple(argv) for argv in commands.values()}) == 1, "the 6 nodes must run the same command"
    argv = commands[NODES[0]]
    assert argv[:1] == ["redis-server"], argv
    assert option_value(argv, "--cluster-enabled") == "yes"
    assert option_value(argv, "--cluster-config-file"), "each node keeps its cluster state in a config file"
    assert option_value(argv, "--appendonly") == "yes"
    subnets = cluster["networks"]["default"]["ipam"]["config"]
    network = ipaddress.ip_network(defaults(subnets[0]["subnet"]))
    dynamic = ipaddress.ip_network(defaults(subnets[0]["ip_range"]))
    addresses = set()
    for node in NODES:
        service = services[node]
        volumes = [str(volume) for volume in service.get("volumes") or []]
        assert volumes == [f"{node}-data:/data"], f"{node}: AOF and nodes.conf need a volume of its own at /data"
        test = service["healthcheck"]["test"]
        assert test[:1] == ["CMD"] and "redis-cli" in test and "ping" in test, test
        address = ipaddress.ip_address(defaults(service["networks"]["default"]["ipv4_address"]))
        assert address in network and address not in dynamic, f"{node}: {address} vs {network} / {dynamic}"
        addresses.add(address)
    assert len(addresses) == len(NODES), "every node needs an address of its own"


def test_rq_redis_is_plain_and_persistent(cluster: dict[str, Any]) -> None:
    service = cluster["services"]["rq-redis"]
    argv = as_argv(service["command"])
    assert argv[:1] == ["redis-server"] and option_value(argv, "--cluster-enabled") in (None, "no"), argv
    assert option_value(argv, "--appendonly") == "yes"
    assert any(str(volume).endswith(":/data") for volume in service.get("volumes") or [])
    assert "redis-cli" in service["healthcheck"]["test"]


def free_cluster_ports(count: int) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    candidates = random.sample(range(20_000, 30_000), 400)
    for port in candidates:
        if any(abs(port - taken) == 10_000 or port == taken for taken in ports):
            continue
        try:
            for number in (port, port + 10_000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", number))
        except OSError:
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    pytest.skip("no free ports for local cluster nodes")


class LocalNodes:
    """redis-server processes started here with a compose service's flags (where they listen replaced)."""

    def __init__(self, server: str, directory: Path) -> None:
        self.server = server
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, flags: list[tuple[str, list[str]]], port: int) -> redis.Redis:
        workdir = self.directory / str(port)
        workdir.mkdir()
        argv = [self.server]
        for name, values in flags:
            if name not in LOCAL_ONLY:
                argv += [f"--{name}", *values]
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--daemonize", "no"]
        with open(workdir / "redis.log", "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.processes.append(process)
        client = redis.Redis(port=port, decode_responses=True)
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (workdir / "redis.log").read_text()
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                assert time.monotonic() < deadline, (workdir / "redis.log").read_text()
                time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def local_nodes(redis_server_binary: str, tmp_path: Path) -> Iterator[LocalNodes]:
    nodes = LocalNodes(redis_server_binary, tmp_path)
    yield nodes
    nodes.stop()


@pytest.mark.parametrize("name", ["redis-node-1", "rq-redis"])
def test_redis_flags_run_here(cluster: dict[str, Any], local_nodes: LocalNodes, name: str) -> None:
    """The local redis-server accepts the service's flags and reports them back, cluster mode included."""
    flags = redis_flags(as_argv(cluster["services"][name]["command"]))
    client = local_nodes.start(flags, free_cluster_ports(1)[0])
    for flag, values in flags:
        if flag not in LOCAL_ONLY:
            assert client.config_get(flag).get(flag) == " ".join(values), (flag, client.config_get(flag))
    if name in NODES:
        assert client.config_get("cluster-enabled") == {"cluster-enabled": "yes"}
        assert client.execute_command("CLUSTER", "INFO").startswith("cluster_state:fail")  # until cluster-init
    else:
        assert client.info("cluster")["cluster_enabled"] == 0
    client.close()


# -- cluster-init -------------------------------------------------------------------------------------


def test_cluster_init_creates_six_nodes_with_one_replica_each(cluster: dict[str, Any]) -> None:
    services = cluster["services"]
    script = init_script(cluster)
    syntax = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr
    words = create_line(script)
    assert words[:3] == ["redis-cli", "--cluster", "create"], words
    assert option_value(words, "--cluster-replicas") == "1" and "--cluster-yes" in words, words
    nodes_env = defaults(environment_of(services["cluster-init"])["CLUSTER_NODES"]).split()
    addresses = [word for word in words[3:] if not word.startswith("-") and word != "1"]
    expanded = [item for word in addresses for item in (nodes_env if word == "$CLUSTER_NODES" else [word])]
    assert len(expanded) == 6 and len(set(expanded)) == 6, expanded
    for address in expanded:
        host, _, port = address.rpartition(":")
        assert host in NODES and int(port) == node_port(services[host]), address
    assert sorted(address.rpartition(":")[0] for address in expanded) == NODES
    guard, create = script.index("cluster_state:ok"), script.index("--cluster create")
    assert "cluster info" in script[:create] and guard < create, "the create must be skipped when the cluster is ok"
    assert "exit 0" in script[guard:create]


def test_cluster_init_script_creates_the_cluster_once(cluster: dict[str, Any], local_nodes: LocalNodes) -> None:
    """The script of cluster-init, run here against 6 local nodes started with the nodes' flags."""
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        pytest.skip("redis-cli is not on PATH")
    flags = redis_flags(as_argv(cluster["services"]["redis-node-1"]["command"]))
    ports = free_cluster_ports(6)
    clients = [local_nodes.start(flags, port) for port in ports]
    script = init_script(cluster)
    env = {
        "PATH": f"{Path(redis_cli).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "CLUSTER_NODES": " ".join(f"127.0.0.1:{port}" for port in ports),
    }

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=90, check=False)

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "All 16384 slots covered" in first.stdout and "cluster_state:ok" in first.stdout
    assert clients[0].execute_command("CLUSTER", "INFO").startswith("cluster_state:ok")
    roles = [client.info("replication")["role"] for client in clients]
    assert sorted(roles) == ["master"] * 3 + ["slave"] * 3, roles  # 3 masters, 1 replica each
    assert len(clients[0].execute_command("CLUSTER", "NODES").strip().splitlines()) == 6
    second = run()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to do" in second.stdout and "--cluster create" not in second.stdout + second.stderr
    assert "Performing hash slots allocation" not in second.stdout
    for client in clients:
        client.close()
