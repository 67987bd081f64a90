"""CLI commands for operators: ``status``, ``tick``, ``worker``, ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import redis as redis_lib

from livesync import jobs
from livesync.cli.app import AppContext, Failure, echo_corrupt, json_option, pass_app
from livesync.connection import connect_queue
from livesync.output import age, echo_json, iso_s, table
from livesync.redis_policy import check_settings, read_policy
from livesync.status import namespace_status
from livesync.urls import mask_url


@click.command()
@json_option
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Head, stored changes and memory per partition; state and lag per agent; RQ queue.

    A Redis that may evict keys is shown first and, unless eviction is allowed, makes
    the command exit 2 after the status is printed.
    """
    manager = app.existing_manager()
    queue = jobs.make_queue(app.settings, connect_queue(app.settings, check=True))
    data = namespace_status(manager, queue, allow_eviction=app.settings.allow_eviction)
    if as_json:
        echo_json(data)
        check_settings(manager.redis, app.settings)  # after the status: refuse (exit 2) or, if allowed, warn
        return
    policy = read_policy(manager.redis)  # read afresh by namespace_status
    if policy.evicting:
        click.echo(f"WARNING: {policy.message(mask_url(app.settings.redis_url))}")
    if data["queue"]["redis_full"]:
        click.echo(f"WARNING: {jobs.queue_full_message(app.settings)}")
    click.echo(f"namespace {data['namespace']} ({data['granularity']} s buckets)")
    click.echo(
        table(
            [[p["partition"], p["head"], p["stored"], _bytes(p["memory_bytes"])] for p in data["partitions"]],
            ["partition", "head", "stored", "memory"],
        )
    )
    click.echo()
    agents = data["agents"]
    if agents:
        click.echo(
            table(
                [
                    [
                        a["id"],
                        a["state"],
                        ",".join("?" if p is None else str(p) for p in a["pointers"]),
                        _lag(a),
                        age(a["lag_seconds"]),
                        iso_s(a["last_run_at"]),
                        iso_s(a["last_success_at"]),
                        a["dead_letters"],
                        (a["last_error"] or "")[:60],
                    ]
                    for a in agents
                ],
                [
                    "agent",
                    "state",
                    "pointer",
                    "lag",
                    "lag age",
                    "last run",
                    "last success",
                    "dead",
                    "last error",
                ],
            )
        )
        echo_corrupt(agents)
    else:
        click.echo("no agents")
    outbox = data["outbox"]
    if outbox is not None:
        click.echo()
        click.echo(
            f"outbox: {outbox['rows']} row(s) waiting, oldest {age(outbox['oldest_age_seconds'])}; "
            f"reported by relay {outbox['relay']} {age(outbox['report_age_seconds'])} ago"
        )
    q = data["queue"]
    click.echo()
    click.echo(
        f"queue {q['name']}: {q['queued']} queued, {q['started']} running, {q['scheduled']} scheduled for retry, "
        f"{q['failed']} failed; {q['workers']} worker(s)"
    )
    check_settings(manager.redis, app.settings)


@click.command()
@click.option("--force", is_flag=True, help="Ignore update_time: enqueue every agent with pending changes.")
@json_option
@pass_app
def tick(app: AppContext, force: bool, as_json: bool) -> None:
    """Tick the namespace once, as the scheduler's tick job does.

    Prunes (with LIVESYNC_RETENTION), marks agents that lost unread changes as gap,
    and enqueues one run for each due agent: active, update_time passed since its
    last run, changes pending, and no run of it queued or running already.
    """
    check_settings(app.redis, app.settings)
    manager = app.existing_manager()
    queue = jobs.make_queue(app.settings, connect_queue(app.settings, check=True))
    data = jobs.tick_namespace(manager, queue, app.settings, force=force)
    if as_json:
        echo_json(data)
    else:
        click.echo(f"enqueued {len(data['enqueued'])} run(s) on queue {queue.name}")
        for job_id in data["enqueued"]:
            click.echo(f"  {job_id}")
        if data["pruned_buckets"]:
            click.echo(f"pruned {data['pruned_buckets']} bucket(s)")
        if data["gaps"]:
            click.echo(f"gap: {', '.join(data['gaps'])} lost unread changes to retention; reset or re-export them")
        if data["rollbacks"]:
            click.echo(f"rollback: {', '.join(data['rollbacks'])} stopped, their partition was rewound; see agent show")
        for agent_id, problem in data["corrupt"].items():
            click.echo(f"skipped corrupt agent {agent_id}: {problem}")
    if data["failed"]:
        reasons = "; ".join(f"{agent_id}: {reason}" for agent_id, reason in data["failed"].items())
        raise Failure(f"could not enqueue the runs of {len(data['failed'])} agent(s): {reasons}")


@click.command()
@click.option("--burst", is_flag=True, help="Stop when the queue is empty.")
@click.option("--simple", is_flag=True, help="Run jobs in the worker process (no fork per job).")
@click.option("--name", help="Worker name (default: RQ's).")
@pass_app
def worker(app: AppContext, burst: bool, simple: bool, name: str | None) -> None:
    """Run an RQ worker on the livesync queue (JSON serializer).

    Start as many as you like, on as many hosts as you like. A worker needs room on the
    queue's Redis (RQ's writes are refused at maxmemory); a full track Redis is fine when
    the queue is elsewhere (LIVESYNC_RQ_URL): its runs drain it. SIGTERM (or Ctrl+C)
    is a warm shutdown: the run in progress ends after its current window is
    acknowledged; a second one stops at once (the run's lock then expires and another
    worker resumes from the pointer). The same as:

    \b
    rq worker -c livesync.rqconfig.settings -S json -w livesync.worker.LiveSyncWorker --with-scheduler
    """
    from rq.serializers import JSONSerializer

    from livesync.worker import LiveSyncSimpleWorker, LiveSyncWorker

    settings = app.settings
    rq_redis = connect_queue(settings, check=True)
    jobs.configure(settings, redis=app.redis, rq_redis=rq_redis)
    worker_class = LiveSyncSimpleWorker if simple else LiveSyncWorker
    rq_worker = worker_class(
        [jobs.make_queue(settings, rq_redis)], connection=rq_redis, serializer=JSONSerializer, name=name
    )
    # with_scheduler: RQ's scheduler moves retries of failed runs (Retry with intervals)
    # back to the queue when due; without one they would stay scheduled forever
    try:
        rq_worker.work(burst=burst, logging_level="INFO", with_scheduler=True)
    except redis_lib.exceptions.OutOfMemoryError as exc:  # RQ's registration and job writes are plain commands
        raise Failure(jobs.queue_full_message(settings)) from exc


@click.command()
@pass_app
def scheduler(app: AppContext) -> None:
    """Tick the namespace periodically with RQ's cron scheduler.

    Every LIVESYNC_TICK_INTERVAL seconds it enqueues livesync.jobs.tick, which
    prunes (with LIVESYNC_RETENTION), marks agents that lost unread changes as gap,
    and enqueues one run per due agent and partition. Agents added or paused while it
    runs are picked up at the next tick. LIVESYNC_NAMESPACES (a JSON list) ticks
    several namespaces. At most one tick per namespace waits on the queue (it expires
    after an interval when no worker takes it). When Redis goes away, or refuses
    writes (full at maxmemory, a read-only replica after a failover, busy in a script),
    it keeps running and retries (waits of 1 s doubling to 30 s), logging each outage
    once and its end once.
    The same as:

    \b
    rq cron -c livesync.rqconfig.settings livesync.rqconfig.cron
    """
    from livesync.scheduler import build_scheduler

    settings = app.settings
    rq_redis = connect_queue(settings, check=True)
    click.echo(
        f"scheduler: ticking {', '.join(settings.scheduled_namespaces)} every {settings.tick_interval}s "
        f"on queue {settings.queue} at {mask_url(settings.queue_url)}"
    )
    build_scheduler(settings, rq_redis).start()  # type: ignore[no-untyped-call]


@click.command()
@click.option("--changes", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--objects", type=click.IntRange(1, 100_000), default=1_000, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the generated workload.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the jsonl target in this new file (default: a temporary file, removed at the end).",
)
@json_option
@click.pass_context
def demo(ctx: click.Context, changes: int, objects: int, seed: int, output: Path | None, as_json: bool) -> None:
    """Run the whole pipeline once on a generated workload and print a summary.

    Uses the Redis at --redis-url / LIVESYNC_REDIS_URL when one answers, else (saying
    so) starts a private redis-server on a temporary unix socket, else falls back to an
    in-process fakeredis. The demo works in a namespace and queue of its own
    (livesync-demo-<random>) and deletes them, and its temporary files, when it ends.
    """
    from livesync.demo import run_demo

    app: AppContext = ctx.obj
    summary: dict[str, Any] = run_demo(
        app.overrides.get("redis_url") or app.settings.redis_url,
        changes=changes,
        objects=objects,
        seed=seed,
        output=output,
    )
    if as_json:
        echo_json(summary)
    failed = [agent_id for agent_id, data in summary["agents"].items() if data["last_error"] or data["pending"]]
    if failed or not summary["jsonl_matches_replay"]:
        raise Failure(f"demo did not sync cleanly (agents: {', '.join(failed) or 'ok'}); see the summary above")


def _lag(agent: dict[str, Any]) -> str:
    """Total lag, with the lag of each partition when there are several."""
    parts = agent["partitions"]
    if len(parts) < 2:
        return str(agent["lag_changes"])
    return f"{agent['lag_changes']} ({'/'.join(str(item['lag_changes']) for item in parts)})"


def _bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024  # type: ignore[assignment]
    return str(value)


COMMANDS = [status, tick, worker, scheduler, demo]
