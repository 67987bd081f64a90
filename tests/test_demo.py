"""``livesync demo`` and the Redis it finds: the configured one, a private server, fakeredis.

The demo works in a namespace and queue of its own (``livesync-demo-<random>``) and
deletes them, and its temporary folder, when it ends; the fixture that runs it on the
real test Redis deletes whatever a failing test left behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from livesync import demo, jobs
from livesync.cli import main
from livesync.demo import NAMESPACE, run_demo
from livesync.first_redis import first_redis
from livesync.workload import generate

UNREACHABLE_URL = "redis://127.0.0.1:1/0"
UNREACHABLE_WITH_PASSWORD = "redis://:hunter2@127.0.0.1:1/0"


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
    jobs.clear_configuration()


@pytest.fixture
def no_redis_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend no ``redis-server`` is on PATH."""
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)


@pytest.fixture
def scratch_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, short temporary directory that ``tempfile`` hands out folders in.

    Short, because a private redis-server puts its unix socket there (at most ~100 bytes).
    """
    directory = Path(tempfile.mkdtemp(prefix="lsd", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def demo_keys(client: redis.Redis, namespace: str) -> list[bytes]:
    """Every key of a demo namespace and its RQ queue (jobs, registries, results, worker)."""
    return sorted(
        [
            *client.scan_iter(match=f"livesync:{{{namespace}*", count=1000),
            *client.scan_iter(match=f"rq:*{namespace}*", count=1000),
        ]
    )


def summary_from(output: str) -> dict[str, Any]:
    """The JSON summary ``demo --json`` prints last (after its progress lines)."""
    start = output.index("\n{\n") + 1
    return json.loads(output[start:])  # type: ignore[no-any-return]


def assert_synced_cleanly(summary: dict[str, Any], changes: int) -> None:
    assert set(summary["agents"]) == {"search", "console"}
    for agent_id, data in summary["agents"].items():
        assert data["records"] > 0, agent_id
        assert data["pending"] == 0, agent_id
        assert data["last_error"] is None, agent_id
    assert summary["changes_emitted"] == changes
    assert 0 < summary["changes_stored"] <= changes
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
    assert_synced_cleanly(summary, 2000)


def test_embedded_redis_starts_a_private_server_when_the_url_does_not_answer() -> None:
    # Given nothing listening at the URL, and redis-server on PATH
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    # When the embedded Redis is entered
    with first_redis(UNREACHABLE_URL) as embedded:
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
    with first_redis(UNREACHABLE_URL) as embedded:
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
    # Then it used fakeredis and both agents synced with the jsonl target matching a replay
    assert "using an in-process fakeredis" in capsys.readouterr().out
    assert_synced_cleanly(summary, 500)


# item 21: the figures agree, nothing is left behind, a failed URL is named


def test_demo_figures_say_what_collect_merged(
    redis_url: str, demo_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the workload the demo publishes: its first changes go through one collect() unit
    items = generate(2000, 200, 42)
    merged = len(items[: demo.UNIT_OF_WORK]) - len({(type_, id_) for type_, id_, _ in items[: demo.UNIT_OF_WORK]})
    assert merged > 0
    # When the demo runs
    summary = run_demo(redis_url, changes=2000, objects=200)
    out = capsys.readouterr().out
    # Then emitted, stored and merged add up, and both the publish line and the summary say so alike
    assert (summary["changes_emitted"], summary["changes_stored"], summary["changes_merged"]) == (
        2000,
        2000 - merged,
        merged,
    )
    figures = f"2000 emitted, {2000 - merged} stored (collect() merged {merged})"
    assert out.count(figures) == 2, out
    assert "published 2000" not in out


def test_demo_deletes_its_namespace_queue_and_folder_when_it_ends(
    redis_url: str, demo_redis: redis.Redis, scratch_tmp: Path, namespace: str
) -> None:
    # Given the demo running on the configured Redis in a namespace of its own
    own = f"{NAMESPACE}-{namespace}"
    # When it has run
    summary = run_demo(redis_url, changes=500, objects=50, namespace=own)
    assert summary["namespace"] == own
    assert_synced_cleanly(summary, 500)
    # Then no key of its namespace or queue is left, nor its temporary folder
    assert demo_keys(demo_redis, own) == []
    assert not demo_redis.sismember("rq:queues", f"rq:queue:{own}")
    assert list(scratch_tmp.iterdir()) == []
    assert summary["jsonl_path"] is None


def test_demo_default_namespace_is_new_on_every_run(redis_url: str, demo_redis: redis.Redis) -> None:
    # Given two demo runs without a namespace
    first = run_demo(redis_url, changes=100, objects=10)["namespace"]
    second = run_demo(redis_url, changes=100, objects=10)["namespace"]
    # Then each worked in a namespace of its own, named livesync-demo-..., and left none behind
    assert first != second
    assert first.startswith(f"{NAMESPACE}-") and second.startswith(f"{NAMESPACE}-")
    assert demo_keys(demo_redis, first) == demo_keys(demo_redis, second) == []


def test_demo_cleans_up_when_a_step_fails(
    redis_url: str, demo_redis: redis.Redis, scratch_tmp: Path, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a worker that breaks down in the middle of the demo
    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("worker broke down")

    monkeypatch.setattr(demo.SimpleWorker, "work", broken)
    own = f"{NAMESPACE}-{namespace}"
    # When the demo runs
    with pytest.raises(RuntimeError, match="worker broke down"):
        run_demo(redis_url, changes=500, objects=50, namespace=own)
    # Then it still deleted its namespace, its queued jobs and its temporary folder
    assert demo_keys(demo_redis, own) == []
    assert list(scratch_tmp.iterdir()) == []


def test_demo_output_keeps_the_jsonl_target_at_the_given_path(
    redis_url: str, demo_redis: redis.Redis, tmp_path: Path
) -> None:
    # Given an output path for the jsonl target
    output = tmp_path / "search.jsonl"
    # When the demo runs with it
    result = CliRunner().invoke(
        main,
        ["--redis-url", redis_url, "demo", "--json", "--changes", "500", "--objects", "50", "--output", str(output)],
    )
    # Then the file stays there, holds the delivered records, and the summary names it
    assert result.exit_code == 0, (result.output, result.exception)
    summary = summary_from(result.stdout)
    assert summary["jsonl_path"] == str(output)
    assert len(output.read_text().splitlines()) == summary["agents"]["search"]["records"]


def test_demo_output_that_exists_already_is_refused(redis_url: str, tmp_path: Path) -> None:
    # Given an output path where a file exists
    output = tmp_path / "search.jsonl"
    output.write_text("keep me\n")
    # When the demo is asked to write there
    result = CliRunner().invoke(main, ["--redis-url", redis_url, "demo", "--output", str(output)])
    # Then it is bad input and the file is untouched
    assert result.exit_code == 2, result.output
    assert "exists" in result.output
    assert output.read_text() == "keep me\n"


def test_embedded_redis_says_the_configured_url_failed_with_the_password_masked(no_redis_server: None) -> None:
    # Given nothing listening at a URL with a password, and no redis-server on PATH
    # When the embedded Redis is entered
    with first_redis(UNREACHABLE_WITH_PASSWORD) as embedded:
        # Then it says the configured URL did not answer, masked, and that it uses fakeredis instead
        assert embedded.fallback is not None
        assert "redis://:***@127.0.0.1:1/0" in embedded.fallback
        assert "hunter2" not in embedded.fallback


def test_embedded_redis_on_the_configured_url_reports_no_fallback(redis_url: str) -> None:
    with first_redis(redis_url) as embedded:
        assert embedded.fallback is None


def test_demo_output_names_the_failed_url_and_what_it_uses_instead(no_redis_server: None) -> None:
    # Given nothing listening at the configured URL and no redis-server on PATH
    # When the demo runs
    result = CliRunner().invoke(
        main, ["--redis-url", UNREACHABLE_WITH_PASSWORD, "demo", "--changes", "100", "--objects", "10"]
    )
    # Then one line says the configured URL (masked) did not answer and the demo used fakeredis instead
    assert result.exit_code == 0, (result.output, result.exception)
    [line] = [text for text in result.output.splitlines() if "127.0.0.1:1" in text]
    assert "redis://:***@127.0.0.1:1/0" in line
    assert "using an in-process fakeredis" in line
    assert "instead" in line
    assert "hunter2" not in result.output


def test_demo_with_an_invalid_url_is_bad_input_not_a_fallback() -> None:
    # Given a configured URL whose port is not a number
    # When the demo runs
    result = CliRunner().invoke(main, ["--redis-url", "redis://localhost:notaport/0", "demo"])
    # Then it stops with exit 2 instead of quietly using another Redis
    assert result.exit_code == 2, result.output
    assert "port 'notaport'" in result.output
    assert "using" not in result.output


@pytest.mark.parametrize("with_url", [True, False], ids=["redis-url-flag", "settings-only"])
def test_demo_with_a_bad_settings_variable_exits_2_with_one_line(
    redis_url: str, demo_redis: redis.Redis, with_url: bool
) -> None:
    # Given a list variable with a bad item (and the Redis URL from the flag or the environment)
    args = ["--redis-url", redis_url, "demo"] if with_url else ["demo"]
    env = {"LIVESYNC_RETRY_INTERVALS": "10,x", "LIVESYNC_REDIS_URL": redis_url}
    # When the demo runs
    result = CliRunner().invoke(main, args, env=env)
    # Then it stops with exit 2 and one line naming the variable, before using any Redis
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert "LIVESYNC_RETRY_INTERVALS" in line
    assert "using" not in result.output
    assert demo_keys(demo_redis, NAMESPACE) == []
