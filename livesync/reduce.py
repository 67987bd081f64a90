"""Reduction: fold the changes of one window into at most one record per object.

An object is its (``type``, ``id``) pair; ``id`` keeps its Python type, so ``("event", 42)``
and ``("event", "42")`` are two objects. Per object, over the window's changes in seq
order (see DESIGN.md, "Vocabulary and reduction"):

- no appear/disappear flag: ``updated``;
- last lifecycle change is a disappear: nothing if the first lifecycle change was an
  appear (the object never reached the target), else ``deleted``;
- last lifecycle change is an appear: ``created``.

Applying the records in order gives a target the same final set of live objects as
applying every raw change in order. This module is pure (no Redis, no I/O) and sits on
the hot path: it runs over millions of changes in windows of ~10k, so it keeps one small
mutable list per object and works on integer bit masks only.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from livesync.changes import APPEAR, DISAPPEAR, LIFECYCLE, SORTED_NAMES, Change, flag_names
from livesync.records import ObjectId, Record

__all__ = ["reduce"]

# An object's state is a list [first, last, mask, seq, version], indexed by literals in the loop:
#   0 first    lifecycle bits of the first change that had any (0: none yet)
#   1 last     lifecycle bits of the last change that had any (0: none yet)
#   2 mask     union of every flag bit folded in
#   3 seq      highest seq folded in
#   4 version  version of the change with the highest seq

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
    Objects that appeared and disappeared again within the window (first lifecycle
    change an appear, last a disappear) yield no record.
    """
    state: dict[tuple[str, ObjectId], list[int]] = {}
    get = state.get
    lifecycle_bits = LIFECYCLE  # locals and literal indexes: this loop runs per change
    for seq, _ts, type_, id_, flags, version in changes:
        key = (type_, id_)
        st = get(key)
        if st is None:
            lifecycle = flags & lifecycle_bits
            state[key] = [lifecycle, lifecycle, flags, seq, version]
            continue
        lifecycle = flags & lifecycle_bits
        if lifecycle:
            if not st[0]:  # first
                st[0] = lifecycle
            st[1] = lifecycle  # last
        st[2] |= flags  # mask
        if seq > st[3]:  # seq
            st[3] = seq
            st[4] = version  # version

    records: list[Record] = []
    append = records.append
    new = tuple.__new__  # builds the named tuple without a Python-level __new__ call
    names = SORTED_NAMES.get
    for (type_, id_), (first, last, mask, seq, version) in state.items():
        if not last:
            append(new(Record, (type_, id_, "updated", names(mask) or flag_names(mask), seq, version, None)))
        elif last & DISAPPEAR:
            if not first & APPEAR:
                append(new(Record, (type_, id_, "deleted", names(mask) or flag_names(mask), seq, version, None)))
        else:
            append(new(Record, (type_, id_, "created", names(mask) or flag_names(mask), seq, version, None)))
    records.sort(key=_by_seq)
    return records
