"""Figure 7 (``--scale``): one busy agent over P = 4 partitions, synced by 1, 2 and 4 worker processes.

1. Redis: by default two private ``redis-server`` processes on unix sockets, one for the
   track and one for the RQ queue (as in docker-compose.cluster.yml), so the track
   Redis's counters hold nothing but the runs' reads and acks; with ``--scale-redis
   given`` (or without ``redis-server`` on PATH) the Redis of ``--redis-url`` holds
   both, under this run's ``bench-<id>`` prefix, deleted at the end.
2. A namespace with P = 4, the ``null`` agent ``bench`` and a paused holder agent whose
   pointers stay at 0 (so the backlog survives every run's prune), and a backlog of
   400,000 changes over 100,000 objects published with ``emit_many`` x 1,000.
3. For every worker count N, in rounds (the order flips every round): reset ``bench``
   to the tail, enqueue its 4 partition runs (``livesync.jobs.enqueue_due(...,
   force=True)``: each (agent, partition) is its own job), start N real ``livesync
   worker --burst`` processes (``LIVESYNC_REDIS_URL``, ``_RQ_URL``, ``_NAMESPACE``,
   ``_QUEUE``, ``_WINDOW``, ``_BATCH_SIZE``) and time them from the first start until
   all have exited (bounded by ``run_timeout``; then they are stopped and the run
   fails). Every partition's pointer must then be at its head. The busy time (first
   job started -> last job ended, from RQ's job data) leaves the processes' start-up out.
4. The track Redis's ``INFO commandstats`` (read and ack commands) and ``INFO cpu``
   before and after each run give its cost per change; with the 1-worker busy rate
   they make the model of :mod:`benchmarks.scale`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from benchmarks.baseline import iter_batches
from benchmarks.plan import AGENT_ID, BATCH, HOLDER_ID
from benchmarks.report import machine_info, mib, print_rows, progress, rate_text, write_json
from benchmarks.scale import (
    RedisCost,
    ScaleModel,
    ScalePlan,
    add_counters,
    counters_delta,
    model_lines,
    redis_counters,
    speedups,
)
from livesync import Publisher, SyncManager, jobs
from livesync.config import Settings
from livesync.first_redis import private_redis_server
from livesync.manager import Agent
from livesync.urls import mask_url
from livesync.workload import iter_changes

Row = tuple[str, str, str, str, str]
STOP_GRACE = 10.0  # seconds stopped workers get for their warm shutdown before SIGKILL


@dataclass
class Backlog:
    """One namespace of the run: its manager, settings and figures."""

    label: str
    namespace: str
    manager: SyncManager
    settings: Settings
    changes: int = 0
    figures: dict[str, Any] = field(default_factory=dict)


class ScaleBench:
    """One ``--scale`` run: the track and queue clients, the backlogs, the worker runs."""

    def __init__(self, plan: ScalePlan, track: Any, track_url: str, queue: Any, queue_url: str, private: bool):
        self.plan = plan
        self.track = track
        self.track_url = track_url
        self.queue_client = queue
        self.queue_url = queue_url
        self.private = private
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self.logs = Path(tempfile.mkdtemp(prefix="livesync-bench-scale-"))
        self.queue = jobs.make_queue(self.settings(f"{self.prefix}-scale"), queue)
        self.processes: list[subprocess.Popen[bytes]] = []

    def settings(self, namespace: str) -> Settings:
        """The settings of the runs (and of the workers' environment) for ``namespace``."""
        return Settings(
            redis_url=self.track_url,
            rq_url=self.queue_url if self.queue_url != self.track_url else None,
            namespace=namespace,
            queue=self.prefix,
            window=self.plan.window,
            batch_size=self.plan.batch_size,
            retry_max=0,
        )

    # -- setup and cleanup --

    def build_backlog(self, label: str, changes: int, *, single: bool = False) -> Backlog:
        """A namespace with P partitions, the agent and a paused holder at the tail, and ``changes`` changes.

        Published with ``emit_many`` x 1,000 (runs of changes packed per partition), or with
        ``single`` one ``emit`` per change (one change per stored member). The holder's
        pointers stay at 0, so the backlog survives every run's prune.
        """
        plan = self.plan
        namespace = f"{self.prefix}-{label}"
        manager = SyncManager(self.track, namespace, partitions=plan.partitions)
        manager.add_agent(Agent(id=AGENT_ID, backend="null", update_time=0), start="tail")
        manager.add_agent(Agent(id=HOLDER_ID, backend="null", state="paused"), start="tail")
        publisher = Publisher(self.track, namespace, partitions=plan.partitions)
        seconds = 0.0
        if single:
            emit = publisher.emit
            clock = time.perf_counter()
            for type_, id_, flags in iter_changes(changes, plan.objects, plan.seed + 1):
                emit(type_, id_, *flags)
            seconds = time.perf_counter() - clock
        else:
            for batch in iter_batches(iter_changes(changes, plan.objects, plan.seed), BATCH):
                clock = time.perf_counter()
                publisher.emit_many(batch)
                seconds += time.perf_counter() - clock
        tracks = manager.tracks()
        heads = [track.head() for track in tracks]
        if sum(heads) != changes:
            raise RuntimeError(f"backlog {label}: heads {heads} add up to {sum(heads)}, expected {changes}")
        members = sum(
            int(self.track.zcard(track.keys.bucket(bucket))) for track in tracks for bucket, _first in track.buckets()
        )
        figures = {
            "changes": changes,
            "objects": plan.objects,
            "partitions": plan.partitions,
            "published_with": "emit (one call per change)" if single else f"emit_many x {BATCH:,}",
            "heads": heads,
            "members": members,
            "changes_per_member": round(changes / members, 2),
            "publish_seconds": round(seconds, 4),
            "publish_changes_per_second": round(changes / seconds, 1) if seconds > 0 else 0.0,
            "track_memory_bytes": sum(track.memory_usage() for track in tracks),
        }
        return Backlog(label, namespace, manager, self.settings(namespace), changes, figures)

    def stop_workers(self) -> None:
        """SIGTERM the worker processes this run started (their own process groups), then SIGKILL."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes = []

    def cleanup(self) -> int:
        """Stop leftover workers; delete every key of this run (namespaces, queue, jobs, workers)."""
        self.stop_workers()
        shutil.rmtree(self.logs, ignore_errors=True)
        deleted = 0
        for client in {id(self.track): self.track, id(self.queue_client): self.queue_client}.values():
            client.srem("rq:queues", f"rq:queue:{self.prefix}")
            workers = [member for member in client.smembers("rq:workers") if self.prefix.encode() in member]
            if workers:
                client.srem("rq:workers", *workers)
            doomed = list(client.scan_iter(match=f"*{self.prefix}*", count=1000))
            for start in range(0, len(doomed), 500):
                client.delete(*doomed[start : start + 500])
            deleted += len(doomed)
        return deleted

    # -- one run --

    def worker_env(self, backlog: Backlog) -> dict[str, str]:
        """The environment of a worker process: the run's settings only, no inherited LIVESYNC_*."""
        settings = backlog.settings
        env = {key: value for key, value in os.environ.items() if not key.startswith("LIVESYNC_")}
        env.update(
            LIVESYNC_REDIS_URL=settings.redis_url,
            LIVESYNC_NAMESPACE=settings.namespace,
            LIVESYNC_QUEUE=settings.queue,
            LIVESYNC_WINDOW=str(settings.window),
            LIVESYNC_BATCH_SIZE=str(settings.batch_size),
        )
        if settings.rq_url:
            env["LIVESYNC_RQ_URL"] = settings.rq_url
        return env

    def counters(self) -> dict[str, float]:
        """The track Redis's read/ack command times and CPU time now."""
        return redis_counters(self.track.info("commandstats"), self.track.info("cpu"))

    def run_once(self, backlog: Backlog, workers: int, label: str) -> dict[str, Any]:
        """Reset, enqueue the P partition runs, run ``workers`` burst workers until all exit; return the figures."""
        plan, manager = self.plan, backlog.manager
        manager.reset_agent(AGENT_ID, to="tail")
        job_ids = jobs.enqueue_due(manager, self.queue, backlog.settings, force=True)
        if len(job_ids) != plan.partitions:
            raise RuntimeError(f"enqueued {len(job_ids)} partition runs, expected {plan.partitions}")
        env = self.worker_env(backlog)
        log_path = self.logs / f"{label}.log"
        before = self.counters()
        with open(log_path, "wb") as log:
            launched = time.time()
            clock = time.perf_counter()
            for number in range(workers):
                command = [sys.executable, "-m", "livesync", "worker", "--burst", "--name", f"{label}-{number}"]
                self.processes.append(
                    subprocess.Popen(
                        command,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own group: stop_workers reaches its work horse too
                    )
                )
            deadline = clock + plan.run_timeout
            while any(process.poll() is None for process in self.processes) and time.perf_counter() < deadline:
                time.sleep(0.005)
            seconds = time.perf_counter() - clock
        after = self.counters()
        timed_out = any(process.poll() is None for process in self.processes)
        codes = [process.returncode for process in self.processes]
        self.stop_workers()
        pointers = manager.pointers(AGENT_ID)
        heads = [track.head() for track in manager.tracks()]
        if timed_out or any(codes) or pointers != heads:
            tail = log_path.read_text(errors="replace")[-3000:]
            reason = f"did not finish within {plan.run_timeout:.0f} s" if timed_out else f"exited with {codes}"
            raise RuntimeError(f"{workers} worker(s) {reason}; pointers {pointers}, heads {heads}:\n{tail}")
        started, ended, returns = self._job_results(job_ids)
        changes = sum(int(result.get("changes", 0)) for result in returns)
        if changes != backlog.changes:
            raise RuntimeError(f"{workers} worker(s): the partition runs handled {changes} of {backlog.changes}")
        busy = ended - started
        return {
            "workers": workers,
            "changes": changes,
            "seconds": round(seconds, 4),
            "changes_per_second": round(changes / seconds, 1),
            "busy_seconds": round(busy, 4),
            "busy_changes_per_second": round(changes / busy, 1) if busy > 0 else 0.0,
            "startup_seconds": round(started - launched, 4),
            "jobs": len(job_ids),
            "job_seconds": [result["job_seconds"] for result in returns],
            "redis": {name: round(value, 6) for name, value in counters_delta(before, after).items()},
        }

    def _job_results(self, job_ids: list[str]) -> tuple[float, float, list[dict[str, Any]]]:
        """First start and last end (epoch seconds) of the runs' RQ jobs, and their return values."""
        from rq.job import Job
        from rq.serializers import JSONSerializer

        fetched = Job.fetch_many(job_ids, connection=self.queue_client, serializer=JSONSerializer)
        found = [job for job in fetched if job is not None]
        starts = [job.started_at for job in found if job.started_at is not None]
        ends = [job.ended_at for job in found if job.ended_at is not None]
        if not len(job_ids) == len(starts) == len(ends):
            raise RuntimeError("a partition run's RQ job is missing or did not finish")
        started = min(_epoch(moment) for moment in starts)
        ended = max(_epoch(moment) for moment in ends)
        returns = []
        for job, start, end in zip(found, starts, ends, strict=True):
            result = dict(job.return_value() or {})
            result["job_seconds"] = round(_epoch(end) - _epoch(start), 4)
            returns.append(result)
        return started, ended, returns

    # -- everything --

    def run(self) -> dict[str, Any]:
        """The backlogs, the rounds of worker runs, the Redis cost and the model: the JSON "scale" section."""
        plan = self.plan
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        progress(f"scale: backlog of {plan.changes:,} changes over {plan.objects:,} objects, P={plan.partitions}")
        packed = self.build_backlog("scale", plan.changes)
        progress(f"scale: second backlog of {plan.single_changes:,} changes, one emit per change")
        single = self.build_backlog("scale-single", plan.single_changes, single=True)
        samples: dict[int, list[dict[str, Any]]] = {workers: [] for workers in plan.workers}
        single_samples: list[dict[str, Any]] = []
        for attempt in range(plan.repeats):
            order = list(plan.workers) if attempt % 2 == 0 else list(reversed(plan.workers))
            progress(f"scale: round {attempt + 1}/{plan.repeats}, workers " + ", ".join(map(str, order)))
            for workers in order:
                samples[workers].append(self.run_once(packed, workers, f"{self.prefix}-n{workers}-r{attempt}"))
            single_samples.append(self.run_once(single, 1, f"{self.prefix}-single-r{attempt}"))
        best = {workers: min(runs, key=lambda run: run["seconds"]) for workers, runs in samples.items()}
        busiest = {workers: min(runs, key=lambda run: run["busy_seconds"]) for workers, runs in samples.items()}
        wall = speedups({workers: run["changes_per_second"] for workers, run in best.items()})
        busy = speedups({workers: run["busy_changes_per_second"] for workers, run in busiest.items()})
        runs = [run for group in samples.values() for run in group]
        cost = RedisCost.from_counters(
            add_counters([run["redis"] for run in runs]), sum(run["changes"] for run in runs), self.private
        )
        model = ScaleModel(busiest[1]["busy_changes_per_second"], cost.usec_per_change, plan.partitions)
        single_best = min(single_samples, key=lambda run: run["busy_seconds"])
        single_cost = RedisCost.from_counters(
            add_counters([run["redis"] for run in single_samples]),
            sum(run["changes"] for run in single_samples),
            self.private,
        )
        single_model = ScaleModel(single_best["busy_changes_per_second"], single_cost.usec_per_change, plan.partitions)
        cores = usable_cores()
        return {
            "plan": {**asdict(plan), "workers": list(plan.workers)},
            "redis": "two private redis-servers (track, queue)" if self.private else mask_url(self.track_url),
            "backlog": packed.figures,
            "runs": {
                str(workers): {
                    "best": best[workers],
                    "speedup": round(wall[workers], 3),
                    "best_busy": busiest[workers],
                    "busy_speedup": round(busy[workers], 3),
                    "samples": samples[workers],
                    "method": f"fastest of {len(samples[workers])}, by wall time and by busy time",
                }
                for workers in plan.workers
            },
            "redis_cost": cost.to_dict(),
            "model": model.to_dict(),
            "single": {
                "backlog": single.figures,
                "best_busy": single_best,
                "samples": single_samples,
                "redis_cost": single_cost.to_dict(),
                "model": single_model.to_dict(),
            },
            "model_text": model_lines(model, cost, packed.figures["changes_per_member"], (single_model, single_cost)),
            "usable_cores": cores,
            "load_average_at_start": None if load is None else round(load, 2),
            "note": flatten_note(cores, load),
        }


def flatten_note(cores: int, load: float | None = None) -> str:
    """Why the speed-up flattens on a small machine (``load``: the 1-minute load average at the start)."""
    busy = ""
    if load is not None:
        busy = f"; the load average was {load:.2f} at the start, so other processes took part of them too"
    return (
        f"this machine has {cores} usable core(s), shared by the N worker processes, their work horses, Redis "
        f"and this process{busy}: the speed-up cannot exceed {cores}x and flattens from about N={cores} on "
        "(more workers than cores only take turns). It shows what one machine gives, not what more machines "
        "give: that is what the model estimates"
    )


def _backlog_row(backlog: dict[str, Any]) -> Row:
    return (
        "7",
        f"backlog {backlog['changes']:,} changes, {backlog['objects']:,} objects, P={backlog['partitions']}",
        rate_text(backlog["publish_changes_per_second"]),
        f"{backlog['published_with']}; {backlog['changes_per_member']:,.1f} changes/member, "
        f"{mib(backlog['track_memory_bytes'] / 1024)}",
        "single run",
    )


def _cost_rows(cost: dict[str, Any], what: str) -> list[Row]:
    rows: list[Row] = [
        (
            "7",
            f"  Redis per change, {what}: read+ack commands",
            f"{cost['commands_usec_per_change']:.3f} us",
            "ZRANGEBYSCORE, ZREVRANGEBYSCORE, EVALSHA",
            "INFO commandstats, all runs",
        )
    ]
    if cost["private_redis"]:
        rows.append(
            (
                "7",
                f"  Redis per change, {what}: server CPU",
                f"{cost['cpu_usec_per_change']:.3f} us",
                "",
                "INFO cpu, all runs",
            )
        )
    return rows


def _model_row(model: dict[str, Any], basis: str, what: str) -> Row:
    return (
        "7",
        f"  model, {what}: one Redis (or master) serves",
        rate_text(model["redis_limit_changes_per_second"]),
        f"from ~{model['saturating_partitions']:,.1f} busy partitions at {rate_text(model['per_partition_rate'])}",
        f"1e6 / {basis} us",
    )


def scale_rows(section: dict[str, Any]) -> list[Row]:
    """The printed rows of figure 7."""
    rows: list[Row] = [_backlog_row(section["backlog"])]
    for workers in section["plan"]["workers"]:
        entry = section["runs"][str(workers)]
        run, busy = entry["best"], entry["best_busy"]
        samples = len(entry["samples"])
        rows.append(
            (
                "7",
                f"{workers} worker(s): first start -> all exited",
                f"{run['seconds']:.2f} s",
                f"{rate_text(run['changes_per_second'])}, {entry['speedup']:.2f} x 1 worker",
                f"fastest of {samples}",
            )
        )
        rows.append(
            (
                "7",
                "  busy: first job start -> last job end",
                f"{busy['busy_seconds']:.2f} s",
                f"{rate_text(busy['busy_changes_per_second'])}, {entry['busy_speedup']:.2f} x 1 worker; "
                f"start-up {busy['startup_seconds']:.2f} s",
                f"fastest of {samples}",
            )
        )
    rows += _cost_rows(section["redis_cost"], "batched")
    rows.append(_model_row(section["model"], section["redis_cost"]["basis"], "batched"))
    single = section["single"]
    rows.append(_backlog_row(single["backlog"]))
    best = single["best_busy"]
    rows.append(
        (
            "7",
            "1 worker, busy: first job start -> last job end",
            f"{best['busy_seconds']:.2f} s",
            rate_text(best["busy_changes_per_second"]),
            f"fastest of {len(single['samples'])}",
        )
    )
    rows += _cost_rows(single["redis_cost"], "single")
    rows.append(_model_row(single["model"], single["redis_cost"]["basis"], "single"))
    return rows


def print_scale(section: dict[str, Any]) -> None:
    """Print the rows, the model and the note about this machine."""
    print_rows(scale_rows(section))
    print()
    for line in section["model_text"]:
        print(line)
    print(f"\nnote: {section['note']}")


@contextlib.contextmanager
def scale_redis(url: str, private: bool) -> Iterator[tuple[Any, str, Any, str, bool]]:
    """Yield ``(track client, track url, queue client, queue url, private)``.

    Private: two ``redis-server`` processes on unix sockets (track, queue), stopped after.
    Otherwise (or without ``redis-server`` on PATH) the Redis at ``url`` for both;
    ``redis.ConnectionError`` when it does not answer.
    """
    server = shutil.which("redis-server") if private else None
    if private and server is None:
        progress("scale: no redis-server on PATH; using the given Redis for the track and the queue")
    if server is None:
        client = redis.Redis.from_url(url)
        try:
            client.ping()
            yield client, url, client, url, False
        finally:
            client.close()
        return
    with (
        private_redis_server(server) as (track, track_url, track_pid),
        private_redis_server(server) as (queue, queue_url, queue_pid),
    ):
        progress(f"scale: private redis-servers: track pid {track_pid}, queue pid {queue_pid}")
        yield track, track_url, queue, queue_url, True


def run_scale(url: str, plan: ScalePlan, *, private: bool = True, json_path: str | Path | None = None) -> int:
    """Run figure 7 and print it (and write ``json_path``); 0 when it ran, 2 when Redis does not answer."""
    if not private or shutil.which("redis-server") is None:
        client = redis.Redis.from_url(url)
        try:
            client.ping()
        except redis.RedisError as exc:
            print(f"cannot reach Redis at {mask_url(url)}: {exc}", file=sys.stderr)
            return 2
        finally:
            client.close()
    started = time.perf_counter()
    with scale_redis(url, private) as (track, track_url, queue, queue_url, is_private):
        info = machine_info(track)
        where = "two private redis-servers (track, queue)" if is_private else mask_url(url)
        print(f"livesync benchmark (--scale) against {where}")
        print(
            f"CPU: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable); {info['python']}; "
            f"redis-server {info['redis_server']}; redis-py {info['redis_py']}, rq {info['rq']}"
        )
        print(
            f"one null agent, {plan.changes:,} changes over {plan.objects:,} objects, P={plan.partitions}; "
            f"workers {', '.join(map(str, plan.workers))}; window {plan.window:,}, batch {plan.batch_size:,}; "
            f"best of {plan.repeats}"
        )
        bench = ScaleBench(plan, track, track_url, queue, queue_url, is_private)
        try:
            section = bench.run()
        finally:
            deleted = bench.cleanup()
            progress(f"scale: cleanup: deleted {deleted} key(s) of {bench.prefix}")
    wall = time.perf_counter() - started
    print_scale(section)
    print(f"\nwall time: {wall:.1f} s")
    if json_path:
        path = Path(json_path)
        write_json(path, {"machine": info, "mode": "scale", "scale": section, "wall_seconds": round(wall, 2)})
        print(f"JSON written to {path}")
    return 0


def _epoch(moment: datetime) -> float:
    """Epoch seconds of an RQ timestamp (naive ones are UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
