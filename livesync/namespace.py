"""Namespace metadata: granularity, partitions and epoch, fixed when the namespace is created.

The meta is created atomically (``lua/create_meta.lua``) with an **epoch**: the server's
clock in microseconds, greater than every epoch seen before for the namespace. Every
partition keeps a copy of it (``livesync:{ns:p}:epoch``) that the publish script
checks, so a client that cached the meta of a destroyed or re-created namespace never
writes with stale partitioning (DESIGN.md, "Versions and epochs").

A missing meta is re-created only when the namespace holds no other key: otherwise the
namespace is damaged (keys lost, evicted or deleted by hand) and re-creating it with
defaults would hide partitions for ever, so :class:`NamespaceDamaged` is raised
(:mod:`livesync.damage` finds the keys and says so) and
:func:`livesync.repair.repair_meta` (``livesync init --repair``) restores it.

Imported by the publisher client: standard library and redis only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from livesync import defaults
from livesync.codec import text
from livesync.damage import damaged_message, find_keys, partitions_holding_keys
from livesync.errors import ConfigurationError, NamespaceDamaged
from livesync.keys import NamespaceKeys
from livesync.keys import check_namespace_name as check_namespace
from livesync.lua import scripts_for

#: 2: members carry versions (``<first seq>:<first version>:``) and the meta an epoch.
SCHEMA_VERSION = 2
DEFAULT_GRANULARITY = defaults.GRANULARITY
DEFAULT_PARTITIONS = defaults.PARTITIONS
MAX_PARTITIONS = defaults.MAX_PARTITIONS


@dataclass(frozen=True, slots=True)
class Meta:
    """What a namespace fixes at creation."""

    granularity: int
    partitions: int
    schema: int
    created_at: float
    epoch: int = 0
    """Server microseconds at creation; greater for every later creation (0: schema 1)."""


def read_meta(redis: Any, keys: NamespaceKeys) -> Meta | None:
    """Return the namespace's metadata as stored (any schema), or ``None`` when there is none."""
    raw = redis.hgetall(keys.meta)
    if not raw:
        return None
    fields = {text(k): text(v) for k, v in raw.items()}
    return Meta(
        granularity=int(fields["granularity"]),
        partitions=int(fields["partitions"]),
        schema=int(fields.get("schema", 1)),
        created_at=float(fields.get("created_at", 0)),
        epoch=int(fields.get("epoch", 0)),
    )


def ensure_meta(
    redis: Any,
    keys: NamespaceKeys,
    *,
    partitions: int | None = None,
    granularity: int | None = None,
    min_epoch: int = 0,
) -> Meta:
    """Return the namespace's metadata, creating it with the given values if needed.

    Values given explicitly must match what the namespace already holds: P and the
    granularity are fixed for the life of a namespace. A new meta's epoch is greater
    than ``min_epoch`` (a client's cached epoch). Raises :class:`NamespaceDamaged`
    when the meta is missing but other keys of the namespace exist.
    """
    check_values(partitions, granularity)
    meta = read_meta(redis, keys)
    if meta is None:
        meta = create_meta(
            redis,
            keys,
            partitions=partitions or DEFAULT_PARTITIONS,
            granularity=granularity or DEFAULT_GRANULARITY,
            min_epoch=min_epoch,
        )
    check_meta(meta, keys, partitions=partitions, granularity=granularity)
    return meta


def check_meta(meta: Meta, keys: NamespaceKeys, *, partitions: int | None, granularity: int | None) -> None:
    """Refuse a meta of another schema, or one that contradicts explicitly asked values."""
    if meta.schema < SCHEMA_VERSION:
        raise ConfigurationError(
            f"namespace {keys.namespace!r} was created by an older livesync (schema {meta.schema}; this livesync "
            f"needs schema {SCHEMA_VERSION}, whose changes carry versions): drain its agents with the older "
            "livesync, then destroy and re-create it ('livesync destroy --yes', 'livesync init')"
        )
    if meta.schema > SCHEMA_VERSION:
        raise ConfigurationError(
            f"namespace {keys.namespace!r} has schema {meta.schema}; this livesync knows {SCHEMA_VERSION} "
            "(upgrade livesync)"
        )
    if partitions is not None and partitions != meta.partitions:
        raise ConfigurationError(
            f"partitions: namespace {keys.namespace!r} has {meta.partitions} partition(s), not {partitions}; "
            "the number of partitions is fixed when a namespace is created"
        )
    if granularity is not None and granularity != meta.granularity:
        raise ConfigurationError(
            f"granularity: namespace {keys.namespace!r} uses {meta.granularity} s buckets, "
            f"not {granularity}; "
            "the granularity is fixed when a namespace is created"
        )


def create_meta(redis: Any, keys: NamespaceKeys, *, partitions: int, granularity: int, min_epoch: int = 0) -> Meta:
    """Create the meta of a namespace that holds no key yet; return the meta that won.

    Two racing creators end with one meta (the script writes only when there is none)
    and both return it. Refuses with :class:`NamespaceDamaged` when other keys of the
    namespace exist without a meta.
    """
    found = find_keys(redis, keys)
    if found:
        # a racing creator writes its meta before any other key: then that meta is the one
        meta = read_meta(redis, keys)
        if meta is not None:
            return meta
        raise NamespaceDamaged(damaged_message(keys, found))
    scripts_for(redis).create_meta(
        keys=[keys.meta], args=[granularity, partitions, SCHEMA_VERSION, max(0, min_epoch), 0]
    )
    meta = read_meta(redis, keys)
    if meta is None:  # destroyed between the two calls
        raise NamespaceDamaged(f"namespace {keys.namespace!r} was deleted while it was being created; try again")
    write_partition_epochs(redis, keys, meta, overwrite=False)
    return meta


def write_partition_epochs(redis: Any, keys: NamespaceKeys, meta: Meta, *, overwrite: bool) -> None:
    """Copy the meta's epoch into every partition (only where missing, unless ``overwrite``)."""
    pipe = redis.pipeline(transaction=False)
    for partition in range(meta.partitions):
        pipe.set(keys.partition(partition).epoch, meta.epoch, nx=not overwrite)
    pipe.execute()


def partition_epoch_problem(redis: Any, keys: NamespaceKeys, meta: Meta, partition: int) -> str | None:
    """Why ``partition`` does not belong to this creation of the namespace, or ``None``.

    A partition that never held a change and lacks its epoch key (a creator stopped
    before writing it) gets the meta's epoch now, after the meta is read again: a
    stale ``meta`` never claims a partition.
    """
    pkeys = keys.partition(partition)
    for _attempt in range(2):
        raw = redis.get(pkeys.epoch)
        if raw is not None:
            if int(raw) == meta.epoch:
                return None
            return (
                f"partition {partition} holds epoch {int(raw)}, the namespace {meta.epoch} "
                "(restored from another backup, or the namespace was re-created under it)"
            )
        if redis.exists(pkeys.seq, pkeys.clock):
            return f"partition {partition} holds changes but no epoch (Redis lost or rolled back data)"
        current = read_meta(redis, keys)
        if current is None or current.epoch != meta.epoch:
            return f"partition {partition} has no epoch and namespace {keys.namespace!r} was destroyed or re-created"
        redis.set(pkeys.epoch, meta.epoch, nx=True)
    return f"partition {partition} has no epoch"  # pragma: no cover - only when a key flips twice


def partition_of(type_: str, id_: int | str, partitions: int) -> int:
    """Return the partition of an object: ``crc32(type + ":" + id) % P``."""
    if partitions == 1:
        return 0
    return zlib.crc32(f"{type_}:{id_}".encode()) % partitions


def check_values(partitions: int | None, granularity: int | None) -> None:
    """Refuse a number of partitions or a granularity out of range (``None``: not given)."""
    if partitions is not None and not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigurationError(f"partitions: must be between 1 and {MAX_PARTITIONS}, got {partitions}")
    if granularity is not None and not 1 <= granularity <= defaults.MAX_GRANULARITY:
        raise ConfigurationError(
            f"granularity: must be between 1 and {defaults.MAX_GRANULARITY} seconds, got {granularity}"
        )


__all__ = [
    "DEFAULT_GRANULARITY",
    "DEFAULT_PARTITIONS",
    "MAX_PARTITIONS",
    "SCHEMA_VERSION",
    "Meta",
    "check_meta",
    "check_namespace",
    "check_values",
    "create_meta",
    "damaged_message",
    "ensure_meta",
    "find_keys",
    "partition_epoch_problem",
    "partition_of",
    "partitions_holding_keys",
    "read_meta",
]
