"""What one benchmark run measures: the plan (sizes of every figure) and the shared constants."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

AGENT_ID = "bench"
HOLDER_ID = "bench-1"  # second agent of a backlog: keeps it stored between repeated runs
BATCH = 1000  # changes per emit_many call / per baseline ZADD / per read page
INTERLEAVE_BATCHES = 10  # batches of 1,000 per alternation when two publish paths are compared
INTERLEAVE_SINGLE = 250  # single calls per alternation (1b vs emit)


@dataclass(frozen=True)
class Plan:
    """How many changes each figure uses."""

    baseline_changes: int = 200_000  # 1a, 1c, 2 (emit_many), 4b
    single_changes: int = 5_000  # 1b, 2 (emit)
    rq_changes: int = 5_000  # 4a
    scaling_changes: int = 100_000  # 6: per publish round, 1 vs 50 agents
    scaling_agents: int = 50
    sizes: tuple[int, ...] = (100_000, 1_000_000, 2_000_000)  # 6; the middle one is figure 3
    objects: int = 100_000
    repeats: int = 3
    run_repeats: int = 3  # agent runs per backlog size, in rounds over the sizes (fastest kept)
    window: int = 10_000
    batch_size: int = 1_000
    seed: int = 42

    @property
    def main_size(self) -> int:
        """The backlog of figures 3 and 5 (1M in the full run)."""
        return self.sizes[-2] if len(self.sizes) > 1 else self.sizes[0]


FULL = Plan()
QUICK = Plan(
    baseline_changes=20_000,
    single_changes=1_000,
    rq_changes=500,
    scaling_changes=20_000,
    sizes=(20_000, 100_000, 200_000),
)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"100000,1_000_000"`` -> ``(100000, 1000000)``, sorted; ValueError unless all are positive."""
    try:
        sizes = tuple(sorted(int(part.replace("_", "")) for part in text.split(",") if part.strip()))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise ValueError("give positive sizes, e.g. 100000,1000000,2000000")
    return sizes


def make_plan(
    quick: bool = False,
    sizes: str | None = None,
    objects: int | None = None,
    repeats: int | None = None,
    window: int = 10_000,
    batch_size: int = 1_000,
) -> Plan:
    """The plan of a full (or quick) run with the given options; ValueError on bad ``sizes``."""
    plan = QUICK if quick else FULL
    changes: dict[str, Any] = {"window": window, "batch_size": batch_size}
    if sizes:
        changes["sizes"] = parse_sizes(sizes)
    if objects:
        changes["objects"] = objects
    if repeats:
        changes["repeats"] = repeats
    return Plan(**{**asdict(plan), **changes})
