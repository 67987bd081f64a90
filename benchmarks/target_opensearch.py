"""Target figure ``opensearch``: records/s into an OpenSearch-compatible server, backend vs raw bulk.

One osmem-server (the dev extra's in-memory OpenSearch-compatible server, on a free
loopback port; or the cluster of ``LIVESYNC_BENCH_OPENSEARCH_URL``) receives the same
documents two ways, each into a fresh index per repetition:

- **backend**: ``OpenSearchBackend.upload`` of batches of ``batch`` records (encoding,
  bulk request, per-item judging included);
- **raw**: opensearch-py's ``client.bulk`` driven by hand with the very NDJSON a user would
  build for the same documents: the same ``_id``, body and ``version_type=external`` action
  lines (``json.dumps`` per line included), one request per batch, errors checked.

Two workloads: ``created`` records (the backend's bulk alone), and ``updated`` records of
documents that exist (the backend also reads their versions with one ``mget`` per batch,
because an update must never create an object; the raw side just indexes). The two sides
alternate per repetition (the cores are shared); the best of ``repeats`` is kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks.report import Measure, Results, Target, progress, rate_text
from livesync.records import Action, Record
from livesync.urls import mask_url

URL_VARIABLE = "LIVESYNC_BENCH_OPENSEARCH_URL"
RECORDS = 5_000
RECORDS_QUICK = 1_000
BATCH = 1_000
GOAL = 0.7
VERSION = 1_764_633_600_000_000


@contextlib.contextmanager
def _cluster() -> Iterator[str]:
    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False, addr="127.0.0.1:0")
    try:
        yield server.url
    finally:
        server.close()
        if server.process.stdout is not None:
            server.process.stdout.close()


def _records(count: int, action: Action, version: int) -> list[Record]:
    """``count`` records of events with a small realistic document (~250 bytes of JSON)."""
    return [
        Record(
            "event",
            number,
            action,
            ("created",) if action == "created" else ("data_changed",),
            number,
            VERSION + version + number,
            {
                "title": f"Conference on topic {number % 97} number {number}",
                "category": number % 13,
                "start": f"2026-{1 + number % 12:02d}-{1 + number % 28:02d}T09:00:00",
                "rooms": [number % 7, number % 11],
                "description": "A gathering of people who care about the same subject. " * 2,
            },
        )
        for number in range(count)
    ]


def _raw_batch(records: Sequence[Record]) -> bytes:
    """The NDJSON a user writes by hand for the same documents (body and action lines as the backend's)."""
    lines = []
    for record in records:
        meta = {"_id": f"{record.type}:{record.id}", "version": record.version, "version_type": "external"}
        fields = {"type": record.type, "id": str(record.id), "action": record.action,
                  "changes": list(record.changes), "seq": record.seq, "version": record.version}  # fmt: skip
        lines.append(json.dumps({"index": meta}))
        lines.append(json.dumps({**(record.document or {}), "_livesync": fields}))
    return ("\n".join(lines) + "\n").encode()


def _time_backend(url: str, index: str, batches: Sequence[Sequence[Record]]) -> float:
    from livesync.backends.opensearch import OpenSearchBackend

    backend = OpenSearchBackend("bench", OpenSearchBackend.Options(url=url, index=index, timeout=60))
    with backend:
        started = time.perf_counter()
        for batch in batches:
            backend.upload(batch)
        return time.perf_counter() - started


def _time_raw(client: Any, index: str, batches: Sequence[Sequence[Record]]) -> float:
    started = time.perf_counter()
    for batch in batches:
        answer = client.bulk(body=_raw_batch(batch), index=index)
        if answer["errors"]:
            raise RuntimeError(f"raw bulk into {index} refused items: {str(answer['items'][:2])[:300]}")
    return time.perf_counter() - started


def _new_index(client: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=name)
    return name


def measure(results: Results, *, quick: bool, repeats: int) -> None:
    """Add the ``opensearch`` figures, rows and target to ``results``."""
    from opensearchpy import OpenSearch

    count = RECORDS_QUICK if quick else RECORDS
    created = _records(count, "created", 0)
    updated = _records(count, "updated", 10_000_000)
    batched = {
        "created": [created[start : start + BATCH] for start in range(0, count, BATCH)],
        "updated": [updated[start : start + BATCH] for start in range(0, count, BATCH)],
    }
    with _cluster() as url:
        client = OpenSearch(hosts=[url], max_retries=0, timeout=60)
        progress(f"opensearch: {count:,} records x {repeats} repeats into {mask_url(url)}")
        seconds: dict[str, list[float]] = {f"{side}_{kind}": [] for side in ("backend", "raw") for kind in batched}
        try:
            for repeat in range(repeats):
                sides = ("backend", "raw") if repeat % 2 == 0 else ("raw", "backend")
                for side in sides:
                    index = _new_index(client, f"bench-{side}")
                    try:
                        for kind in ("created", "updated"):  # updated: the documents exist by now
                            took = (
                                _time_backend(url, index, batched[kind])
                                if side == "backend"
                                else _time_raw(client, index, batched[kind])
                            )
                            seconds[f"{side}_{kind}"].append(took)
                    finally:
                        client.indices.delete(index=index, ignore=404)
        finally:
            client.close()
    for kind in ("created", "updated"):
        backend = Measure(count, seconds[f"backend_{kind}"])
        raw = Measure(count, seconds[f"raw_{kind}"])
        ratio = backend.rate / raw.rate
        results.figures[f"T_opensearch_{kind}"] = {"backend": backend.to_dict(), "raw_bulk": raw.to_dict(),
                                                   "ratio": round(ratio, 4), "batch": BATCH}  # fmt: skip
        results.row("T", f"opensearch backend, {kind} records (batch {BATCH:,})", rate_text(backend.rate).replace(
            "ch/s", "rec/s"), f"{ratio:.2f}x raw bulk ({rate_text(raw.rate).replace('ch/s', 'rec/s')})")  # fmt: skip
        results.targets.append(Target(f"opensearch backend vs raw bulk, {kind} records", ratio, GOAL))
