"""``--targets relay``: the outbox relay on PostgreSQL, its rate against a raw claim-and-delete loop, its latency.

Rate (figure ``T_relay``). Every side drains a table of its own holding the same
``rows`` outbox rows (the workload of ``livesync demo``: ``rows`` changes over
``rows / 5`` objects, written with :func:`livesync.outbox.emit_many` and ``ANALYZE``-d
before the clock starts), in batches of :data:`BATCH` rows, one transaction per batch:

- livesync: :meth:`livesync.outbox.relay.Relay.drain` into a fresh namespace of the
  bench's Redis: claim the first rows by id ``FOR UPDATE SKIP LOCKED``, validate them,
  the per-object order check, one ``relay.lua`` call per partition (the changes onto
  the track *and* a mark per row), ``DELETE`` of the rows, commit, then ``ZREM`` of the
  marks; the lag report (a ``count(*)``) too, as the real relay does;
- raw (the target's baseline): psycopg driven directly, the floor any relay of this
  table pays: ``SELECT`` of the same columns ``WHERE namespace = %s ORDER BY id LIMIT
  batch FOR UPDATE SKIP LOCKED``, ``DELETE ... WHERE id = ANY(%s)`` of the ids read,
  ``COMMIT``, until a ``SELECT`` finds nothing. It publishes nothing: the ratio is the
  part of the database's own rate left once livesync's work (validation, order check,
  the exactly-once publish with its marks) is added;
- peer (no target, for scale): the raw loop that also publishes each batch with
  :meth:`livesync.Publisher.emit_many` before its ``DELETE``: the hand-written relay,
  at-least-once (a crash between publish and commit sends the batch again), no order
  check between concurrent relays.

The sides alternate (a round each, the order rotated every round), ``repeats`` times;
the fastest run of each side is kept. Every run gets a table (``bench_<id>_relay_...``)
and namespace of its own; tables are dropped and keys deleted at the end, also on error.

Latency (figure ``T_relay_latency``, :mod:`benchmarks.relay_latency`). A real ``livesync
relay`` process (``python -m livesync relay``, ``LIVESYNC_RELAY_POLL`` = each of
:data:`~benchmarks.relay_latency.POLLS`: the default 0.5 s, then 0.05 s) relays a fresh
table while a writer thread commits one outbox row per transaction at 200 rows/s (an
absolute schedule; the rate reached is reported) and this process polls the track's head
every millisecond. Latency = when the change was first read on the track - when its
``COMMIT`` returned, both on this process's ``perf_counter``; p50 / p99 / max over every
change (a single run per poll; resolution about a millisecond plus a head read). An idle
relay looks again after the poll interval, and that is what the figure mostly shows.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import relay_latency
from benchmarks.relay_run import RelayRun, driver_url
from benchmarks.report import Results, Target, progress
from livesync import Publisher, defaults
from livesync.changes import flag_names
from livesync.keys import namespace_keys
from livesync.outbox import relay_engine
from livesync.outbox.publish import RelayPublisher
from livesync.outbox.relay import Relay
from livesync.track import Track
from livesync.urls import redact_url

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
GOAL = 0.7
#: Rows per batch on both sides: the relay's default (``LIVESYNC_RELAY_BATCH``).
BATCH = defaults.RELAY_BATCH
ROWS, ROWS_QUICK = 50_000, 5_000
#: Seconds of writing per latency run (:mod:`benchmarks.relay_latency`).
LATENCY_SECONDS, LATENCY_SECONDS_QUICK = 10.0, 2.0
_COLUMNS = "id, type, object_id, integer_id, flags, created_us"


# -- the rate -------------------------------------------------------------------------------------


def run_livesync(run: RelayRun, table: str, namespace: str, rows: int) -> float:
    """Seconds :meth:`Relay.drain` takes to move ``table``'s rows to a fresh namespace."""
    engine = relay_engine(run.url)
    try:
        publisher = RelayPublisher(run.redis, namespace)
        publisher.meta  # noqa: B018 - the namespace is created before the clock starts
        with engine.connect():  # the pool's first connection, as for the raw side
            pass
        relay = Relay(engine, publisher, table=table, batch=BATCH)
        started = time.perf_counter()
        summary = relay.drain()
        seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    head = Track(run.redis, namespace_keys(namespace).partition(0), defaults.GRANULARITY).head()
    if summary.published != rows or head != rows:
        raise RuntimeError(f"relay run {table}: published {summary.published}, track head {head}, expected {rows}")
    return seconds


def run_raw(run: RelayRun, table: str, namespace: str, rows: int, *, publish: bool = False) -> float:
    """Seconds the raw psycopg claim-and-delete loop takes to empty ``table`` (``publish``: the peer)."""
    import psycopg

    publisher = Publisher(run.redis, namespace) if publish else None
    if publisher is not None:
        publisher.meta  # noqa: B018 - the namespace is created before the clock starts
    with psycopg.connect(driver_url(run.url), connect_timeout=5) as connection:
        claim = f"SELECT {_COLUMNS} FROM {table} WHERE namespace = %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
        remove = f"DELETE FROM {table} WHERE id = ANY(%s)"
        deleted = 0
        started = time.perf_counter()
        with connection.cursor() as cursor:
            while True:
                cursor.execute(claim, (namespace, BATCH))
                claimed = cursor.fetchall()
                if not claimed:
                    connection.commit()
                    break
                if publisher is not None:
                    publisher.emit_many([(row[1], int(row[2]) if row[3] else row[2], flag_names(row[4]))
                                         for row in claimed])  # fmt: skip
                cursor.execute(remove, ([row[0] for row in claimed],))
                deleted += cursor.rowcount
                connection.commit()
        seconds = time.perf_counter() - started
    if deleted != rows:
        raise RuntimeError(f"raw run {table}: deleted {deleted} rows, expected {rows}")
    return seconds


SIDES = ("livesync", "raw", "peer")


def measure_rate(run: RelayRun, rows: int, repeats: int) -> dict[str, Any]:
    """Figure T_relay: the sides in rotated order, ``repeats`` rounds; the JSON section."""
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    for repeat in range(repeats):
        for side in SIDES[repeat % 3 :] + SIDES[: repeat % 3]:
            table, namespace = run.names(f"{side}_{repeat}")
            run.fill(table, namespace, rows)
            if side == "livesync":
                seconds[side].append(run_livesync(run, table, namespace, rows))
            else:
                seconds[side].append(run_raw(run, table, namespace, rows, publish=side == "peer"))
            run.admin.execute(f"DROP TABLE {table}")
        progress(f"relay target round {repeat + 1}: relay {seconds['livesync'][-1]:.2f} s, "
                 f"raw loop {seconds['raw'][-1]:.2f} s, raw loop + emit_many {seconds['peer'][-1]:.2f} s")  # fmt: skip
    relay_rate, raw_rate, peer_rate = (rows / min(seconds[side]) for side in SIDES)
    return {
        "rows": rows,
        "batch_size": BATCH,
        "relay_seconds": [round(s, 4) for s in seconds["livesync"]],
        "raw_seconds": [round(s, 4) for s in seconds["raw"]],
        "peer_seconds": [round(s, 4) for s in seconds["peer"]],
        "relay_changes_per_second": round(relay_rate, 1),
        "raw_rows_per_second": round(raw_rate, 1),
        "peer_changes_per_second": round(peer_rate, 1),
        "ratio": round(relay_rate / raw_rate, 4),
        "ratio_to_peer": round(relay_rate / peer_rate, 4),
    }


# -- the figure -----------------------------------------------------------------------------------


def measure(
    results: Results, *, quick: bool, repeats: int, url: str | None = None, redis_url: str | None = None
) -> None:
    """Add the ``relay`` figures, rows and target to ``results`` (PostgreSQL at ``url``, the bench's Redis)."""
    if redis_url is None:
        from livesync.config import load_settings

        redis_url = load_settings().redis_url
    run = RelayRun(url or DEFAULT_URL, redis_url)
    try:
        rate = measure_rate(run, ROWS_QUICK if quick else ROWS, repeats)
        seconds = LATENCY_SECONDS_QUICK if quick else LATENCY_SECONDS
        latencies = [relay_latency.measure_latency(run, seconds, poll) for poll in relay_latency.POLLS]
    finally:
        run.cleanup()
    results.figures["T_relay"] = {"url": redact_url(run.url), "redis_url": redact_url(redis_url), **rate}
    results.figures["T_relay_latency"] = latencies
    results.row(
        "T",
        f"relay, PostgreSQL outbox -> track, {rate['rows']:,} rows (batch {rate['batch_size']})",
        f"{rate['relay_changes_per_second']:,.0f} ch/s",
        f"{rate['ratio']:.2f}x raw SKIP LOCKED + DELETE loop ({rate['raw_rows_per_second']:,.0f} rows/s)",
        f"best of {repeats}, alternating",
    )
    results.row(
        "T",
        "  peer: raw loop + Publisher.emit_many (at-least-once)",
        f"{rate['peer_changes_per_second']:,.0f} ch/s",
        f"relay = {rate['ratio_to_peer']:.2f}x peer",
        f"best of {repeats}, alternating",
    )
    for latency in latencies:
        results.row(
            "T",
            f"  commit -> track at {latency['rate_asked']}/s, relay poll {latency['poll_seconds']:g} s",
            f"p50 {latency['p50_ms']:,.1f} ms",
            f"p99 {latency['p99_ms']:,.1f} ms, max {latency['max_ms']:,.1f} ms ({latency['changes']:,} changes, "
            f"{latency['rate_reached']}/s reached)",
            "single run",
        )
    results.targets.append(Target(f"relay from the PostgreSQL outbox >= {GOAL} x raw claim + delete loop",
                                  rate["ratio"], GOAL))  # fmt: skip
