"""CLI command ``livesync bench``: runs the benchmark of a source checkout (``scripts/bench.py``).

The benchmark (``benchmarks/`` next to ``livesync/`` in the checkout) is not part of the
installed package: this command only parses its options and hands them to the checkout's
harness, imported when the command runs. From an installed package it says so and exits 1.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import click

from livesync.cli.app import AppContext, Failure, pass_app
from livesync.connection import connect
from livesync.errors import RedisUnavailable
from livesync.urls import mask_url

#: The source checkout this module (``livesync/cli/bench.py``) would sit in: ``livesync/`` next to
#: ``benchmarks/`` and ``scripts/``.
CHECKOUT = Path(__file__).resolve().parents[2]
NOT_INSTALLED = (
    "the benchmark is not part of an installed livesync package: "
    "run scripts/bench.py (or livesync bench) from a source checkout of livesync"
)


def harness() -> ModuleType:
    """The ``benchmarks`` package of the checkout; :class:`Failure` outside a checkout."""
    package = CHECKOUT / "benchmarks"
    if not ((CHECKOUT / "scripts" / "bench.py").is_file() and (package / "__init__.py").is_file()):
        raise Failure(NOT_INSTALLED)
    if str(CHECKOUT) not in sys.path:  # as scripts/bench.py does: the harness imports as `benchmarks`
        sys.path.insert(0, str(CHECKOUT))
    module = importlib.import_module("benchmarks")
    if Path(module.__file__ or "").resolve().parent != package:  # another project's `benchmarks` came first
        raise Failure(f"{NOT_INSTALLED} (found another 'benchmarks' package at {module.__file__})")
    return module


@click.command()
@click.option("--quick", is_flag=True, help="Reduced run for a CI smoke test (< 30 s on 2 cores).")
@click.option(
    "--json",
    "json_path",
    metavar="PATH",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every figure, sample and target as JSON to PATH.",
)
@click.option("--sizes", metavar="N,N,N", help="Backlog sizes of figure 6 (default 100000,1000000,2000000).")
@click.option(
    "--objects", type=click.IntRange(min=1), metavar="N", help="Objects the backlogs are spread over (default 100000)."
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    metavar="N",
    help="Repetitions of the short measurements (with --scale: rounds over the worker counts); "
    "the best is kept (default 3).",
)
@click.option("--check", is_flag=True, help="Exit 1 when a target fails (default: exit 0, this is a measurement).")
@click.option("--profile", is_flag=True, help="Only run the figure-3 agent run (then single emits) under cProfile.")
@click.option(
    "--scale",
    is_flag=True,
    help="Only run figure 7: throughput with 1, 2 and 4 worker processes over P=4 on one busy agent, "
    "and the model for scaling past one machine (< 2 minutes; --quick: < 20 s).",
)
@click.option("--scale-workers", metavar="N,N,N", help="Worker counts of --scale; must include 1 (default 1,2,4).")
@click.option(
    "--scale-changes",
    type=click.IntRange(min=4),
    metavar="N",
    help="Changes of the --scale backlog (default 400000, --quick 40000).",
)
@click.option(
    "--scale-redis",
    type=click.Choice(["private", "given"]),
    default="private",
    show_default=True,
    help="--scale on two private redis-servers from PATH (track and queue: clean counters) or on --redis-url.",
)
@click.option(
    "--targets",
    metavar="NAME,NAME",
    help="Only the real-target figures: records/s through each backend vs the target's own bulk client "
    "(opensearch, sql, relay: outbox rows/s to the track vs a raw SKIP LOCKED + DELETE loop; all).",
)
@click.option(
    "--target-url",
    "target_urls",
    multiple=True,
    metavar="NAME=URL",
    help="A server of your own for one --targets figure (opensearch: else osmem-server is started; "
    "sql, relay: else the local PostgreSQL, db test).",
)
@pass_app
def bench(
    app: AppContext,
    quick: bool,
    json_path: Path | None,
    sizes: str | None,
    objects: int | None,
    repeats: int | None,
    check: bool,
    profile: bool,
    scale: bool,
    scale_workers: str | None,
    scale_changes: int | None,
    scale_redis: str,
    targets: str | None,
    target_urls: tuple[str, ...],
) -> None:
    """Measure livesync against raw Redis baselines and hand-rolled peers.

    Every figure is a ratio against baselines measured in the same run, on the same
    Redis (--redis-url / LIVESYNC_REDIS_URL) and machine, so the targets hold on any
    hardware:

    \b
    1  raw redis-py baselines: batched ZADD, one ZADD per change, ZRANGEBYSCORE pages + unpack
    2  livesync publish: emit_many x 1,000 and single emit, interleaved with the baselines
    3  an agent run over a 1,000,000-change backlog (null backend): rate and peak RSS
    4  peers: one RQ job per change; Redis Streams XADD + XREADGROUP/XACK consumer
    5  bytes per stored change (MEMORY USAGE) next to baseline 1a
    6  publish with 1 vs 50 agents; agent runs over 100k, 1M and 2M changes (linear time, flat RSS)

    It prints a table and the targets with PASS/FAIL. A full run takes under 5
    minutes on 2 cores, --quick under 30 s. It writes only keys under its own
    bench-<id> prefix and deletes them at the end, so a shared Redis is safe. It
    runs scripts/bench.py's code from a source checkout: the benchmark is not
    part of an installed livesync package.

    --targets runs the real-target figures instead (T): records per second into
    OpenSearch (osmem-server, started for the run) and PostgreSQL through their
    backends, each as a ratio against the same server's raw bulk path (bulk API,
    COPY + one merge) in the same run; goal >= 0.7. relay: outbox rows per second
    from PostgreSQL to this Redis through the relay vs a raw SELECT ... FOR UPDATE
    SKIP LOCKED + DELETE loop (goal >= 0.7), and the commit-to-track latency of a
    'livesync relay' process while a writer commits 200 rows/s.

    --scale runs figure 7 instead (no targets, < 2 minutes): one null agent, a
    namespace with P=4 and a backlog of 400,000 changes over 100,000 objects
    (emit_many); for 1, 2 and 4 workers: reset the agent to the tail, enqueue its 4
    partition runs, start that many real 'livesync worker --burst' processes and
    time them until all exit (best of 3; the busy time from first job start to last
    job end is shown too). Changes/s and the speed-up vs 1 worker; on a 2-core
    machine they flatten early. Then the model for scaling past one machine:
    per-partition rate (1 worker) x partitions, bounded by what one Redis serves
    (Redis CPU and INFO commandstats time of ZRANGEBYSCORE/EVALSHA per change read
    and acknowledged); again for a backlog published one change per emit. By
    default on two private redis-servers (track and queue); --scale-redis given
    uses --redis-url.

    \b
    Exit codes: 0 when it ran (also with failed targets, unless --check), 1 when
    --check and a target failed, Redis does not answer or there is no checkout,
    2 bad options.
    """
    bench_harness = harness()
    make_plan, make_scale_plan = bench_harness.make_plan, bench_harness.make_scale_plan
    run_benchmark, run_scale_benchmark = bench_harness.run_benchmark, bench_harness.run_scale_benchmark
    url = app.settings.redis_url
    if targets:
        try:
            names = bench_harness.parse_targets(targets)
            urls = bench_harness.parse_target_urls(target_urls)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--targets/--target-url") from exc
        code = bench_harness.run_targets(
            names, quick=quick, repeats=repeats or 3, json_path=json_path, urls=urls, redis_url=url
        )
        if code:
            raise click.exceptions.Exit(code)
        return
    if scale:
        if profile:
            raise click.UsageError("--scale and --profile are separate runs: give one of them")
        try:
            scale_plan = make_scale_plan(quick, scale_workers, scale_changes, objects, repeats)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--scale-workers") from exc
        code = run_scale_benchmark(url, scale_plan, private=scale_redis == "private", json_path=json_path)
        if code == 2:
            raise Failure(f"cannot reach Redis at {mask_url(url)}")
        if code:
            raise click.exceptions.Exit(code)
        return
    try:
        plan = make_plan(quick, sizes, objects, repeats)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sizes") from exc
    try:
        connect(url, check=True).close()
    except RedisUnavailable as exc:
        raise Failure(str(exc)) from exc
    code = run_benchmark(url, plan, quick=quick, json_path=json_path, check=check, profile_only=profile)
    if code:
        raise click.exceptions.Exit(code)


COMMANDS = [bench]
