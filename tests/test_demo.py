"""``livesync demo`` and the Redis it finds: the configured one, a private server, fakeredis.

The demo works in the fixed namespace and queue ``livesync-demo``; the test that runs
it on the real test Redis deletes those keys afterwards.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from livesync import jobs
from livesync.cli import main
from livesync.demo import NAMESPACE, run_demo
from livesync.embedded import embedded_redis

UNREACHABLE_URL = "redis://127.0.0.1:1/0"


@pytest.fixture
def demo_redis(redis_url: str) -> Iterator[redis.Redis]:
    """The real test Redis; the demo's namespace and queue are deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    doomed = list(client.scan_iter(match=f"livesync:{{{NAMESPACE}*", count=1000))
    doomed += list(client.scan_iter(match=f"rq:*{NAMESPACE}*", count=1000))
    for start in range(0, len(doomed), 500):
        client.delete(*doomed[start : start + 500])
    client.srem("rq:queues", f"rq:queue:{NAMESPACE}")
    client.close()
    jobs.reset()


@pytest.fixture
def no_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend no ``redis-server`` is on PATH."""
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)


def summary_from(output: str) -> dict[str, Any]:
    """The JSON summary ``demo --json`` prints last (after its progress lines)."""
    start = output.index("\n{\n") + 1
    return json.loads(output[start:])  # type: ignore[no-any-return]


def remove_target(summary: dict[str, Any]) -> None:
    """Delete the temporary directory the demo wrote its jsonl target to."""
    shutil.rmtree(Path(summary["jsonl_path"]).parent, ignore_errors=True)


def assert_synced_cleanly(summary: dict[str, Any], changes: int) -> None:
    assert set(summary["agents"]) == {"search", "console"}
    for agent_id, data in summary["agents"].items():
        assert data["records"] > 0, agent_id
        assert data["pending"] == 0, agent_id
        assert data["last_error"] is None, agent_id
    assert summary["changes_emitted"] == changes
    assert 0 < summary["changes_published"] <= changes
    assert summary["jsonl_matches_replay"] is True
    assert summary["live_objects_delivered"] == summary["live_objects_expected"]


def test_demo_json_syncs_both_agents_on_the_configured_redis(redis_url: str, demo_redis: redis.Redis) -> None:
    # Given the test Redis answering at --redis-url
    # When the demo runs with --json on a small workload
    result = CliRunner().invoke(
        main, ["--redis-url", redis_url, "demo", "--json", "--changes", "2000", "--objects", "200"]
    )
    # Then it exits 0 and says it used that Redis
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"using the Redis at {redis_url}" in result.output
    # And the summary shows both agents synced, nothing pending, and the jsonl target matching a replay
    summary = summary_from(result.stdout)
    remove_target(summary)
    assert_synced_cleanly(summary, 2000)


def test_embedded_redis_starts_a_private_server_when_the_url_does_not_answer() -> None:
    # Given nothing listening at the URL, and redis-server on PATH
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    # When the embedded Redis is entered
    with embedded_redis(UNREACHABLE_URL) as embedded:
        # Then it is a private redis-server on a unix socket that answers
        assert "private redis-server" in embedded.description
        assert embedded.url is not None and embedded.url.startswith("unix://")
        socket_path = Path(embedded.url.removeprefix("unix://"))
        assert socket_path.exists()
        assert embedded.client.ping() is True
    # And it is stopped afterwards: the socket file is gone
    assert not socket_path.exists()


def test_embedded_redis_falls_back_to_fakeredis_without_redis_server(no_redis_server: None) -> None:
    # Given nothing listening at the URL and no redis-server on PATH
    # When the embedded Redis is entered
    with embedded_redis(UNREACHABLE_URL) as embedded:
        # Then it is an in-process fakeredis that answers, reachable by no URL
        assert "fakeredis" in embedded.description
        assert embedded.url is None
        assert embedded.client.ping() is True


def test_run_demo_on_in_process_fakeredis_syncs_cleanly(
    no_redis_server: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given nothing listening at the URL and no redis-server on PATH
    # When the demo runs
    summary = run_demo(UNREACHABLE_URL, changes=500, objects=50)
    remove_target(summary)
    # Then it used fakeredis and both agents synced with the jsonl target matching a replay
    assert "using an in-process fakeredis" in capsys.readouterr().out
    assert_synced_cleanly(summary, 500)
