"""The stored form of changes.

A bucket member holds a packed run of consecutive changes from one publish call::

    b"<first seq>:<server time ms>:" + msgpack([type, id, flags, type, id, flags, ...])

The publish script writes the ``seq:ts:`` header (only the server knows both); the
client packs the body. The seq prefix makes every member unique, so two identical
payloads never merge in the sorted set. Change ``i`` of a member has seq
``first seq + i``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgpack

from livesync.changes import (
    ALL_FLAGS_MASK,
    APPEAR,
    CONTROL_CHARACTERS,
    DISAPPEAR,
    MAX_ID_LENGTH,
    TYPE_PATTERN,
    Change,
    ObjectId,
    validate_id,
    validate_type,
)
from livesync.errors import DecodeError, InvalidChange

#: Most changes one member holds; larger publish calls are split into several members.
MAX_RUN = 1000
_packer = msgpack.Packer(use_bin_type=True)
_MAX_INT_ID = 1 << 63
_valid_types: set[str] = set()


def encode_body(changes: Iterable[tuple[str, ObjectId, int]]) -> bytes:
    """Pack validated ``(type, id, flags)`` triples into a member body."""
    flat: list[object] = []
    for type_, id_, flags in changes:
        flat += (type_, id_, flags)
    body: bytes = _packer.pack(flat)
    return body


def member_header(raw: bytes) -> tuple[int, int, int]:
    """Return ``(first seq, ts ms, body offset)`` of a stored member."""
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
        first_seq, ts, offset = member_header(raw)
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
    out: list[Change] = []
    seq = first_seq
    append = out.append
    for i in range(0, len(flat), 3):
        type_, id_, flags = flat[i], flat[i + 1], flat[i + 2]
        id_type = type(id_)
        if (
            type(type_) is not str
            or (type_ not in _valid_types and not _remember_type(type_))
            or type(flags) is not int
            or not 0 < flags <= ALL_FLAGS_MASK
            or (flags & APPEAR and flags & DISAPPEAR)
            or not (
                (id_type is int and 0 <= id_ < _MAX_INT_ID)
                or (id_type is str and 0 < len(id_) <= MAX_ID_LENGTH and not CONTROL_CHARACTERS.search(id_))
            )
        ):
            _explain(key, seq, raw, type_, id_, flags)
        append(Change(seq, ts, type_, id_, flags))
        seq += 1
    return out


def _remember_type(type_: str) -> bool:
    """Check a type name once; valid ones are cached (a track holds few types)."""
    if TYPE_PATTERN.fullmatch(type_) is None:
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


def iter_runs(items: list[tuple[str, ObjectId, int]], size: int = MAX_RUN) -> Iterator[list[tuple[str, ObjectId, int]]]:
    """Split a batch into runs of at most ``size`` changes (one member each)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
