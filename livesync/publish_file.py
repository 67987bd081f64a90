"""Publishing many changes from JSON lines (``livesync publish --file``): validate all, then publish.

Every line is validated before anything is published, so one bad line publishes
nothing; errors are :class:`~livesync.errors.InvalidChange` naming the line number.
"""

from __future__ import annotations

import json
from typing import IO

from livesync.changes import Triple
from livesync.client import MAX_BATCH, Publisher, validate_item
from livesync.errors import InvalidChange
from livesync.namespace import partition_of

#: Longest line :func:`read_change_lines` reads.
MAX_LINE_BYTES = 1 << 20

#: Per partition, the first and last seq a publish handed out.
Spans = dict[int, tuple[int, int]]


def read_change_lines(stream: IO[bytes]) -> list[Triple]:
    """Read and validate every JSON line of ``stream`` (blank lines skipped); errors name the line number."""
    triples: list[Triple] = []
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            break
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise InvalidChange(f"line {number}", f"longer than {MAX_LINE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidChange(f"line {number}", f"not valid UTF-8 (byte {exc.start + 1})") from exc
        if not text.strip():
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidChange(f"line {number}", f"invalid JSON: {exc.msg} (character {exc.pos + 1})") from exc
        except RecursionError as exc:
            raise InvalidChange(f"line {number}", "invalid JSON: nested too deeply") from exc
        if not isinstance(item, dict):
            raise InvalidChange(f"line {number}", 'must be a JSON object {"type": ..., "id": ..., "changes": [...]}')
        triples.append(validate_item(item, f"line {number}: "))
    return triples


def publish_triples(publisher: Publisher, triples: list[Triple]) -> Spans:
    """Publish validated ``triples`` in order, in batches of at most ``MAX_BATCH``; the seq span of each partition."""
    partitions = publisher.meta.partitions
    spans: Spans = {}
    for start in range(0, len(triples), MAX_BATCH):
        chunk = triples[start : start + MAX_BATCH]
        seqs = publisher.emit_validated(chunk)
        for (item_type, item_id, _flags), seq in zip(chunk, seqs, strict=True):
            partition = partition_of(item_type, item_id, partitions)
            low, high = spans.get(partition, (seq, seq))
            spans[partition] = (min(low, seq), max(high, seq))
    return dict(sorted(spans.items()))
