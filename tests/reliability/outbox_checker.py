"""An independent model of what the track must hold after the outbox fault suite's writer runs.

Inputs: the writer's log (:mod:`support.outbox_writer`: per transaction its intent, the
changes it commits merged per object and those of its rolled-back parts, then
``committed`` / ``published``), the transactions that really committed (the writer's
``txlog`` table: the database's word, also for a writer killed before it could log),
and the track's changes, ``(type, id, flags)`` per partition in seq order.

Per object, the expected sequence is the changes of the committed transactions in
transaction order (one writer at a time: commit order). Then:

- **outbox** (:func:`check_outbox`): the track's changes of each object are exactly
  that sequence: none lost, none twice, none out of order;
- **direct** (:func:`check_direct`): the track's changes of each object are that
  sequence with some left out, and each one left out is in the at-most-once window:
  its transaction committed and the writer never logged ``published`` (it died
  between the commit and the end of the publish, which runs after it). At most one
  such transaction per writer run, the last one it logged.

Both: nothing of a rolled-back transaction or savepoint, or of a transaction that did
not commit, is on the track. The writer's rolled-back parts set ``acl_changed``, which
nothing committed carries, and create ids nothing committed uses, so a leak shows
even where its flags could hide in a committed change. No livesync code is used.
"""

from __future__ import annotations

import difflib
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The flag only the writer's rolled-back parts give.
POISON = "acl_changed"

Key = tuple[str, Any]
Flags = tuple[str, ...]


@dataclass
class Transaction:
    """One transaction as the writer logged it."""

    tx: int
    rollback: bool = False
    changes: list[tuple[Key, Flags]] = field(default_factory=list)
    dropped: list[tuple[Key, Flags]] = field(default_factory=list)
    savepoints: tuple[int, int] = (0, 0)
    events: set[str] = field(default_factory=set)


def load_log(path: Path) -> dict[int, Transaction]:
    """The logged transactions by number (a line cut by a SIGKILL cannot occur: one ``write`` each)."""
    transactions: dict[int, Transaction] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if "tx" not in entry:
            continue
        transaction = transactions.setdefault(entry["tx"], Transaction(entry["tx"]))
        transaction.events.add(entry["event"])
        if entry["event"] == "intent":
            transaction.rollback = entry["rollback"]
            transaction.changes = [((kind, id_), tuple(flags)) for kind, id_, flags in entry["changes"]]
            transaction.dropped = [((kind, id_), tuple(flags)) for kind, id_, flags in entry["dropped"]]
            transaction.savepoints = (entry["savepoints"][0], entry["savepoints"][1])
    return transactions


@dataclass
class Report:
    """The figures of one run of the suite, and what did not hold."""

    mode: str
    transactions: int = 0  # logged (intent)
    committed: int = 0
    rolled_back: int = 0
    unfinished: int = 0  # killed before the commit went through: the database rolled them back
    savepoints_released: int = 0
    savepoints_rolled_back: int = 0
    changes: int = 0  # of committed transactions
    dropped: int = 0  # of rolled-back transactions and savepoints, and unfinished transactions
    on_track: int = 0
    lost: int = 0
    lost_in_window: int = 0
    window_transactions: int = 0  # committed, never logged published (direct)
    duplicated: int = 0
    leaked: int = 0
    unexplained: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Everything held (the caller asserts the mode's figures on top)."""
        return not self.problems

    def summary(self) -> str:
        """The figures in one line, for the report."""
        line = (
            f"{self.mode}: {self.transactions} transactions ({self.committed} committed, {self.rolled_back} rolled "
            f"back, {self.unfinished} killed before commit; savepoints {self.savepoints_released} released, "
            f"{self.savepoints_rolled_back} rolled back), {self.changes} committed changes, {self.dropped} changes "
            f"rolled back; on the track {self.on_track}: lost {self.lost}"
        )
        if self.mode == "direct":
            line += f" (in the window {self.lost_in_window}, of {self.window_transactions} transactions)"
        return line + (
            f", duplicated {self.duplicated}, leaked {self.leaked}, unexplained {self.unexplained}, "
            f"problems {len(self.problems)}"
        )


def _prepare(
    mode: str, log: dict[int, Transaction], committed: set[int], track: Iterable[tuple[str, Any, Flags]]
) -> tuple[Report, dict[Key, list[tuple[int, Flags]]], dict[Key, list[Flags]]]:
    report = Report(mode)
    expected: dict[Key, list[tuple[int, Flags]]] = defaultdict(list)
    uncommitted_keys: set[Key] = set()
    for number in committed - log.keys():
        report.problems.append(f"transaction {number} committed but the writer never logged its intent")
    for number in sorted(log):
        transaction = log[number]
        if "intent" not in transaction.events:
            report.problems.append(f"transaction {number}: events {sorted(transaction.events)} without an intent")
            continue
        report.transactions += 1
        report.savepoints_released += transaction.savepoints[0]
        report.savepoints_rolled_back += transaction.savepoints[1]
        report.dropped += len(transaction.dropped)
        uncommitted_keys.update(key for key, _ in transaction.dropped)
        if number not in committed:
            if transaction.rollback:
                report.rolled_back += 1
            else:
                report.unfinished += 1
                report.dropped += len(transaction.changes)
                uncommitted_keys.update(key for key, _ in transaction.changes)
            if "committed" in transaction.events:
                report.problems.append(f"transaction {number} logged committed but the database has not got it")
            continue
        if transaction.rollback:
            report.problems.append(f"transaction {number} was rolled back but the database committed it")
            continue
        report.committed += 1
        for key, flags in transaction.changes:
            if POISON in flags:
                report.problems.append(f"transaction {number} commits {POISON} (the writer's poison) for {key}")
            expected[key].append((number, flags))
            report.changes += 1
    on_track: dict[Key, list[Flags]] = defaultdict(list)
    for kind, id_, flags in track:
        on_track[(kind, id_)].append(tuple(sorted(flags)))
        report.on_track += 1
    ghosts = uncommitted_keys - expected.keys()
    for key, changes in on_track.items():
        for flags in changes:
            if key in ghosts or POISON in flags:
                report.leaked += 1
                report.problems.append(f"{key}: {flags} on the track comes from a part that did not commit")
        if key not in expected and key not in ghosts:
            report.unexplained += len(changes)
            report.problems.append(f"{key}: {changes} on the track, for an object the writer never wrote")
    return report, expected, on_track


def _diff(key: Key, want: list[Flags], got: list[Flags], report: Report) -> None:
    """Count what differs between an object's expected and actual changes; name it."""
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=want, b=got, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        report.lost += i2 - i1
        for flags in got[j1:j2]:
            if flags in want:
                report.duplicated += 1
            elif POISON not in flags:
                report.unexplained += 1
    report.problems.append(f"{key}: expected {want}, the track has {got}")


def check_outbox(log: dict[int, Transaction], committed: set[int], track: Iterable[tuple[str, Any, Flags]]) -> Report:
    """Outbox mode: each object's track changes are exactly its committed changes, in order."""
    report, expected, on_track = _prepare("outbox", log, committed, track)
    for key, changes in expected.items():
        want = [flags for _, flags in changes]
        got = on_track.get(key, [])
        if got != want:
            _diff(key, want, got, report)
    return report


def check_direct(
    log: dict[int, Transaction], committed: set[int], track: Iterable[tuple[str, Any, Flags]], *, run_span: int
) -> Report:
    """Direct mode: each object's track changes are its committed changes in order, less some in the window.

    Transactions are numbered ``run * run_span + i`` (a run is one writer process).
    """
    report, expected, on_track = _prepare("direct", log, committed, track)
    window = {number for number in committed if number in log and "published" not in log[number].events}
    report.window_transactions = len(window)
    _check_window_per_run(log, window, report, run_span)
    for key, changes in expected.items():
        got = on_track.get(key, [])
        skipped = _embed(changes, got, window)
        if skipped is None:
            _diff(key, [flags for _, flags in changes], got, report)
            continue
        report.lost += len(skipped)
        report.lost_in_window += len(skipped)
    return report


def _check_window_per_run(log: dict[int, Transaction], window: set[int], report: Report, run_span: int) -> None:
    """A writer run dies once: at most one window transaction per run, its last logged one."""
    last: dict[int, int] = {}
    for number in log:
        last[number // run_span] = max(number, last.get(number // run_span, number))
    for number in window:
        if number != last[number // run_span]:
            report.problems.append(f"transaction {number} never logged published, yet its run went on")


def _embed(expected: list[tuple[int, Flags]], got: list[Flags], window: set[int]) -> list[int] | None:
    """The transactions left out when ``got`` is ``expected`` less only window transactions, else ``None``."""
    n, m = len(got), len(expected)
    # can[i][j]: got[:i] is expected[:j] with only window transactions left out
    can = [[False] * (m + 1) for _ in range(n + 1)]
    can[0][0] = True
    for j in range(1, m + 1):
        can[0][j] = can[0][j - 1] and expected[j - 1][0] in window
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            tx, flags = expected[j - 1]
            can[i][j] = (can[i][j - 1] and tx in window) or (can[i - 1][j - 1] and got[i - 1] == flags)
    if not can[n][m]:
        return None
    skipped: list[int] = []
    i, j = n, m
    while j > 0:
        tx, flags = expected[j - 1]
        if i > 0 and can[i - 1][j - 1] and got[i - 1] == flags:
            i, j = i - 1, j - 1
        else:
            skipped.append(tx)
            j -= 1
    return skipped
