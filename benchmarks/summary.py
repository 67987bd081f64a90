"""The printed rows and the targets of a run, computed from its measures (ratios within the run)."""

from __future__ import annotations

from typing import Any

from benchmarks.plan import Plan
from benchmarks.report import Measure, Results, Target, mib, rate_text


def figure_rows(
    res: Results,
    plan: Plan,
    zadd_batched: Measure,
    zadd_single: Measure,
    read: Measure,
    emit_many: Measure,
    emit_single: Measure,
    enqueue: Measure,
    execute: Measure,
    xadd: Measure,
    consume: Measure,
) -> None:
    """Rows of figures 1, 2 and 4."""
    best = f"best of {plan.repeats}"
    n = f"{zadd_batched.count:,}"
    res.row("1a", f"ZADD 1,000 members/call, {n} changes", rate_text(zadd_batched.rate), "baseline", best)
    res.row(
        "1b",
        f"ZADD per change, {zadd_single.count:,} changes",
        rate_text(zadd_single.rate),
        "baseline",
        best,
    )
    res.row("1c", f"ZRANGEBYSCORE 1,000/page + unpack, {n}", rate_text(read.rate), "baseline", best)
    res.row(
        "2",
        f"emit_many x 1,000, {n} changes",
        rate_text(emit_many.rate),
        f"{emit_many.rate / zadd_batched.rate:.2f} x 1a",
        best,
    )
    res.row(
        "2",
        f"emit (single), {emit_single.count:,} changes",
        rate_text(emit_single.rate),
        f"{emit_single.rate / zadd_single.rate:.2f} x 1b",
        best,
    )
    res.row("4a", f"RQ enqueue_many, {enqueue.count:,} jobs", rate_text(enqueue.rate), "", "single run")
    res.row("4a", "RQ SimpleWorker burst, 1 job/change", rate_text(execute.rate), "peer", "single run")
    res.row("4b", f"Streams pipelined XADD, {n} changes", rate_text(xadd.rate), "", "single run")
    res.row("4b", "Streams XREADGROUP 1,000 + unpack + XACK", rate_text(consume.rate), "peer", best)


def scaling_rows(
    res: Results,
    plan: Plan,
    one: Measure,
    many: Measure,
    runs: list[dict[str, Any]],
    main: dict[str, Any],
    base_bpc: float,
) -> None:
    """Rows of figures 3, 5 and 6 (``res.figures`` must hold figures 1c, 1a, 4a and 4b already)."""
    best = f"best of {plan.repeats}"
    fig = res.figures
    read = fig["1c_zrangebyscore_unpack"]["changes_per_second"]
    rq = fig["4a_rq_execute"]["changes_per_second"]
    streams = fig["4b_streams_consume"]["changes_per_second"]
    batched = fig["1a_zadd_batched"]["changes_per_second"]
    rate = main["run"]["changes_per_second"]
    size = main["size"]
    runs_method = f"fastest of {max(1, plan.run_repeats)}"
    res.row(
        "3",
        f"agent run, {size:,} changes, {plan.objects:,} objects",
        rate_text(rate),
        f"{rate / read:.2f} x 1c, {rate / rq:,.0f} x 4a, {rate / streams:.2f} x 4b",
        runs_method,
    )
    res.row("3", "  records / windows of that run", f"{main['run']['records']:,} / {main['run']['windows']}", "")
    res.row(
        "3",
        "  peak RSS of that run (child)",
        mib(main["run"]["peak_rss_kib"]),
        f"{mib(main['run']['rss_before_run_kib'])} before the run (imports)",
        "VmHWM",
    )
    res.row(
        "5",
        f"bytes per stored change ({size:,} backlog)",
        f"{main['bytes_per_change']:.1f} B",
        f"{main['bytes_per_change'] / base_bpc:.2f} x 1a's",
        "MEMORY USAGE",
    )
    res.row("5", "bytes per change, baseline 1a members", f"{base_bpc:.1f} B", "baseline", "MEMORY USAGE")
    res.row("6", "emit_many x 1,000 with 1 agent", rate_text(one.rate), "", best)
    res.row(
        "6",
        f"emit_many x 1,000 with {plan.scaling_agents} agents",
        rate_text(many.rate),
        f"{many.rate / one.rate:.2f} x 1 agent",
        best,
    )
    for run in runs:
        publish_rate = run["publish"]["changes_per_second"]
        res.row(
            "6",
            f"build {run['size']:,} backlog (emit_many x 1,000)",
            rate_text(publish_rate),
            f"{publish_rate / batched:.2f} x 1a",
            "single run",
        )
    first = runs[0]
    for run in runs:
        report = run["run"]
        res.row(
            "6",
            f"agent run {run['size']:,}: time, rate, peak RSS",
            f"{report['seconds']:.2f} s",
            f"{rate_text(report['changes_per_second'])}, {mib(report['peak_rss_kib'])}, "
            f"{report['seconds'] / first['run']['seconds']:.1f} x time, "
            f"{report['peak_rss_kib'] / first['run']['peak_rss_kib']:.2f} x RSS of {first['size']:,}",
            runs_method,
        )


def add_targets(
    res: Results,
    plan: Plan,
    zadd_batched: Measure,
    zadd_single: Measure,
    read: Measure,
    emit_many: Measure,
    emit_single: Measure,
    execute: Measure,
    consume: Measure,
    one: Measure,
    many: Measure,
    runs: list[dict[str, Any]],
) -> None:
    """The targets of the issue, as ratios of this run's figures (``res.figures`` must hold 3 and 5)."""
    fig = res.figures
    agent = fig["3_agent_run"]["changes_per_second"]
    main = plan.main_size
    last, prev, first = runs[-1], runs[-2] if len(runs) > 1 else runs[-1], runs[0]
    growth = last["size"] / prev["size"]
    res.targets += [
        Target("batched publish (emit_many) >= 0.6 x baseline 1a", emit_many.rate / zadd_batched.rate, 0.6),
        Target("single emit >= 0.7 x baseline 1b", emit_single.rate / zadd_single.rate, 0.7),
        Target(f"agent run ({main:,}) >= 0.5 x baseline 1c", agent / read.rate, 0.5),
        Target(f"agent run ({main:,}) >= 500 x RQ peer 4a", agent / execute.rate, 500.0),
        Target(f"agent run ({main:,}) >= 0.6 x Streams consumer 4b", agent / consume.rate, 0.6),
        Target(
            f"bytes per stored change ({main:,} backlog) <= 80",
            fig["5_bytes_per_change"],
            80.0,
            higher_is_better=False,
            unit="B",
        ),
        Target(f"publish with {plan.scaling_agents} agents >= 0.9 x with 1 agent", many.rate / one.rate, 0.9),
        Target(
            f"run time {last['size']:,} <= {1.2 * growth:.1f} x run time {prev['size']:,}",
            last["run"]["seconds"] / prev["run"]["seconds"],
            1.2 * growth,
            higher_is_better=False,
        ),
        Target(
            f"peak RSS {last['size']:,} run <= 1.2 x {first['size']:,} run",
            last["run"]["peak_rss_kib"] / first["run"]["peak_rss_kib"],
            1.2,
            higher_is_better=False,
        ),
    ]
