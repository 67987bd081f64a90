"""livesync benchmark: every figure is a ratio against baselines measured in the same run.

The harness lives in the source checkout (``benchmarks/``), outside the installed
``livesync`` package; its one entry point is ``scripts/bench.py``, and ``livesync bench``
runs the same code from a checkout. Every change it publishes comes from the workload of
``livesync demo`` (:func:`livesync.workload.iter_changes`).

One process run against one Redis measures, in order:

1. Raw baselines with redis-py, on changes of the same shape as livesync's (one
   msgpack member ``[seq, ts, type, id, flags]`` per change, so members are unique):

   a. one multi-member ``ZADD`` per 1,000 changes (encoding included);
   b. one ``ZADD`` round trip per change;
   c. ``ZRANGEBYSCORE ... LIMIT 0 1000 WITHSCORES`` pages plus ``msgpack.unpackb`` of
      every member of the 1a key.

2. livesync publish: ``Publisher.emit_many`` in batches of 1,000 and single
   ``Publisher.emit`` calls (validation and encoding included), interleaved with the
   matching baseline; the backlogs of figure 6 are built the same way, which gives the
   batched publish rate at scale too.

3. Agent run: a ``null``-backend agent (registered at the tail before publishing)
   works through a backlog of 1,000,000 changes over 100,000 objects with
   ``run_agent(manager, "bench", 0, batch_size=1000, window=10_000)``: read, decode,
   reduce, upload, fenced ack, prune. Reported as changes per second and the peak RSS
   (``VmHWM``) of a fresh child process that does nothing but the run.

4. Peers doing the same job by hand:

   a. one RQ job per change (JSON serializer, ``benchmarks.peer_job.handle_change``
      decodes the change and appends it to a list), executed by a burst ``SimpleWorker``;
   b. Redis Streams: pipelined ``XADD`` of the same changes, then one consumer group
      reading with ``XREADGROUP COUNT 1000``, decoding and ``XACK``-ing each page.

5. Memory: ``Track.memory_usage()`` (``MEMORY USAGE`` of the track's keys) divided by
   the changes of the figure-3 backlog, next to the per-change members of baseline 1a.

6. Scaling: batched publish rate with 1 agent vs 50 agents registered (interleaved
   rounds), and agent runs over backlogs of 100k, 1M and 2M changes: run time must grow
   linearly and peak RSS (one fresh child process per run) must stay flat.

7. Horizontal workers (only with ``--scale``, instead of 1-6; no targets): one busy
   ``null`` agent in a namespace with P = 4 and a backlog of 400,000 changes over
   100,000 objects (``emit_many`` x 1,000). For N = 1, 2 and 4 workers, in rounds (best
   of 3): reset the agent to the tail, enqueue its 4 partition runs
   (``livesync.jobs.enqueue_due(..., force=True)``: each (agent, partition) is its own
   RQ job), start N real ``livesync worker --burst`` processes (settings in
   ``LIVESYNC_REDIS_URL``, ``_RQ_URL``, ``_NAMESPACE``, ``_QUEUE``, ``_WINDOW``,
   ``_BATCH_SIZE``) and time them from the first start until all have exited (bounded;
   every partition's pointer must then be at its head). Reported: changes/s and the
   speed-up vs N = 1, also over the busy time (first job start -> last job end, from
   RQ's job data, without the processes' start-up). On a 2-core machine the figures
   flatten from N = 2 on, and the output says so. Then the model for scaling past one
   machine: the per-partition rate r (the 1-worker run's busy rate: one worker busy on
   one partition at a time) x partitions, bounded by what one Redis serves, 1 / c, where
   c is the Redis time per change read and acknowledged: the track Redis's CPU time
   (``INFO cpu``) and, as a lower bound, its ``INFO commandstats`` time of ZRANGEBYSCORE,
   ZREVRANGEBYSCORE and EVALSHA, per change, over every run -> "Redis becomes the limit
   at about X changes/s per Redis (or per cluster master)". The same model is computed
   for a second backlog of 40,000 changes published one ``emit`` per change (one change
   per stored member: the expensive case for Redis). By default the track and the RQ
   queue are two private ``redis-server`` processes (the counters then hold nothing
   else; the queue apart as on a cluster); ``--scale-redis given`` uses ``--redis-url``
   and the commandstats figure. The JSON (``--json``) holds it all in a "scale" section.

8. Real targets (only with ``--targets NAME,NAME``, instead of 1-6; see
   :mod:`~benchmarks.targets`): ``opensearch`` writes records through the ``opensearch``
   backend into osmem-server (started for the run) and the same NDJSON through
   opensearch-py's raw ``bulk``; ``sql`` writes 100,000 records (50,000 objects created,
   then updated with new documents; 10,000 with ``--quick``) into PostgreSQL through the
   ``sql`` backend, and the same rows through psycopg's ``COPY`` into a temporary table
   plus one guarded merge per batch. Both alternate, best of 3; ``--target-url NAME=URL``
   points one at a server of your own. Target: >= 0.7 each. ``relay`` (see
   :mod:`~benchmarks.target_relay`) drains 50,000 outbox rows (5,000 with ``--quick``)
   from PostgreSQL to the bench's Redis through the relay, against a raw psycopg ``SELECT
   ... FOR UPDATE SKIP LOCKED`` + ``DELETE`` loop over the same rows (alternating, best of
   3; target >= 0.7; for scale, the same loop publishing each batch with ``emit_many``),
   then the commit-to-track latency (p50/p99/max) of a real ``livesync relay`` process
   while a writer commits 200 rows/s, at the default poll and at 0.05 s.

Timing uses ``time.perf_counter``. Short measurements (1a, 1b, 1c, 2, 4b consumer, 6
publish) are repeated and the best of ``--repeats`` (3) is kept; the two sides of a
livesync-vs-baseline pair alternate in small chunks so both see the same background load
(the Redis and the cores are shared). Each backlog is run 3 times, in rounds over the
sizes (fastest run kept, highest peak RSS kept); the RQ peer and the XADD load are single
runs. Peak RSS is the child's ``VmHWM``: ``ru_maxrss`` of a subprocess also counts the
parent's RSS at fork time on Linux (it is kept in the JSON as ``ru_maxrss_kib``).
Targets are checked on ratios and printed with PASS/FAIL; the exit code is 0 even when
one fails (this is a measurement), unless ``--check`` is given.

Usage (``livesync bench`` in a checkout takes the same options)::

    .venv/bin/python scripts/bench.py                 # full run (< 5 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick         # CI smoke (< 30 s)
    .venv/bin/python scripts/bench.py --json /tmp/bench.json
    .venv/bin/python scripts/bench.py --profile       # only the 1M agent run (then 5,000 emits) under cProfile
    .venv/bin/python scripts/bench.py --scale         # only figure 7: 1, 2, 4 workers + the model (< 2 minutes)
    .venv/bin/python scripts/bench.py --scale --quick --scale-workers 1,2 --json /tmp/scale.json
    .venv/bin/python scripts/bench.py --targets opensearch,sql   # only real targets vs their own bulk clients
    .venv/bin/python scripts/bench.py --targets sql --target-url sql=postgresql://user@db/test
    .venv/bin/python scripts/bench.py --targets relay --redis-url redis://localhost:6379/0

Every key the benchmark creates carries its own ``bench-<id>`` prefix (namespaces,
baseline keys, stream, RQ queue and jobs) and is deleted at the end, also on error.

Modules: :mod:`~benchmarks.plan` (sizes of every figure), :mod:`~benchmarks.baseline`
(batches of the workload, baseline encoding), :mod:`~benchmarks.namespaces` (the run's
prefix, namespaces, backlogs and cleanup), :mod:`~benchmarks.figures` (figures 1, 2, 4 and
the publish half of 6), :mod:`~benchmarks.backlogs` (figures 3, 5, 6),
:mod:`~benchmarks.child` (the agent run in a fresh process), :mod:`~benchmarks.peer_job`
(the RQ job of 4a), :mod:`~benchmarks.summary` (rows and targets),
:mod:`~benchmarks.report` (measures, table, JSON, machine),
:mod:`~benchmarks.profiling` (``--profile``), :mod:`~benchmarks.scale` (figure 7's plan,
Redis cost and model), :mod:`~benchmarks.scale_run` (figure 7's Redis servers, backlogs
and worker processes), :mod:`~benchmarks.targets` (``--targets``: real targets, each in its
``benchmarks.target_<name>`` module).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import redis

from benchmarks.child import internal_run
from benchmarks.figures import Bench
from benchmarks.plan import FULL, QUICK, Plan, make_plan
from benchmarks.profiling import profile
from benchmarks.report import json_payload, machine_info, print_header, print_table, progress, write_json
from benchmarks.scale import SCALE, SCALE_QUICK, ScaleModel, ScalePlan, make_scale_plan
from benchmarks.scale_run import run_scale
from benchmarks.targets import parse_target_urls, parse_targets, run_targets
from livesync.config import load_settings
from livesync.urls import mask_url

__all__ = [
    "FULL",
    "QUICK",
    "SCALE",
    "SCALE_QUICK",
    "Bench",
    "Plan",
    "ScaleModel",
    "ScalePlan",
    "main",
    "make_plan",
    "make_scale_plan",
    "run_benchmark",
    "run_scale_benchmark",
]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--redis-url", help="Redis to use (default: LIVESYNC_REDIS_URL, read by livesync's settings)")
    parser.add_argument("--quick", action="store_true", help="reduced run for CI smoke (< 30 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--sizes", help="comma-separated backlog sizes of figure 6 (default 100000,1000000,2000000)")
    parser.add_argument("--objects", type=int, help="objects the backlogs are spread over (default 100000)")
    parser.add_argument(
        "--repeats",
        type=int,
        help="repetitions of the short measurements (with --scale: rounds over the worker counts); "
        "the best is kept (default 3)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--profile", action="store_true", help="only run the figure-3 agent run under cProfile")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only run figure 7: throughput with 1, 2 and 4 worker processes over P=4 on one busy agent, "
        "and the model for scaling past one machine (< 2 minutes)",
    )
    parser.add_argument(
        "--targets",
        metavar="NAME,NAME",
        help="only the real-target figures: records/s through each backend vs the target's own bulk client "
        "(opensearch, sql, relay: outbox rows/s to the track vs a raw SKIP LOCKED + DELETE loop; all)",
    )
    parser.add_argument(
        "--target-url",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a server of your own for one --targets figure (opensearch: an OpenSearch URL, else osmem-server "
        "is started; sql, relay: a PostgreSQL URL, default postgresql://postgres@127.0.0.1:5432/test)",
    )
    parser.add_argument("--scale-workers", metavar="N,N,N", help="worker counts of --scale (default 1,2,4)")
    parser.add_argument("--scale-changes", type=int, metavar="N", help="backlog of --scale (default 400000)")
    parser.add_argument(
        "--scale-redis",
        choices=("private", "given"),
        default="private",
        help="--scale on two private redis-servers (default; clean counters) or on --redis-url",
    )
    parser.add_argument("--internal-run", metavar="NAMESPACE", help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1_000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.redis_url is None:
        args.redis_url = load_settings().redis_url
    return args


def _terminate(signum: int, _frame: Any) -> None:
    """Turn SIGTERM into SystemExit so the cleanup in ``finally`` runs."""
    raise SystemExit(128 + signum)


def run_benchmark(
    url: str,
    plan: Plan,
    *,
    quick: bool = False,
    json_path: str | Path | None = None,
    check: bool = False,
    profile_only: bool = False,
) -> int:
    """Run the benchmark (or only ``--profile``) of ``plan`` against ``url``; print it; return the exit code.

    0 when it ran (even with failed targets, unless ``check``), 1 when ``check`` and a
    target failed, 2 when Redis does not answer.
    """
    with _sigterm_as_exit():
        return _run(url, plan, quick, json_path, check, profile_only)


def run_scale_benchmark(url: str, plan: ScalePlan, *, private: bool = True, json_path: str | Path | None = None) -> int:
    """Run figure 7 (``--scale``) of ``plan``; print it; return 0, or 2 when Redis does not answer.

    ``private``: on two private redis-servers when ``redis-server`` is on PATH, else on ``url``.
    """
    with _sigterm_as_exit():
        return run_scale(url, plan, private=private, json_path=json_path)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """In the main thread, turn SIGTERM into SystemExit while the block runs (cleanup in ``finally``)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    if in_main_thread:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(url: str, plan: Plan, quick: bool, json_path: str | Path | None, check: bool, profile_only: bool) -> int:
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"cannot reach Redis at {mask_url(url)}: {exc}", file=sys.stderr)
        return 2
    info = machine_info(client)
    print_header(info, url, plan, quick)
    bench = Bench(client, url, plan)
    started = time.perf_counter()
    try:
        if profile_only:
            profile(bench)
            return 0
        results = bench.run()
    finally:
        deleted = bench.cleanup()
        progress(f"cleanup: deleted {deleted} leftover key(s) of {bench.prefix}")
        client.close()
    wall = time.perf_counter() - started
    print_table(results)
    print(f"\nwall time: {wall:.1f} s")
    if json_path:
        path = Path(json_path)
        write_json(path, json_payload(results, info, url, plan, quick, wall))
        print(f"JSON written to {path}")
    if check and not results.all_passed:
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or, internally, one agent run); return the exit code."""
    args = parse_args(argv)
    if args.internal_run:
        report = internal_run(args.redis_url, args.internal_run, args.batch_size, args.window)
        print(json.dumps(report))
        return 0
    if args.targets:
        try:
            names = parse_targets(args.targets)
            urls = parse_target_urls(args.target_url)
        except ValueError as exc:
            raise SystemExit(f"--targets: {exc}") from exc
        return run_targets(
            names, quick=args.quick, repeats=args.repeats or 3, json_path=args.json, urls=urls, redis_url=args.redis_url
        )
    if args.scale:
        if args.profile:
            raise SystemExit("--scale and --profile are separate runs: give one of them")
        try:
            scale_plan = make_scale_plan(
                args.quick,
                args.scale_workers,
                args.scale_changes,
                args.objects,
                args.repeats,
                args.window,
                args.batch_size,
            )
        except ValueError as exc:
            raise SystemExit(f"--scale: {exc}") from exc
        return run_scale_benchmark(
            args.redis_url, scale_plan, private=args.scale_redis == "private", json_path=args.json
        )
    try:
        plan = make_plan(args.quick, args.sizes, args.objects, args.repeats, args.window, args.batch_size)
    except ValueError as exc:
        raise SystemExit(f"--sizes: {exc}") from exc
    return run_benchmark(
        args.redis_url, plan, quick=args.quick, json_path=args.json, check=args.check, profile_only=args.profile
    )
