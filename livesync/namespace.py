"""Namespace metadata: granularity, partitions and epoch, fixed when the namespace is created.

The meta is created atomically (``lua/create_meta.lua``) with an **epoch**: the server's
clock in microseconds, greater than every epoch seen before for the namespace. Every
partition keeps a copy of it (``livesync:{ns:p}:epoch``) that the publish script
checks, so a client that cached the meta of a destroyed or re-created namespace never
writes with stale partitioning (DESIGN.md, "Versions and epochs").

A missing meta is re-created only when the namespace holds no other key: otherwise the
namespace is damaged (keys lost, evicted or deleted by hand) and re-creating it with
defaults would hide partitions for ever, so :class:`NamespaceDamaged` is raised and
:func:`repair_meta` (``livesync init --repair``) restores it.

Imported by the publisher client: standard library and redis only.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster

from livesync import defaults
from livesync.codec import decode_member, text
from livesync.errors import ConfigurationError, NamespaceDamaged
from livesync.keys import NAMESPACE_PATTERN, NamespaceKeys
from livesync.scripts import scripts_for

#: 2: members carry versions (``<first seq>:<first version>:``) and the meta an epoch.
SCHEMA_VERSION = 2
DEFAULT_GRANULARITY = defaults.GRANULARITY
DEFAULT_PARTITIONS = defaults.PARTITIONS
MAX_PARTITIONS = defaults.MAX_PARTITIONS
#: Keys named at most in a :class:`NamespaceDamaged` message.
_NAMED_KEYS = 5


@dataclass(frozen=True, slots=True)
class Meta:
    """What a namespace fixes at creation."""

    granularity: int
    partitions: int
    schema: int
    created_at: float
    epoch: int = 0
    """Server microseconds at creation; greater for every later creation (0: schema 1)."""


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid name, else raise ``ConfigurationError``."""
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ConfigurationError(f"namespace: {namespace!r} is not valid (1-64 of letters, digits, '_', '.', '-')")
    return namespace


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
    _check_values(partitions, granularity)
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


@dataclass(frozen=True, slots=True)
class Repair:
    """What :func:`repair_meta` did."""

    meta: Meta
    repaired: bool
    notes: list[str]


def repair_meta(redis: Any, keys: NamespaceKeys, *, partitions: int, granularity: int | None = None) -> Repair:
    """Restore a damaged namespace's meta (``livesync init --repair``).

    When every partition that holds keys has the same epoch, the meta gets that epoch
    back, so agents and long-lived publishers go on; otherwise a new epoch, greater
    than every one found, is written to the meta and every partition. With a meta in
    place, partitions whose epoch is missing or differs get the meta's epoch. Either
    way a partition that lost its head gets it back (:func:`restore_heads`). ``partitions``
    is refused when keys exist beyond it, and, when the partitions agree on an epoch,
    when it is above the highest partition holding an epoch key + 1.
    """
    _check_values(partitions, granularity)
    meta = read_meta(redis, keys)
    if meta is not None:
        check_meta(meta, keys, partitions=partitions, granularity=granularity)
        return _repair_partitions(redis, keys, meta)
    holding = partitions_holding_keys(redis, keys)
    beyond = [p for p in holding if p >= partitions]
    if beyond:
        raise ConfigurationError(
            f"partitions: partition {beyond[0]} of namespace {keys.namespace!r} holds keys, so it has more than "
            f"{partitions} partition(s) (at least {holding[-1] + 1}); repair it with its real number of partitions"
        )
    pipe = redis.pipeline(transaction=False)
    for partition in holding:
        pipe.get(keys.partition(partition).epoch)
    epochs = {p: None if raw is None else int(raw) for p, raw in zip(holding, pipe.execute(), strict=True)}
    known = {epoch for epoch in epochs.values() if epoch is not None}
    agreed = next(iter(known)) if len(known) == 1 and None not in epochs.values() else 0
    if agreed and partitions > max(epochs) + 1:
        # every partition a creation made got its epoch key: the highest one is the last partition
        had = max(epochs) + 1
        raise ConfigurationError(
            f"partitions: namespace {keys.namespace!r} had {had} partition(s) (partitions 0..{had - 1} hold its "
            f"epoch {agreed}, and every partition it created holds one), not {partitions}: objects would hash to "
            f"other partitions and lose their per-object order; repair it with --partitions {had}"
        )
    granularity = granularity or DEFAULT_GRANULARITY
    _check_granularity(redis, keys, holding, granularity)
    created = scripts_for(redis).create_meta(
        keys=[keys.meta], args=[granularity, partitions, SCHEMA_VERSION, max(known, default=0), agreed]
    )
    meta = read_meta(redis, keys)
    if not created or meta is None:  # another client created it meanwhile: check that one
        return repair_meta(redis, keys, partitions=partitions, granularity=granularity)
    if agreed:
        notes = [f"meta restored with the epoch {agreed} every partition holds"]
        write_partition_epochs(redis, keys, meta, overwrite=False)
    else:
        found = ", ".join(f"{p}: {'none' if e is None else e}" for p, e in epochs.items()) or "no partition holds keys"
        notes = [f"partitions disagreed on the epoch ({found}); new epoch {meta.epoch} written to every partition"]
        write_partition_epochs(redis, keys, meta, overwrite=True)
    notes += restore_heads(redis, keys, meta)
    return Repair(meta=meta, repaired=True, notes=notes)


def restore_heads(redis: Any, keys: NamespaceKeys, meta: Meta) -> list[str]:
    """Give every partition that lost its head (``seq`` key) one above all it still holds; return notes.

    The head becomes the highest of the partition's pointers, its highest stored seq
    and its pruned mark, so publishing goes on above every pointer (the publish script
    refuses such a partition until then). A partition that never held anything keeps
    no head: its first publish starts at seq 1.
    """
    notes = []
    for partition in range(meta.partitions):
        pkeys = keys.partition(partition)
        pipe = redis.pipeline(transaction=False)
        pipe.get(pkeys.seq)
        pipe.exists(pkeys.clock)
        pipe.hvals(pkeys.pointers)
        pipe.get(pkeys.pruned)
        pipe.zrevrange(pkeys.buckets, 0, 0)
        head, clock, pointers, pruned, newest = pipe.execute()
        if head is not None:
            continue
        highest_pointer = max((_int_or_zero(value) for value in pointers), default=0)
        if not (clock or highest_pointer > 0 or newest):
            continue  # a new partition, not a lost head
        stored = _highest_stored_seq(redis, pkeys.bucket(int(newest[0]))) if newest else 0
        restored = max(highest_pointer, stored, _int_or_zero(pruned or b"0"))
        if redis.set(pkeys.seq, restored, nx=True):
            notes.append(
                f"partition {partition} had lost its head: restored to {restored} (the highest of its pointers, "
                "stored seqs and pruned mark), so publishing continues above every pointer"
            )
    return notes


def _highest_stored_seq(redis: Any, bucket_key: str) -> int:
    """The last seq of the newest member of ``bucket_key`` (0 when the bucket is empty)."""
    members = redis.zrevrange(bucket_key, 0, 0, withscores=True)
    if not members:
        return 0
    member, score = members[0]
    return decode_member(bucket_key, member, score)[-1].seq


def _int_or_zero(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def _check_granularity(redis: Any, keys: NamespaceKeys, partitions: list[int], granularity: int) -> None:
    """Refuse a granularity the stored buckets contradict.

    A partition's newest bucket id is ``server seconds // granularity`` of its last
    publish, and its clock holds that publish's time: a wrong granularity would make
    retention take every stored bucket for ancient (or for the future).
    """
    pipe = redis.pipeline(transaction=False)
    for partition in partitions:
        pipe.get(keys.partition(partition).clock)
        pipe.zrevrange(keys.partition(partition).buckets, 0, 0)
    replies = pipe.execute()
    for partition, clock, newest in zip(partitions, replies[0::2], replies[1::2], strict=True):
        if clock is None or not newest:
            continue
        seconds, bucket = int(clock) // 1_000_000, int(newest[0])
        if abs(seconds // granularity - bucket) > 1:
            low, high = seconds / (bucket + 1), seconds / bucket if bucket else float("inf")
            raise ConfigurationError(
                f"granularity: {granularity} s does not match partition {partition} of namespace "
                f"{keys.namespace!r}: its newest bucket {bucket} was written at server second {seconds}, "
                f"so its granularity is between {low:.1f} and {high:.1f} s; give it with --granularity"
            )


def _repair_partitions(redis: Any, keys: NamespaceKeys, meta: Meta) -> Repair:
    notes = []
    for partition in range(meta.partitions):
        problem = partition_epoch_problem(redis, keys, meta, partition)
        if problem is not None:
            redis.set(keys.partition(partition).epoch, meta.epoch)
            notes.append(f"{problem}; it now holds the namespace's epoch {meta.epoch}")
    notes += restore_heads(redis, keys, meta)
    return Repair(meta=meta, repaired=bool(notes), notes=notes)


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


def _check_values(partitions: int | None, granularity: int | None) -> None:
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
    "Repair",
    "check_meta",
    "check_namespace",
    "create_meta",
    "ensure_meta",
    "find_keys",
    "partition_epoch_problem",
    "partition_of",
    "partitions_holding_keys",
    "read_meta",
    "repair_meta",
    "restore_heads",
]
