"""The change model: vocabulary of flags, validation, and the decoded change.

This module is imported by the publisher client, so it depends on the standard
library only (no pydantic): validation here is hand-written and names the bad field.

Flags travel as a bit mask. The bit of each flag is part of the stored format: never
reorder :data:`FLAGS`, only append.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from livesync.errors import InvalidChange
from livesync.records import ObjectId

#: Every change flag, in bit order (bit i is ``1 << i``). Append only.
FLAGS: tuple[str, ...] = (
    "created",
    "deleted",
    "undeleted",
    "moved",
    "data_changed",
    "title_changed",
    "protection_changed",
    "acl_changed",
    "location_changed",
    "published",
    "unpublished",
)
FLAG_BITS: dict[str, int] = {name: 1 << bit for bit, name in enumerate(FLAGS)}
ALL_FLAGS_MASK = (1 << len(FLAGS)) - 1

#: Flags that make an object appear on a target.
APPEAR = FLAG_BITS["created"] | FLAG_BITS["undeleted"] | FLAG_BITS["published"]
#: Flags that make an object disappear from a target.
DISAPPEAR = FLAG_BITS["deleted"] | FLAG_BITS["unpublished"]
LIFECYCLE = APPEAR | DISAPPEAR

TYPE_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_ID_LENGTH = 256
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: flag_names cache: mask -> sorted names (read directly by the reduction hot loop).
SORTED_NAMES: dict[int, tuple[str, ...]] = {}

#: One change as a publisher passes it: ``(type, id, flag names)``.
ChangeTuple = tuple[str, ObjectId, Sequence[str]]
#: What ``emit_many`` takes per change: a :data:`ChangeTuple` or ``{"type", "id", "changes"}``.
Item = ChangeTuple | Mapping[str, Any]
#: A validated change: ``(type, id, flag mask)``.
Triple = tuple[str, ObjectId, int]


class Change(NamedTuple):
    """One stored change, as read back from the track."""

    seq: int
    """Sequence number in its partition, handed out by the server."""
    ts: int
    """Server time of the publish in milliseconds since 1970 (its member's first version // 1000)."""
    type: str
    id: ObjectId
    flags: int
    """Bit mask of :data:`FLAGS`."""
    version: int
    """Ordering key targets compare for ever: server microseconds at publish, strictly
    increasing in a partition (never below the last one handed out), so it survives
    rollbacks and re-creations that make seqs repeat (DESIGN.md, "Versions and epochs")."""

    @property
    def flag_names(self) -> tuple[str, ...]:
        """The flags of this change, sorted by name."""
        return flag_names(self.flags)


def flag_names(mask: int) -> tuple[str, ...]:
    """Return the names of the flags set in ``mask``, sorted alphabetically."""
    names = SORTED_NAMES.get(mask)
    if names is None:
        names = tuple(sorted(name for name, bit in FLAG_BITS.items() if mask & bit))
        SORTED_NAMES[mask] = names
    return names


def validate_type(value: object, field: str = "type") -> str:
    """Return ``value`` if it is a valid object type, else raise ``InvalidChange``."""
    if not isinstance(value, str):
        raise InvalidChange(field, f"must be a string, got {type(value).__name__}")
    if not TYPE_PATTERN.fullmatch(value):
        raise InvalidChange(field, f"{value[:80]!r} is not a valid type (lowercase letter, then up to 63 of a-z 0-9 _)")
    return value


def validate_id(value: object, field: str = "id") -> ObjectId:
    """Return ``value`` if it is a valid object id, else raise ``InvalidChange``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidChange(field, f"must be a non-negative integer or a string, got {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidChange(field, f"must be non-negative, got {value}")
        if value >= 1 << 63:
            raise InvalidChange(field, "integer id does not fit in 63 bits")
        return value
    if not value:
        raise InvalidChange(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidChange(field, f"is {len(value)} characters long, at most {MAX_ID_LENGTH} allowed")
    if CONTROL_CHARACTERS.search(value):
        raise InvalidChange(field, "must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidChange(field, "is not valid unicode (lone surrogate)") from exc
    return value


def validate_flags(values: object, field: str = "changes") -> int:
    """Turn a collection of flag names into a bit mask, or raise ``InvalidChange``.

    A change needs at least one flag, and may not both make its object appear and
    disappear: the order of the two would be lost, so such changes are published as
    two changes (``collect()`` does that by itself).
    """
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise InvalidChange(field, f"must be a list of flags, got {type(values).__name__}")
    mask = 0
    for index, name in enumerate(values):
        if not isinstance(name, str):
            raise InvalidChange(f"{field}[{index}]", f"must be a flag name, got {type(name).__name__}")
        bit = FLAG_BITS.get(name)
        if bit is None:
            raise InvalidChange(f"{field}[{index}]", f"unknown flag {name[:80]!r} (known: {', '.join(FLAGS)})")
        mask |= bit
    if not mask:
        raise InvalidChange(field, "at least one flag is required")
    if mask & APPEAR and mask & DISAPPEAR:
        raise InvalidChange(
            field,
            f"{', '.join(flag_names(mask & LIFECYCLE))} both appear and disappear; publish them as two changes",
        )
    return mask


def validate(type_: object, id_: object, flags: object, where: str = "") -> tuple[str, ObjectId, int]:
    """Validate one change; ``where`` prefixes field names (e.g. ``"item 3: "``)."""
    return (
        validate_type(type_, f"{where}type"),
        validate_id(id_, f"{where}id"),
        validate_flags(flags, f"{where}changes"),
    )
