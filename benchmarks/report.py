"""What a benchmark run reports: measures, targets, the printed table, the JSON file, the machine.

Progress goes to stderr; the header, the table and the targets go to stdout.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.plan import Plan
from livesync.urls import mask_url

TIMING = (
    "time.perf_counter; short measurements: best of N repeats (all samples kept); "
    "livesync-vs-baseline pairs interleaved in chunks; agent runs: fastest of run_repeats; "
    "RQ and XADD: single runs; peak RSS: VmHWM of a fresh child per run (highest kept)"
)


@dataclass
class Measure:
    """One measured figure: a count of changes and the seconds of every repetition."""

    count: int
    seconds: list[float]
    method: str = ""  # empty: "best of N" (N repetitions)

    @property
    def best(self) -> float:
        """The fastest repetition."""
        return min(self.seconds)

    @property
    def rate(self) -> float:
        """Changes per second of the fastest repetition."""
        return self.count / self.best if self.best > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "changes": self.count,
            "seconds": [round(s, 6) for s in self.seconds],
            "best_seconds": round(self.best, 6),
            "median_seconds": round(statistics.median(self.seconds), 6),
            "changes_per_second": round(self.rate, 1),
            "method": self.method or f"best of {len(self.seconds)}",
        }


@dataclass
class Target:
    """A target of the issue: ``value`` compared with ``limit``."""

    name: str
    value: float
    limit: float
    higher_is_better: bool = True
    unit: str = "x"

    @property
    def passed(self) -> bool:
        """Whether the measured value meets the target."""
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name,
            "value": round(self.value, 4),
            "limit": round(self.limit, 4),
            "op": ">=" if self.higher_is_better else "<=",
            "unit": self.unit,
            "passed": self.passed,
        }


@dataclass
class Results:
    """Everything one benchmark run measured."""

    figures: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    def row(self, figure: str, what: str, value: str, compare: str = "", method: str = "") -> None:
        """Add one line to the printed table."""
        self.rows.append((figure, what, value, compare, method))

    @property
    def all_passed(self) -> bool:
        """Whether every target passed."""
        return all(target.passed for target in self.targets)


def progress(message: str) -> None:
    """Report progress on stderr (the table goes to stdout)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def rate_text(rate: float) -> str:
    """Format changes per second."""
    return f"{rate:,.0f} ch/s"


def mib(kib: float) -> str:
    """Format KiB as MiB."""
    return f"{kib / 1024:.1f} MiB"


def machine_info(client: Any) -> dict[str, Any]:
    """CPU, cores, Python, library and redis-server versions."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    server = client.info("server")

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "redis_server": server.get("redis_version", "?"),
        "redis_py": version("redis"),
        "msgpack": version("msgpack"),
        "rq": version("rq"),
        "livesync": version("livesync"),
    }


def print_header(info: dict[str, Any], url: str, plan: Plan, quick: bool) -> None:
    """Print what ran where."""
    print(f"livesync benchmark ({'quick' if quick else 'full'} run) against {mask_url(url)}")
    print(
        f"CPU: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable); {info['python']}; "
        f"redis-server {info['redis_server']}; redis-py {info['redis_py']}, msgpack {info['msgpack']}, "
        f"rq {info['rq']}, livesync {info['livesync']}"
    )
    sizes = ", ".join(f"{size:,}" for size in plan.sizes)
    print(f"backlogs: {sizes} changes over {plan.objects:,} objects; window {plan.window:,}, batch {plan.batch_size:,}")


def print_rows(table: list[tuple[str, str, str, str, str]]) -> None:
    """Print a blank line and the table: fig, measurement, value (right-aligned), compared, method."""
    headers = ("fig", "measurement", "value", "compared", "method")
    rows = [headers, *table]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    print()
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2])]
        cells += [row[3].ljust(widths[3]), row[4]]
        print("  ".join(cells).rstrip())
        if index == 0:
            print(line)


def print_table(results: Results) -> None:
    """Print the figures and the targets."""
    print_rows(results.rows)
    print("\ntargets (ratios within this run):")
    for target in results.targets:
        op = ">=" if target.higher_is_better else "<="
        verdict = "PASS" if target.passed else "FAIL"
        print(f"  {verdict}  {target.name:<58} {target.value:>9.2f} {target.unit} ({op} {target.limit:g})")
    failed = [t for t in results.targets if not t.passed]
    print(
        f"\n{len(results.targets) - len(failed)} of {len(results.targets)} targets pass" + ("." if not failed else ":")
    )
    for target in failed:
        print(f"  FAILED: {target.name}")


def json_payload(
    results: Results, info: dict[str, Any], url: str, plan: Plan, quick: bool, wall: float
) -> dict[str, Any]:
    """The JSON document of one run (``--json``)."""
    return {
        "machine": info,
        "redis_url": mask_url(url),
        "mode": "quick" if quick else "full",
        "plan": asdict(plan),
        "timing": TIMING,
        "figures": results.figures,
        "targets": [target.to_dict() for target in results.targets],
        "all_passed": results.all_passed,
        "wall_seconds": round(wall, 2),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` (parents created), indented, with a final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
