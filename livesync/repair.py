"""Repairing a damaged namespace (``livesync init --repair``): its meta, partition epochs and heads.

See :mod:`livesync.damage` for how a damaged namespace is found, and DESIGN.md,
"Versions and epochs", for what the epochs guard.

Standard library and redis only, like :mod:`livesync.namespace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from livesync.codec import decode_member
from livesync.damage import partitions_holding_keys
from livesync.errors import ConfigurationError
from livesync.keys import NamespaceKeys
from livesync.lua import scripts_for
from livesync.namespace import (
    DEFAULT_GRANULARITY,
    SCHEMA_VERSION,
    Meta,
    check_meta,
    check_values,
    partition_epoch_problem,
    read_meta,
    write_partition_epochs,
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
    check_values(partitions, granularity)
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
