"""Publishing on commit under faults: a writer process on PostgreSQL, relays and the writer SIGKILLed, Redis crashed.

A writer process (:mod:`support.outbox_writer`) commits random transactions through the
SQLAlchemy integration, some rolled back whole, some with savepoints rolled back, and
logs each; the database's own table of committed transactions says which did commit.
``reliability.outbox_checker`` then holds the track against that:

- **outbox** (``LiveSync("outbox", ...)``): relays SIGKILLed at every checkpoint of a
  batch (rows claimed, published, deleted, committed; ``tests/outbox/killable_relay.py``),
  one at a time alone, then four at once holding their batches beside two running
  relays; the writer SIGKILLed mid-run and restarted; the private AOF redis-server
  (``appendfsync always``) crashed until a relay met the outage, then restarted; a
  running relay SIGKILLed and replaced; then drained. The track holds exactly the
  committed changes, each once, in commit order per object, and nothing of a
  rolled-back transaction or savepoint.
- **direct** (``LiveSync(publisher=...)``): the writer SIGKILLed at random moments and,
  at random transactions, right after the commit and before the publish. Nothing of a
  rolled-back part, nothing twice, order per object, and every lost change lies in the
  documented at-most-once window (committed, the writer died before its publish).

Each test prints its figures (``pytest -rP`` shows them). PostgreSQL is the machine's
(127.0.0.1:5432, database ``test``; skipped, saying why, when it does not answer).
"""

from __future__ import annotations

import json
import random
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability.outbox_checker import check_direct, check_outbox, load_log
from support.outbox import track_changes
from support.outbox_faults import WAIT, FaultRig
from support.outbox_writer import RUN_SPAN
from support.processes import Processes
from support.servers import RedisServer
from support.waiting import wait_for

from livesync import Publisher
from livesync.outbox.relay import CHECKPOINTS

pytestmark = pytest.mark.timeout(120)

PARTITIONS = 4
SEED = 20261202


def make_rig(
    mode: str, tmp_path: Path, processes: Processes, postgres_url: str, redis_server: RedisServer, namespace: str
) -> FaultRig:
    processes.env["LIVESYNC_REDIS_URL"] = redis_server.url
    Publisher(redis_server.client(), namespace, partitions=PARTITIONS).meta  # noqa: B018 - creates the namespace
    return FaultRig(tmp_path, processes, postgres_url, namespace, mode, SEED, redis_url=redis_server.url)


@pytest.fixture
def outbox_rig(
    tmp_path: Path, processes: Processes, postgres_url: str, redis_server: RedisServer, namespace: str
) -> Iterator[FaultRig]:
    rig = make_rig("outbox", tmp_path, processes, postgres_url, redis_server, namespace)
    yield rig
    processes.stop_all()
    rig.close()


@pytest.fixture
def direct_rig(
    tmp_path: Path, processes: Processes, postgres_url: str, redis_server: RedisServer, namespace: str
) -> Iterator[FaultRig]:
    rig = make_rig("direct", tmp_path, processes, postgres_url, redis_server, namespace)
    yield rig
    processes.stop_all()
    rig.close()


def test_outbox_track_holds_exactly_the_committed_changes_through_relay_kills_redis_crash_and_two_relays(
    outbox_rig: FaultRig, redis_server: RedisServer, namespace: str
) -> None:
    rig = outbox_rig
    rng = random.Random(SEED)
    # Given a writer committing random transactions (run 0 runs until it is killed)
    writer = rig.start_writer(count=RUN_SPAN - 1)
    rig.wait_logged(40, writer)
    # When a relay is SIGKILLed at every checkpoint of its batch, no other relay running
    for point in CHECKPOINTS:
        rig.kill_relays_at([point], "alone")
    # and two relays run, while four more hold their batches at every checkpoint beside them, then are SIGKILLed
    relays = rig.start_relays("relay0", "relay1")
    beside = rig.kill_relays_at(list(CHECKPOINTS), "beside")
    # and the writer is SIGKILLed at a random moment and started again
    rig.wait_logged(len(rig.logged()) + rng.randint(5, 40), writer)
    rig.kill_writer(writer)
    writer = rig.start_writer(count=150)
    # and Redis crashes, a relay meets the outage, and Redis comes back on its AOF
    rig.wait_logged(len(rig.logged()) + 60, writer)
    warned = sum(relay.output().count("trying again") for relay in relays)
    redis_server.kill()
    wait_for(lambda: sum(relay.output().count("trying again") for relay in relays) > warned, WAIT,
             "a relay to meet the Redis outage", explain=relays[0].output)  # fmt: skip
    redis_server.start()
    # and a running relay is SIGKILLed and replaced
    rig.wait_logged(len(rig.logged()) + 60, writer)
    relays[0].signal(signal.SIGKILL)
    assert relays[0].wait(10) == -signal.SIGKILL
    relays += rig.start_relays("relay2")
    # and, once the writer is done, the relays drain the outbox
    rig.wait_done(writer)
    wait_for(lambda: rig.outbox_rows() == 0, WAIT, "the relays to drain the outbox", explain=relays[-1].output)
    for relay in relays[1:]:
        relay.signal(signal.SIGTERM)
        assert relay.wait(30) == 0, relay.output()
    # Then the track holds exactly the committed changes, once each, in commit order per object
    track = track_changes(redis_server.client(), namespace, PARTITIONS)
    report = check_outbox(load_log(rig.log), rig.committed(), track)
    outputs = "".join(relay.output() for relay in relays)
    already = sum(int(found) for found in re.findall(r"\((\d+) published before, now deleted\)", outputs))
    print(
        report.summary(),
        f"(relays killed beside the others, attempts: {beside}; rows found published before, by the relays "
        f"SIGTERMed at the end: {already}; relay warnings of the Redis outage: {outputs.count('trying again')})",
    )
    assert report.problems == [], "\n".join(report.problems[:20])
    assert (report.lost, report.duplicated, report.leaked, report.unexplained) == (0, 0, 0, 0)
    assert report.on_track == report.changes
    # and every kind of fault and rollback happened
    assert report.rolled_back and report.savepoints_rolled_back and report.savepoints_released
    assert report.dropped > 0


def test_direct_mode_loses_only_changes_in_the_at_most_once_window(
    direct_rig: FaultRig, redis_server: RedisServer, namespace: str
) -> None:
    rig = direct_rig
    rng = random.Random(SEED)
    paused: list[int] = []
    # Given writer runs SIGKILLed, in turn, right after a random transaction's commit (before
    # its publish) and at a random moment
    for run in range(6):
        if run % 2 == 0:
            writer = rig.start_writer(count=RUN_SPAN - 1, pause_at=run * RUN_SPAN + rng.randint(3, 40))
            paused.append(rig.wait_paused(writer))
        else:
            writer = rig.start_writer(count=RUN_SPAN - 1)
            rig.wait_logged(len(rig.logged()) + rng.randint(10, 80), writer)
        rig.kill_writer(writer)
    # When a last run commits its transactions to the end
    writer = rig.start_writer(count=60)
    rig.wait_done(writer)
    # Then the track holds the committed changes in order, each at most once, and what is
    # missing is exactly what the window allows: committed, the writer dead before publishing
    log = load_log(rig.log)
    committed = rig.committed()
    track = track_changes(redis_server.client(), namespace, PARTITIONS)
    report = check_direct(log, committed, track, run_span=RUN_SPAN)
    print(report.summary(), f"(paused after the commit of transactions {paused})")
    assert report.problems == [], "\n".join(report.problems[:20])
    assert (report.duplicated, report.leaked, report.unexplained) == (0, 0, 0)
    assert report.lost == report.lost_in_window
    # and the paused transactions committed without being published: their changes are lost
    assert all(number in committed and "published" not in log[number].events for number in paused)
    assert report.lost >= sum(len(log[number].changes) for number in paused)
    assert report.on_track == report.changes - report.lost
    assert report.rolled_back and report.savepoints_rolled_back and report.savepoints_released


# -- the checker catches what it is there for (synthetic logs) -------------------------------


def write_log(path: Path, *transactions: tuple[int, str, list[list[Any]], list[list[Any]]]) -> Path:
    """A writer log of ``(tx, last event, changes, dropped)`` transactions."""
    lines = []
    for tx, last, changes, dropped in transactions:
        rollback = last == "rolled_back"
        lines.append({"tx": tx, "event": "intent", "rollback": rollback, "changes": changes, "dropped": dropped,
                      "savepoints": [0, 1 if dropped and not rollback else 0]})  # fmt: skip
        events = {"rolled_back": ["rolled_back"], "published": ["committed", "published"], "committed": ["committed"]}
        lines.extend({"tx": tx, "event": event} for event in events.get(last, []))
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def synthetic(tmp_path: Path) -> Path:
    return write_log(
        tmp_path / "log.jsonl",
        (1, "published", [["item", 1, ["created"]]], [["item", 9, ["created"]]]),
        (2, "rolled_back", [], [["item", 1, ["acl_changed"]], ["item", 8, ["created"]]]),
        (3, "published", [["item", 1, ["title_changed"]]], []),
        (4, "published", [["item", 1, ["data_changed", "location_changed"]]], []),
    )


GOOD: list[tuple[str, Any, tuple[str, ...]]] = [
    ("item", 1, ("created",)), ("item", 1, ("title_changed",)), ("item", 1, ("data_changed", "location_changed")),
]  # fmt: skip


SPLIT = [GOOD[0], ("item", 1, ("title_changed",)), ("item", 1, ("data_changed",)), ("item", 1, ("location_changed",))]


@pytest.mark.parametrize(
    ("track", "figure"),
    [
        pytest.param(GOOD, None, id="exact"),
        pytest.param(GOOD[:1] + GOOD[2:], "lost", id="lost"),
        pytest.param(GOOD[:2] + GOOD[1:], "duplicated", id="duplicated"),
        pytest.param([GOOD[1], GOOD[0], GOOD[2]], "lost", id="out-of-order"),
        pytest.param([*GOOD, ("item", 1, ("acl_changed",))], "leaked", id="rolled-back-savepoint"),
        pytest.param([*GOOD, ("item", 8, ("created",))], "leaked", id="rolled-back-create"),
        pytest.param(SPLIT, "lost", id="one-transaction-split-in-two"),
    ],
)
def test_the_outbox_checker_finds_each_kind_of_fault(
    tmp_path: Path, track: list[tuple[str, Any, tuple[str, ...]]], figure: str | None
) -> None:
    report = check_outbox(load_log(synthetic(tmp_path)), {1, 3, 4}, track)
    assert bool(report.problems) == (figure is not None), report.problems
    if figure is not None:
        assert getattr(report, figure) >= 1, report.summary()


def test_the_direct_checker_accepts_losses_only_in_the_window(tmp_path: Path) -> None:
    # Given transaction 3 committed without being published (its run died there), then a later run's
    log = write_log(
        tmp_path / "log.jsonl",
        (1, "published", [["item", 1, ["created"]]], []),
        (3, "committed", [["item", 1, ["title_changed"]]], []),
        (RUN_SPAN + 1, "published", [["item", 1, ["title_changed"]]], []),
    )
    transactions = load_log(log)
    committed = {1, 3, RUN_SPAN + 1}
    one = [("item", 1, ("created",)), ("item", 1, ("title_changed",))]
    # Then one title_changed missing is the window's loss; the created missing is not allowed
    report = check_direct(transactions, committed, one, run_span=RUN_SPAN)
    assert (report.problems, report.lost, report.lost_in_window) == ([], 1, 1)
    assert check_direct(transactions, committed, one[1:] * 2, run_span=RUN_SPAN).problems
    # and a transaction left unpublished by a run that went on is a problem
    write_log(tmp_path / "again.jsonl", (2, "committed", [["item", 2, ["created"]]], []),
              (5, "published", [["item", 2, ["title_changed"]]], []))  # fmt: skip
    report = check_direct(
        load_log(tmp_path / "again.jsonl"), {2, 5}, [("item", 2, ("title_changed",))], run_span=RUN_SPAN
    )
    assert any("its run went on" in problem for problem in report.problems), report.problems
