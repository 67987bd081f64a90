"""Real relay processes on PostgreSQL: SIGKILLed at each point of a batch, several at once, SIGTERM.

The figures: every committed change on the track once (lost 0, duplicated 0), each
object's changes in the order they were committed.
"""

from __future__ import annotations

import random
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine
from support.outbox import database_url, outbox_ids, track_changes
from support.processes import Processes
from support.sql_databases import drop_table
from support.waiting import wait_for

from livesync.keys import namespace_keys
from livesync.outbox import emit_many, relay_engine
from livesync.outbox.relay import Relay

KILLABLE = str(Path(__file__).with_name("killable_relay.py"))
#: flags a writer cycles through, so that a change repeated or swapped shows on the track
CYCLE = ("data_changed", "title_changed", "moved", "acl_changed", "protection_changed", "location_changed")


@pytest.fixture
def outbox_url(tmp_path: Path) -> str:
    return database_url("postgresql", tmp_path)


@pytest.mark.parametrize("point", ["claimed", "published", "deleted", "committed"])
def test_a_relay_sigkilled_at_any_point_loses_and_repeats_nothing(
    point: str,
    outbox_url: str,
    outbox_engine: Engine,
    table_name: str,
    make_relay: Callable[..., Relay],
    relay_processes: Processes,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given 60 committed changes of 6 objects
    items = [("event", i % 6, [CYCLE[(i // 6) % len(CYCLE)]]) for i in range(60)]
    with outbox_engine.begin() as connection:
        emit_many(connection, items, namespace=namespace, table=table_name)
    # When a relay process reaches the point in its first batch (25 rows) and is SIGKILLed there
    proc = relay_processes.start("relay", [sys.executable, KILLABLE, outbox_url, table_name, point],
                                 env={"LIVESYNC_RELAY_BATCH": "25"})  # fmt: skip
    wait_for(
        lambda: f"at {point}" in proc.output() or not proc.alive(), 60, f"the relay at {point}", explain=proc.output
    )
    assert proc.alive(), proc.output()
    proc.signal(signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL
    # and another relay drains the outbox
    summary = make_relay(outbox_engine).drain()
    # Then the track holds each change once, in order
    assert track_changes(real_redis, namespace) == [(t, i, tuple(f)) for t, i, f in items]
    assert outbox_ids(outbox_engine, table_name) == []
    published_before = 0 if point == "claimed" else 25
    assert (summary.published, summary.already) == (
        60 - published_before,
        published_before if point in ("published", "deleted") else 0,
    )
    left = real_redis.zcard(namespace_keys(namespace).partition(0).relayed)
    assert left == (25 if point == "committed" else 0)  # marks of deleted rows: they only expire


def test_two_relay_processes_beside_a_writer_deliver_each_committed_change_once_in_order(
    outbox_url: str,
    outbox_engine: Engine,
    table_name: str,
    relay_processes: Processes,
    real_redis: redis.Redis,
    namespace: str,
) -> None:
    # Given two relays running, small batches, one of them SIGKILLed half way and replaced
    env = {"LIVESYNC_RELAY_BATCH": "7", "LIVESYNC_RELAY_POLL": "0.05"}
    args = ["relay", "--db", outbox_url, "--table", table_name]
    relays = [relay_processes.livesync(f"relay{n}", *args, env=env) for n in range(2)]
    # When a writer commits 300 transactions of 1-3 changes of 12 objects, a fifth of them rolled back
    rng = random.Random(7)
    committed: dict[int, list[str]] = {n: [] for n in range(12)}
    counters = dict.fromkeys(range(12), 0)
    total = 0
    replaced = threading.Event()
    for number in range(300):
        changes = []
        for _ in range(rng.randint(1, 3)):
            obj = rng.randrange(12)
            changes.append((obj, CYCLE[counters[obj] % len(CYCLE)]))
            counters[obj] += 1
        rollback = rng.random() < 0.2
        with outbox_engine.connect() as connection:
            transaction = connection.begin()
            emit_many(connection, [("event", o, [f]) for o, f in changes], namespace=namespace, table=table_name)
            if rollback:
                transaction.rollback()
                for obj, _flag in changes:  # the object's cycle goes on as if they never were
                    counters[obj] -= 1
            else:
                transaction.commit()
                for obj, flag in changes:
                    committed[obj].append(flag)
                total += len(changes)
        if number == 150 and not replaced.is_set():
            relays[0].signal(signal.SIGKILL)
            relays[0].wait(10)
            relays.append(relay_processes.livesync("relay2", *args, env=env))
            replaced.set()
    # Then once the outbox is empty the track holds exactly the committed changes, in order per object
    wait_for(lambda: len(track_changes(real_redis, namespace)) >= total and not outbox_ids(outbox_engine, table_name),
             90, f"{total} changes on the track", explain=lambda: relays[1].output())  # fmt: skip
    for proc in relays[1:]:
        # (a relay announces itself once SIGTERM is a warm stop: a replacement may still be starting)
        wait_for(lambda proc=proc: "SIGTERM or Ctrl+C stops it" in proc.output(), 30, f"{proc.name} started")
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.output()
        assert "relayed" in proc.output()
    on_track = track_changes(real_redis, namespace)
    assert len(on_track) == total  # duplicated 0
    for obj, flags in committed.items():  # lost 0, order kept
        assert [c[2][0] for c in on_track if c[1] == obj] == flags, obj


def test_livesync_relay_once_creates_the_table_and_drains(
    outbox_url: str, table_name: str, relay_processes: Processes, real_redis: redis.Redis, namespace: str
) -> None:
    done = relay_processes.run("relay", "--db", outbox_url, "--table", table_name, "--create-table", "--once", "--json")
    engine = relay_engine(outbox_url)
    try:
        assert done.returncode == 0, done.stderr
        assert '"published": 0' in done.stdout
        with engine.begin() as connection:
            emit_many(connection, [("event", 1, ["created"])], namespace=namespace, table=table_name)
        done = relay_processes.run("relay", "--db", outbox_url, "--table", table_name, "--once")
        assert done.returncode == 0, done.stderr
        assert "relayed 1 change(s) in 1 batch(es)" in done.stdout
        assert track_changes(real_redis, namespace) == [("event", 1, ("created",))]
    finally:
        drop_table(engine, table_name)
        engine.dispose()
