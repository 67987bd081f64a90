"""Positions on the track as written by people: ``head``, ``tail``, seqs, bucket ids, ISO times.

One ISO-time parser (naive means UTC, ``Z`` accepted) serves both forms: where an
agent's pointer goes (:func:`parse_start`) and the bounds of a listing
(:func:`parse_bound`). Both raise :class:`ValueError` with a message naming the text;
callers add the option it came from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from livesync.manager import Start

#: The kind of a listing bound and its value: a seq, a bucket id, or a time in ms.
BoundKind = Literal["seq", "bucket", "time"]
Bound = tuple[BoundKind, int]


def parse_time(text: str) -> datetime:
    """An ISO time, aware (naive means UTC); :class:`ValueError` when ``text`` is not one."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_start(text: str) -> Start:
    """Where a pointer goes: ``head``, ``tail``, a seq, or an ISO time."""
    if text in ("head", "tail"):
        return text  # type: ignore[return-value]
    if _digits(text):
        return int(text)
    try:
        return parse_time(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not head, tail, a seq or an ISO time") from exc


def parse_bound(text: str) -> Bound:
    """A listing bound: ``seq:N``, a bucket id, or an ISO time (as ms since the epoch)."""
    if text.startswith("seq:"):
        number = text[4:]
        if not _digits(number):
            raise ValueError(f"{text!r} is not seq:N")
        return "seq", int(number)
    if _digits(text):
        return "bucket", int(text)
    try:
        moment = parse_time(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a bucket id, seq:N or an ISO time") from exc
    return "time", int(moment.timestamp() * 1000)
