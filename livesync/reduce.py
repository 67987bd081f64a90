"""Reduction: fold the changes of one window into at most one record per object.

An object is its (``type``, ``id``) pair; ``id`` keeps its Python type, so ``("event", 42)``
and ``("event", "42")`` are two objects. Per object, over the window's changes in seq
order:

- no appear/disappear flag: ``updated``;
- last lifecycle change is a disappear: ``deleted``;
- last lifecycle change is an appear: ``created``.

DESIGN.md ("Vocabulary and reduction") yields nothing for an object whose first
lifecycle change in the window is an appear and whose last a disappear ("it never reached
the target"). With at-least-once delivery it may have: an upload whose answer was lost
before the delete was published, an export that read it, a Redis that lost the ack of
its create. Such a window yields ``deleted`` here (a delete of an object a target does
not hold changes nothing), so no target keeps an object its source deleted.

Applying the records in order gives a target the same final set of live objects as
applying every raw change in order. This module is pure (no Redis, no I/O) and sits on
the hot path: it runs over millions of changes in windows of ~10k, so it keeps one small
mutable list per object and works on integer bit masks only.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from livesync.changes import DISAPPEAR, LIFECYCLE, SORTED_NAMES, Change, flag_names
from livesync.records import ObjectId, Record

__all__ = ["reduce"]

# An object's state is a list [last, mask, seq, version], indexed by literals in the loop:
#   0 last     lifecycle bits of the last change that had any (0: none yet)
#   1 mask     union of every flag bit folded in
#   2 seq      highest seq folded in
#   3 version  version of the change with the highest seq

_by_seq = attrgetter("seq")


def reduce(changes: Iterable[Change]) -> list[Record]:
    """Reduce ``changes`` to at most one :class:`Record` per object, in ascending seq.

    ``changes`` must come in ascending seq (as read from a track): the first and last
    lifecycle changes of an object are taken in iteration order. A single change never
    holds both an appear and a disappear flag (validation refuses it), so its lifecycle
    bits are either all appear or all disappear.

    Each record's ``changes`` is the sorted union of the flag names folded into it, its
    ``seq`` the highest seq folded into it and its ``version`` that change's version
    (an expanded change carries the seq and version of the change that caused it).
    An object whose last lifecycle change is a disappear yields ``deleted``, also when it
    appeared first within the window: delivery is at-least-once, so the target may hold it
    all the same (an upload whose answer was lost before the delete came, an export that
    read it, a Redis that lost the ack of its create), and a delete of an object a target
    does not hold changes nothing there.
    """
    state: dict[tuple[str, ObjectId], list[int]] = {}
    get = state.get
    lifecycle_bits = LIFECYCLE  # locals and literal indexes: this loop runs per change
    for seq, _ts, type_, id_, flags, version in changes:
        key = (type_, id_)
        st = get(key)
        if st is None:
            state[key] = [flags & lifecycle_bits, flags, seq, version]
            continue
        lifecycle = flags & lifecycle_bits
        if lifecycle:
            st[0] = lifecycle  # the last lifecycle change
        st[1] |= flags  # mask
        if seq > st[2]:  # seq
            st[2] = seq
            st[3] = version  # version

    records: list[Record] = []
    append = records.append
    new = tuple.__new__  # builds the named tuple without a Python-level __new__ call
    names = SORTED_NAMES.get
    for (type_, id_), (last, mask, seq, version) in state.items():
        if not last:
            append(new(Record, (type_, id_, "updated", names(mask) or flag_names(mask), seq, version, None)))
        elif last & DISAPPEAR:
            append(new(Record, (type_, id_, "deleted", names(mask) or flag_names(mask), seq, version, None)))
        else:
            append(new(Record, (type_, id_, "created", names(mask) or flag_names(mask), seq, version, None)))
    records.sort(key=_by_seq)
    return records
