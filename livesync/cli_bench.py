"""CLI command ``livesync bench``: the benchmark of ``scripts/bench.py`` (see :mod:`livesync.bench`)."""

from __future__ import annotations

from pathlib import Path

import click

from livesync.cli import AppContext, Failure, pass_app
from livesync.connection import connect
from livesync.errors import RedisUnavailable


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
    help="Repetitions of the short measurements; the best is kept (default 3).",
)
@click.option("--check", is_flag=True, help="Exit 1 when a target fails (default: exit 0, this is a measurement).")
@click.option("--profile", is_flag=True, help="Only run the figure-3 agent run (then single emits) under cProfile.")
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
    bench-<id> prefix and deletes them at the end, so a shared Redis is safe. The
    same as scripts/bench.py and python -m livesync.bench.

    \b
    Exit codes: 0 when it ran (also with failed targets, unless --check), 1 when
    --check and a target failed or Redis does not answer, 2 bad options.
    """
    from livesync.bench import make_plan, run_benchmark

    try:
        plan = make_plan(quick, sizes, objects, repeats)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sizes") from exc
    url = app.settings.redis_url
    try:
        connect(url, check=True).close()
    except RedisUnavailable as exc:
        raise Failure(str(exc)) from exc
    code = run_benchmark(url, plan, quick=quick, json_path=json_path, check=check, profile_only=profile)
    if code:
        raise click.exceptions.Exit(code)


COMMANDS = [bench]
