"""What a target holds, the records the contract sends, and the version rule readers apply."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

from livesync.records import Action, ObjectId, Record

BASE_VERSION = 1_764_633_600_000_000
"""Versions are server microseconds (DESIGN.md, "Versions and epochs"): the tests use realistic ones."""

_seqs = itertools.count(1)


class TargetState(NamedTuple):
    """What a target holds for one object: the version it applied, whether it is live, its document."""

    version: int
    live: bool
    document: dict[str, Any] | None


def make_record(
    type: str,
    id: ObjectId,
    action: Action,
    version: int,
    document: dict[str, Any] | None = None,
    *,
    seq: int | None = None,
    changes: tuple[str, ...] | None = None,
) -> Record:
    """A record as a run would hand it to a backend; ``version`` is added to a realistic base.

    ``seq`` defaults to a counter that has nothing to do with the version, as after a
    Redis rollback: targets compare versions, never seqs.
    """
    if changes is None:
        changes = {"created": ("created",), "updated": ("data_changed",), "deleted": ("deleted",)}[action]
    return Record(
        type=type,
        id=id,
        action=action,
        changes=changes,
        seq=next(_seqs) if seq is None else seq,
        version=BASE_VERSION + version,
        document=None if action == "deleted" else document,
    )


def apply_version_rule(
    state: dict[tuple[str, str], TargetState], records: Sequence[Record]
) -> dict[tuple[str, str], TargetState]:
    """Apply ``records`` in order to ``state`` under the version rule of :class:`~livesync.backends.base.Backend`.

    Per object the highest version wins, a delete's too (its tombstone stays, ``live=False``);
    an ``updated`` for an object that is not live changes nothing. Readers of append-only
    targets (a jsonl file, an S3 archive) rebuild the current state this way. Returns ``state``.
    """
    for record in records:
        key = (record.type, str(record.id))
        current = state.get(key)
        if record.action == "updated":
            if current is not None and current.live and record.version > current.version:
                state[key] = TargetState(record.version, True, record.document)
            continue
        if current is not None and record.version <= current.version:
            continue
        live = record.action == "created"
        state[key] = TargetState(record.version, live, record.document if live else None)
    return state


def same_document(held: dict[str, Any] | None, sent: dict[str, Any] | None) -> bool:
    """A target may store ``{}`` (or nothing) for a record without a document."""
    if sent is None:
        return held is None or held == {}
    return held == sent
