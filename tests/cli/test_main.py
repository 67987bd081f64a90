"""The ``livesync`` group (livesync.cli): errors as one line, --help, ``python -m livesync`` and the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis
from click.testing import CliRunner

from livesync.cli import main

from .helpers import CONSOLE_SCRIPT, UNREACHABLE_URL, Invoke

# unreachable Redis


@pytest.mark.parametrize(
    "command", [["status"], ["publish", "event", "1", "created"], ["agent", "list"]], ids=lambda c: " ".join(c)
)
def test_unreachable_redis_is_one_line_with_masked_url_and_exit_1(cli: Invoke, command: list[str]) -> None:
    # Given a Redis URL with a password where nothing listens
    # When a command needs Redis
    result = cli("--redis-url", UNREACHABLE_URL, *command)
    # Then it fails with exit 1 and one line naming the masked URL, never the password
    assert result.exit_code == 1, result.output
    assert "hunter2" not in result.output
    assert "redis://:***@127.0.0.1:1/0" in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("Error: cannot reach Redis at")


def test_console_script_unreachable_redis_prints_no_traceback(cli_environment: dict[str, str]) -> None:
    # Given the installed console script and an unreachable Redis with a password
    # When status runs in a real process
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "--redis-url", UNREACHABLE_URL, "status"],
        env={**os.environ, **cli_environment},
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Then stderr has one line naming the masked URL, no traceback, and it exits 1
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "redis://:***@127.0.0.1:1/0" in proc.stderr
    assert "hunter2" not in proc.stderr
    assert "Traceback" not in proc.stderr


# help


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["publish"],
        ["list"],
        ["init"],
        ["destroy"],
        ["status"],
        ["tick"],
        ["worker"],
        ["demo"],
        ["agent"],
        ["agent", "add"],
        ["agent", "list"],
        ["agent", "show"],
        ["agent", "remove"],
        ["agent", "pause"],
        ["agent", "resume"],
        ["agent", "run"],
        ["agent", "reset"],
    ],
    ids=lambda command: " ".join(command) or "livesync",
)
def test_help_exits_0(command: list[str]) -> None:
    # Given any command path
    # When it is asked for --help
    result = CliRunner().invoke(main, [*command, "--help"])
    # Then it prints its usage and exits 0
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")


# real processes


def test_python_dash_m_livesync_publishes_and_lists(cli_environment: dict[str, str], real_redis: redis.Redis) -> None:
    # Given the test namespace in the environment
    run_env = {**os.environ, **cli_environment}
    # When a change is published and listed through `python -m livesync`
    publish = subprocess.run(
        [sys.executable, "-m", "livesync", "publish", "event", "42", "created"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    listing = subprocess.run(
        [sys.executable, "-m", "livesync", "list", "--json"], env=run_env, capture_output=True, text=True, timeout=30
    )
    # Then both exit 0 and the change is listed with an integer id
    assert publish.returncode == 0, publish.stderr
    assert listing.returncode == 0, listing.stderr
    assert [(c["seq"], c["id"]) for c in json.loads(listing.stdout)] == [(1, 42)]


def test_console_script_bad_input_exits_2(cli_environment: dict[str, str], real_redis: redis.Redis) -> None:
    # Given the installed `livesync` console script
    # When it publishes an unknown flag
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "publish", "event", "1", "bogus"],
        env={**os.environ, **cli_environment},
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Then it exits 2 with one line naming the field
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: changes[0]: unknown flag 'bogus'")
    assert "Traceback" not in proc.stderr


def test_console_script_prints_its_version() -> None:
    # Given the installed `livesync` console script
    # When it is asked for its version
    proc = subprocess.run([str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, timeout=30)
    # Then it exits 0 naming the program and the package version
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("livesync, version ")
