"""The example application (``examples/events_app``): its one-command smoke session, against real servers.

``python -m examples.events_app --smoke`` runs as a user runs it, in a process of its
own: on the test Redis, with a ``sql`` mirror in SQLite and an OpenSearch-compatible
index (osmem-server). The example checks its targets itself before it exits 0; these
tests read the application database, the mirror and the index independently afterwards
and compare them, and pin what the session did (a rename reaching the events' documents,
a private event on no target, a deletion, a refused request leaving nothing). The
example waits for its targets with a bound (``--timeout``), the tests for the process
with one too.
"""

from __future__ import annotations

import ast
import contextlib
import datetime
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opensearchpy import OpenSearch
from support.opensearch_server import opensearch_url
from support.processes import REPO

from livesync.manager import SyncManager

#: Seconds the example waits for its targets per round (--timeout), and may take from start to exit.
SYNC_TIMEOUT = 60
RUN_TIMEOUT = 200
Contents = dict[tuple[str, str], dict[str, Any]]
EXAMPLES = REPO / "examples"
#: What the example may import of livesync: the public API an application uses.
PUBLIC_API = {
    "livesync",
    "livesync.integrations.sqlalchemy",
    "livesync.loaders.sqlalchemy",
    "livesync.outbox",
    "livesync.first_redis",
}


@pytest.fixture(scope="module")
def example_cluster() -> Iterator[str]:
    """An OpenSearch-compatible cluster the test reads after the example exits (osmem-server unless given)."""
    with opensearch_url() as url:
        yield url


def run_example(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m examples.events_app --smoke ARGS`` from the checkout, on the test Redis, bounded in time.

    Past the bound it gets SIGTERM (it stops what it started), then SIGKILL, and the
    services it named are killed too; the test fails with its output.
    """
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
    environment["LIVESYNC_REDIS_URL"] = redis_url
    argv = [sys.executable, "-m", "examples.events_app", "--smoke", "--timeout", str(SYNC_TIMEOUT), *args]
    with subprocess.Popen(
        argv, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, stderr = process.communicate()
            for pid in re.findall(r"^started livesync .* \(pid (\d+),", stdout, re.MULTILINE):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(pid), signal.SIGKILL)
            pytest.fail(f"the example ran for more than {RUN_TIMEOUT}s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def database_documents(path: Path) -> Contents:
    """What the targets should hold, read from the application database with plain SQL: categories, public events."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        names = dict(connection.execute("SELECT id, name FROM categories"))
        contents: Contents = {("category", str(id_)): {"id": id_, "name": name} for id_, name in names.items()}
        rows = connection.execute(
            "SELECT id, title, description, starts_at, category_id FROM events WHERE is_public = 1"
        )
        for id_, title, description, starts_at, category_id in rows:
            contents["event", str(id_)] = {
                "id": id_,
                "title": title,
                "description": description,
                "starts_at": datetime.datetime.fromisoformat(starts_at).isoformat() if starts_at else None,
                "category_id": category_id,
                "category": names[category_id],
            }
    return contents


def mirror_rows(path: Path) -> tuple[Contents, set[tuple[str, str]]]:
    """The mirror's live rows (with their documents) and its tombstones."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        rows = list(connection.execute("SELECT type, id, document, deleted FROM livesync_mirror"))
    live = {(type_, id_): json.loads(document) for type_, id_, document, deleted in rows if not deleted}
    return live, {(type_, id_) for type_, id_, _document, deleted in rows if deleted}


def index_documents(url: str, alias: str) -> Contents:
    """The index's documents, without livesync's ``_livesync`` field."""
    client = OpenSearch(hosts=[url], timeout=10, max_retries=0)
    try:
        client.indices.refresh(index=alias)
        hits = client.search(index=alias, body={"query": {"match_all": {}}, "size": 1000})["hits"]["hits"]
    finally:
        client.close()
    contents: Contents = {}
    for hit in hits:
        type_, _, id_ = hit["_id"].partition(":")
        contents[type_, id_] = {key: value for key, value in hit["_source"].items() if key != "_livesync"}
    return contents


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_the_smoke_session_leaves_the_mirror_and_the_index_equal_to_the_application_database(
    real_redis: redis.Redis, redis_url: str, namespace: str, example_cluster: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"

    result = run_example(redis_url, "--namespace", namespace, "--data", str(data), "--opensearch-url", example_cluster)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 2: every target holds what the application database shows" in result.stdout
    expected = database_documents(data / "app.db")
    mirror, tombstones = mirror_rows(data / "mirror.db")
    assert mirror == expected
    assert index_documents(example_cluster, namespace) == expected
    # what the session did reached the targets: the rename, on the category and on its events' documents
    assert expected["category", "1"] == {"id": 1, "name": "Lectures"}
    assert {expected["event", id_]["category"] for id_ in ("1", "2", "3")} == {"Lectures"}  # 3: by the cascade alone
    assert expected["event", "1"]["title"] == "Opening keynote"
    # the event made public in round two came in whole; the workshop's events (one deleted, one made
    # private in bulk) are on no target, the mirror keeping tombstones of both
    assert expected["event", "2"]["title"] == "Panel"
    assert {("event", "4"), ("event", "5")} <= tombstones
    assert ("event", "4") not in expected
    with contextlib.closing(sqlite3.connect(data / "app.db")) as connection:
        events = dict(connection.execute("SELECT id, is_public FROM events"))
        outbox_rows = connection.execute("SELECT count(*) FROM livesync_outbox").fetchone()[0]
    assert events == {1: 1, 2: 1, 3: 1, 4: 0}  # 5 deleted; the refused duplicate rolled back: no sixth event
    assert outbox_rows == 0  # the relay moved every committed change
    assert not SyncManager(real_redis, namespace).exists()  # the example deleted its namespace


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_one_command_starts_its_own_search_server_and_checks_both_targets(
    real_redis: redis.Redis, redis_url: str, namespace: str
) -> None:
    result = run_example(redis_url, "--namespace", namespace)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "search index: osmem-server" in result.stdout
    assert "round 2: every target holds what the application database shows" in result.stdout
    assert "sql mirror (" in result.stdout and "search index (" in result.stdout
    assert not SyncManager(real_redis, namespace).exists()


def test_the_example_uses_only_livesyncs_public_api() -> None:
    imported = {
        (path.relative_to(REPO), name)
        for path in EXAMPLES.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        if name.split(".")[0] == "livesync"
    }
    assert imported
    assert {(path, name) for path, name in imported if name not in PUBLIC_API} == set()


def test_the_installed_package_holds_no_example_and_mypy_checks_them() -> None:
    from setuptools import find_packages

    configuration = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]
    packages = find_packages(str(REPO), include=configuration["setuptools"]["packages"]["find"]["include"])
    assert "livesync" in packages
    assert [name for name in packages if "example" in name] == []
    assert (EXAMPLES / "__init__.py").is_file()
    assert "examples" in configuration["mypy"]["packages"]
