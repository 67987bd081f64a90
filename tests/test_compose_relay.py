"""The relay service of both compose files, checked without a Docker engine (helpers: tests/test_compose.py).

The relay is in the ``outbox`` profile: plain ``docker compose up`` starts the rest of
the topology without an outbox database, ``--profile outbox`` adds it. Its database URL
comes from the operator's environment (or ``.env``), never from the file. The service's
command runs here with the environment the file gives it (the URLs pointed at the test's
PostgreSQL and Redis): without a URL it exits naming the variable; with one it relays a
committed row and stops warm on SIGTERM. The image installs the extra it needs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from support.outbox import database_url, outbox_ids
from support.processes import Processes
from support.sql_databases import drop_table, unique_table
from support.waiting import wait_for
from test_compose import ROOT, build_of, dockerfile_instructions, environment_of, image_process, interpolate

from livesync import Publisher
from livesync.keys import namespace_keys
from livesync.namespace import partition_of
from livesync.outbox import create_table, emit, relay_engine
from livesync.track import Track

FILES = ["docker-compose.yml", "docker-compose.cluster.yml"]
OPERATOR = {"LIVESYNC_DASHBOARD_PASSWORD": "secret"}
#: What the processes get besides the service's variables: the venv's programs, a locale.
BASE_ENV = {"PATH": str(Path(sys.executable).parent), "HOME": str(Path.home()), "LANG": "C.UTF-8"}


@pytest.fixture(scope="module", params=FILES)
def compose(request: pytest.FixtureRequest) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / request.param).read_text())
    assert isinstance(data, dict) and "relay" in (data.get("services") or {}), f"{request.param} has no relay"
    return data


def relay_environment(compose: dict[str, Any], operator: dict[str, str]) -> dict[str, str]:
    """The relay container's LIVESYNC_* variables as Compose interpolates them with ``operator``'s environment."""
    return {key: interpolate(value, operator) for key, value in environment_of(compose["services"]["relay"]).items()}


def test_the_relay_runs_livesync_relay_only_in_the_outbox_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    relay = services["relay"]
    assert image_process(relay) == ["livesync", "relay"]
    assert relay.get("profiles") == ["outbox"]
    # every other service starts with plain `docker compose up`
    assert [name for name, service in services.items() if name != "relay" and service.get("profiles")] == []
    assert build_of(relay) == build_of(services["worker"]) and relay.get("image") == services["worker"].get("image")
    assert relay.get("depends_on") == services["worker"].get("depends_on")
    assert "container_name" not in relay and not relay.get("ports"), "`--scale relay=N` needs neither"


def test_the_outbox_url_comes_from_the_operator_and_only_the_relay_has_it(compose: dict[str, Any]) -> None:
    raw = environment_of(compose["services"]["relay"])["LIVESYNC_OUTBOX_URL"]
    assert raw.startswith("${LIVESYNC_OUTBOX_URL"), "the URL (with its password) must not be written in the file"
    url = "postgresql+psycopg://app:pw@db/app"
    assert relay_environment(compose, {**OPERATOR, "LIVESYNC_OUTBOX_URL": url})["LIVESYNC_OUTBOX_URL"] == url
    # unset, the file still interpolates: `docker compose up` never needs it (the relay then says what is missing)
    assert relay_environment(compose, OPERATOR)["LIVESYNC_OUTBOX_URL"] == ""
    for name, service in compose["services"].items():
        if name != "relay":
            assert "LIVESYNC_OUTBOX_URL" not in environment_of(service), name


def test_the_image_installs_what_the_relay_imports() -> None:
    single = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    _context, dockerfile = build_of(single["services"]["relay"])
    installs = " ".join(args for keyword, args in dockerfile_instructions(dockerfile) if keyword == "RUN")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "sql" in installs.split(".[", 1)[1].split("]", 1)[0].split(","), "the relay needs the sql extra"
    assert any(dependency.startswith("sqlalchemy") for dependency in extras["sql"])
    assert any(dependency.startswith("psycopg") for dependency in extras["sql"])


# -- the service's command, run here -----------------------------------------------------------


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL of the test's PostgreSQL, an outbox table of the test's own), the table dropped afterwards."""
    url = database_url("postgresql", tmp_path)
    table = unique_table()
    engine = relay_engine(url)
    create_table(engine, table)
    yield url, table
    drop_table(engine, table)
    engine.dispose()


def service_env(compose: dict[str, Any], redis_url: str, namespace: str, **operator: str) -> dict[str, str]:
    """The relay's environment from the file, the Redis URL and namespace pointed at the test's."""
    env = relay_environment(compose, {**OPERATOR, **operator})
    return {**env, "LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_RQ_URL": redis_url, "LIVESYNC_NAMESPACE": namespace}


def test_without_an_outbox_url_the_relay_exits_naming_the_variable(
    compose: dict[str, Any], redis_url: str, namespace: str
) -> None:
    env = {**BASE_ENV, **service_env(compose, redis_url, namespace)}
    result = subprocess.run(image_process(compose["services"]["relay"]), env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2, result
    assert "set LIVESYNC_OUTBOX_URL" in result.stderr


def test_the_service_relays_committed_rows_and_stops_warm(
    compose: dict[str, Any],
    outbox: tuple[str, str],
    tmp_path: Path,
    redis_url: str,
    namespace: str,
    real_redis: redis.Redis,
) -> None:
    url, table = outbox
    engine = relay_engine(url)
    with engine.begin() as connection:
        emit(connection, "event", 7, "created", namespace=namespace, table=table)
    env = service_env(compose, redis_url, namespace, LIVESYNC_OUTBOX_URL=url)
    env["LIVESYNC_OUTBOX_TABLE"] = table  # the shared database: a table of the test's own
    partitions = int(env.get("LIVESYNC_PARTITIONS", "1"))  # the cluster file's P = 6
    partition = partition_of("event", 7, partitions)
    processes = Processes(tmp_path, BASE_ENV)
    try:
        proc = processes.start("relay", image_process(compose["services"]["relay"]), env)
        track = Track(real_redis, namespace_keys(namespace).partition(partition), 60)
        wait_for(lambda: track.head() == 1 or not proc.alive(), 60, "the change on the track", explain=proc.output)
        assert proc.alive(), proc.output()
        assert [(c.type, c.id) for c in track.iter_changes()] == [("event", 7)]
        # a relay that is the namespace's first user creates it with the file's LIVESYNC_PARTITIONS
        assert Publisher(real_redis, namespace).meta.partitions == partitions
        wait_for(lambda: outbox_ids(engine, table) == [], 60, "the row's delete", explain=proc.output)
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output()
        assert "relayed 1 change(s)" in proc.output()
    finally:
        processes.stop_all()
        engine.dispose()
