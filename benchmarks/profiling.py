"""``--profile``: the figure-3 agent run and the single-``emit`` loop of figure 2 under cProfile."""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

from benchmarks.namespaces import BenchSpace
from benchmarks.plan import AGENT_ID
from benchmarks.report import progress, rate_text
from livesync import run_agent
from livesync.workload import iter_changes

PROJECT_DIR = Path(__file__).resolve().parents[1]  # the checkout holding benchmarks/ and livesync/


def _short_path(func: tuple[str, int, str]) -> tuple[str, int, str]:
    """``(file, line, name)`` with the file relative to site-packages or this project."""
    path, line, name = func
    root = str(PROJECT_DIR) + os.sep
    if "site-packages" + os.sep in path:
        path = path.split("site-packages" + os.sep, 1)[1]
    elif path.startswith(root):
        path = path[len(root) :]
    elif path.startswith(sys.base_prefix):
        path = "stdlib/" + os.path.basename(path)
    return path, line, name


def print_profile(profiler: cProfile.Profile, limit: int = 25) -> None:
    """Print the top ``limit`` functions by cumulative and by own time, with short file names."""
    stats = pstats.Stats(profiler, stream=sys.stdout)
    original = getattr(pstats, "func_strip_path")  # noqa: B009 - strip_dirs() maps every function through it
    setattr(pstats, "func_strip_path", _short_path)  # noqa: B010
    try:
        stats.strip_dirs()
    finally:
        setattr(pstats, "func_strip_path", original)  # noqa: B010
    print(f"== top {limit} by cumulative time ==")
    stats.sort_stats("cumulative").print_stats(limit)
    print(f"== top {limit} by own time ==")
    stats.sort_stats("tottime").print_stats(limit)


def profile(bench: BenchSpace) -> None:
    """Build the figure-3 backlog, run the agent in-process under cProfile, print the top functions.

    Then profiles the single-``emit`` loop of figure 2 the same way (``single_changes`` calls),
    so both paths a target measures can be read from one ``--profile`` run.
    """
    plan = bench.plan
    size = plan.main_size
    progress(f"profile: building a backlog of {size:,} changes")
    manager, publish = bench.build_backlog("profile", size)
    print(f"backlog: {size:,} changes published at {rate_text(publish.rate)} (emit_many x 1,000)")
    profiler = cProfile.Profile()
    progress("profile: running the agent under cProfile")
    clock = time.perf_counter()
    profiler.enable()
    result = run_agent(manager, AGENT_ID, 0, batch_size=plan.batch_size, window=plan.window)
    profiler.disable()
    seconds = time.perf_counter() - clock
    print(
        f"\nagent run under cProfile: {result.changes:,} changes -> {result.records:,} records in {seconds:.2f} s "
        f"({rate_text(result.changes / seconds)}; the profiler slows it down)\n"
    )
    print_profile(profiler)
    bench.drop_namespace("profile")

    items = list(iter_changes(plan.single_changes, plan.objects, plan.seed))
    _manager, publisher = bench.new_manager("profile-emit")
    emit = publisher.emit
    progress(f"profile: {len(items):,} single emit calls under cProfile")
    profiler = cProfile.Profile()
    clock = time.perf_counter()
    profiler.enable()
    for type_, id_, flags in items:
        emit(type_, id_, *flags)
    profiler.disable()
    seconds = time.perf_counter() - clock
    print(f"\n{len(items):,} single emit calls under cProfile in {seconds:.2f} s ({rate_text(len(items) / seconds)})\n")
    print_profile(profiler)
    bench.drop_namespace("profile-emit")
