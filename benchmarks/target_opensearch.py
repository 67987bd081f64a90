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
alternate batch by batch (the cores and the server are shared: both see the same load);
the best of ``repeats`` is kept. The client's CPU time per record of each side is
reported too: it does not depend on the server or on the load.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from benchmarks.report import Measure, Results, Target, progress
from livesync.records import Action, Record
from livesync.urls import mask_url

RECORDS = 5_000
RECORDS_QUICK = 1_000
BATCH = 1_000
GOAL = 0.7
VERSION = 1_764_633_600_000_000


@contextlib.contextmanager
def _cluster(given: str | None) -> Iterator[str]:
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


def _send_raw(client: Any, index: str, batch: Sequence[Record]) -> None:
    answer = client.bulk(body=_raw_batch(batch), index=index)
    if answer["errors"]:
        raise RuntimeError(f"raw bulk into {index} refused items: {str(answer['items'][:2])[:300]}")


def _interleaved_runs(
    url: str, client: Any, workloads: Sequence[Sequence[Sequence[Record]]]
) -> list[dict[str, tuple[float, float]]]:
    """Per workload, ``{side: (wall seconds, client CPU seconds)}`` of sending its batches both ways.

    Each side writes into its own fresh index, the workloads one after the other (the
    updates find the created documents). The sides alternate batch by batch, and which
    goes first too, so both see the same background load on the shared cores and server.
    """
    from livesync.backends.opensearch import OpenSearchBackend

    indices = {side: _new_index(client, f"bench-{side}") for side in ("backend", "raw")}
    backend = OpenSearchBackend("bench", OpenSearchBackend.Options(url=url, index=indices["backend"], timeout=60))
    runs: list[dict[str, tuple[float, float]]] = []
    try:
        with backend:
            for batches in workloads:
                spent = {side: [0.0, 0.0] for side in indices}
                for number, batch in enumerate(batches):
                    for side in ("backend", "raw") if number % 2 == 0 else ("raw", "backend"):
                        wall, cpu = time.perf_counter(), time.process_time()
                        if side == "backend":
                            backend.upload(batch)
                        else:
                            _send_raw(client, indices["raw"], batch)
                        spent[side][0] += time.perf_counter() - wall
                        spent[side][1] += time.process_time() - cpu
                runs.append({side: (wall, cpu) for side, (wall, cpu) in spent.items()})
    finally:
        for index in indices.values():
            client.indices.delete(index=index, ignore=404)
    return runs


def _new_index(client: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=name)
    return name


def measure(results: Results, *, quick: bool, repeats: int, url: str | None = None) -> None:
    """Add the ``opensearch`` figures, rows and targets to ``results``."""
    from opensearchpy import OpenSearch

    count = RECORDS_QUICK if quick else RECORDS
    workloads = {"created": _records(count, "created", 0), "updated": _records(count, "updated", 10_000_000)}
    walls: dict[str, list[float]] = {f"{side}_{kind}": [] for side in ("backend", "raw") for kind in workloads}
    cpus = dict.fromkeys(walls, 0.0)
    with _cluster(url) as url:
        client = OpenSearch(hosts=[url], max_retries=0, timeout=60)
        progress(f"opensearch: {count:,} records x {repeats} repeats into {mask_url(url)}")
        try:
            for _repeat in range(repeats):
                # updated records need documents to update: each repeat sends the creates, then the updates
                batches = [
                    [records[start : start + BATCH] for start in range(0, count, BATCH)]
                    for records in workloads.values()
                ]
                for kind, spent in zip(workloads, _interleaved_runs(url, client, batches), strict=True):
                    for side, (wall, cpu) in spent.items():
                        walls[f"{side}_{kind}"].append(wall)
                        cpus[f"{side}_{kind}"] += cpu
        finally:
            client.close()
    for kind in workloads:
        backend = Measure(count, walls[f"backend_{kind}"], f"best of {repeats}, interleaved per batch")
        raw = Measure(count, walls[f"raw_{kind}"], backend.method)
        ratio = backend.rate / raw.rate
        per_record = {side: cpus[f"{side}_{kind}"] / (count * repeats) * 1e6 for side in ("backend", "raw")}
        results.figures[f"T_opensearch_{kind}"] = {
            "backend": backend.to_dict(),
            "raw_bulk": raw.to_dict(),
            "ratio": round(ratio, 4),
            "client_cpu_us_per_record": {side: round(value, 1) for side, value in per_record.items()},
            "batch": BATCH,
        }
        results.row(
            "T",
            f"opensearch backend, {kind} records (batch {BATCH:,})",
            f"{backend.rate:,.0f} rec/s",
            f"{ratio:.2f}x raw bulk ({raw.rate:,.0f} rec/s); "
            f"client CPU {per_record['backend']:.0f} vs {per_record['raw']:.0f} us/rec",
            backend.method,
        )
        results.targets.append(Target(f"opensearch backend vs raw bulk, {kind} records", ratio, GOAL))
