"""``--targets``: the rate of real targets, each as a ratio against its own bulk client in the same run.

Every target figure is a function ``measure(results, *, quick, repeats, url)`` in its
module (``benchmarks.target_<name>``), which uses the server at ``url`` (``--target-url
NAME=URL``) or, when it is ``None``, its default one (opensearch: an osmem-server it
starts on loopback and stops at the end; sql and relay: the local PostgreSQL), and adds
its figures, table rows and targets to ``results``. A ``measure`` that also takes
``redis_url`` gets the bench's ``--redis-url`` (relay: the track it relays to). Only
these figures run: the Redis figures are left out.
"""

from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.report import Results, print_table, progress, write_json

#: Target name -> module holding its ``measure``.
TARGETS = {
    "opensearch": "benchmarks.target_opensearch",
    "sql": "benchmarks.target_sql",
    "relay": "benchmarks.target_relay",
}


def parse_targets(text: str) -> list[str]:
    """The target names of ``--targets a,b`` (``all``: every one); ValueError naming an unknown one."""
    names = list(TARGETS) if text.strip() == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise ValueError(f"unknown target {', '.join(unknown) or '(none)'}: known are {', '.join(TARGETS)}, all")
    return names


def parse_target_urls(pairs: Sequence[str]) -> dict[str, str]:
    """``--target-url NAME=URL`` pairs as a mapping; ValueError naming a malformed pair or an unknown target."""
    urls: dict[str, str] = {}
    for pair in pairs:
        name, sep, url = pair.partition("=")
        if not sep or not url:
            raise ValueError(f"--target-url {name!r}: expected NAME=URL")
        if name not in TARGETS:
            raise ValueError(f"--target-url: unknown target {name!r}: known are {', '.join(TARGETS)}")
        urls[name] = url
    return urls


def run_targets(
    names: Sequence[str],
    *,
    quick: bool,
    repeats: int,
    json_path: str | Path | None,
    urls: Mapping[str, str] | None = None,
    redis_url: str | None = None,
) -> int:
    """Measure each named target, print the table and targets; return 0 (a measurement, never a verdict).

    ``redis_url`` goes to the targets whose ``measure`` takes it (None: their default).
    """
    results = Results()
    started = time.perf_counter()
    for name in names:
        progress(f"target {name}")
        measure = importlib.import_module(TARGETS[name]).measure
        extra = {"redis_url": redis_url} if "redis_url" in inspect.signature(measure).parameters else {}
        measure(results, quick=quick, repeats=repeats, url=(urls or {}).get(name), **extra)
    wall = time.perf_counter() - started
    print(f"livesync benchmark: real targets ({'quick' if quick else 'full'} run): {', '.join(names)}")
    print_table(results)
    print(f"\nwall time: {wall:.1f} s")
    if json_path:
        payload = {"mode": "quick" if quick else "full", "figures": results.figures,
                   "targets": [target.to_dict() for target in results.targets], "all_passed": results.all_passed,
                   "wall_seconds": round(wall, 2)}  # fmt: skip
        write_json(Path(json_path), payload)
        print(f"JSON written to {json_path}")
    return 0
