"""The stored form of changes.

A bucket member holds a packed run of consecutive changes from one publish call::

    b"<first seq>:<first version>:" + msgpack([type, id, flags, type, id, flags, ...])

The publish script writes the ``seq:version:`` header (only the server knows both); the
client packs the body. The seq prefix makes every member unique, so two identical
payloads never merge in the sorted set. Change ``i`` of a member has seq
``first seq + i`` and version ``first version + i``; the version is the server's clock
in microseconds (kept monotonic per partition), and every change of a member gets the
member's ``first version // 1000`` as its ``ts`` in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any

import msgpack

from livesync.changes import (
    ALL_FLAGS_MASK,
    APPEAR,
    CONTROL_CHARACTERS,
    DISAPPEAR,
    MAX_ID_LENGTH,
    TYPE_PATTERN,
    Change,
    validate_id,
    validate_type,
)
from livesync.errors import DecodeError, InvalidChange
from livesync.records import ObjectId

#: Most changes one member holds; larger publish calls are split into several members.
MAX_RUN = 1000
_packer = msgpack.Packer(use_bin_type=True)
_MAX_INT_ID = 1 << 63
_valid_types: set[str] = set()
#: Every flag mask a change may hold: at least one flag, never appear and disappear together.
_VALID_MASKS = frozenset(mask for mask in range(1, ALL_FLAGS_MASK + 1) if not (mask & APPEAR and mask & DISAPPEAR))


def encode_body(changes: Iterable[tuple[str, ObjectId, int]]) -> bytes:
    """Pack validated ``(type, id, flags)`` triples into a member body."""
    flat: list[object] = []
    for type_, id_, flags in changes:
        flat += (type_, id_, flags)
    body: bytes = _packer.pack(flat)
    return body


def text(value: bytes | str) -> str:
    """A Redis reply (bytes, or str from a client that decodes) as text."""
    return value.decode() if isinstance(value, bytes) else value


def member_header(raw: bytes) -> tuple[int, int, int]:
    """Return ``(first seq, first version, body offset)`` of a stored member."""
    first = raw.index(b":")
    second = raw.index(b":", first + 1)
    return int(raw[:first]), int(raw[first + 1 : second]), second + 1


def decode_member(key: str, raw: bytes, score: float | None = None) -> list[Change]:
    """Decode one stored member into its changes.

    Raises :class:`DecodeError` naming the key and seq when the member is corrupt; a
    corrupt member is never skipped.
    """
    seq_hint = int(score) if score is not None else None
    try:
        first_seq, first_version, offset = member_header(raw)
    except ValueError as exc:
        raise DecodeError(key, seq_hint, raw, "bad member header") from exc
    if seq_hint is not None and first_seq != seq_hint:
        raise DecodeError(key, seq_hint, raw, f"header seq {first_seq} does not match score")
    try:
        flat = msgpack.unpackb(raw[offset:], raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:
        raise DecodeError(key, first_seq, raw, f"body is not msgpack ({exc})") from exc
    if not isinstance(flat, list) or len(flat) % 3 or not flat:
        raise DecodeError(key, first_seq, raw, "body is not a list of (type, id, flags) triples")
    types, ids, flags = flat[0::3], flat[1::3], flat[2::3]
    count = len(types)
    if not _all_valid(types, ids, flags):
        _find_invalid(key, raw, first_seq, types, ids, flags)
    # tuple.__new__ straight from the zipped columns: no per-change Python call
    return list(
        map(
            tuple.__new__,
            repeat(Change, count),
            zip(
                range(first_seq, first_seq + count),
                repeat(first_version // 1000),
                types,
                ids,
                flags,
                range(first_version, first_version + count),
            ),
        )
    )


def _all_valid(types: list[Any], ids: list[Any], flags: list[Any]) -> bool:
    """Check a member's columns at once (the common case: everything valid)."""
    try:
        if not _valid_types.issuperset(types) and not all(map(_remember_type, set(types))):
            return False
        if set(map(type, flags)) != {int} or not _VALID_MASKS.issuperset(flags):
            return False
    except TypeError:  # an unhashable value where a type or flags belong
        return False
    id_types = set(map(type, ids))
    if not id_types <= {int, str}:
        return False
    numbers = ids if id_types == {int} else [i for i in ids if i.__class__ is int]
    if numbers and (min(numbers) < 0 or max(numbers) >= _MAX_INT_ID):
        return False
    if str in id_types:
        strings = [i for i in ids if i.__class__ is str]
        if min(map(len, strings)) == 0 or max(map(len, strings)) > MAX_ID_LENGTH:
            return False
        if CONTROL_CHARACTERS.search("".join(strings)):
            return False
    return True


def _find_invalid(key: str, raw: bytes, first_seq: int, types: list[Any], ids: list[Any], flags: list[Any]) -> None:
    """Raise the :class:`DecodeError` of the first invalid change of a member."""
    for offset, (type_, id_, mask) in enumerate(zip(types, ids, flags, strict=True)):
        id_type = type(id_)
        if (
            type(type_) is not str
            or not _remember_type(type_)
            or type(mask) is not int
            or mask not in _VALID_MASKS
            or not (
                (id_type is int and 0 <= id_ < _MAX_INT_ID)
                or (id_type is str and 0 < len(id_) <= MAX_ID_LENGTH and not CONTROL_CHARACTERS.search(id_))
            )
        ):
            _explain(key, first_seq + offset, raw, type_, id_, mask)
    raise DecodeError(key, first_seq, raw, "invalid change")  # unreachable when _all_valid is right


def _remember_type(type_: Any) -> bool:
    """Check a type name once; valid ones are cached (a track holds few types)."""
    if type(type_) is not str or TYPE_PATTERN.fullmatch(type_) is None:
        return False
    if len(_valid_types) < 10_000:
        _valid_types.add(type_)
    return True


def _explain(key: str, seq: int, raw: bytes, type_: object, id_: object, flags: object) -> None:
    """Raise the :class:`DecodeError` describing why a stored change is invalid."""
    try:
        validate_type(type_)
        validate_id(id_)
    except InvalidChange as exc:
        raise DecodeError(key, seq, raw, str(exc)) from exc
    if isinstance(flags, int) and flags & APPEAR and flags & DISAPPEAR:
        raise DecodeError(key, seq, raw, f"flags: {flags!r} both appear and disappear")
    raise DecodeError(key, seq, raw, f"flags: {flags!r} is not a valid flag mask")


def split_runs(
    items: list[tuple[str, ObjectId, int]], size: int = MAX_RUN
) -> Iterator[list[tuple[str, ObjectId, int]]]:
    """Split a batch into runs of at most ``size`` changes (one member each)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
