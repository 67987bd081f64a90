"""Dead letters: records a backend rejected, kept per agent and partition with the reason.

A backend raising ``RecordRejected`` sends those records here and the run goes on
(the pointer moves past them). Operators list them, send them again once the target
is fixed (``requeue``), or drop them (``purge``). Requeued records are older than what
the target may have received since: targets keep the record with the highest ``version``.

Runs, exports and requeues write dead letters only through the fenced ack script
(``Track.acknowledge``), in the same atomic call as the pointer move: a runner that
lost its lock, or whose agent was removed (and maybe added again), writes none.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from livesync import defaults, upload
from livesync.backends import Backend
from livesync.errors import DecodeError, RecordRejected
from livesync.lock import RunLock
from livesync.manager import SyncManager
from livesync.records import Record


def encode(rejections: Sequence[tuple[Record, str]]) -> list[str]:
    """The stored form of rejected records: one JSON entry per record, with reason and time.

    A value JSON cannot encode (a loader's ``datetime``, a set: often why the record was
    refused) is stored as its ``repr``, so one such record never stops the run that
    dead-letters it; a requeue loads its document afresh.
    """
    now = round(time.time(), 3)
    return [
        json.dumps({"record": record.to_dict(), "reason": reason, "at": now}, ensure_ascii=False, default=repr)
        for record, reason in rejections
    ]


def add(
    manager: SyncManager,
    agent_id: str,
    partition: int,
    rejected: RecordRejected | Sequence[tuple[Record, str]],
    *,
    lock: RunLock | None = None,
) -> int:
    """Append the rejected records (a backend's error, or its ``(record, reason)`` pairs) to the agent's list.

    Returns how many were added.

    With ``lock`` (the caller's run lock of that partition) the write is fenced like an
    ack and raises :class:`LockLost`, writing nothing, when the lock or the agent's
    pointer is gone. Without it the write is unconditional: for operators and tests,
    never for a runner.
    """
    entries = encode(rejected.rejections if isinstance(rejected, RecordRejected) else rejected)
    if not entries:
        return 0
    track = manager.track(partition)
    if lock is not None:
        track.acknowledge(agent_id, lock.token, None, dead_letters=entries)
    else:
        manager.redis.rpush(track.keys.dlq(agent_id), *entries)
    return len(entries)


def entries(manager: SyncManager, agent_id: str) -> list[dict[str, Any]]:
    """Every dead letter of an agent, partition by partition, oldest first."""
    out = []
    for partition in range(manager.partitions):
        key = manager.keys.partition(partition).dlq(agent_id)
        for raw in manager.redis.lrange(key, 0, -1):
            entry = _decode(key, raw)
            entry["partition"] = partition
            out.append(entry)
    return out


def count(manager: SyncManager, agent_id: str) -> int:
    """How many dead letters an agent has."""
    keys = manager.keys
    return sum(int(manager.redis.llen(keys.partition(p).dlq(agent_id))) for p in range(manager.partitions))


def requeue(
    manager: SyncManager, agent_id: str, *, backend: Backend | None = None, lock_ttl: float = defaults.LOCK_TTL
) -> dict[str, int]:
    """Upload every dead letter again; accepted ones leave the list, rejected ones stay.

    Takes each partition's run lock, so it never races a run of the agent. Returns
    ``{"requeued": accepted, "rejected": still rejected}``.
    """
    agent = manager.get_agent(agent_id)
    accepted = still_rejected = 0
    loader = upload.loader_for(manager, agent)
    with upload.backend_for(manager, agent, backend) as uploader:
        for track in manager.tracks():
            key = track.keys.dlq(agent_id)
            with RunLock(track, agent_id, ttl=lock_ttl) as lock:
                raw = manager.redis.lrange(key, 0, -1)
                if not raw:
                    continue
                stored = [Record.from_dict(_decode(key, item)["record"]) for item in raw]
                uploaded = upload.send(uploader, stored, loader)
                # fenced like a run's ack: drop what was read (newer letters stay) and keep
                # what was refused again, only while this lock and the agent's pointer last
                lock.check()
                letters = encode(uploaded.rejected)
                track.acknowledge(agent_id, lock.token, None, dead_letters=letters, drop_letters=len(raw))
                still_rejected += len(uploaded.rejected)
                accepted += uploaded.accepted
    return {"requeued": accepted, "rejected": still_rejected}


def purge(manager: SyncManager, agent_id: str) -> int:
    """Drop every dead letter of an agent; return how many were dropped."""
    manager.get_agent(agent_id)
    dropped = count(manager, agent_id)
    manager.redis.delete(*(manager.keys.partition(p).dlq(agent_id) for p in range(manager.partitions)))
    return dropped


def _decode(key: str, raw: bytes) -> dict[str, Any]:
    try:
        entry: dict[str, Any] = json.loads(raw)
        entry["record"] = Record.from_dict(entry["record"]).to_dict()
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(key, None, raw, f"dead letter is not a valid entry ({exc})") from exc
    return entry
