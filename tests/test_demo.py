"""``livesync demo`` and the Redis it finds: the configured one, a private server, fakeredis.

The demo works in a namespace and queue of its own (``livesync-demo-<random>``) and
deletes them, and its temporary folder, when it ends; the fixture that runs it on the
real test Redis deletes whatever a failing test left behind. Its ``sql`` mirror, loaded
from its application database (:mod:`livesync.demo_app`), is kept at ``--mirror``
(default: the current directory, a temporary one in every test here).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from livesync import demo, demo_app, jobs
from livesync.cli import main
from livesync.demo import NAMESPACE, run_demo
from livesync.demo_app import MIRROR_TABLE
from livesync.errors import ConfigurationError, LoaderError
from livesync.first_redis import first_redis
from livesync.loaders import available_loaders, load_documents, load_loader
from livesync.records import Record
from livesync.workload import generate, replay_changes

UNREACHABLE_URL = "redis://127.0.0.1:1/0"
UNREACHABLE_WITH_PASSWORD = "redis://:hunter2@127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def in_tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run every test in a temporary current directory, where ``livesync demo`` keeps its mirror by default."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def demo_redis(redis_url: str) -> Iterator[redis.Redis]:
    """The real test Redis; the demo's namespace and queue are deleted afterwards.

    It deletes every ``livesync-demo-*`` key: under ``pytest -n`` this module's tests must
    share one process (``scripts/test --fast`` uses ``--dist loadfile``).
    """
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


# issue 11 part 10: a real target, a sql mirror loaded from the demo's application database


def mirror_rows(path: Path) -> dict[tuple[str, str], tuple[dict[str, Any] | None, bool]]:
    """The demo's mirror file as ``(type, id) -> (document, deleted)``, read with the standard library."""
    with sqlite3.connect(path) as connection:
        return {
            (type_, id_): (json.loads(document) if document is not None else None, bool(deleted))
            for type_, id_, document, deleted in connection.execute(
                f"SELECT type, id, document, deleted FROM {MIRROR_TABLE}"
            )
        }


def assert_mirrored_cleanly(summary: dict[str, Any]) -> None:
    mirror = summary["mirror"]
    assert mirror["agent"]["records"] > 0
    assert mirror["agent"]["pending"] == 0
    assert mirror["agent"]["last_error"] is None
    assert mirror["problems"] == [] and mirror["problem_count"] == 0
    assert mirror["matches_database"] is True
    assert mirror["database_matches_replay"] is True
    assert mirror["live_objects_matching"] == mirror["live_objects_expected"] == summary["live_objects_delivered"]
    assert (
        mirror["live_objects_expected"] + mirror["tombstones"] + mirror["never_synced"]
        == (mirror["objects_in_database"])
    )


def test_demo_mirrors_the_application_database_into_the_kept_sql_file(
    redis_url: str, demo_redis: redis.Redis, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a path for the mirror
    mirror = tmp_path / "mirror.db"
    # When the demo runs on a small workload
    summary = run_demo(redis_url, changes=2000, objects=200, mirror=mirror)
    out = capsys.readouterr().out
    # Then the mirror agent synced, and its check found the mirror as the database is, with tombstones
    assert_mirrored_cleanly(summary)
    assert summary["mirror"]["tombstones"] > 0
    assert summary["mirror"]["path"] == str(mirror.resolve())
    # And the file stays, holding one live row per live object of the workload, deleted ones tombstoned
    rows = mirror_rows(mirror)
    live = {key for key, (_, deleted) in rows.items() if not deleted}
    expected = {(type_, str(id_)) for type_, id_ in replay_changes(generate(2000, 200, 42))}
    assert live == expected
    assert all(rows[key][0] is None for key in set(rows) - live)
    assert len(rows) - len(live) == summary["mirror"]["tombstones"]
    # with the document the database's columns make
    document = rows[min(live)][0]
    assert document is not None
    assert {"id", "title", "description", "location", "protection", "acl", "is_deleted"} <= set(document)
    assert document["is_deleted"] is False
    # And the output says where the file is and how to open it
    assert str(mirror.resolve()) in out
    assert f"sqlite3 {mirror.resolve()} 'select type, id, version, deleted, document from {MIRROR_TABLE}" in out


def test_demo_keeps_the_mirror_in_the_current_directory_by_default(
    redis_url: str, demo_redis: redis.Redis, in_tmp_cwd: Path
) -> None:
    # Given no --mirror
    # When the demo runs from the CLI
    result = CliRunner().invoke(
        main, ["--redis-url", redis_url, "demo", "--json", "--changes", "500", "--objects", "50"]
    )
    # Then it exits 0 and its mirror is ./livesync-demo.db, named in the summary
    assert result.exit_code == 0, (result.output, result.exception)
    summary = summary_from(result.stdout)
    assert_mirrored_cleanly(summary)
    assert summary["mirror"]["path"] == str(in_tmp_cwd / "livesync-demo.db")
    assert len(mirror_rows(in_tmp_cwd / "livesync-demo.db")) > 0


def test_demo_replaces_the_mirror_of_an_earlier_demo(redis_url: str, demo_redis: redis.Redis, tmp_path: Path) -> None:
    # Given the mirror an earlier demo left, of another workload
    mirror = tmp_path / "mirror.db"
    run_demo(redis_url, changes=300, objects=30, seed=1, mirror=mirror)
    # When the demo runs again with the same path
    summary = run_demo(redis_url, changes=300, objects=300, seed=2, mirror=mirror)
    # Then the file holds the new run's mirror only, and nothing else is left beside it
    assert_mirrored_cleanly(summary)
    live = {key for key, (_, deleted) in mirror_rows(mirror).items() if not deleted}
    assert live == {(type_, str(id_)) for type_, id_ in replay_changes(generate(300, 300, 2))}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mirror.db"]


@pytest.mark.parametrize("kind", ["text", "other-sqlite"])
def test_demo_refuses_a_mirror_path_holding_another_file(redis_url: str, tmp_path: Path, kind: str) -> None:
    # Given a file at the mirror path that no demo wrote: text, or a SQLite database of other tables
    mirror = tmp_path / "precious.db"
    if kind == "text":
        mirror.write_text("keep me\n")
    else:
        with sqlite3.connect(mirror) as connection:
            connection.execute(f"CREATE TABLE {MIRROR_TABLE} (x)")
            connection.execute("CREATE TABLE accounts (x)")
    before = mirror.read_bytes()
    # When the demo is asked to keep its mirror there
    result = CliRunner().invoke(main, ["--redis-url", redis_url, "demo", "--mirror", str(mirror)])
    # Then it is bad input, before any Redis is used, and the file is untouched
    assert result.exit_code == 2, (result.output, result.exception)
    assert "not the mirror of an earlier demo" in result.output
    assert "using" not in result.output
    assert mirror.read_bytes() == before


def test_demo_without_sqlalchemy_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an install without SQLAlchemy (its import fails, the demo's model not imported yet)
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    for name in ("livesync.demo_app", "livesync.loaders.sqlalchemy"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    # When the demo runs
    result = CliRunner().invoke(main, ["--redis-url", UNREACHABLE_URL, "demo"])
    # Then it stops with exit 2 and one line saying what to install, before any Redis is tried
    assert result.exit_code == 2, (result.output, result.exception)
    [line] = result.output.strip().splitlines()
    assert "pip install 'livesync[demo]'" in line
    assert "Traceback" not in result.output
    assert "using" not in result.output


def test_demo_fails_when_its_mirror_does_not_match_the_database(
    redis_url: str, demo_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a mirror check that finds a stale document
    def stale(self: demo_app.Application, mirror: Path) -> demo_app.MirrorCheck:
        check = demo_app.MirrorCheck()
        check.problem("event 1: the mirror has {}, the database {'title': 'Event 1'}")
        return check

    monkeypatch.setattr(demo_app.Application, "check_mirror", stale)
    # When the demo runs
    result = CliRunner().invoke(main, ["--redis-url", redis_url, "demo", "--changes", "200", "--objects", "20"])
    # Then it exits 1, and the summary says the mirror does not match and names the problem
    assert result.exit_code == 1, (result.output, result.exception)
    assert "DOES NOT match the application database (1 problems)" in result.output
    assert "event 1: the mirror has {}" in result.output
    assert "did not sync cleanly" in result.output


def test_mirror_check_names_missing_stale_undeleted_and_unknown_rows(tmp_path: Path) -> None:
    # Given an application database after a workload, and a mirror of it written as the sql backend does
    database = demo_app.Application(tmp_path / "application.db")
    try:
        items = generate(600, 60, 7)
        database.apply(items, 0)
        documents = database.documents()
        hidden = sorted(set(database.keys()) - set(documents), key=str)
        assert len(hidden) >= 2
        mirror = tmp_path / "mirror.db"
        with sqlite3.connect(mirror) as connection:
            connection.execute(f"CREATE TABLE {MIRROR_TABLE} (type, id, version, document, deleted)")
            connection.executemany(
                f"INSERT INTO {MIRROR_TABLE} VALUES (?, ?, 1, ?, 0)",
                [(type_, str(id_), json.dumps(document)) for (type_, id_), document in documents.items()],
            )
            connection.execute(
                f"INSERT INTO {MIRROR_TABLE} VALUES (?, ?, 1, NULL, 1)", (hidden[0][0], str(hidden[0][1]))
            )
        # Then the check finds it right: every shown object live, one tombstone, the other hidden never synced
        check = database.check_mirror(mirror)
        assert (check.live, check.tombstones, check.never_synced, check.problems) == (
            len(documents),
            1,
            len(hidden) - 1,
            [],
        )
        # When rows go wrong: one missing, one stale, one a tombstone, a hidden one live, one the database never had
        (missing, _), (stale, _), (buried, _) = sorted(documents.items(), key=str)[:3]
        with sqlite3.connect(mirror) as connection:
            connection.execute(f"DELETE FROM {MIRROR_TABLE} WHERE type = ? AND id = ?", (missing[0], str(missing[1])))
            connection.execute(
                f"UPDATE {MIRROR_TABLE} SET document = '{{}}' WHERE type = ? AND id = ?", (stale[0], str(stale[1]))
            )
            connection.execute(
                f"INSERT INTO {MIRROR_TABLE} VALUES (?, ?, 1, '{{}}', 0)", (hidden[1][0], str(hidden[1][1]))
            )
            connection.execute(f"INSERT INTO {MIRROR_TABLE} VALUES ('event', '99999', 1, '{{}}', 0)")
            connection.execute(
                f"UPDATE {MIRROR_TABLE} SET document = NULL, deleted = 1 WHERE type = ? AND id = ?",
                (buried[0], str(buried[1])),
            )
        check = database.check_mirror(mirror)
    finally:
        database.close()
    # Then each is a problem naming its object
    assert check.problem_count == 5
    assert check.live == len(documents) - 3
    joined = "\n".join(check.problems)
    assert f"{missing[0]} {missing[1]} is shown by the database, but absent from the mirror" in joined
    assert f"{stale[0]} {stale[1]}: the mirror has {{}}" in joined
    assert f"{hidden[1][0]} {hidden[1][1]} is deleted or hidden in the database, but live in the mirror" in joined
    assert "event 99999 is in the mirror, but the database never had it" in joined
    assert f"{buried[0]} {buried[1]} is shown by the database, but a tombstone in the mirror" in joined


def test_application_database_follows_the_changes(tmp_path: Path) -> None:
    # Given the demo's application database
    database = demo_app.Application(tmp_path / "application.db")
    try:
        # When changes are made to it, as the workload makes them
        database.apply(
            [
                ("event", 1, ["created"]),
                ("event", 1, ["title_changed"]),
                ("event", 2, ["created"]),
                ("event", 2, ["unpublished"]),
                ("contribution", "c-1", ["created", "location_changed"]),
                ("contribution", "c-1", ["deleted"]),
                ("contribution", "c-1", ["undeleted"]),
                ("category", 3, ["created"]),
                ("category", 3, ["moved"]),
                ("attachment", 4, ["created"]),
                ("attachment", 4, ["deleted"]),
            ],
            0,
        )
        documents = database.documents()
    finally:
        database.close()
    # Then the loader shows what is live and published, with the columns the changes set
    assert set(documents) == {("event", 1), ("contribution", "c-1"), ("category", 3)}
    assert documents["event", 1]["title"] == "Event 1 (change 1)"  # type: ignore[index]
    assert documents["contribution", "c-1"]["location"] == "room 4"  # type: ignore[index]
    assert documents["category", 3]["parent_id"] == 8  # type: ignore[index]


def test_demo_loader_is_registered_and_refuses_to_run_outside_a_demo() -> None:
    # Given the loader `livesync demo` registers as an entry point
    assert "demo" in available_loaders()
    loader = load_loader("demo")
    # When a batch is loaded with it while no demo runs in this process
    record = Record("event", 1, "created", ("created",), 1, 1)
    # Then the batch fails, saying the loader serves a running demo only
    with pytest.raises(LoaderError, match="livesync demo"):
        load_documents([record], loader)
    with pytest.raises(ConfigurationError, match="there is none"):
        demo_app.load([("event", 1)])


def test_run_demo_on_fakeredis_mirrors_cleanly(no_redis_server: None, tmp_path: Path) -> None:
    # Given nothing listening at the URL and no redis-server on PATH: the demo's worker runs in this process
    # When the demo runs
    summary = run_demo(UNREACHABLE_URL, changes=500, objects=50, mirror=tmp_path / "mirror.db")
    # Then the loader served the mirror agent there too
    assert "fakeredis" in summary["redis"]
    assert_mirrored_cleanly(summary)


def test_demo_removes_its_application_database_and_keeps_only_the_mirror(
    redis_url: str, demo_redis: redis.Redis, scratch_tmp: Path, tmp_path: Path, namespace: str
) -> None:
    # Given the demo keeping its mirror outside its temporary folder
    own = f"{NAMESPACE}-{namespace}"
    mirror = tmp_path / "mirror.db"
    # When it has run
    summary = run_demo(redis_url, changes=500, objects=50, namespace=own, mirror=mirror)
    # Then its temporary folder (the application database with it) and its keys are gone, the mirror stays
    assert_mirrored_cleanly(summary)
    assert list(scratch_tmp.iterdir()) == []
    assert demo_keys(demo_redis, own) == []
    assert mirror.is_file()
