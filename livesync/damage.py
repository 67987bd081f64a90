"""A damaged namespace: its keys found without a meta, and what the error says.

A namespace whose meta was lost, evicted or deleted while other keys remain is
*damaged*: re-creating the meta with defaults would hide partitions for ever, so
:class:`~livesync.errors.NamespaceDamaged` is raised with :func:`damaged_message`
(``livesync init --repair``, in :mod:`livesync.repair`, restores it).

Imported by the publisher client: standard library and redis only.
"""

from __future__ import annotations

from typing import Any

from redis.cluster import RedisCluster

from livesync.defaults import MAX_PARTITIONS
from livesync.keys import NamespaceKeys

#: Keys named at most in a :class:`NamespaceDamaged` message.
_NAMED_KEYS = 5


def find_keys(redis: Any, keys: NamespaceKeys, limit: int = _NAMED_KEYS) -> list[str]:
    """Up to ``limit`` keys of the namespace's footprint that exist (meta aside).

    One EXISTS (one pipeline on a cluster) probes the namespace's keys and every
    possible partition's (``MAX_PARTITIONS``), rather than a SCAN of the whole
    keyspace: bounded cost, and every key that holds data is in a footprint (``keys.py``).
    """
    return [key for _partition, key in _found_keys(redis, keys)][:limit]


def partitions_holding_keys(redis: Any, keys: NamespaceKeys) -> list[int]:
    """Partitions (of any number up to ``MAX_PARTITIONS``) that hold at least one key."""
    return sorted({partition for partition, _key in _found_keys(redis, keys) if partition >= 0})


def _found_keys(redis: Any, keys: NamespaceKeys) -> list[tuple[int, str]]:
    """``(partition or -1, key)`` of every existing footprint key, namespace keys first."""
    groups: list[tuple[int, tuple[str, ...]]] = [(-1, keys.footprint)]
    groups += [(p, keys.partition(p).footprint) for p in range(MAX_PARTITIONS)]
    if not isinstance(redis, RedisCluster) and not redis.exists(*(key for _p, group in groups for key in group)):
        return []  # one command where keys may span slots: the common answer, cheaply
    pipe = redis.pipeline(transaction=False)
    for _partition, group in groups:
        pipe.exists(*group)  # the keys of one group share a hash slot
    hits = [group for group, count in zip(groups, pipe.execute(), strict=True) if count]
    if not hits:
        return []
    pipe = redis.pipeline(transaction=False)
    candidates = [(partition, key) for partition, group in hits for key in group]
    for _partition, key in candidates:
        pipe.exists(key)
    return [candidate for candidate, count in zip(candidates, pipe.execute(), strict=True) if count]


def damaged_message(keys: NamespaceKeys, found: list[str]) -> str:
    """What :class:`NamespaceDamaged` says: the namespace, keys found, and the fix."""
    named = ", ".join(found[:_NAMED_KEYS]) + (", ..." if len(found) > _NAMED_KEYS else "")
    return (
        f"namespace {keys.namespace!r} has no meta ({keys.meta}) but holds other keys ({named}): "
        "its meta was lost, evicted or deleted, and re-creating it with defaults would hide data; "
        "restore it with 'livesync init --repair --partitions P' (P: the namespace's number of partitions) "
        "or delete it with 'livesync destroy --yes'"
    )
