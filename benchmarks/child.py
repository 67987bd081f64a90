"""The agent run of figures 3 and 6 in a fresh process, so its peak RSS is its own.

The parent starts ``sys.executable scripts/bench.py --internal-run NAMESPACE`` (the
Redis URL travels in ``LIVESYNC_REDIS_URL``, not on the command line: it may hold a
password); the child runs the ``bench`` agent of that namespace once and prints one JSON
line with the run's figures and its own peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from benchmarks.plan import AGENT_ID
from livesync import SyncManager, run_agent

#: The benchmark's one entry point, which the child runs too.
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def peak_rss_kib() -> int:
    """This process's peak resident set size in KiB: ``VmHWM`` of ``/proc/self/status``.

    ``ru_maxrss`` of a child started by ``subprocess`` (or multiprocessing's spawn) is at
    least the parent's RSS at fork time: Linux keeps the forked memory map's high-water mark
    across ``exec``. ``VmHWM`` belongs to the child's own memory map. Falls back to
    ``ru_maxrss`` where ``/proc`` is missing.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def internal_run(url: str, namespace: str, batch_size: int, window: int) -> dict[str, Any]:
    """Run the ``bench`` agent of ``namespace`` once; report rate and this process's peak RSS."""
    client = redis.Redis.from_url(url)
    manager = SyncManager(client, namespace)
    rss_before = peak_rss_kib()
    clock = time.perf_counter()
    result = run_agent(manager, AGENT_ID, 0, batch_size=batch_size, window=window)
    seconds = time.perf_counter() - clock
    peak = peak_rss_kib()
    client.close()
    return {
        "changes": result.changes,
        "records": result.records,
        "windows": result.windows,
        "batches": result.batches,
        "pruned_buckets": result.pruned_buckets,
        "pointer_after": result.pointer_after,
        "seconds": round(seconds, 4),
        "changes_per_second": round(result.changes / seconds, 1) if seconds > 0 else 0.0,
        "rss_before_run_kib": rss_before,
        "peak_rss_kib": peak,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_in_child(url: str, namespace: str, window: int, batch_size: int) -> dict[str, Any]:
    """Run the ``bench`` agent of ``namespace`` in a fresh child process; return its report."""
    env = dict(os.environ, LIVESYNC_REDIS_URL=url)  # not on the command line: it may hold a password
    command = [
        sys.executable,
        str(SCRIPT),
        "--internal-run",
        namespace,
        "--window",
        str(window),
        "--batch-size",
        str(batch_size),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"agent run child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report
