"""What one benchmark run owns in Redis: its ``bench-<id>`` prefix, its namespaces, their backlogs.

Shared by the figures (:mod:`benchmarks.figures`), the backlog runs
(:mod:`benchmarks.backlogs`) and ``--profile`` (:mod:`benchmarks.profiling`), which is
why it is a module of its own: none of them imports another for it. livesync's keys
come from :mod:`livesync.keys`, RQ's from RQ's own constants; the baselines' plain keys
carry the run's prefix.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from benchmarks.baseline import iter_batches
from benchmarks.plan import AGENT_ID, BATCH, Plan
from benchmarks.report import Measure
from livesync import Publisher, SyncManager
from livesync.keys import namespace_keys
from livesync.manager import Agent
from livesync.workload import iter_changes


class BenchSpace:
    """The keys of one benchmark run against one Redis; every key it creates carries its prefix."""

    def __init__(self, client: Any, url: str, plan: Plan) -> None:
        self.redis: Any = client  # redis.Redis; Any as in livesync (redis-py's stubs vary by version)
        self.url = url
        self.plan = plan
        self.prefix = f"bench-{uuid.uuid4().hex[:10]}"
        self._partitions: dict[str, int] = {}  # namespace -> its partitions, for drop_namespace

    def namespace(self, label: str) -> str:
        """A livesync namespace of this run (keys ``livesync:{bench-<id>-label...}``)."""
        return f"{self.prefix}-{label}"

    def key(self, label: str) -> str:
        """A plain Redis key of this run (baselines, stream)."""
        return f"{self.prefix}:{label}"

    def delete_matching(self, pattern: str) -> int:
        """Delete every key matching ``pattern`` (SCAN + DEL in chunks); return how many."""
        doomed = list(self.redis.scan_iter(match=pattern, count=1000))
        for start in range(0, len(doomed), 500):
            self.redis.delete(*doomed[start : start + 500])
        return len(doomed)

    def cleanup(self) -> int:
        """Delete every key of this run: namespaces, baseline keys, stream, RQ queue and jobs."""
        from rq import Queue, Worker

        self.redis.srem(Queue.redis_queues_keys, f"{Queue.redis_queue_namespace_prefix}{self.prefix}")
        self.redis.srem(Worker.redis_workers_keys, f"{Worker.redis_worker_namespace_prefix}{self.prefix}-worker")
        return self.delete_matching(f"*{self.prefix}*")

    def new_manager(self, label: str, agents: int = 1) -> tuple[SyncManager, Publisher]:
        """A fresh namespace with ``agents`` null agents at the tail, and its publisher (meta created)."""
        ns = self.namespace(label)
        manager = SyncManager(self.redis, ns)
        for number in range(agents):
            agent_id = AGENT_ID if number == 0 else f"{AGENT_ID}-{number}"
            manager.add_agent(Agent(id=agent_id, backend="null"), start="tail")
        publisher = Publisher(self.redis, ns)
        _ = publisher.meta
        self._partitions[ns] = manager.partitions
        return manager, publisher

    def drop_namespace(self, label: str) -> None:
        """Delete a namespace of this run: its own keys and its partitions' (not those of ``label``-N)."""
        ns = self.namespace(label)
        keys = namespace_keys(ns)
        for partition in range(self._partitions.pop(ns, 1)):
            self.delete_matching(keys.partition(partition).pattern)
        self.delete_matching(keys.pattern)

    def build_backlog(self, label: str, size: int, agents: int = 1) -> tuple[SyncManager, Measure]:
        """Register the agent(s) at the tail, then publish ``size`` changes with emit_many x 1,000.

        Only the emit_many calls are timed (not the workload generator).
        """
        manager, publisher = self.new_manager(label, agents)
        emit_many = publisher.emit_many
        seconds = 0.0
        for batch in iter_batches(iter_changes(size, self.plan.objects, self.plan.seed + size), BATCH):
            clock = time.perf_counter()
            emit_many(batch)
            seconds += time.perf_counter() - clock
        head = manager.track(0).head()
        if head != size:
            raise RuntimeError(f"backlog {label}: head is {head}, expected {size}")
        return manager, Measure(size, [seconds], "single run")
