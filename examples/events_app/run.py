"""``python -m examples.events_app [--smoke]``: the application, its relay, a worker and the targets, in one command.

It uses the Redis at ``LIVESYNC_REDIS_URL`` (or ``--redis-url``), else a private
``redis-server`` (:func:`livesync.first_redis.first_redis`); starts ``osmem-server`` (an
in-memory OpenSearch-compatible server) when it is installed, unless ``--opensearch-url``
names a cluster, and otherwise syncs to the ``sql`` mirror alone, saying so; creates the
tables; registers the agents; starts ``livesync relay``, ``livesync worker`` and
``livesync scheduler`` as the separate processes they are in production; and serves the
application on 127.0.0.1. With ``--smoke`` it sends the scripted session of
:mod:`examples.events_app.smoke`, waits until both targets hold what the database shows,
prints them and exits 0 (1 when they do not agree in time). It works in a namespace and
queue of its own, deleted when it stops, and in a temporary folder unless ``--data``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rq import Queue
from sqlalchemy import Engine
from werkzeug.serving import make_server

from examples.events_app import smoke
from examples.events_app.app import create_app
from examples.events_app.loaders import DATABASE_VARIABLE
from examples.events_app.models import Base, make_engine
from examples.events_app.services import Services
from examples.events_app.targets import Mirror, SearchIndex
from livesync import Agent, SyncManager, outbox
from livesync.first_redis import first_redis

#: The checkout's root: the services import ``examples.events_app.loaders`` from here.
ROOT = Path(__file__).resolve().parents[2]
LOADERS = "examples.events_app.loaders"
REDIS_URL = "redis://localhost:6379/0"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.events_app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="run the scripted session, check both targets, exit")
    parser.add_argument("--port", type=int, default=None, help="the application's port on 127.0.0.1 (5000; smoke: any)")
    parser.add_argument("--redis-url", default=os.environ.get("LIVESYNC_REDIS_URL", REDIS_URL))
    parser.add_argument("--namespace", default=None, help="livesync namespace and RQ queue (default: a new one)")
    parser.add_argument("--data", type=Path, default=None, help="a new folder to keep the SQLite files in")
    parser.add_argument("--opensearch-url", default=None, help="an OpenSearch cluster to use instead of osmem-server")
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds the smoke waits for the targets")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the example; the exit status."""
    options = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _terminated)  # unwind, so that everything started is stopped again
    generated = options.namespace is None
    namespace = options.namespace or f"eventsapp{uuid.uuid4().hex[:8]}"
    if options.data is not None and options.data.exists() and any(options.data.iterdir()):
        print(f"--data {options.data}: the folder is not empty; give a new one", file=sys.stderr)
        return 2
    with first_redis(options.redis_url) as redis_found, _folder(options.data) as folder:
        if redis_found.url is None:
            print(
                "the relay and the worker are processes of their own and need a Redis server they can reach: "
                "start one (LIVESYNC_REDIS_URL) or put redis-server on PATH",
                file=sys.stderr,
            )
            return 1
        print(f"redis: {redis_found.description}" + (f" ({redis_found.fallback})" if redis_found.fallback else ""))
        manager = SyncManager(redis_found.client, namespace, allowed_imports=[LOADERS])
        if manager.exists():
            print(f"namespace {namespace!r} exists already; the example needs a new one", file=sys.stderr)
            return 2
        try:
            with _search_cluster(options.opensearch_url) as cluster_url:
                return _run(options, manager, redis_found.url, folder, cluster_url)
        finally:
            _clean_up(redis_found.client, manager, generated)


def _run(
    options: argparse.Namespace, manager: SyncManager, redis_url: str, folder: Path, cluster_url: str | None
) -> int:
    namespace = manager.namespace
    database_url = f"sqlite:///{folder / 'app.db'}"
    engine = make_engine(database_url)
    Base.metadata.create_all(engine)
    outbox.create_table(engine)
    mirror = Mirror(f"sqlite:///{folder / 'mirror.db'}")
    index = SearchIndex(cluster_url, namespace.lower()) if cluster_url else None
    try:
        _add_agents(manager, mirror, index)
        environment = {
            "LIVESYNC_REDIS_URL": redis_url,
            "LIVESYNC_NAMESPACE": namespace,
            "LIVESYNC_NAMESPACES": namespace,
            "LIVESYNC_QUEUE": namespace,
            "LIVESYNC_OUTBOX_URL": database_url,
            "LIVESYNC_TICK_INTERVAL": "1",
            "LIVESYNC_RETRY_INTERVALS": "1,2,5",
            "LIVESYNC_ALLOWED_IMPORTS": LOADERS,
            DATABASE_VARIABLE: database_url,
        }
        with Services(ROOT, folder, environment) as services:
            services.start("relay", "relay")  # livesync relay: the outbox (LIVESYNC_OUTBOX_URL) to the track
            services.start("worker", "worker")  # livesync worker: runs the agents' jobs
            services.start("scheduler", "scheduler")  # livesync scheduler: a tick each second enqueues due runs
            port = options.port if options.port is not None else 0 if options.smoke else 5000
            with _serving(create_app(engine, namespace), port) as url:
                print(f"application: {url} (namespace {namespace}, files in {folder})")
                if options.smoke:
                    return _smoke(url, engine, mirror, index, services, options.timeout)
                _show_usage(url, folder, index)
                _wait_for_signal()
                return 0
    finally:
        mirror.close()
        if index is not None:
            index.close()
        engine.dispose()


def _clean_up(redis: Any, manager: SyncManager, generated: bool) -> None:
    """Delete the namespace and its queue; for a generated namespace also RQ's records of its jobs.

    Those (finished jobs, results, the scheduler's cron history) are named after the
    queue or the namespace; a generated name has a random part no other key holds, so
    every ``rq:`` key containing it is the example's. With ``--namespace`` they are left
    to RQ's expiry (results within an hour, the cron history after a year).
    """
    namespace = manager.namespace
    manager.destroy()
    Queue(namespace, connection=redis).delete(delete_jobs=True)
    if generated:
        doomed = list(redis.scan_iter(match=f"rq:*{namespace}*", count=1000))
        doomed += list(redis.scan_iter(match=f"livesync:{{{namespace}}}:*", count=1000))  # the relay's lag report
        for start in range(0, len(doomed), 500):
            redis.delete(*doomed[start : start + 500])


def _add_agents(manager: SyncManager, mirror: Mirror, index: SearchIndex | None) -> None:
    """``livesync agent add mirror --backend sql ...`` (and ``search --backend opensearch``), in Python."""
    mirror_options = {"url": mirror.url, "table": mirror.table, "create": True}
    manager.add_agent(
        Agent(id="mirror", backend="sql", options=mirror_options, loader=f"{LOADERS}:documents", update_time=1)
    )
    print(f"agent mirror: sql, {mirror.url} table {mirror.table}, documents by {LOADERS}:documents")
    if index is None:
        return
    index.create()
    search_options = {"url": index.url, "index": index.alias}
    manager.add_agent(
        Agent(id="search", backend="opensearch", options=search_options, loader=f"{LOADERS}:documents", update_time=1)
    )
    print(f"agent search: opensearch, {index.url} alias {index.alias}, documents by {LOADERS}:documents")


def _smoke(
    url: str, engine: Engine, mirror: Mirror, index: SearchIndex | None, services: Services, timeout: float
) -> int:
    """The scripted session (two rounds, each waited for on every target); 0 when the targets agree."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the session prints its own requests
    checked = smoke.targets(mirror, index)
    client = smoke.Client(url)
    ids: dict[str, int] = {}

    def first() -> None:
        ids.update(smoke.first_round(client))

    def second() -> None:
        smoke.second_round(client, ids)

    try:
        for number, round_ in enumerate((first, second), 1):
            print(f"round {number}:")
            round_()
            problems = smoke.wait_until_synced(engine, checked, timeout, services.dead)
            if problems:
                print(f"round {number}: the targets do not hold what the application database shows", file=sys.stderr)
                for problem in problems[:20]:
                    print(f"  {problem}", file=sys.stderr)
                services.show_logs()
                return 1
            print(f"round {number}: every target holds what the application database shows")
    finally:
        client.close()
    for target in checked:
        smoke.show(target)
    if index is None:
        print("(the sql mirror alone: no search index, see above)")
    return 0


@contextlib.contextmanager
def _search_cluster(url: str | None) -> Iterator[str | None]:
    """``url``, else a private osmem-server's, else ``None`` (saying why: the sql mirror alone then)."""
    if url is not None:
        yield url
        return
    try:
        import opensearchpy  # noqa: F401 - the opensearch backend's client
        from osmem_server import OsmemServer
    except ImportError as exc:
        print(f"search index: skipped, {exc.name} is not installed (pip install osmem-server 'livesync[opensearch]')")
        yield None
        return
    server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    print(f"search index: osmem-server (pid {server.pid}) at {server.url}")
    try:
        yield server.url
    finally:
        server.close()
        if server.process.stdout is not None:
            server.process.stdout.close()


@contextlib.contextmanager
def _folder(data: Path | None) -> Iterator[Path]:
    """``data`` (created, kept), else a temporary folder removed at the end."""
    if data is not None:
        data.mkdir(parents=True, exist_ok=True)
        yield data.resolve()
        return
    folder = Path(tempfile.mkdtemp(prefix="events-app-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _serving(app: Any, port: int) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 in a thread; yield its URL."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="events-app-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    print("stopping")


def _show_usage(url: str, folder: Path, index: SearchIndex | None) -> None:
    print(f"""
try:
  curl -s -X POST {url}/categories -H 'content-type: application/json' -d '{{"name": "Talks"}}'
  curl -s -X POST {url}/events -H 'content-type: application/json' -d '{{"title": "Keynote", "category_id": 1}}'
  curl -s -X PATCH {url}/categories/1 -H 'content-type: application/json' -d '{{"name": "Lectures"}}'
  sqlite3 {folder / "mirror.db"} 'select type, id, version, deleted, document from livesync_mirror'""")
    if index is not None:
        print(f"  curl -s '{index.url}/{index.alias}/_search?pretty'")
    print("Ctrl+C stops everything (the namespace and queue are deleted).")
