"""``livesync demo``: the whole pipeline once, on a generated workload.

Publishes a realistic workload, registers a ``jsonl`` and a ``debug`` agent, runs them
through a real RQ worker in burst mode, checks the jsonl target against a replay of
the raw changes, and prints a summary. It works in a namespace and queue of its own
and deletes them, its jobs and its temporary folder when it ends, failed or not.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

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

#: Prefix of the demo's namespaces and queues; each run adds a random suffix.
NAMESPACE = "livesync-demo"
PUBLISH_BATCH = 500
#: The first changes are published as one collect() unit, which merges them per object.
UNIT_OF_WORK = 10
#: RQ's lock for its group maintenance (rq >= 3.0): global, so deleted only when the demo created it.
_RQ_GROUP_LOCK = "rq:clean_groups"


def run_demo(
    url: str,
    *,
    changes: int = 10_000,
    objects: int = 1_000,
    seed: int = 42,
    namespace: str | None = None,
    output: Path | None = None,
) -> dict[str, Any]:
    """Run the demo against the first Redis that works; return the summary.

    It works in ``namespace`` (default: a new ``livesync-demo-<random>``) and an RQ
    queue of the same name, which must not exist yet, and deletes both when it ends,
    failed or not. The jsonl target goes to a temporary folder removed at the end, or to
    ``output`` (a file that must not exist yet), which stays.
    """
    if output is not None and output.exists():
        raise ConfigurationError(f"--output {output}: the file exists; give a path for a new file")
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
        target = output or Path(scratch) / "search-index.jsonl"
        group_lock_existed = bool(redis_found.client.exists(_RQ_GROUP_LOCK))
        job_ids: list[str] = []
        try:
            # the Redis actually used: a private server or fakeredis when the configured one did not answer
            used = settings.model_copy(update={"redis_url": redis_found.url or DEFAULT_REDIS_URL})
            summary = _run(redis_found.client, used, target, job_ids, changes, objects, seed)
        except BaseException:
            with contextlib.suppress(Exception):  # the demo's own error says what matters
                _clean_up(redis_found.client, namespace, job_ids, group_lock_existed)
            raise
        _clean_up(redis_found.client, namespace, job_ids, group_lock_existed)
    summary["redis"] = redis_found.description
    summary["redis_fallback"] = redis_found.fallback
    summary["jsonl_path"] = str(output) if output else None
    _print(summary)
    return summary


def _run(
    redis: Any,
    settings: Settings,
    target: Path,
    job_ids: list[str],
    changes: int,
    objects: int,
    seed: int,
) -> dict[str, Any]:
    started = time.perf_counter()
    namespace = settings.namespace
    manager = SyncManager(redis, namespace)
    if manager.exists():
        # never delete (at the end) what the demo did not create
        raise ConfigurationError(f"namespace {namespace!r} exists already; the demo needs a new one")
    manager.add_agent(
        Agent(id="search", backend="jsonl", options={"path": str(target)}, update_time=0, name="search index")
    )
    manager.add_agent(Agent(id="console", backend="debug", options={"limit": 3}, update_time=0, name="console printer"))
    click.echo(f"registered agents in namespace {namespace}: search (jsonl), console (debug)")

    items = generate(changes, objects, seed)
    publisher = Publisher(redis, namespace)
    clock = time.perf_counter()
    with publisher.collect() as unit:  # an application's unit of work, merged per object
        for type_, id_, flags in items[:UNIT_OF_WORK]:
            unit.emit(type_, id_, *flags)
    for start in range(UNIT_OF_WORK, len(items), PUBLISH_BATCH):
        publisher.emit_many(items[start : start + PUBLISH_BATCH])
    publish_seconds = time.perf_counter() - clock
    stored = sum(track.head() for track in manager.tracks())
    click.echo(
        f"publish: {_figures(len(items), stored)} over {objects} objects in {publish_seconds:.2f}s "
        f"({len(items) / max(publish_seconds, 1e-9):,.0f} changes/s)"
    )

    jobs.configure(settings, redis=redis, rq_redis=redis)
    try:
        queue = jobs.make_queue(settings, redis)
        clock = time.perf_counter()
        job_ids += jobs.enqueue_due(manager, queue, settings, force=True)
        click.echo(f"enqueued {len(job_ids)} run(s); running a burst RQ worker")
        # named after the namespace, so its key is found and deleted with the queue's
        SimpleWorker([queue], connection=redis, serializer=JSONSerializer, name=namespace).work(
            burst=True, logging_level="WARNING"
        )
        run_seconds = time.perf_counter() - clock
    finally:
        jobs.clear_configuration()

    return _summary(manager, target, items, stored, publish_seconds, run_seconds, time.perf_counter() - started)


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
    elapsed: float,
) -> dict[str, Any]:
    agents = {agent.id: agent for agent in manager.list_agents()}
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    expected = replay_changes(items)
    delivered = replay_records(records)
    tracks = manager.tracks()
    pending = {agent_id: sum(track.head() - (track.pointer(agent_id) or 0) for track in tracks) for agent_id in agents}
    return {
        "namespace": manager.namespace,
        "changes_emitted": len(items),
        "changes_stored": stored,
        "changes_merged": len(items) - stored,
        "publish_seconds": round(publish_seconds, 3),
        "run_seconds": round(run_seconds, 3),
        "elapsed_seconds": round(elapsed, 3),
        "agents": {
            agent_id: {
                "backend": agent.backend,
                "records": agent.records,
                "changes": agent.changes,
                "reduction_ratio": round(agent.changes / agent.records, 2) if agent.records else None,
                "pending": pending[agent_id],
                "last_error": agent.last_error,
            }
            for agent_id, agent in agents.items()
        },
        "live_objects_expected": len(expected),
        "live_objects_delivered": len(delivered),
        "jsonl_matches_replay": expected == delivered,
    }


def _print(summary: dict[str, Any]) -> None:
    click.echo("")
    click.echo(f"summary (namespace {summary['namespace']}, deleted again)")
    click.echo(f"  changes             {_figures(summary['changes_emitted'], summary['changes_stored'])}")
    click.echo("                      emitted: calls to emit; stored: changes on the track, where one collect()")
    click.echo("                      unit of work keeps one change per object")
    for agent_id, data in summary["agents"].items():
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
    click.echo(
        f"  elapsed             {summary['elapsed_seconds']:.2f}s "
        f"(publish {summary['publish_seconds']:.2f}s, sync {summary['run_seconds']:.2f}s)"
    )
