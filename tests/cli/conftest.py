"""Fixtures of the CLI tests: the environment, an in-process invoker, a populated namespace."""

from __future__ import annotations

import pytest

from .helpers import Invoke, jsonl, line, ok


@pytest.fixture
def populated(cli: Invoke) -> Invoke:
    """A namespace with three changes and one agent ``a`` at the tail."""
    ok(cli("publish", "--file", "-", input=jsonl(*(line("event", n, "created") for n in (1, 2, 3)))))
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    return cli
