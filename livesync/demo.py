"""``livesync demo``: the whole pipeline once, on a generated workload, into a real target.

Makes a realistic workload's changes to an application database (SQLite, the models of
:mod:`livesync.demo_app`) and publishes them as it goes; registers a ``jsonl``, a
``debug`` and a ``sql`` agent (whose documents the ``demo`` loader reads from that
database), runs them through a real RQ worker in burst mode (in this process), checks
the jsonl target against a replay of the raw changes and the ``sql`` mirror against the
database, and prints a summary. It works in a namespace and queue of its own and deletes
them, its jobs and its temporary folder (the application database included) when it
ends, failed or not; the mirror, a SQLite file, is kept where it was asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import shlex
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from livesync import jobs
from livesync.client import Publisher
from livesync.config import DEFAULT_REDIS_URL, Settings, load_settings
from livesync.errors import ConfigurationError
from livesync.first_redis import first_redis
from livesync.manager import Agent, SyncManager
from livesync.workload import generate, replay_changes, replay_records

if TYPE_CHECKING:
    from livesync.demo_app import Application

#: Prefix of the demo's namespaces and queues; each run adds a random suffix.
NAMESPACE = "livesync-demo"
PUBLISH_BATCH = 500
#: The first changes are published as one collect() unit, which merges them per object.
UNIT_OF_WORK = 10
#: RQ's lock for its group maintenance (rq >= 3.0): global, so deleted only when the demo created it.
_RQ_GROUP_LOCK = "rq:clean_groups"
#: Where ``livesync demo`` keeps its mirror unless ``--mirror`` says otherwise: the current directory.
DEFAULT_MIRROR = Path("livesync-demo.db")
INSTALL_HINT = "livesync demo needs SQLAlchemy for its application database and mirror: pip install 'livesync[demo]'"


def run_demo(
    url: str,
    *,
    changes: int = 10_000,
    objects: int = 1_000,
    seed: int = 42,
    namespace: str | None = None,
    output: Path | None = None,
    mirror: Path | None = None,
) -> dict[str, Any]:
    """Run the demo against the first Redis that works; return the summary.

    It works in ``namespace`` (default: a new ``livesync-demo-<random>``) and an RQ
    queue of the same name, which must not exist yet, and deletes both when it ends,
    failed or not. The jsonl target goes to a temporary folder removed at the end, or to
    ``output`` (a file that must not exist yet), which stays. The ``sql`` mirror is
    written in that folder too and, when the run ends, copied to ``mirror`` (a new file,
    or the mirror of an earlier demo, which it replaces); without ``mirror`` it is removed.
    Without SQLAlchemy (the ``demo`` extra) it raises ConfigurationError saying what to install.
    """
    if output is not None and output.exists():
        raise ConfigurationError(f"--output {output}: the file exists; give a path for a new file")
    application = _import_application()
    if mirror is not None:
        application.check_mirror_path(mirror, output)
    namespace = namespace or f"{NAMESPACE}-{uuid.uuid4().hex[:8]}"
    # before any Redis is tried: a bad LIVESYNC_* variable is one line (exit 2), not a traceback
    try:
        settings = load_settings(redis_url=url, namespace=namespace, queue=namespace, retry_max=0)
    except ConfigurationError as exc:
        raise ConfigurationError(f"invalid settings: {exc}") from None
    with first_redis(url) as redis_found, tempfile.TemporaryDirectory(prefix="livesync-demo-") as scratch:
        if redis_found.fallback:
            click.echo(f"{redis_found.fallback}; using {redis_found.description} instead")
        else:
            click.echo(f"using {redis_found.description}")
        paths = _Paths(
            jsonl=output or Path(scratch) / "search-index.jsonl",
            database=Path(scratch) / "application.db",
            mirror=Path(scratch) / "mirror.db",
        )
        group_lock_existed = bool(redis_found.client.exists(_RQ_GROUP_LOCK))
        job_ids: list[str] = []
        database = application.Application(paths.database)
        try:
            # the Redis actually used: a private server or fakeredis when the configured one did not answer
            used = settings.model_copy(update={"redis_url": redis_found.url or DEFAULT_REDIS_URL})
            with application.serving(database):
                summary = _run(redis_found.client, used, paths, database, job_ids, (changes, objects, seed))
        except BaseException:
            with contextlib.suppress(Exception):  # the demo's own error says what matters
                _clean_up(redis_found.client, namespace, job_ids, group_lock_existed)
            raise
        finally:
            database.close()
        _clean_up(redis_found.client, namespace, job_ids, group_lock_existed)
        if mirror is not None:
            application.keep_mirror(paths.mirror, mirror)
    summary["redis"] = redis_found.description
    summary["redis_fallback"] = redis_found.fallback
    summary["jsonl_path"] = str(output) if output else None
    summary["mirror"]["path"] = str(mirror.resolve()) if mirror else None
    _print(summary)
    return summary


def _import_application() -> ModuleType:
    """:mod:`livesync.demo_app`, or ConfigurationError with the extra to install when SQLAlchemy is missing."""
    try:
        return importlib.import_module("livesync.demo_app")
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "sqlalchemy":
            raise
        raise ConfigurationError(INSTALL_HINT) from None


@dataclass(frozen=True)
class _Paths:
    """The demo's files: the jsonl target, the application database, the ``sql`` mirror as written."""

    jsonl: Path
    database: Path
    mirror: Path


def _run(
    redis: Any,
    settings: Settings,
    paths: _Paths,
    database: Application,
    job_ids: list[str],
    workload: tuple[int, int, int],
) -> dict[str, Any]:
    started = time.perf_counter()
    namespace = settings.namespace
    manager = SyncManager(redis, namespace)
    if manager.exists():
        # never delete (at the end) what the demo did not create
        raise ConfigurationError(f"namespace {namespace!r} exists already; the demo needs a new one")
    manager.add_agent(
        Agent(id="search", backend="jsonl", options={"path": str(paths.jsonl)}, update_time=0, name="search index")
    )
    manager.add_agent(Agent(id="console", backend="debug", options={"limit": 3}, update_time=0, name="console printer"))
    mirror_options = {"url": f"sqlite:///{paths.mirror}", "table": database.mirror_table, "create": True}
    manager.add_agent(
        Agent(id="mirror", backend="sql", options=mirror_options, loader="demo", update_time=0, name="sql mirror")
    )
    click.echo(
        f"registered agents in namespace {namespace}: search (jsonl), console (debug), "
        "mirror (sql, documents from the application database by the loader 'demo')"
    )

    changes, objects, seed = workload
    items = generate(changes, objects, seed)
    publisher = Publisher(redis, namespace)
    clock = Clock()
    # two rounds: what the first one synced, the second changes and deletes (the mirror keeps tombstones)
    split = min(len(items), max(UNIT_OF_WORK, len(items) // 2))
    jobs.configure(settings, redis=redis, rq_redis=redis)
    try:
        queue = jobs.make_queue(settings, redis)
        for number, (begin, end) in enumerate(((0, split), (split, len(items))), 1):
            _publish(database, publisher, items, begin, end, clock)
            runs = jobs.enqueue_due(manager, queue, settings, force=True)
            job_ids += runs
            click.echo(
                f"round {number}: changes {begin + 1}-{end} committed to the application database and published; "
                f"{len(runs)} run(s) on a burst RQ worker (in this process)"
            )
            with clock.timing("sync"):
                # named after the namespace, so its key is found and deleted with the queue's
                SimpleWorker([queue], connection=redis, serializer=JSONSerializer, name=namespace).work(
                    burst=True, logging_level="WARNING"
                )
    finally:
        jobs.clear_configuration()
    stored = sum(track.head() for track in manager.tracks())
    click.echo(
        f"publish: {_figures(len(items), stored)} over {objects} objects in {clock.publish:.2f}s "
        f"({len(items) / max(clock.publish, 1e-9):,.0f} changes/s); "
        f"the application database's commits before them took {clock.database:.2f}s"
    )

    summary = _summary(manager, paths.jsonl, items, stored, clock.publish, clock.sync)
    summary["mirror"] = _mirror_summary(summary.pop("mirror_agent"), database, paths.mirror, items)
    summary["database_seconds"] = round(clock.database, 3)
    summary["elapsed_seconds"] = round(time.perf_counter() - started, 3)
    return summary


@dataclass
class Clock:
    """Seconds the demo spent publishing, changing the application database and syncing."""

    publish: float = 0.0
    database: float = 0.0
    sync: float = 0.0

    @contextlib.contextmanager
    def timing(self, what: str) -> Iterator[None]:
        """Add the time spent inside to ``what`` (``publish``, ``database`` or ``sync``)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, what, getattr(self, what) + time.perf_counter() - started)


def _publish(database: Application, publisher: Publisher, items: list[Any], begin: int, end: int, clock: Clock) -> None:
    """Change the database by ``items[begin:end]`` and publish them, a batch at a time, each after its commit.

    The workload's first changes are one unit of work (``collect()``), which merges them per object.
    """
    start = begin
    while start < end:
        stop = min(end, UNIT_OF_WORK if start == 0 else start + PUBLISH_BATCH)
        batch = items[start:stop]
        with clock.timing("database"):
            database.apply(batch, start)
        with clock.timing("publish"):
            if start == 0:
                with publisher.collect() as unit:  # an application's unit of work, merged per object
                    for type_, id_, flags in batch:
                        unit.emit(type_, id_, *flags)
            else:
                publisher.emit_many(batch)
        start = stop


def _figures(emitted: int, stored: int) -> str:
    """Emitted (calls to emit) and stored (changes on the track) agree, with what collect() merged."""
    return f"{emitted} emitted, {stored} stored (collect() merged {emitted - stored})"


def _clean_up(redis: Any, namespace: str, job_ids: list[str], group_lock_existed: bool) -> None:
    """Delete the demo's namespace, its queue, jobs, registries and worker from the Redis it used."""
    SyncManager(redis, namespace).destroy()
    for job_id in job_ids:
        with contextlib.suppress(NoSuchJobError):  # deleted with its result, from every registry
            Job.fetch(job_id, connection=redis, serializer=JSONSerializer).delete()
    Queue(namespace, connection=redis, serializer=JSONSerializer).delete(delete_jobs=True)
    # what is left is named after the queue (or the worker): registries, locks, the worker's key
    leftover = [
        key for pattern in (f"rq:*:{namespace}", f"rq:*:{namespace}:*") for key in redis.scan_iter(match=pattern)
    ]
    if not group_lock_existed:
        leftover.append(_RQ_GROUP_LOCK)
    for start in range(0, len(leftover), 500):
        redis.delete(*leftover[start : start + 500])


def _summary(
    manager: SyncManager,
    target: Path,
    items: list[Any],
    stored: int,
    publish_seconds: float,
    run_seconds: float,
) -> dict[str, Any]:
    agents = {agent.id: agent for agent in manager.list_agents()}
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    expected = replay_changes(items)
    delivered = replay_records(records)
    tracks = manager.tracks()
    figures = {
        agent_id: {
            "backend": agent.backend,
            "records": agent.records,
            "changes": agent.changes,
            "reduction_ratio": round(agent.changes / agent.records, 2) if agent.records else None,
            "pending": sum(track.head() - (track.pointer(agent_id) or 0) for track in tracks),
            "last_error": agent.last_error,
        }
        for agent_id, agent in agents.items()
    }
    return {
        "namespace": manager.namespace,
        "changes_emitted": len(items),
        "changes_stored": stored,
        "changes_merged": len(items) - stored,
        "publish_seconds": round(publish_seconds, 3),
        "run_seconds": round(run_seconds, 3),
        # the mirror's agent is reported with its check, under "mirror"
        "mirror_agent": figures.pop("mirror"),
        "agents": figures,
        "live_objects_expected": len(expected),
        "live_objects_delivered": len(delivered),
        "jsonl_matches_replay": expected == delivered,
    }


def _mirror_summary(agent: dict[str, Any], database: Application, mirror: Path, items: list[Any]) -> dict[str, Any]:
    """The mirror agent's figures, and its mirror checked against the application database as it is now."""
    check = database.check_mirror(mirror)
    shown = set(database.documents())
    return {
        "agent": agent,
        "table": database.mirror_table,
        "objects_in_database": len(database.keys()),
        "live_objects_expected": len(shown),
        "live_objects_matching": check.live,
        "tombstones": check.tombstones,
        "never_synced": check.never_synced,
        "problem_count": check.problem_count,
        "problems": check.problems,
        "matches_database": check.problem_count == 0,
        # the database and the track tell one story: what it shows is what a replay of the changes keeps
        "database_matches_replay": shown == replay_changes(items),
    }


def _print(summary: dict[str, Any]) -> None:
    click.echo("")
    click.echo(f"summary (namespace {summary['namespace']}, deleted again)")
    click.echo(f"  changes             {_figures(summary['changes_emitted'], summary['changes_stored'])}")
    click.echo("                      emitted: calls to emit; stored: changes on the track, where one collect()")
    click.echo("                      unit of work keeps one change per object")
    mirror = summary["mirror"]
    for agent_id, data in {**summary["agents"], "mirror": mirror["agent"]}.items():
        click.echo(
            f"  agent {agent_id:<13} {data['records']} records from {data['changes']} stored changes "
            f"(reduction {data['reduction_ratio']}x), {data['pending']} pending, error: {data['last_error'] or 'none'}"
        )
    verdict = "matches" if summary["jsonl_matches_replay"] else "DOES NOT match"
    click.echo(
        f"  jsonl target        {summary['live_objects_delivered']} live objects, {verdict} a replay of the changes"
    )
    if summary["jsonl_path"]:
        click.echo(f"  written to          {summary['jsonl_path']}")
    else:
        click.echo("  written to          a temporary file, removed again (--output PATH keeps it)")
    verdict = "matches" if mirror["database_matches_replay"] else "DOES NOT match"
    click.echo(
        f"  application db      {mirror['objects_in_database']} objects, {mirror['live_objects_expected']} shown "
        f"(not deleted, events published): {verdict} a replay of the changes"
    )
    click.echo("                      a temporary SQLite file, removed again")
    verdict = (
        "matches the application database"
        if mirror["matches_database"]
        else f"DOES NOT match the application database ({mirror['problem_count']} problems)"
    )
    click.echo(
        f"  sql mirror          {mirror['live_objects_matching']} live objects with the database's documents, "
        f"{mirror['tombstones']} tombstones, {mirror['never_synced']} gone before they reached it"
    )
    click.echo(f"                      {verdict}")
    for problem in mirror["problems"]:
        click.echo(f"                      {problem}")
    if mirror["path"]:
        query = f"select type, id, version, deleted, document from {mirror['table']} limit 5"
        click.echo(f"  mirror file         {mirror['path']}, kept; open it with")
        click.echo(f"                      sqlite3 {shlex.quote(mirror['path'])} {shlex.quote(query)}")
    else:
        click.echo("  mirror file         a temporary file, removed again (--mirror PATH keeps it)")
    click.echo(
        f"  elapsed             {summary['elapsed_seconds']:.2f}s (publish {summary['publish_seconds']:.2f}s, "
        f"application database {summary['database_seconds']:.2f}s, sync {summary['run_seconds']:.2f}s)"
    )
