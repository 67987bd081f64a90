"""livesync: a Redis-backed change-event pipeline.

Applications publish small change events through :class:`Publisher`; livesync keeps
them once on a time-bucketed track, and every agent (one per target system) syncs
its pending slice, reduced to one record per object, through its backend.

Importing :class:`Publisher` pulls in redis and msgpack only; the heavier parts
(manager, runner, jobs, settings) load on first access.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from livesync.changes import FLAGS, Change
from livesync.client import Publisher, Unit
from livesync.errors import (
    AgentBusy,
    AgentCorrupt,
    AgentExists,
    AgentNotFound,
    AgentNotRunnable,
    BackendError,
    ConfigurationError,
    DashboardUnavailable,
    DeadLetterLimit,
    DecodeError,
    EpochChanged,
    EvictingRedis,
    HeadLost,
    ImportNotAllowed,
    InvalidChange,
    JobRefused,
    LiveSyncError,
    LoaderError,
    LockError,
    LockLost,
    NamespaceDamaged,
    OutboxError,
    RecordRejected,
    RedisFull,
    RedisUnavailable,
    ReplicationError,
    SignatureError,
    UnknownBackend,
    UnknownExpander,
    UnknownLoader,
    WebhookError,
)
from livesync.records import Record

if TYPE_CHECKING:
    from livesync.backends import Backend
    from livesync.config import Settings
    from livesync.manager import Agent, SyncManager
    from livesync.reduce import reduce
    from livesync.runner import RunResult, run_agent
    from livesync.track import Track

__version__ = "0.1.0"

_LAZY = {
    "Backend": "livesync.backends",
    "Settings": "livesync.config",
    "Agent": "livesync.manager",
    "SyncManager": "livesync.manager",
    "reduce": "livesync.reduce",
    "RunResult": "livesync.runner",
    "run_agent": "livesync.runner",
    "Track": "livesync.track",
}

# grouped by concept, not sorted
__all__ = [  # noqa: RUF022
    # publishing
    "Publisher",
    "Unit",
    "Change",
    "FLAGS",
    # syncing
    "SyncManager",
    "Agent",
    "Track",
    "Record",
    "reduce",
    "run_agent",
    "RunResult",
    "Backend",
    "Settings",
    # errors
    "LiveSyncError",
    "InvalidChange",
    "ConfigurationError",
    "UnknownBackend",
    "UnknownExpander",
    "UnknownLoader",
    "NamespaceDamaged",
    "HeadLost",
    "EvictingRedis",
    "ImportNotAllowed",
    "AgentNotFound",
    "AgentExists",
    "AgentNotRunnable",
    "AgentCorrupt",
    "LockError",
    "AgentBusy",
    "LockLost",
    "DecodeError",
    "OutboxError",
    "RecordRejected",
    "LoaderError",
    "BackendError",
    "DeadLetterLimit",
    "EpochChanged",
    "JobRefused",
    "RedisUnavailable",
    "RedisFull",
    "ReplicationError",
    "WebhookError",
    "SignatureError",
    "DashboardUnavailable",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'livesync' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
