"""Dead letters: records a backend rejected, kept per agent and partition; listed, requeued, purged.

The Python API is driven with the test backends; the CLI (``livesync agent dlq``) with a
jsonl agent whose dead letters are added by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import Result
from support.backends import BackendDown, FailingBackend, RecordingBackend, RejectingBackend

from livesync import deadletters
from livesync.errors import LockLost, RecordRejected
from livesync.keys import namespace_keys
from livesync.lock import RunLock
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of
from livesync.records import Record
from livesync.track import Track

Invoke = Callable[..., Result]


def record(id_: int | str, seq: int, type_: str = "event", action: str = "created") -> Record:
    return Record(type_, id_, action, (action,) if action != "updated" else ("title_changed",), seq, seq)  # type: ignore[arg-type]


@pytest.fixture
def dead_letter_agent(manager: SyncManager) -> str:
    manager.add_agent(Agent(id="search", backend="null"))
    return "search"


@pytest.fixture
def letters(manager: SyncManager, dead_letter_agent: str) -> list[Record]:
    """Three dead letters of ``agent`` in partition 0: events 1, 2 and 3."""
    records = [record(1, 10), record(2, 11), record(3, 12, action="deleted")]
    deadletters.add(manager, dead_letter_agent, 0, RecordRejected([(r, f"target said no to {r.id}") for r in records]))
    return records


class RefusingAgainBackend(RecordingBackend):
    """Calls ``before_upload``, then refuses every record of the batch."""

    def upload(self, records: Sequence[Record]) -> None:
        super().upload(records)
        raise RecordRejected([(record, "still refused") for record in records])


def letter_ids(manager: SyncManager, agent_id: str) -> list[Any]:
    return [entry["record"]["id"] for entry in deadletters.entries(manager, agent_id)]


# add / entries / count


def test_add_entries_and_count_round_trip_records_reasons_and_partitions(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given an agent in a namespace of two partitions and records of both partitions
    manager = SyncManager(real_redis, namespace, partitions=2)
    manager.add_agent(Agent(id="search", backend="null"))
    by_partition: dict[int, list[Record]] = {0: [], 1: []}
    for number in range(20):
        by_partition[partition_of("event", number, 2)].append(record(number, 100 + number))
    first, second = by_partition[0][:2], by_partition[1][:1]

    # When they are dead-lettered, partition 1 first, then partition 0
    added = deadletters.add(manager, "search", 1, RecordRejected([(second[0], "too big")]))
    added += deadletters.add(manager, "search", 0, RecordRejected([(r, f"bad {r.id}") for r in first]))

    # Then every record comes back with its reason and partition, partition by partition, oldest first
    assert added == 3
    assert deadletters.count(manager, "search") == 3
    entries = deadletters.entries(manager, "search")
    assert [(e["partition"], Record.from_dict(e["record"]), e["reason"]) for e in entries] == [
        (0, first[0], f"bad {first[0].id}"),
        (0, first[1], f"bad {first[1].id}"),
        (1, second[0], "too big"),
    ]
    assert all(isinstance(e["at"], float) for e in entries)


def test_adding_nothing_stores_nothing(manager: SyncManager, dead_letter_agent: str, real_redis: redis.Redis) -> None:
    # When an empty rejection is dead-lettered
    added = deadletters.add(manager, dead_letter_agent, 0, RecordRejected([]))

    # Then no list is created
    assert added == 0
    assert deadletters.count(manager, dead_letter_agent) == 0
    assert not real_redis.exists(manager.keys.partition(0).dlq(dead_letter_agent))


def test_string_ids_and_unicode_reasons_survive_the_round_trip(manager: SyncManager, dead_letter_agent: str) -> None:
    # Given a record with a string id and a reason with non-ASCII text
    rejected = record("c-7", 5, type_="contribution", action="updated")

    # When it is dead-lettered and read back
    deadletters.add(manager, dead_letter_agent, 0, RecordRejected([(rejected, "zu groß: ünicode ✓")]))
    [entry] = deadletters.entries(manager, dead_letter_agent)

    # Then the id keeps its type and the reason its text
    assert Record.from_dict(entry["record"]) == rejected
    assert entry["reason"] == "zu groß: ünicode ✓"


# requeue


def test_requeue_to_a_backend_that_now_accepts_empties_the_list(
    manager: SyncManager, dead_letter_agent: str, letters: list[Record]
) -> None:
    # Given three dead letters and a target that accepts everything again
    backend = RecordingBackend()

    # When they are requeued
    outcome = deadletters.requeue(manager, dead_letter_agent, backend=backend)

    # Then all were delivered, in order, and the list is empty
    assert outcome == {"requeued": 3, "rejected": 0}
    assert backend.records == letters
    assert deadletters.count(manager, dead_letter_agent) == 0
    assert (backend.opened, backend.closed) == (1, 1)


def test_requeue_keeps_records_rejected_again_with_the_new_reason(
    manager: SyncManager, dead_letter_agent: str, letters: list[Record]
) -> None:
    # Given three dead letters and a target that still refuses event 2
    backend = RejectingBackend({2}, "still too big")

    # When they are requeued
    outcome = deadletters.requeue(manager, dead_letter_agent, backend=backend)

    # Then events 1 and 3 were delivered and left the list; event 2 stays with the new reason
    assert outcome == {"requeued": 2, "rejected": 1}
    assert [r.id for r in backend.records] == [1, 3]
    [entry] = deadletters.entries(manager, dead_letter_agent)
    assert (entry["record"]["id"], entry["reason"]) == (2, "still too big")


def test_requeue_keeps_letters_added_while_it_uploads(
    manager: SyncManager, dead_letter_agent: str, letters: list[Record]
) -> None:
    # Given three dead letters and a target during whose upload a run dead-letters another record
    late = record(99, 50)

    def a_run_rejects_meanwhile(_batch: Sequence[Record]) -> None:
        deadletters.add(manager, dead_letter_agent, 0, RecordRejected([(late, "rejected meanwhile")]))

    backend = RecordingBackend(before_upload=a_run_rejects_meanwhile)

    # When the dead letters are requeued
    deadletters.requeue(manager, dead_letter_agent, backend=backend)

    # Then the three were delivered and only the one added meanwhile is left
    assert [r.id for r in backend.records] == [1, 2, 3]
    assert letter_ids(manager, dead_letter_agent) == [99]


def test_letters_added_after_a_requeue_are_kept(
    manager: SyncManager, dead_letter_agent: str, letters: list[Record]
) -> None:
    # Given dead letters that were requeued
    deadletters.requeue(manager, dead_letter_agent, backend=RecordingBackend())

    # When another record is dead-lettered afterwards
    deadletters.add(manager, dead_letter_agent, 0, RecordRejected([(record(7, 70), "later")]))

    # Then it is the one letter on the list
    assert letter_ids(manager, dead_letter_agent) == [7]


def test_requeue_with_nothing_dead_lettered_uploads_nothing(manager: SyncManager, dead_letter_agent: str) -> None:
    # Given no dead letters
    backend = RecordingBackend()

    # When they are requeued
    outcome = deadletters.requeue(manager, dead_letter_agent, backend=backend)

    # Then nothing was uploaded
    assert outcome == {"requeued": 0, "rejected": 0}
    assert backend.batches == []


# purge


def test_purge_drops_every_letter(manager: SyncManager, dead_letter_agent: str, letters: list[Record]) -> None:
    # Given three dead letters
    # When they are purged
    dropped = deadletters.purge(manager, dead_letter_agent)

    # Then all are gone
    assert dropped == 3
    assert deadletters.count(manager, dead_letter_agent) == 0
    assert deadletters.entries(manager, dead_letter_agent) == []


# the fence: dead letters go with the fenced ack; remove and add leave none behind


def test_acknowledge_writes_the_dead_letters_with_the_pointer_on_redis_and_on_fakeredis(
    any_redis: Any, namespace: str
) -> None:
    # Given an agent's pointer at 0, a head of 5 and a runner holding the lock, on either server
    track = Track(any_redis, namespace_keys(namespace).partition(0), 60)
    track.add_pointer("search", 0)
    any_redis.set(track.keys.seq, 5)
    lock = RunLock(track, "search", ttl=30, renew=False).acquire()
    letters = deadletters.encode([(record(1, 2), "too big"), (record(2, 3), "bad")])

    # When it acknowledges seq 5 with two dead letters
    track.acknowledge("search", lock.token, 5, dead_letters=letters)

    # Then both the pointer and the letters are stored
    assert track.pointer("search") == 5
    assert [raw.decode() for raw in any_redis.lrange(track.keys.dlq("search"), 0, -1)] == letters


@pytest.mark.parametrize("refusal", ["not the lock's token", "pointer removed", "seq behind", "seq beyond head"])
def test_a_refused_acknowledge_writes_no_dead_letters(any_redis: Any, namespace: str, refusal: str) -> None:
    # Given an agent's pointer at 3, a head of 5 and a runner holding the lock
    track = Track(any_redis, namespace_keys(namespace).partition(0), 60)
    track.add_pointer("search", 3)
    any_redis.set(track.keys.seq, 5)
    lock = RunLock(track, "search", ttl=30, renew=False).acquire()
    token, seq = lock.token, 4
    if refusal == "not the lock's token":
        token = "token-of-someone-else"
    elif refusal == "pointer removed":
        any_redis.hdel(track.keys.pointers, "search")
    elif refusal == "seq behind":
        seq = 2
    else:
        seq = 6

    # When it acknowledges with a dead letter and the ack is refused
    with pytest.raises((LockLost, ValueError)):
        track.acknowledge("search", token, seq, dead_letters=deadletters.encode([(record(1, 4), "bad")]))

    # Then no dead letter was written
    assert not any_redis.exists(track.keys.dlq("search"))


def test_adding_an_agent_drops_dead_letters_left_under_its_id(real_redis: redis.Redis, namespace: str) -> None:
    # Given dead letters left under the id "search" in both partitions (say, of a removal that crashed)
    manager = SyncManager(real_redis, namespace, partitions=2)
    leftover = deadletters.encode([(record(1, 1), "old")])
    for partition in range(2):
        real_redis.rpush(manager.keys.partition(partition).dlq("search"), *leftover)

    # When an agent with that id is added
    manager.add_agent(Agent(id="search", backend="null"))

    # Then it starts with no dead letters
    assert deadletters.count(manager, "search") == 0


def test_requeue_whose_lock_was_taken_over_changes_no_dead_letters(
    manager: SyncManager, dead_letter_agent: str, letters: list[Record], real_redis: redis.Redis
) -> None:
    # Given three dead letters and a target that refuses them again, while another runner takes the lock
    lock_key = manager.keys.partition(0).lock(dead_letter_agent)

    def taken_over(_batch: Sequence[Record]) -> None:
        real_redis.set(lock_key, "token-of-someone-else", px=30_000)

    backend = RefusingAgainBackend(before_upload=taken_over)

    # When they are requeued
    with pytest.raises(LockLost):
        deadletters.requeue(manager, dead_letter_agent, backend=backend)

    # Then the list is as it was: neither dropped nor appended to
    assert [(e["record"]["id"], e["reason"]) for e in deadletters.entries(manager, dead_letter_agent)] == [
        (1, "target said no to 1"),
        (2, "target said no to 2"),
        (3, "target said no to 3"),
    ]


def test_requeue_of_an_agent_removed_meanwhile_leaves_no_dead_letters(
    manager: SyncManager, dead_letter_agent: str, letters: list[Record], real_redis: redis.Redis
) -> None:
    # Given three dead letters and a target that refuses them again, while the agent is removed
    def removed(_batch: Sequence[Record]) -> None:
        manager.remove_agent(dead_letter_agent)

    backend = RefusingAgainBackend(before_upload=removed)

    # When they are requeued
    with pytest.raises(LockLost):
        deadletters.requeue(manager, dead_letter_agent, backend=backend)

    # Then nothing was written back for the removed agent
    assert not real_redis.exists(manager.keys.partition(0).dlq(dead_letter_agent))


def test_add_with_a_lock_is_fenced_by_it(manager: SyncManager, dead_letter_agent: str, real_redis: redis.Redis) -> None:
    # Given a runner whose lock was taken over
    track = manager.track(0)
    lock = RunLock(track, dead_letter_agent, ttl=30, renew=False).acquire()
    real_redis.set(lock.key, "token-of-someone-else", px=30_000)

    # When it dead-letters a record under its lock
    with pytest.raises(LockLost):
        deadletters.add(manager, dead_letter_agent, 0, RecordRejected([(record(1, 1), "bad")]), lock=lock)

    # Then nothing was written
    assert deadletters.count(manager, dead_letter_agent) == 0


# CLI


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


@pytest.fixture
def jsonl_agent(manager: SyncManager, tmp_path: Path) -> Path:
    """A jsonl agent "search" with dead letters for events 1, 2 and 3 added by hand; returns its file."""
    target = tmp_path / "search.jsonl"
    manager.add_agent(Agent(id="search", backend="jsonl", options={"path": str(target)}))
    records = [record(1, 10), record(2, 11), record(3, 12, action="deleted")]
    deadletters.add(manager, "search", 0, RecordRejected([(r, "target was down") for r in records]))
    return target


def test_cli_dlq_json_lists_the_dead_letters(cli: Invoke, jsonl_agent: Path) -> None:
    # When the dead letters are listed with --json
    entries = json.loads(ok(cli("agent", "dlq", "search", "--json")).stdout)

    # Then each one is there with record, reason and partition
    assert [(e["record"]["id"], e["record"]["action"], e["reason"], e["partition"]) for e in entries] == [
        (1, "created", "target was down", 0),
        (2, "created", "target was down", 0),
        (3, "deleted", "target was down", 0),
    ]


def test_cli_dlq_table_shows_each_letter_with_its_reason(cli: Invoke, jsonl_agent: Path) -> None:
    # When the dead letters are listed as a table
    output = ok(cli("agent", "dlq", "search")).output

    # Then there is a row per letter naming the reason
    rows = [line for line in output.splitlines() if "target was down" in line]
    assert len(rows) == 3


def test_cli_dlq_requeue_delivers_to_the_target_and_empties_the_list(
    cli: Invoke, jsonl_agent: Path, manager: SyncManager
) -> None:
    # When the dead letters are requeued
    outcome = json.loads(ok(cli("agent", "dlq", "search", "--requeue", "--json")).stdout)

    # Then the jsonl file received them and the list is empty
    assert outcome == {"requeued": 3, "rejected": 0}
    lines = [json.loads(line) for line in jsonl_agent.read_text().splitlines()]
    assert [(r["id"], r["action"], r["seq"]) for r in lines] == [
        (1, "created", 10),
        (2, "created", 11),
        (3, "deleted", 12),
    ]
    assert deadletters.count(manager, "search") == 0


def test_cli_dlq_purge_without_yes_on_non_tty_input_refuses_and_drops_nothing(
    cli: Invoke, jsonl_agent: Path, manager: SyncManager
) -> None:
    # When a purge is asked for without --yes, input not being a terminal
    result = cli("agent", "dlq", "search", "--purge", input="y\n")

    # Then it is refused as bad usage and every letter stays
    assert result.exit_code == 2, result.output
    assert "--yes" in result.output
    assert deadletters.count(manager, "search") == 3


def test_cli_dlq_purge_with_yes_drops_every_letter(cli: Invoke, jsonl_agent: Path, manager: SyncManager) -> None:
    # When a purge is asked for with --yes
    outcome = json.loads(ok(cli("agent", "dlq", "search", "--purge", "--yes", "--json")).stdout)

    # Then every letter is gone
    assert outcome == {"purged": 3}
    assert deadletters.count(manager, "search") == 0


def test_cli_dlq_requeue_with_purge_is_bad_usage(cli: Invoke, jsonl_agent: Path, manager: SyncManager) -> None:
    # When both --requeue and --purge are given
    result = cli("agent", "dlq", "search", "--requeue", "--purge", "--yes")

    # Then it exits 2 and neither happened
    assert result.exit_code == 2, result.output
    assert "exclude each other" in result.output
    assert deadletters.count(manager, "search") == 3
    assert not jsonl_agent.exists()


def test_cli_dlq_of_an_unknown_agent_is_bad_input(cli: Invoke, jsonl_agent: Path) -> None:
    # When the dead letters of an agent that does not exist are listed
    result = cli("agent", "dlq", "nosuch")

    # Then it exits 2 naming the agent
    assert result.exit_code == 2
    assert "unknown agent 'nosuch'" in result.output


def test_cli_status_and_show_report_the_dead_letter_count(cli: Invoke, jsonl_agent: Path) -> None:
    # When status and agent show are asked for with --json
    status = json.loads(ok(cli("status", "--json")).stdout)
    shown = json.loads(ok(cli("agent", "show", "search", "--json")).stdout)

    # Then both report three dead letters
    assert [(a["id"], a["dead_letters"]) for a in status["agents"]] == [("search", 3)]
    assert shown["dead_letters"] == 3


def test_requeue_to_a_target_still_down_keeps_every_letter_and_releases_the_lock(
    manager: SyncManager, dead_letter_agent: str, letters: list[Record], real_redis: redis.Redis
) -> None:
    # Given three dead letters and a target that is still down
    backend = FailingBackend(fail_on=1)

    # When they are requeued
    with pytest.raises(BackendDown):
        deadletters.requeue(manager, dead_letter_agent, backend=backend)

    # Then every letter stays, the backend was closed and the run lock is free again
    assert letter_ids(manager, dead_letter_agent) == [1, 2, 3]
    assert backend.closed == 1
    assert not real_redis.exists(manager.keys.partition(0).lock(dead_letter_agent))


def test_cli_dlq_requeue_to_a_target_still_down_fails_in_one_line_and_keeps_the_letters(
    cli: Invoke, manager: SyncManager, tmp_path: Path
) -> None:
    # Given a jsonl agent whose path became a directory (opening it fails) with one dead letter
    manager.add_agent(Agent(id="broken", backend="jsonl", options={"path": str(tmp_path / "out")}))
    (tmp_path / "out").mkdir()
    deadletters.add(manager, "broken", 0, RecordRejected([(record(1, 1), "target was down")]))

    # When its dead letters are requeued
    result = cli("agent", "dlq", "broken", "--requeue")

    # Then it exits 1 with a one-line message, no traceback, and the letter stays
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "IsADirectoryError" in result.output or "directory" in result.output.lower()
    assert deadletters.count(manager, "broken") == 1


def test_a_refused_record_whose_document_json_cannot_encode_is_dead_lettered_with_it_shown(
    manager: SyncManager, dead_letter_agent: str
) -> None:
    # Given a record a backend refused because its loaded document holds a datetime (not JSON)
    when = datetime(2026, 12, 2, 9, 30, tzinfo=UTC)
    record = Record("event", 7, "created", ("created",), 3, 1_000, {"starts": when, "tags": {"a"}})

    # When it goes to the dead-letter list
    deadletters.add(manager, dead_letter_agent, 0, [(record, "document is not JSON")])

    # Then it is stored (the run goes on), its document shown as text
    [letter] = deadletters.entries(manager, dead_letter_agent)
    assert letter["reason"] == "document is not JSON"
    assert letter["record"]["document"] == {"starts": repr(when), "tags": repr({"a"})}
