"""Status of a namespace: heads, stored changes, memory, agents' lag, the outbox's lag, the RQ queue.

One place computes these figures; ``livesync status`` renders them.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import ResponseError
from rq import Queue, Worker
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from livesync import deadletters
from livesync.errors import AgentCorrupt
from livesync.manager import Agent, SyncManager
from livesync.outbox.lag import outbox_status
from livesync.redis_policy import read_policy, redis_full
from livesync.track import Track


def partition_status(track: Track) -> dict[str, Any]:
    """Head, stored changes, oldest stored seq and memory of one partition."""
    first = track.first_seq()
    try:
        memory: int | None = track.memory_usage()
    except ResponseError:  # servers without MEMORY USAGE (fakeredis)
        memory = None
    return {
        "partition": track.partition,
        "head": track.head(),
        "stored": track.size(),
        "oldest_seq": first,
        "memory_bytes": memory,
    }


def agent_status(manager: SyncManager, agent: Agent, now: float | None = None) -> dict[str, Any]:
    """Where an agent stands: state, pointers, lag in changes and seconds, last run.

    A pointer that cannot be read (not an integer) is ``None`` with lag 0; the agent
    is then shown in state ``corrupt`` with the pointers key named in ``last_error``.
    A pointer beyond its partition's head (the head was lost or rolled back: state
    ``rollback`` once a run notices) shows a negative lag, head - pointer, and
    ``rewound``; the agent's total lag is then the sum of the negative ones, never 0.
    """
    now = time.time() if now is None else now
    state, last_error = agent.state, agent.last_error
    pointers: list[int | None] = []
    lags: list[int] = []
    ages: list[float | None] = []
    for track in manager.tracks():
        try:
            pointer = track.pointer(agent.id) or 0
        except AgentCorrupt as exc:
            state, last_error = "corrupt", str(exc)
            pointers.append(None)
            lags.append(0)
            ages.append(None)
            continue
        head = track.head()
        pointers.append(pointer)
        lags.append(head - pointer)
        age = None
        if head > pointer:
            change = track.change_at(pointer + 1) or track.oldest()
            if change is not None:
                age = round(max(0.0, now - change.ts / 1000), 3)
        ages.append(age)
    known = [age for age in ages if age is not None]
    lag_seconds = max(known) if known else None
    rewound = [lag for lag in lags if lag < 0]
    return {
        "id": agent.id,
        "name": agent.name,
        "backend": agent.backend,
        "state": state,
        "update_time": agent.update_time,
        "pointers": pointers,
        "lag_changes": sum(rewound) if rewound else sum(lags),
        "lag_seconds": lag_seconds,
        "partitions": [
            {"partition": number, "pointer": pointer, "lag_changes": lag, "lag_seconds": age, "rewound": lag < 0}
            for number, (pointer, lag, age) in enumerate(zip(pointers, lags, ages, strict=True))
        ],
        "last_run_at": agent.last_run_at,
        "last_success_at": agent.last_success_at,
        "last_error": last_error,
        "runs": agent.runs,
        "failures": agent.failures,
        "changes": agent.changes,
        "records": agent.records,
        "dead_letters": deadletters.count(manager, agent.id),
    }


def queue_status(queue: Queue) -> dict[str, Any]:
    """Length, running, scheduled and failed jobs, and workers of the RQ queue; whether its Redis is full."""
    return {
        "name": queue.name,
        "queued": queue.count,
        "started": StartedJobRegistry(queue=queue).count,
        "scheduled": ScheduledJobRegistry(queue=queue).count,  # type: ignore[no-untyped-call]
        "failed": FailedJobRegistry(queue=queue).count,
        "workers": Worker.count(queue=queue),
        "redis_full": redis_full(queue.connection),
    }


def redis_status(redis: Any, *, allow_eviction: bool = False) -> dict[str, Any]:
    """The Redis's eviction policy, read afresh: ``maxmemory_policy``, ``evicting``, per node."""
    return read_policy(redis, refresh=True).to_dict(allowed=allow_eviction)


def namespace_status(
    manager: SyncManager, queue: Queue | None = None, *, allow_eviction: bool = False
) -> dict[str, Any]:
    """Everything ``livesync status`` shows, as JSON-ready data.

    ``outbox`` is the last relay's report of the outbox's lag (:func:`outbox_status`),
    ``None`` while no relay reported. ``allow_eviction``: the operator accepts an evicting Redis (shown, not hidden).
    """
    meta = manager.meta
    now = time.time()
    return {
        "namespace": manager.namespace,
        "granularity": meta.granularity,
        "epoch": meta.epoch,
        "redis": redis_status(manager.redis, allow_eviction=allow_eviction),
        "partitions": [partition_status(track) for track in manager.tracks()],
        "agents": [agent_status(manager, agent, now) for agent in manager.list_agents()],
        "outbox": outbox_status(manager.redis, manager.keys, now),
        "queue": queue_status(queue) if queue is not None else None,
    }
