"""Realistic generated workloads, and replay models to check what a target received.

Used by ``livesync demo``, the benchmark and the tests: a seeded stream of valid
changes over objects of several types (creates, updates, moves, deletes, undeletes,
publish/unpublish), and two independent ways to compute the live set: replaying raw
changes, and applying records.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import Any

from livesync.changes import FLAG_BITS, ObjectId

TYPES = ("event", "contribution", "subcontribution", "attachment", "category")
MODIFICATIONS = ("data_changed", "title_changed", "protection_changed", "acl_changed", "location_changed")
APPEAR_FLAGS = frozenset({"created", "undeleted", "published"})
DISAPPEAR_FLAGS = frozenset({"deleted", "unpublished"})

Item = tuple[str, ObjectId, list[str]]


def object_ids(objects: int) -> list[tuple[str, ObjectId]]:
    """``objects`` distinct objects spread over :data:`TYPES`; contributions get string ids."""
    out: list[tuple[str, ObjectId]] = []
    for number in range(objects):
        type_ = TYPES[number % len(TYPES)]
        out.append((type_, f"c-{number}" if type_ == "contribution" else number))
    return out


def generate(changes: int, objects: int, seed: int = 42) -> list[Item]:
    """A valid sequence of ``changes`` changes over ``objects`` objects.

    Each object moves through absent -> live <-> deleted / unpublished; appear flags
    only hit objects that are not live, disappear flags only live ones.
    """
    rng = random.Random(seed)
    pool = object_ids(objects)
    state: dict[tuple[str, ObjectId], str] = {}
    out: list[Item] = []
    for _ in range(changes):
        key = pool[rng.randrange(len(pool))]
        current = state.get(key, "absent")
        roll = rng.random()
        if current == "absent":
            flags = ["created"] + ([rng.choice(MODIFICATIONS)] if roll < 0.3 else [])
            state[key] = "live"
        elif current == "deleted":
            flags = ["undeleted"] if roll < 0.7 else ["created"]
            state[key] = "live"
        elif current == "unpublished":
            flags = ["published"]
            state[key] = "live"
        elif roll < 0.06:
            flags = ["deleted"]
            state[key] = "deleted"
        elif roll < 0.08 and key[0] == "event":
            flags = ["unpublished"]
            state[key] = "unpublished"
        elif roll < 0.2:
            flags = ["moved"]
        else:
            flags = sorted(set(rng.sample(MODIFICATIONS, rng.choice((1, 1, 1, 2)))))
        out.append((key[0], key[1], flags))
    return out


def replay_changes(items: Iterable[Item], live: Iterable[tuple[str, ObjectId]] = ()) -> set[tuple[str, ObjectId]]:
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
