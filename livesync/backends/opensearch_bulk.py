"""The ``opensearch`` backend's wire format: records as bulk operations, bulk answers as outcomes.

Pure functions, no client: :mod:`livesync.backends.opensearch` sends what they build.
Each record becomes one externally versioned bulk operation on the document
``"<type>:<id>"`` (:func:`document_id`); its body is the record's document with livesync's
own fields under :data:`RESERVED` (:func:`source`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from livesync.records import Record

RESERVED = "_livesync"
"""The key of the body that holds livesync's fields; a loader's document must not use it."""

MAX_ID_BYTES = 512
"""The longest ``_id`` OpenSearch takes; a longer one would fail the whole bulk request."""

#: Refusals that name livesync's own key or the alias are the target's configuration, not the
#: record's (a strict mapping without ``_livesync``, an alias without a write index): failing the
#: batch keeps a misconfigured index from dead-lettering the whole backlog.
TARGET_REASON = re.compile(rf"{RESERVED}|write index", re.IGNORECASE)

#: Keep only what :func:`judge` reads of a bulk answer (OpenSearch's ``filter_path``).
FILTER_PATH = "errors,items.*.status,items.*.result,items.*.error"

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Operation:
    """One record as bulk NDJSON: its action line and, but for a delete, its body line."""

    record: Record
    data: bytes


def document_id(record: Record) -> str:
    """The ``_id`` of the record's object: ``"<type>:<id>"`` (ids as text, so ``7`` and ``"7"`` are one object)."""
    return f"{record.type}:{record.id}"


def livesync_fields(record: Record) -> dict[str, Any]:
    """What the body holds under :data:`RESERVED`: the record without its document (``id`` as text)."""
    return {
        "type": record.type,
        "id": str(record.id),
        "action": record.action,
        "changes": list(record.changes),
        "seq": record.seq,
        "version": record.version,
    }


def source(record: Record) -> dict[str, Any]:
    """The body indexed for ``record``: its document (``{}`` without one) plus :data:`RESERVED`."""
    document = record.document or {}
    if RESERVED in document:
        raise ValueError(f"the document holds {RESERVED!r}, the key livesync keeps its own fields under")
    return {**document, RESERVED: livesync_fields(record)}


def encode(record: Record, *, tombstones: bool) -> Operation:
    """The bulk operation for ``record``; ``ValueError`` with the reason when it cannot be one.

    ``created`` and ``updated`` index the body with ``version_type=external``: OpenSearch
    keeps it only when ``record.version`` is above the version it holds. ``deleted`` deletes
    the same way, or, with ``tombstones``, indexes a body of livesync's fields alone, which
    keeps the delete's version for ever.
    """
    doc_id = document_id(record)
    if len(doc_id.encode()) > MAX_ID_BYTES:
        raise ValueError(f"the document id {doc_id[:80]!r}... is longer than OpenSearch's {MAX_ID_BYTES} bytes")
    meta = {"_id": doc_id, "version": record.version, "version_type": "external"}
    if record.action == "deleted":
        if not tombstones:
            return Operation(record, f"{_encoder.encode({'delete': meta})}\n".encode())
        body = {RESERVED: livesync_fields(record)}
    else:
        body = source(record)
    try:
        text = _encoder.encode(body)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the document cannot be encoded as JSON: {exc}") from None
    lines = f"{_encoder.encode({'index': meta})}\n{text}\n"
    return Operation(record, lines.encode())


def chunks(operations: Iterable[Operation], limit: int) -> Iterator[list[Operation]]:
    """``operations`` in order, as bulk requests of at most ``limit`` bytes (a larger operation goes alone)."""
    chunk: list[Operation] = []
    size = 0
    for operation in operations:
        if chunk and size + len(operation.data) > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(operation)
        size += len(operation.data)
    if chunk:
        yield chunk


def rounds(records: Sequence[Record]) -> Iterator[list[Record]]:
    """``records`` cut where an object comes again, so each object is once per round.

    Whether an ``updated`` applies depends on what the target holds when it arrives, which
    an earlier record of the same object in the batch may change: each round is read
    (``mget``) and written (``bulk``) before the next. A batch of one window, as a run
    sends, holds each object once: one round.
    """
    current: list[Record] = []
    seen: set[str] = set()
    for record in records:
        doc_id = document_id(record)
        if doc_id in seen:
            yield current
            current, seen = [], set()
        current.append(record)
        seen.add(doc_id)
    if current:
        yield current


ACCEPTED = "accepted"
REFUSED = "refused"
FAILED = "failed"


def judge(item: Mapping[str, Any]) -> tuple[str, str]:
    """``(outcome, reason)`` of one item of a bulk answer: :data:`ACCEPTED`, :data:`REFUSED` or :data:`FAILED`.

    - success, a delete of an unknown document (``not_found``): accepted;
    - a version conflict (409): accepted, the target holds a newer state of the object;
    - HTTP 400 (``mapper_parsing_exception``, ``illegal_argument_exception``...): refused, the
      record's fault, unless the reason names ``_livesync`` or a write index (:data:`TARGET_REASON`);
    - anything else (429, 5xx, a missing index, a read-only block, 401/403): failed, the target's.
    """
    body = next(iter(item.values()), None) if len(item) == 1 else None
    if not isinstance(body, Mapping):
        return FAILED, f"unexpected bulk item {str(item)[:200]}"
    status = body.get("status")
    error = body.get("error")
    if error is None:
        if isinstance(status, int) and (200 <= status < 300 or (status == 404 and body.get("result") == "not_found")):
            return ACCEPTED, ""
        return FAILED, f"HTTP {status}"
    reason = describe_error(error)
    if status == 409 or reason.startswith("version_conflict_engine_exception"):
        return ACCEPTED, reason
    if status == 400 and not TARGET_REASON.search(reason):
        return REFUSED, f"HTTP 400: {reason}"
    return FAILED, f"HTTP {status}: {reason}"


def describe_error(error: object) -> str:
    """``"type: reason (caused by type: reason)"`` of an OpenSearch error object, at most 300 characters."""
    if not isinstance(error, Mapping):
        return str(error)[:300]
    text = f"{error.get('type')}: {error.get('reason')}"
    cause = error.get("caused_by")
    if isinstance(cause, Mapping):
        text += f" (caused by {cause.get('type')}: {cause.get('reason')})"
    return text[:300]


#: Index settings OpenSearch sets itself: read back from an index, refused when creating one.
_OWN_SETTINGS = frozenset({"uuid", "version", "creation_date", "provided_name", "history", "resize", "blocks"})


def generation_index(alias: str, token: str) -> str:
    """The index of a reindex's new generation behind ``alias``: ``<alias>-r<token>``."""
    return f"{alias}-r{token}"


def creation_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """An index's settings as read back (``GET <index>``), fit to create a like one: OpenSearch's own left out.

    Write blocks stay behind too: a new generation must take writes whatever the old one does.
    """
    index = settings.get("index", {})
    return {"index": {key: value for key, value in index.items() if key not in _OWN_SETTINGS}}
