"""Destroying a namespace: every key of it, or only its agents, or only its changes.

What ``livesync destroy`` and :meth:`SyncManager.destroy` do; a damaged namespace (no meta)
is destroyed too, whatever its partitions hold.
"""

from __future__ import annotations

from typing import Any

from livesync.damage import damaged_message, find_keys, partitions_holding_keys
from livesync.errors import ConfigurationError, NamespaceDamaged
from livesync.keys import NamespaceKeys
from livesync.namespace import read_meta
from livesync.track import Track


def destroy_namespace(redis: Any, keys: NamespaceKeys, *, agents_only: bool = False, track_only: bool = False) -> int:
    """Delete the namespace behind ``keys``; return keys deleted.

    ``agents_only`` keeps the track; ``track_only`` keeps the agents and moves
    their pointers to the head (nothing older is stored any more; the head stays,
    so seqs are never handed out twice).
    """
    if agents_only and track_only:
        raise ConfigurationError("agents_only and track_only exclude each other")
    meta = read_meta(redis, keys)
    deleted = 0
    if meta is not None:
        tracks = [Track(redis, keys.partition(p), meta.granularity) for p in range(meta.partitions)]
        if not (agents_only or track_only):
            # the meta goes first: a manager or publisher meeting the rest half-deleted
            # then refuses (damaged) instead of writing into it
            deleted += int(redis.delete(keys.meta, keys.tick_lock))
    else:
        found = find_keys(redis, keys)
        if not found:
            return 0
        if agents_only or track_only:
            raise NamespaceDamaged(damaged_message(keys, found))
        # a damaged namespace (no meta): delete whatever its partitions hold
        holding = partitions_holding_keys(redis, keys)
        tracks = [Track(redis, keys.partition(p), 1) for p in range(max(holding, default=-1) + 1)]
    for track in tracks:
        deleted += track.destroy(track=not agents_only, pointers=not track_only)
        if track_only:
            head = track.head()
            for agent_id, pointer in track.pointers().items():
                if pointer < head:
                    track.move_pointer(agent_id, head)
    if track_only:
        return deleted
    agent_ids = [m.decode() for m in redis.smembers(keys.agents)]
    agent_keys = [key for agent_id in agent_ids for key in (keys.agent(agent_id), keys.reindex(agent_id))]
    doomed = [keys.agents, keys.jobs, *agent_keys]
    if not agents_only:
        doomed += [keys.meta, keys.tick_lock]  # (a damaged namespace's tick lock)
    deleted += int(redis.delete(*doomed))
    return deleted
