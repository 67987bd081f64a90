"""``--targets sql``: records per second into PostgreSQL through the ``sql`` backend vs raw COPY.

Both sides write the same rows (``objects`` objects with a ~150-byte document each: one
round of ``created`` records, then one of ``updated`` records with new documents and
higher versions) into a mirror table of their own, in batches of ``batch_size``, one
transaction per batch, under the same guard (a row is replaced only by a higher version;
an update touches live rows only):

- livesync: :class:`~livesync.backends.sql.SqlBackend` ``upload`` of each batch of
  :class:`~livesync.records.Record` (folding, JSON encoding and checks included);
- baseline: psycopg driven directly with PostgreSQL's fastest bulk path: ``COPY`` of the
  batch (JSON encoded per row, text format) into a temporary table made once per run
  (``ON COMMIT DELETE ROWS``: no catalog work per batch), then one
  ``INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE version < excluded.version``
  (creates) or one ``UPDATE ... FROM`` it (updates). ``executemany`` of the upsert would be
  the weaker baseline: COPY plus one set-based statement is what a hand-written bulk
  loader for PostgreSQL does.

The two alternate, a round each, ``repeats`` times; the fastest round of each is kept.
Every table is created for the run (``bench_<id>_...``) and dropped at the end.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

from benchmarks.report import Results, Target, progress
from livesync.backends.sql import SqlBackend
from livesync.records import Action, Record
from livesync.urls import redact_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
BASE_VERSION = 1_764_633_600_000_000
GOAL = 0.7


def make_rounds(objects: int) -> list[list[Record]]:
    """The records of both rounds: every object created, then every object updated (later versions)."""
    rounds: list[list[Record]] = []
    actions: tuple[Action, Action] = ("created", "updated")
    for number, action in enumerate(actions):
        rounds.append(
            [
                Record(
                    type="event",
                    id=n,
                    action=action,
                    changes=("created",) if action == "created" else ("data_changed",),
                    seq=n,
                    version=BASE_VERSION + number * objects + n,
                    document={"title": f"Event {n} r{number}", "room": n % 97, "tags": ["talk", f"t{n % 13}"],
                              "starts": "2026-12-01T09:30:00+00:00", "public": n % 5 != 0},
                )
                for n in range(1, objects + 1)
            ]
        )  # fmt: skip
    return rounds


def batches(records: list[Record], size: int) -> Iterator[list[Record]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def run_livesync(url: str, table: str, rounds: list[list[Record]], batch_size: int) -> float:
    """Seconds the backend takes for both rounds into a new table."""
    backend = SqlBackend("bench", SqlBackend.Options(url=url, table=table, create=True))
    with backend:
        started = time.perf_counter()
        for records in rounds:
            for batch in batches(records, batch_size):
                backend.upload(batch)
        return time.perf_counter() - started


def run_copy(connection: Any, table: str, rounds: list[list[Record]], batch_size: int) -> float:
    """Seconds the raw COPY path takes for the same rows into a new table of the same shape."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE {table} (type varchar(64) NOT NULL, id varchar(256) NOT NULL, version bigint NOT NULL, "
            "document jsonb, deleted boolean NOT NULL, PRIMARY KEY (type, id))"
        )
    connection.commit()
    staging = f"{table}_in"
    with connection.cursor() as cursor:  # made once, emptied by every commit: no catalog work per batch
        cursor.execute(
            f"CREATE TEMP TABLE {staging} (type text, id text, version bigint, document jsonb, deleted boolean)"
            " ON COMMIT DELETE ROWS"
        )
    connection.commit()
    started = time.perf_counter()
    for records in rounds:
        for batch in batches(records, batch_size):
            with connection.cursor() as cursor:
                with cursor.copy(f"COPY {staging} (type, id, version, document, deleted) FROM STDIN") as copy:
                    for record in batch:
                        document = json.dumps(record.document, separators=(",", ":"), ensure_ascii=False)
                        copy.write_row((record.type, str(record.id), record.version, document, False))
                if batch[0].action == "created":
                    cursor.execute(
                        f"INSERT INTO {table} SELECT * FROM {staging} ON CONFLICT (type, id) DO UPDATE SET "
                        "version = excluded.version, document = excluded.document, deleted = excluded.deleted "
                        f"WHERE {table}.version < excluded.version"
                    )
                else:
                    cursor.execute(
                        f"UPDATE {table} m SET version = s.version, document = s.document FROM {staging} s "
                        "WHERE m.type = s.type AND m.id = s.id AND m.version < s.version AND NOT m.deleted"
                    )
            connection.commit()
    seconds = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {staging}")
    connection.commit()
    return seconds


def run_target_sql(url: str, objects: int, batch_size: int, repeats: int) -> tuple[dict[str, Any], Target]:
    """Figure 8: both paths, alternating, best of ``repeats``; the JSON section and the target."""
    import psycopg
    from sqlalchemy import make_url

    raw_url = make_url(url).set(drivername="postgresql")
    connection = psycopg.connect(raw_url.render_as_string(hide_password=False), connect_timeout=5)
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    made: list[str] = []
    rounds = make_rounds(objects)
    count = sum(len(records) for records in rounds)
    livesync_seconds: list[float] = []
    copy_seconds: list[float] = []
    try:
        for repeat in range(repeats):
            for side in ("livesync", "copy") if repeat % 2 == 0 else ("copy", "livesync"):
                table = f"{prefix}_{side}_{repeat}"
                made.append(table)
                if side == "livesync":
                    livesync_seconds.append(run_livesync(url, table, rounds, batch_size))
                else:
                    copy_seconds.append(run_copy(connection, table, rounds, batch_size))
            progress(
                f"sql target round {repeat + 1}: livesync {livesync_seconds[-1]:.2f} s, COPY {copy_seconds[-1]:.2f} s"
            )
    finally:
        connection.rollback()
        with connection.cursor() as cursor:
            for table in made:
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
        connection.commit()
        connection.close()
    livesync_rate = count / min(livesync_seconds)
    copy_rate = count / min(copy_seconds)
    section = {
        "url": redact_url(url),
        "records": count,
        "objects": objects,
        "batch_size": batch_size,
        "livesync_seconds": [round(s, 4) for s in livesync_seconds],
        "copy_seconds": [round(s, 4) for s in copy_seconds],
        "livesync_records_per_second": round(livesync_rate, 1),
        "copy_records_per_second": round(copy_rate, 1),
        "ratio": round(livesync_rate / copy_rate, 4),
    }
    return section, Target(f"sql backend into PostgreSQL >= {GOAL} x raw COPY + merge", livesync_rate / copy_rate, GOAL)


def measure(results: Results, *, quick: bool, repeats: int, url: str | None = None) -> None:
    """Add the ``sql`` figure, row and target to ``results`` (PostgreSQL at ``url``, default the local one)."""
    section, target = run_target_sql(url or DEFAULT_URL, 5_000 if quick else 50_000, batch_size=1_000, repeats=repeats)
    results.figures["T_sql"] = section
    results.row(
        "T",
        f"sql backend into PostgreSQL, created then updated (batch {section['batch_size']:,})",
        f"{section['livesync_records_per_second']:,.0f} rec/s",
        f"{section['ratio']:.2f}x raw COPY + merge ({section['copy_records_per_second']:,.0f} rec/s)",
        f"best of {repeats}, alternating",
    )
    results.targets.append(target)
