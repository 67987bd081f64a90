"""Figures 3, 5 and 6: backlogs of 100k, 1M and 2M changes and the agent runs over them.

Every agent run happens in a fresh child process (:mod:`benchmarks.child`), so its
peak RSS is its own and does not include the parent's workload and figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from benchmarks.child import run_in_child
from benchmarks.namespaces import BenchSpace
from benchmarks.plan import AGENT_ID, HOLDER_ID
from benchmarks.report import progress

if TYPE_CHECKING:
    from livesync.manager import SyncManager


def measure_backlogs(bench: BenchSpace) -> list[dict[str, Any]]:
    """Figures 3, 5 and 6: build every backlog, then run the agent over each in fresh children.

    Every backlog gets a second agent (``bench-1``) whose pointer stays at 0, so the
    backlog survives repeated runs (their prune finds nothing to delete); the pointer of
    ``bench`` is reset to 0 before each repeat. The runs go in rounds over all sizes
    (the order flips every round) so background load spreads over the sizes; in the
    last round the holder is removed first, so that round's runs prune the track empty.
    Per size the fastest run is kept, and the highest peak RSS.
    """
    plan = bench.plan
    repeats = max(1, plan.run_repeats)
    outs: dict[int, dict[str, Any]] = {}
    managers: dict[int, SyncManager] = {}
    for size in plan.sizes:
        progress(f"building a backlog of {size:,} changes over {plan.objects:,} objects")
        managers[size], publish = bench.build_backlog(f"backlog-{size}", size, agents=2 if repeats > 1 else 1)
        outs[size] = {"size": size, "publish": publish.to_dict(), "runs": []}
        if size == plan.main_size:
            used = managers[size].track(0).memory_usage()
            outs[size]["memory_bytes"] = used
            outs[size]["bytes_per_change"] = used / size
    for attempt in range(repeats):
        order = list(plan.sizes) if attempt % 2 == 0 else list(reversed(plan.sizes))
        progress(f"agent runs, round {attempt + 1}/{repeats}: " + ", ".join(f"{size:,}" for size in order))
        for size in order:
            manager = managers[size]
            if attempt:
                manager.reset_agent(AGENT_ID, to=0)
            if repeats > 1 and attempt == repeats - 1:
                manager.remove_agent(HOLDER_ID)
            report = run_in_child(bench.url, bench.namespace(f"backlog-{size}"), plan.window, plan.batch_size)
            if report["changes"] != size:
                raise RuntimeError(f"agent run over backlog-{size} handled {report['changes']} changes")
            outs[size]["runs"].append(report)
    for size, out in outs.items():
        reports = out["runs"]
        best = dict(min(reports, key=lambda report: report["seconds"]))
        best["peak_rss_kib"] = max(report["peak_rss_kib"] for report in reports)
        best["method"] = f"fastest of {repeats} runs; peak RSS: highest of them"
        out["run"] = best
        out["stored_after_run"] = managers[size].track(0).size()
        bench.drop_namespace(f"backlog-{size}")
    return [outs[size] for size in plan.sizes]
