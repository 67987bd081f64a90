"""``livesync demo``: the whole pipeline once, on a generated workload.

Publishes a realistic workload, registers a ``jsonl`` and a ``debug`` agent, runs them
through a real RQ worker in burst mode, checks the jsonl target against a replay of
the raw changes, and prints a summary.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from livesync import jobs
from livesync.client import Publisher
from livesync.config import Settings
from livesync.embedded import embedded_redis
from livesync.manager import Agent, SyncManager
from livesync.workload import generate, replay_changes, replay_records

NAMESPACE = "livesync-demo"
PUBLISH_BATCH = 500


def run_demo(url: str, *, changes: int = 10_000, objects: int = 1_000, seed: int = 42) -> dict[str, Any]:
    """Run the demo against the first Redis that works; return the summary."""
    with embedded_redis(url) as embedded:
        click.echo(f"using {embedded.description}")
        return _run(embedded.client, embedded.url, changes=changes, objects=objects, seed=seed)


def _run(redis: Any, url: str | None, *, changes: int, objects: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    settings = Settings(redis_url=url or "redis://localhost:6379/0", namespace=NAMESPACE, queue=NAMESPACE, retry_max=0)
    SyncManager(redis, NAMESPACE).reset()
    manager = SyncManager(redis, NAMESPACE)
    target = Path(tempfile.mkdtemp(prefix="livesync-demo-")) / "search-index.jsonl"
    manager.add_agent(
        Agent(id="search", backend="jsonl", options={"path": str(target)}, update_time=0, name="search index")
    )
    manager.add_agent(Agent(id="console", backend="debug", options={"limit": 3}, update_time=0, name="console printer"))
    click.echo("registered agents: search (jsonl), console (debug)")

    items = generate(changes, objects, seed)
    publisher = Publisher(redis, NAMESPACE)
    clock = time.perf_counter()
    with publisher.collect() as unit:  # an application's unit of work, merged per object
        for type_, id_, flags in items[:10]:
            unit.emit(type_, id_, *flags)
    for start in range(10, len(items), PUBLISH_BATCH):
        publisher.emit_many(items[start : start + PUBLISH_BATCH])
    publish_seconds = time.perf_counter() - clock
    click.echo(
        f"published {len(items)} changes over {objects} objects in {publish_seconds:.2f}s "
        f"({len(items) / max(publish_seconds, 1e-9):,.0f} changes/s)"
    )

    jobs.configure(settings, redis=redis, rq_redis=redis)
    try:
        queue = jobs.make_queue(settings, redis)
        clock = time.perf_counter()
        enqueued = jobs.enqueue_due(manager, queue, settings, force=True)
        click.echo(f"enqueued {len(enqueued)} run(s); running a burst RQ worker")
        SimpleWorker([queue], connection=redis, serializer=JSONSerializer).work(burst=True, logging_level="WARNING")
        run_seconds = time.perf_counter() - clock
    finally:
        jobs.reset()

    summary = _summary(manager, target, items, publish_seconds, run_seconds, time.perf_counter() - started)
    _print(summary)
    return summary


def _summary(
    manager: SyncManager,
    target: Path,
    items: list[Any],
    publish_seconds: float,
    run_seconds: float,
    elapsed: float,
) -> dict[str, Any]:
    agents = {agent.id: agent for agent in manager.list_agents()}
    records = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    expected = replay_changes(items)
    delivered = replay_records(records)
    pending = {agent_id: manager.track().head() - (manager.track().pointer(agent_id) or 0) for agent_id in agents}
    return {
        "changes_emitted": len(items),
        "changes_published": manager.track().head(),
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
        "jsonl_path": str(target),
        "live_objects_expected": len(expected),
        "live_objects_delivered": len(delivered),
        "jsonl_matches_replay": expected == delivered,
    }


def _print(summary: dict[str, Any]) -> None:
    click.echo("")
    click.echo("summary")
    click.echo(
        f"  changes published   {summary['changes_published']} "
        f"({summary['changes_emitted']} emitted; a unit of work merges flags per object)"
    )
    for agent_id, data in summary["agents"].items():
        click.echo(
            f"  agent {agent_id:<13} {data['records']} records from {data['changes']} changes "
            f"(reduction {data['reduction_ratio']}x), {data['pending']} pending, error: {data['last_error'] or 'none'}"
        )
    verdict = "matches" if summary["jsonl_matches_replay"] else "DOES NOT match"
    click.echo(
        f"  jsonl target        {summary['live_objects_delivered']} live objects, {verdict} a replay of the changes"
    )
    click.echo(f"  written to          {summary['jsonl_path']}")
    click.echo(
        f"  elapsed             {summary['elapsed_seconds']:.2f}s "
        f"(publish {summary['publish_seconds']:.2f}s, sync {summary['run_seconds']:.2f}s)"
    )
