"""livesync benchmark: every figure is a ratio against baselines measured in the same run.

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

   a. one RQ job per change (JSON serializer, ``livesync.bench.peer_job.handle_change``
      decodes the change and appends it to a list), executed by a burst ``SimpleWorker``;
   b. Redis Streams: pipelined ``XADD`` of the same changes, then one consumer group
      reading with ``XREADGROUP COUNT 1000``, decoding and ``XACK``-ing each page.

5. Memory: ``Track.memory_usage()`` (``MEMORY USAGE`` of the track's keys) divided by
   the changes of the figure-3 backlog, next to the per-change members of baseline 1a.

6. Scaling: batched publish rate with 1 agent vs 50 agents registered (interleaved
   rounds), and agent runs over backlogs of 100k, 1M and 2M changes: run time must grow
   linearly and peak RSS (one fresh child process per run) must stay flat.

Timing uses ``time.perf_counter``. Short measurements (1a, 1b, 1c, 2, 4b consumer, 6
publish) are repeated and the best of ``--repeats`` (3) is kept; the two sides of a
livesync-vs-baseline pair alternate in small chunks so both see the same background load
(the Redis and the cores are shared). Each backlog is run 3 times, in rounds over the
sizes (fastest run kept, highest peak RSS kept); the RQ peer and the XADD load are single
runs. Peak RSS is the child's ``VmHWM``: ``ru_maxrss`` of a subprocess also counts the
parent's RSS at fork time on Linux (it is kept in the JSON as ``ru_maxrss_kib``).
Targets are checked on ratios and printed with PASS/FAIL; the exit code is 0 even when
one fails (this is a measurement), unless ``--check`` is given.

Usage (``scripts/bench.py``, ``python -m livesync.bench`` and ``livesync bench`` are the same)::

    .venv/bin/python scripts/bench.py                 # full run (< 5 minutes on 2 cores)
    .venv/bin/python scripts/bench.py --quick         # CI smoke (< 30 s)
    .venv/bin/python scripts/bench.py --json /tmp/bench.json
    .venv/bin/python scripts/bench.py --profile       # only the 1M agent run (then 5,000 emits) under cProfile

Every key the benchmark creates carries its own ``bench-<id>`` prefix (namespaces,
baseline keys, stream, RQ queue and jobs) and is deleted at the end, also on error.

Modules: :mod:`~livesync.bench.plan` (sizes of every figure), :mod:`~livesync.bench.workload`
(streaming workload, baseline encoding), :mod:`~livesync.bench.figures` (figures 1, 2, 4 and
the publish half of 6), :mod:`~livesync.bench.backlogs` (figures 3, 5, 6),
:mod:`~livesync.bench.child` (the agent run in a fresh process), :mod:`~livesync.bench.peer_job`
(the RQ job of 4a), :mod:`~livesync.bench.summary` (rows and targets),
:mod:`~livesync.bench.report` (measures, table, JSON, machine) and
:mod:`~livesync.bench.profiling` (``--profile``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from livesync.bench.child import internal_run
from livesync.bench.figures import Bench
from livesync.bench.plan import FULL, QUICK, Plan, make_plan
from livesync.bench.profiling import profile
from livesync.bench.report import json_payload, machine_info, print_header, print_table, progress, write_json
from livesync.urls import mask_url

__all__ = ["FULL", "QUICK", "Bench", "Plan", "main", "make_plan", "run_benchmark"]

DEFAULT_URL = os.environ.get("LIVESYNC_REDIS_URL", "redis://127.0.0.1:6379/0")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--redis-url", default=DEFAULT_URL, help="Redis to use (default: LIVESYNC_REDIS_URL or local)")
    parser.add_argument("--quick", action="store_true", help="reduced run for CI smoke (< 30 s)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--sizes", help="comma-separated backlog sizes of figure 6 (default 100000,1000000,2000000)")
    parser.add_argument("--objects", type=int, help="objects the backlogs are spread over (default 100000)")
    parser.add_argument("--repeats", type=int, help="repetitions of the short measurements (best is kept; default 3)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--profile", action="store_true", help="only run the figure-3 agent run under cProfile")
    parser.add_argument("--internal-run", metavar="NAMESPACE", help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1_000, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


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
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    if in_main_thread:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(url, plan, quick, json_path, check, profile_only)
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
    try:
        plan = make_plan(args.quick, args.sizes, args.objects, args.repeats, args.window, args.batch_size)
    except ValueError as exc:
        raise SystemExit(f"--sizes: {exc}") from exc
    return run_benchmark(
        args.redis_url, plan, quick=args.quick, json_path=args.json, check=args.check, profile_only=args.profile
    )
