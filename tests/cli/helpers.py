"""What the CLI tests share: invoking, checking exit codes, reading --json output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from click.testing import Result

from livesync.keys import namespace_keys

UNREACHABLE_URL = "redis://:hunter2@127.0.0.1:1/0"
CONSOLE_SCRIPT = Path(sys.executable).with_name("livesync")

Invoke = Callable[..., Result]


def ok(result: Result) -> Result:
    """Assert a command succeeded, showing its output when it did not."""
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def as_json(result: Result) -> Any:
    """The JSON a successful ``--json`` command printed on standard output."""
    return json.loads(ok(result).stdout)


def listed(cli: Invoke, *args: str) -> list[dict[str, Any]]:
    """``livesync list --json ARGS...`` as a list of change dicts."""
    return as_json(cli("list", "--json", *args))  # type: ignore[no-any-return]


def seqs(changes: list[dict[str, Any]]) -> list[int]:
    return [change["seq"] for change in changes]


def jsonl(*items: dict[str, Any]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


def line(type_: str, id_: Any, *changes: str) -> dict[str, Any]:
    return {"type": type_, "id": id_, "changes": list(changes)}


def head(real_redis: redis.Redis, namespace: str) -> int:
    """The head of partition 0, read without creating the namespace."""
    return int(real_redis.get(namespace_keys(namespace).partition(0).seq) or 0)
