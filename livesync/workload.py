"""Realistic generated workloads, and replay models to check what a target received.

Used by ``livesync demo``, the benchmark and the tests: a seeded stream of valid
changes over objects of several types (creates, updates, moves, deletes, undeletes,
publish/unpublish), and two independent ways to compute the live set: replaying raw
changes, and applying records.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from livesync.changes import FLAG_BITS, ChangeTuple
from livesync.records import ObjectId

TYPES = ("event", "contribution", "subcontribution", "attachment", "category")
MODIFICATIONS = ("data_changed", "title_changed", "protection_changed", "acl_changed", "location_changed")
APPEAR_FLAGS = frozenset({"created", "undeleted", "published"})
DISAPPEAR_FLAGS = frozenset({"deleted", "unpublished"})


def object_ids(objects: int) -> list[tuple[str, ObjectId]]:
    """``objects`` distinct objects spread over :data:`TYPES`; contributions get string ids."""
    out: list[tuple[str, ObjectId]] = []
    for number in range(objects):
        type_ = TYPES[number % len(TYPES)]
        out.append((type_, f"c-{number}" if type_ == "contribution" else number))
    return out


def generate(changes: int, objects: int, seed: int = 42) -> list[ChangeTuple]:
    """A valid sequence of ``changes`` changes over ``objects`` objects: :func:`iter_changes` as a list."""
    return list(iter_changes(changes, objects, seed))


# States of an object in iter_changes, one byte each.
_ABSENT, _LIVE, _DELETED, _UNPUBLISHED = 0, 1, 2, 3


def iter_changes(changes: int, objects: int, seed: int = 42) -> Iterator[ChangeTuple]:
    """Yield a valid sequence of ``changes`` changes over ``objects`` objects, one at a time.

    Each object moves through absent -> live <-> deleted / unpublished; appear flags
    only hit objects that are not live, disappear flags only live ones. The objects are
    those of :func:`object_ids`. It keeps one byte of state per object and never the
    sequence, so the benchmark streams backlogs of millions of changes through it; the
    same seed gives the same changes as :func:`generate`.
    """
    rng = random.Random(seed)
    randrange, rand, choice, sample = rng.randrange, rng.random, rng.choice, rng.sample  # the hot loop's calls
    state = bytearray(objects)
    ntypes = len(TYPES)
    for _ in range(changes):
        number = randrange(objects)
        type_ = TYPES[number % ntypes]
        id_: ObjectId = f"c-{number}" if type_ == "contribution" else number
        current = state[number]
        roll = rand()
        if current == _ABSENT:
            flags = ["created", choice(MODIFICATIONS)] if roll < 0.3 else ["created"]
            state[number] = _LIVE
        elif current == _DELETED:
            flags = ["undeleted"] if roll < 0.7 else ["created"]
            state[number] = _LIVE
        elif current == _UNPUBLISHED:
            flags = ["published"]
            state[number] = _LIVE
        elif roll < 0.06:
            flags = ["deleted"]
            state[number] = _DELETED
        elif roll < 0.08 and type_ == "event":
            flags = ["unpublished"]
            state[number] = _UNPUBLISHED
        elif roll < 0.2:
            flags = ["moved"]
        else:
            flags = sorted(sample(MODIFICATIONS, choice((1, 1, 1, 2))))  # sample's names are distinct
        yield (type_, id_, flags)


def replay_changes(
    items: Iterable[ChangeTuple], live: Iterable[tuple[str, ObjectId]] = ()
) -> set[tuple[str, ObjectId]]:
    """The live set after applying raw changes in order (appear adds, disappear removes)."""
    result = set(live)
    for type_, id_, flags in items:
        names = set(flags)
        if names & APPEAR_FLAGS:
            result.add((type_, id_))
        if names & DISAPPEAR_FLAGS:
            result.discard((type_, id_))
    return result


def replay_records(
    records: Iterable[Mapping[str, Any]], live: Iterable[tuple[str, ObjectId]] = ()
) -> set[tuple[str, ObjectId]]:
    """The live set after applying records (dicts of the public contract) in order."""
    result = set(live)
    for record in records:
        key = (record["type"], record["id"])
        if record["action"] == "created":
            result.add(key)
        elif record["action"] == "deleted":
            result.discard(key)
    return result


def flags_mask(flags: Iterable[str]) -> int:
    """The bit mask of flag names."""
    mask = 0
    for name in flags:
        mask |= FLAG_BITS[name]
    return mask
