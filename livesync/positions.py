"""Positions on the track as written by people: ``head``, ``tail``, seqs, bucket ids, ISO times.

One ISO-time parser (naive means UTC, ``Z`` accepted) serves both forms: where an
agent's pointer goes (:func:`parse_start`) and the bounds of a listing
(:func:`parse_bound`). Both raise :class:`ValueError` with a message naming the text;
callers add the option it came from. :func:`resolve_start` turns a :data:`Start` into
the pointer of every partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from livesync.errors import ConfigurationError

if TYPE_CHECKING:
    from livesync.track import Track

#: Where an agent's pointers go: ``head``, ``tail``, a seq (one partition only) or a time.
Start = Literal["head", "tail"] | int | datetime

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


def resolve_start(tracks: Sequence[Track], start: Start) -> list[int]:
    """The pointer of every partition (one per track, in order) for ``start``.

    ``start`` is ``"head"`` (only changes published from now on), ``"tail"``
    (everything still stored), a seq (one partition only) or a time; what retention
    already deleted is never a start. :class:`ConfigurationError` names what is wrong.
    """
    if start == "head":
        return [track.head() for track in tracks]
    if start == "tail":
        return [_tail(track) for track in tracks]
    if isinstance(start, datetime):
        ts_ms = int(start.timestamp() * 1000)
        # what retention already deleted cannot be read: start at the oldest stored
        return [max(track.seq_at_time(ts_ms), track.pruned_upto()) for track in tracks]
    if isinstance(start, int) and not isinstance(start, bool):
        if len(tracks) > 1:
            raise ConfigurationError("start: a seq only makes sense with one partition; use head, tail or a time")
        head = tracks[0].head()
        if not 0 <= start <= head:
            raise ConfigurationError(f"start: seq {start} is outside 0..{head} (the head)")
        pruned = tracks[0].pruned_upto()
        if start < pruned:
            raise ConfigurationError(
                f"start: seqs up to {pruned} are no longer stored; use tail or a seq from {pruned} on"
            )
        return [start]
    raise ConfigurationError(f"start: {start!r} is not head, tail, a seq or a time")


def _tail(track: Track) -> int:
    first = track.first_seq()
    return track.head() if first is None else first - 1
