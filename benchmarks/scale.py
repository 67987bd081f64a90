"""Figure 7 (``--scale``): the plan, the Redis-side cost arithmetic, the model and the rows.

The measurement itself (Redis servers, backlog, worker processes) is in
:mod:`benchmarks.scale_run`; everything here is arithmetic on its numbers, so the
tests can check it without timing anything.

The model for scaling past one machine: a worker busy on one partition syncs ``r``
changes per second (measured with one worker, which works through the partitions one at
a time); ``P`` partitions with a busy worker each sync ``P x r``, until the Redis that
holds them runs out of CPU: at ``c`` microseconds of Redis time per change read and
acknowledged, one Redis (or one cluster master) serves about ``1e6 / c`` changes per
second, whatever the number of workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.report import rate_text

#: Commands a run reads the track with (pages of a bucket; the straddling run before a window).
READ_COMMANDS = ("zrangebyscore", "zrevrangebyscore")
#: Commands a run acknowledges with: EVALSHA of ack.lua (also renew, release and prune).
ACK_COMMANDS = ("evalsha",)
#: Fields of ``INFO cpu``: the main thread's time where Redis reports it (7.0+), else the process's.
CPU_FIELDS = (("used_cpu_user_main_thread", "used_cpu_sys_main_thread"), ("used_cpu_user", "used_cpu_sys"))


@dataclass(frozen=True)
class ScalePlan:
    """What ``--scale`` measures: one agent, a P-partition backlog, runs with 1, 2, 4 workers."""

    changes: int = 400_000  # the busy agent's backlog, published with emit_many x 1,000
    objects: int = 100_000
    single_changes: int = 40_000  # the second backlog, one emit per change (one change per stored member)
    partitions: int = 4
    workers: tuple[int, ...] = (1, 2, 4)
    repeats: int = 3  # rounds over the worker counts; the fastest run per count is kept
    window: int = 10_000
    batch_size: int = 1_000
    run_timeout: float = 60.0  # seconds one run may take before its workers are stopped
    seed: int = 42


SCALE = ScalePlan()
SCALE_QUICK = ScalePlan(changes=40_000, objects=10_000, single_changes=4_000, repeats=1)


def parse_workers(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> ``(1, 2, 4)``, sorted and unique; ValueError unless all are 1..64 and 1 is among them.

    One worker is the baseline of the speed-up and of the model, so it must be measured.
    """
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        counts = ()
    if not counts or counts[0] < 1 or counts[-1] > 64:
        raise ValueError("give worker counts between 1 and 64, e.g. 1,2,4")
    if counts[0] != 1:
        raise ValueError("the worker counts must include 1 (the baseline of the speed-up and of the model)")
    return counts


def make_scale_plan(
    quick: bool = False,
    workers: str | None = None,
    changes: int | None = None,
    objects: int | None = None,
    repeats: int | None = None,
    window: int = 10_000,
    batch_size: int = 1_000,
) -> ScalePlan:
    """The ``--scale`` plan with the given options; ValueError on bad ``workers`` or sizes."""
    base = SCALE_QUICK if quick else SCALE
    if changes is not None and changes < base.partitions:
        raise ValueError(f"--scale-changes: give at least {base.partitions} changes (one per partition)")
    if (objects is not None and objects < 1) or (repeats is not None and repeats < 1):
        raise ValueError("--objects and --repeats must be positive")
    return ScalePlan(
        changes=changes or base.changes,
        objects=objects or base.objects,
        single_changes=base.single_changes,
        partitions=base.partitions,
        workers=parse_workers(workers) if workers else base.workers,
        repeats=repeats or base.repeats,
        window=window,
        batch_size=batch_size,
        run_timeout=base.run_timeout,
        seed=base.seed,
    )


# -- Redis-side cost ------------------------------------------------------------------------------


def redis_counters(commandstats: dict[str, Any], cpu: dict[str, Any]) -> dict[str, float]:
    """The counters a run's Redis cost is computed from: usec per command of interest, CPU seconds.

    ``commandstats`` is redis-py's parsed ``INFO commandstats`` (``{"cmdstat_evalsha":
    {"calls": .., "usec": ..}}``), ``cpu`` its ``INFO cpu``. Commands a Lua script calls
    are counted in commandstats too (inside the EVALSHA's own time), so only the top-level
    read and ack commands are added up, never every command.
    """
    counters: dict[str, float] = {}
    for name in (*READ_COMMANDS, *ACK_COMMANDS):
        entry = commandstats.get(f"cmdstat_{name}") or {}
        counters[f"{name}_usec"] = float(entry.get("usec", 0))
        counters[f"{name}_calls"] = float(entry.get("calls", 0))
    for user, system in CPU_FIELDS:
        if user in cpu and system in cpu:
            counters["cpu_seconds"] = float(cpu[user]) + float(cpu[system])
            break
    else:
        counters["cpu_seconds"] = 0.0
    return counters


def counters_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``after - before`` per counter (counters missing before count as 0)."""
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def add_counters(deltas: list[dict[str, float]]) -> dict[str, float]:
    """The sum of several runs' deltas."""
    total: dict[str, float] = {}
    for delta in deltas:
        for name, value in delta.items():
            total[name] = total.get(name, 0.0) + value
    return total


@dataclass(frozen=True)
class RedisCost:
    """Redis time per change read and acknowledged, from the counters of runs over ``changes`` changes."""

    changes: int
    read_usec: float  # ZRANGEBYSCORE + ZREVRANGEBYSCORE, commandstats
    ack_usec: float  # EVALSHA, commandstats
    cpu_seconds: float  # the server's CPU time (main thread), INFO cpu
    private: bool  # the counters are this run's alone (a private track Redis)

    @classmethod
    def from_counters(cls, counters: dict[str, float], changes: int, private: bool) -> RedisCost:
        """Add up the read and ack commands of ``counters`` (a delta, see :func:`counters_delta`)."""
        if changes < 1:
            raise ValueError("changes must be positive")
        return cls(
            changes=changes,
            read_usec=sum(counters.get(f"{name}_usec", 0.0) for name in READ_COMMANDS),
            ack_usec=sum(counters.get(f"{name}_usec", 0.0) for name in ACK_COMMANDS),
            cpu_seconds=counters.get("cpu_seconds", 0.0),
            private=private,
        )

    @property
    def commands_usec_per_change(self) -> float:
        """Execution time of the read and ack commands per change (excludes network I/O and parsing)."""
        return (self.read_usec + self.ack_usec) / self.changes

    @property
    def cpu_usec_per_change(self) -> float:
        """The server's whole CPU time per change: commands, protocol, socket I/O (every client's)."""
        return self.cpu_seconds * 1e6 / self.changes

    @property
    def basis(self) -> str:
        """Which figure bounds the model: the server CPU on a private Redis, else the commands' time."""
        return "server CPU" if self.private and self.cpu_seconds > 0 else "read+ack commands"

    @property
    def usec_per_change(self) -> float:
        """The cost the model uses (see :attr:`basis`)."""
        return self.cpu_usec_per_change if self.basis == "server CPU" else self.commands_usec_per_change

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "changes": self.changes,
            "read_usec": round(self.read_usec, 1),
            "ack_usec": round(self.ack_usec, 1),
            "cpu_seconds": round(self.cpu_seconds, 6),
            "commands_usec_per_change": round(self.commands_usec_per_change, 4),
            "cpu_usec_per_change": round(self.cpu_usec_per_change, 4),
            "basis": self.basis,
            "usec_per_change": round(self.usec_per_change, 4),
            "private_redis": self.private,
            "read_commands": list(READ_COMMANDS),
            "ack_commands": list(ACK_COMMANDS),
        }


# -- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleModel:
    """Throughput past one machine: ``min(partitions x per-partition rate, masters x one Redis's limit)``."""

    per_partition_rate: float  # changes/s of one worker busy on one partition
    redis_usec_per_change: float  # Redis time per change read and acknowledged
    partitions: int  # of the measured namespace

    def __post_init__(self) -> None:
        if self.per_partition_rate <= 0 or self.redis_usec_per_change <= 0 or self.partitions < 1:
            raise ValueError("the rate and the Redis cost must be positive, partitions at least 1")

    @property
    def redis_limit(self) -> float:
        """Changes per second one Redis (one cluster master) serves when it does nothing else."""
        return 1e6 / self.redis_usec_per_change

    @property
    def saturating_partitions(self) -> float:
        """Busy partitions (one worker each) on one Redis at which that Redis becomes the limit."""
        return self.redis_limit / self.per_partition_rate

    def rate(self, partitions: int | None = None, masters: int = 1) -> float:
        """Predicted changes/s of ``partitions`` busy partitions spread evenly over ``masters`` Redis masters."""
        if masters < 1:
            raise ValueError("masters must be at least 1")
        busy = self.partitions if partitions is None else partitions
        return min(busy * self.per_partition_rate, masters * self.redis_limit)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the prediction for the measured P and a few larger ones."""
        sizes = sorted({self.partitions, 4, 16, 64})
        return {
            "per_partition_rate": round(self.per_partition_rate, 1),
            "redis_usec_per_change": round(self.redis_usec_per_change, 4),
            "redis_limit_changes_per_second": round(self.redis_limit, 1),
            "saturating_partitions": round(self.saturating_partitions, 2),
            "partitions": self.partitions,
            "unbounded_rate": round(self.partitions * self.per_partition_rate, 1),
            "predicted_rate": round(self.rate(), 1),
            "predicted": {f"P={p}": round(self.rate(p), 1) for p in sizes},
            "formula": "min(P x per_partition_rate, masters x 1e6 / redis_usec_per_change)",
        }


def speedups(rates: dict[int, float]) -> dict[int, float]:
    """Each worker count's rate divided by the rate of one worker."""
    if rates.get(1, 0) <= 0:
        raise ValueError("the rate of 1 worker is missing")
    return {workers: rate / rates[1] for workers, rate in sorted(rates.items())}


def model_lines(
    model: ScaleModel, cost: RedisCost, per_member: float, single: tuple[ScaleModel, RedisCost] | None = None
) -> list[str]:
    """The printed model: inputs, the limit of one Redis, and where it is reached.

    ``per_member`` is the measured backlog's changes per stored member (batched publishes
    pack runs); ``single`` the model of a backlog published one change at a time.
    """
    limit = model.redis_limit
    other = (
        f"read+ack commands alone: {cost.commands_usec_per_change:.3f} us"
        if cost.basis == "server CPU"
        else "server CPU not used: a shared Redis also works for others"
    )
    lines = [
        "model for scaling past one machine (an estimate, not a target):",
        f"  per-partition rate r = {rate_text(model.per_partition_rate)} "
        "(1 worker, busy on one partition at a time: busy time of the 1-worker run)",
        f"  Redis cost per change read+ack c = {cost.usec_per_change:.3f} us of {cost.basis} ({other}); "
        f"{per_member:,.0f} changes per stored member",
        f"  one Redis serves at most 1/c = {rate_text(limit)}",
        f"  P busy partitions, one worker each on enough cores: min(P x r, 1/c); P={model.partitions}: "
        f"{rate_text(model.rate())}",
        f"  => Redis becomes the limit at about {limit:,.0f} changes/s per Redis (or per cluster master), "
        f"from about {model.saturating_partitions:,.1f} busy partitions on it; "
        f"M masters with the partitions spread evenly: about M x {limit:,.0f} changes/s",
    ]
    if single is not None:
        one, one_cost = single
        lines.append(
            f"  => one change per publish (emit; 1 change per member): r = {rate_text(one.per_partition_rate)}, "
            f"c = {one_cost.usec_per_change:.3f} us: Redis becomes the limit at about {one.redis_limit:,.0f} "
            f"changes/s per Redis, from about {one.saturating_partitions:,.1f} busy partitions"
        )
    return lines
