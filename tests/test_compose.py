"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

Each service's command (the image's ENTRYPOINT and CMD applied as Docker does) must be a
real command: ``livesync ...`` and ``rq ...`` lines are run here with ``--help`` appended
(click rejects an unknown command or option before it prints help), and the
``redis-server`` line is started as a private server whose configuration is then read
back. The build context, the Dockerfile and every COPY source must exist, and the
``LIVESYNC_*`` variables the services set must be settings livesync knows and accepts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from livesync.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent
LIVESYNC_SERVICES = {
    "worker": ["livesync", "worker"],
    "scheduler": ["livesync", "scheduler"],
    "dashboard": ["livesync", "dashboard"],
    "metrics": ["livesync", "metrics"],
    "relay": ["livesync", "relay"],  # profile outbox: tests/test_compose_relay.py
}
#: Variables of the dashboard (livesync.dashboard), not fields of Settings.
DASHBOARD_VARIABLES = {"LIVESYNC_DASHBOARD_USERNAME", "LIVESYNC_DASHBOARD_PASSWORD"}


# -- reading the files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "no services in docker-compose.yml"
    return data


def build_of(service: dict[str, Any]) -> tuple[Path, Path]:
    """The build context and Dockerfile of a service that builds its image."""
    build = service["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (ROOT / build.get("context", ".")).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, f"{path}: the last instruction ends with a continuation"
    return instructions


def as_argv(value: str | list[str] | None, *, dockerfile: bool = False) -> list[str]:
    """A command as an argv: exec form as is; shell form through /bin/sh (Dockerfile) or split (compose)."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(item) for item in value]
    if dockerfile:
        if value.startswith("["):
            return [str(item) for item in json.loads(value)]
        return ["/bin/sh", "-c", value]
    return shlex.split(value)


def image_process(service: dict[str, Any]) -> list[str]:
    """The argv a built service's container runs: entrypoint + command, as Docker resolves them.

    A service's ``entrypoint`` replaces the image's ENTRYPOINT and drops its CMD; its
    ``command`` replaces the CMD.
    """
    _context, dockerfile = build_of(service)
    image = dict(dockerfile_instructions(dockerfile))  # the last of each instruction wins
    if "entrypoint" in service:
        return as_argv(service["entrypoint"]) + as_argv(service.get("command"))
    entrypoint = as_argv(image.get("ENTRYPOINT"), dockerfile=True)
    command = as_argv(service["command"]) if "command" in service else as_argv(image.get("CMD"), dockerfile=True)
    return entrypoint + command


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3) or ""
        current = environ.get(name)
        if operator == ":-":
            return current or argument
        if operator == "-":
            return argument if current is None else current
        if operator in (":?", "?") and not current:
            raise KeyError(f"{name} is required: {argument}")
        return current or ""

    return _VARIABLE.sub(replace, value)


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) if "=" in item else (item, "") for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def run_help(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a livesync or rq command line from the venv with --help appended, in a clean environment."""
    program = BIN / argv[0]
    assert program.is_file(), f"{argv[0]} is not installed next to {sys.executable}"
    env = {"PATH": str(BIN), "HOME": str(Path.home()), "LANG": "C.UTF-8"}
    return subprocess.run(
        [str(program), *argv[1:], "--help"], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def option_value(argv: list[str], option: str) -> str | None:
    for index, word in enumerate(argv):
        if word == option and index + 1 < len(argv):
            return argv[index + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


# -- the topology -----------------------------------------------------------------------------


def test_compose_has_the_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", *LIVESYNC_SERVICES}
    assert services["redis"]["image"].startswith("redis:")
    for name in LIVESYNC_SERVICES:
        assert "build" in services[name], f"{name} does not build the livesync image"
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict) and depends.get("redis", {}).get("condition") == "service_healthy", (
            f"{name} must wait for a healthy redis: {depends}"
        )
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts the undeclared named volume {source}"


def test_worker_scales(compose: dict[str, Any]) -> None:
    """`docker compose up --scale worker=N` needs no fixed container name and no published host port."""
    worker = compose["services"]["worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert "deploy" not in worker or "replicas" not in (worker["deploy"] or {})


@pytest.mark.parametrize("name", sorted(LIVESYNC_SERVICES))
def test_livesync_service_command_works(compose: dict[str, Any], name: str) -> None:
    argv = image_process(compose["services"][name])
    assert argv[: len(LIVESYNC_SERVICES[name])] == LIVESYNC_SERVICES[name], argv
    result = run_help(argv)
    assert result.returncode == 0, f"`{shlex.join(argv)} --help` failed:\n{result.stdout}{result.stderr}"
    assert "Usage: livesync" in result.stdout


@pytest.mark.parametrize("name", ["dashboard", "metrics"])
def test_servers_listen_on_every_interface_at_their_published_port(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    argv = image_process(service)
    assert option_value(argv, "--host") == "0.0.0.0", argv
    port = option_value(argv, "--port") or {"dashboard": "9181", "metrics": "9468"}[name]
    published = [str(mapping).rsplit(":", 1)[-1].split("/")[0] for mapping in service.get("ports") or []]
    assert port in published, f"{name} listens on {port} but publishes {service.get('ports')}"
    for mapping in service.get("ports") or []:
        assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond the host's loopback"


def test_dashboard_has_basic_auth_from_the_environment(compose: dict[str, Any]) -> None:
    environment = environment_of(compose["services"]["dashboard"])
    assert set(environment) >= DASHBOARD_VARIABLES
    # Credentials come from the operator's environment (or .env), never written in the file.
    assert environment["LIVESYNC_DASHBOARD_PASSWORD"].startswith("${LIVESYNC_DASHBOARD_PASSWORD")
    with pytest.raises(KeyError, match="LIVESYNC_DASHBOARD_PASSWORD"):
        interpolate(environment["LIVESYNC_DASHBOARD_PASSWORD"], {})  # required: no open dashboard by mistake
    for name in ("worker", "scheduler", "metrics", "relay"):
        assert not DASHBOARD_VARIABLES & set(environment_of(compose["services"][name])), name


@pytest.mark.parametrize("name", sorted(LIVESYNC_SERVICES))
def test_livesync_environment_is_valid_settings(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    environment = environment_of(services[name])
    unknown = {
        key
        for key in environment
        if key.startswith("LIVESYNC_")
        and key not in DASHBOARD_VARIABLES
        and key.removeprefix("LIVESYNC_").lower() not in Settings.model_fields
    }
    assert not unknown, f"{name} sets variables livesync does not read: {sorted(unknown)}"
    operator = {"LIVESYNC_DASHBOARD_PASSWORD": "secret", "LIVESYNC_OUTBOX_URL": "postgresql+psycopg://app:pw@db/app"}
    for key in [key for key in os.environ if key.startswith("LIVESYNC_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        monkeypatch.setenv(key, interpolate(value, operator))
    settings = Settings()
    host = settings.redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1].split(":")[0]
    assert host in services, f"{name}: LIVESYNC_REDIS_URL points at {host}, which is no service"


# -- redis ------------------------------------------------------------------------------------


def test_redis_service_is_persistent_and_healthchecked(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    argv = as_argv(redis_service.get("command"))
    assert argv[:1] == ["redis-server"], argv
    assert option_value(argv, "--appendonly") == "yes", argv
    assert any(str(volume).endswith(":/data") for volume in redis_service.get("volumes") or []), (
        "the AOF must live on a volume (/data is the redis image's workdir)"
    )
    healthcheck = redis_service.get("healthcheck") or {}
    test = healthcheck.get("test")
    assert isinstance(test, list) and test[:1] in (["CMD"], ["CMD-SHELL"]), healthcheck
    assert "redis-cli" in " ".join(test[1:]) and "ping" in " ".join(test[1:]).lower(), healthcheck


def redis_flags(argv: list[str]) -> list[tuple[str, list[str]]]:
    """``--name value...`` pairs of a redis-server command line."""
    flags: list[tuple[str, list[str]]] = []
    for word in argv[1:]:
        if word.startswith("--"):
            flags.append((word[2:], []))
        else:
            assert flags, f"redis-server argument {word!r} before any --option (a config file is not checked)"
            flags[-1][1].append(word)
    return flags


def test_redis_command_runs_here_with_the_same_flags(
    compose: dict[str, Any], redis_server_binary: str, tmp_path: Path
) -> None:
    """redis-server exists, is the image's major version, and accepts the compose flags with their values."""
    redis_service = compose["services"]["redis"]
    version = subprocess.run(
        [redis_server_binary, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert version.returncode == 0, version.stderr
    local = re.search(r"v=(\d+)\.", version.stdout)
    assert local, version.stdout
    tag = redis_service["image"].partition(":")[2]
    if tag[:1].isdigit():
        assert tag.split(".")[0].split("-")[0] == local.group(1), f"image {redis_service['image']} vs {version.stdout}"

    flags = redis_flags(as_argv(redis_service["command"]))
    local_only = {"port", "bind", "dir", "unixsocket", "daemonize", "logfile", "pidfile"}
    socket_path = tmp_path / "redis.sock"
    argv = [redis_server_binary]
    for name, values in flags:
        if name not in local_only:
            argv += [f"--{name}", *values]
    argv += ["--port", "0", "--unixsocket", str(socket_path), "--dir", str(tmp_path), "--daemonize", "no"]
    with open(tmp_path / "redis.log", "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=str(socket_path), decode_responses=True)
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "redis.log").read_text()
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, (tmp_path / "redis.log").read_text()
                time.sleep(0.05)
        for name, values in flags:
            if name not in local_only:
                assert client.config_get(name).get(name) == " ".join(values), (name, client.config_get(name))
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=20)


# -- the image ----------------------------------------------------------------------------------


def built_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in compose["services"].items():
        if "build" in service:
            yield name, service


def test_build_context_dockerfile_and_copy_sources_exist(compose: dict[str, Any]) -> None:
    builds = {build_of(service) for _name, service in built_services(compose)}
    assert builds, "no service builds an image"
    for context, dockerfile in builds:
        assert context.is_dir(), context
        assert dockerfile.is_file(), dockerfile
        instructions = dockerfile_instructions(dockerfile)
        assert instructions[0][0] in ("FROM", "ARG"), instructions[0]
        copies = [arguments for keyword, arguments in instructions if keyword in ("COPY", "ADD")]
        assert copies
        for arguments in copies:
            words = as_argv(arguments, dockerfile=True) if arguments.startswith("[") else shlex.split(arguments)
            if any(word.startswith("--from") for word in words):
                continue  # from another build stage or image
            words = [word for word in words if not word.startswith("--")]  # --chown=, --chmod=
            *sources, _destination = words
            assert sources, arguments
            for source in sources:
                matches = list(context.glob(source)) if any(c in source for c in "*?[") else [context / source]
                assert matches and all(match.exists() for match in matches), f"COPY source {source} is missing"


def test_dockerfile_installs_existing_extras_and_its_cmd_works(compose: dict[str, Any]) -> None:
    _context, dockerfile = build_of(compose["services"]["worker"])
    instructions = dockerfile_instructions(dockerfile)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installs = [arguments for keyword, arguments in instructions if keyword == "RUN" and "pip install" in arguments]
    assert installs, "the Dockerfile installs nothing"
    wanted = {extra for text in installs for group in re.findall(r"\.\[([^\]]*)\]", text) for extra in group.split(",")}
    assert "dashboard" in wanted, "the dashboard service needs the dashboard extra"
    assert wanted <= set(extras), f"unknown extras {wanted - set(extras)}"
    image = dict(instructions)
    argv = as_argv(image.get("ENTRYPOINT"), dockerfile=True) + as_argv(image.get("CMD"), dockerfile=True)
    assert argv[:1] == ["livesync"], f"the image's default process {argv} is not livesync"
    result = run_help(argv)
    assert result.returncode == 0, result.stderr
