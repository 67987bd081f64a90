"""The agent run: windows, batches, ack after upload (invariant 2), dead letters, pruning."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis
from support.backends import BackendDown, FailingBackend, RecordingBackend, RejectingBackend

from livesync import Publisher, deadletters
from livesync.errors import AgentNotRunnable
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of
from livesync.records import Record
from livesync.runner import run_agent


@pytest.fixture
def runner_agent(manager: SyncManager) -> str:
    """An active agent reading from the tail; tests hand their backend to ``run_agent``."""
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    return "search"


def publish_objects(publisher: Publisher, count: int, flag: str = "created") -> list[int]:
    """Publish one change for each of ``count`` distinct events; return their seqs."""
    return publisher.emit_many([("event", i, [flag]) for i in range(count)])


# Invariant 2: ack after upload


def test_failed_batch_leaves_pointer_unchanged_and_reraises(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given ten pending changes and a backend that fails on the second batch of the first window
    publish_objects(publisher, 10)
    backend = FailingBackend(fail_on=2)

    # When the agent runs
    with pytest.raises(BackendDown, match="upload 2"):
        run_agent(manager, runner_agent, batch_size=3, window=100, backend=backend)

    # Then the pointer did not move although batch 1 was accepted
    assert len(backend.batches) == 1
    assert manager.pointers(runner_agent) == [0]


def test_failed_run_records_last_error_and_counts_a_failure(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given pending changes and a backend that fails on its second batch
    publish_objects(publisher, 10)

    # When the agent runs and fails
    with pytest.raises(BackendDown):
        run_agent(manager, runner_agent, batch_size=3, backend=FailingBackend(fail_on=2))

    # Then the agent hash holds the error and one failure
    stored = manager.get_agent(runner_agent)
    assert stored.last_error == "BackendDown: target down at upload 2"
    assert stored.failures == 1
    assert stored.runs == 1
    assert stored.last_success_at is None


def test_backend_is_closed_after_a_failed_upload(manager: SyncManager, publisher: Publisher, runner_agent: str) -> None:
    # Given pending changes and a backend that fails on its first batch
    publish_objects(publisher, 3)
    backend = FailingBackend(fail_on=1)

    # When the agent runs and fails
    with pytest.raises(BackendDown):
        run_agent(manager, runner_agent, backend=backend)

    # Then the backend was opened and closed once
    assert (backend.opened, backend.closed) == (1, 1)


def test_run_after_a_failure_delivers_everything(manager: SyncManager, publisher: Publisher, runner_agent: str) -> None:
    # Given a run that failed on batch 2 of its only window
    seqs = publish_objects(publisher, 10)
    failing = FailingBackend(fail_on=2)
    with pytest.raises(BackendDown):
        run_agent(manager, runner_agent, batch_size=3, window=100, backend=failing)

    # When the agent runs again with a working backend
    good = RecordingBackend()
    result = run_agent(manager, runner_agent, batch_size=3, window=100, backend=good)

    # Then every object is delivered (the first batch again: at-least-once), nothing is lost
    assert [record.id for record in good.records] == list(range(10))
    assert {record.id for record in failing.records} <= {record.id for record in good.records}
    assert result.pointer_after == seqs[-1]
    assert manager.get_agent(runner_agent).last_error is None


def test_pointer_advances_window_by_window(manager: SyncManager, publisher: Publisher, runner_agent: str) -> None:
    # Given 1,000 changes over distinct objects and a backend noting the pointer at each upload
    seqs = publish_objects(publisher, 1000)
    seen: list[int] = []
    backend = RecordingBackend(before_upload=lambda _batch: seen.append(manager.pointers(runner_agent)[0]))

    # When the agent runs in windows of 100 (one batch each)
    result = run_agent(manager, runner_agent, batch_size=100, window=100, backend=backend)

    # Then each window was acked before the next one was uploaded
    assert seen == [seqs[0] - 1 + 100 * n for n in range(10)]
    assert (result.windows, result.batches, result.records) == (10, 10, 1000)
    assert result.pointer_after == seqs[-1]


def test_failure_in_window_three_leaves_pointer_at_end_of_window_two(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given 1,000 changes over distinct objects and a backend failing in the third window
    seqs = publish_objects(publisher, 1000)
    backend = FailingBackend(fail_on=3)

    # When the agent runs in windows of 100 (one batch each)
    with pytest.raises(BackendDown):
        run_agent(manager, runner_agent, batch_size=100, window=100, backend=backend)

    # Then the first two windows are acked, the third is not
    assert manager.pointers(runner_agent) == [seqs[199]]
    assert [change.seq for change in manager.query(runner_agent)] == seqs[200:]


def test_records_are_uploaded_in_batches_of_batch_size(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given 25 pending changes over distinct objects
    publish_objects(publisher, 25)
    backend = RecordingBackend()

    # When the agent runs with batches of 10
    result = run_agent(manager, runner_agent, batch_size=10, backend=backend)

    # Then the backend got batches of 10, 10 and 5, in ascending seq
    assert [len(batch) for batch in backend.batches] == [10, 10, 5]
    assert [record.seq for record in backend.records] == sorted(record.seq for record in backend.records)
    assert result.batches == 3


def test_window_is_reduced_to_one_record_per_object(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given several changes of two objects, one created and deleted again
    publisher.emit_many(
        [
            ("event", 1, ["created"]),
            ("event", 2, ["created"]),
            ("event", 1, ["title_changed"]),
            ("event", 2, ["deleted"]),
        ]
    )
    backend = RecordingBackend()
    version = {change.seq: change.version for change in manager.track(0).values()}

    # When the agent runs
    result = run_agent(manager, runner_agent, backend=backend)

    # Then one record per object is uploaded, with the version of its last change (the one
    # created and deleted again as a delete: a target may hold it from an earlier attempt)
    assert backend.records == [
        Record("event", 1, "created", ("created", "title_changed"), 3, version[3]),
        Record("event", 2, "deleted", ("created", "deleted"), 4, version[4]),
    ]
    assert (result.changes, result.records, result.actions) == (4, 2, {"created": 1, "deleted": 1})


# Dead letters


def test_rejected_records_go_to_dead_letters_and_the_run_goes_on(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given ten pending changes and a backend that refuses events 2 and 5
    seqs = publish_objects(publisher, 10)
    backend = RejectingBackend({2, 5}, reason="schema mismatch")
    version = {change.seq: change.version for change in manager.track(0).values()}

    # When the agent runs with batches of 4
    result = run_agent(manager, runner_agent, batch_size=4, backend=backend)

    # Then the refused records are dead letters with the reason, the rest counted, the pointer past all
    letters = deadletters.entries(manager, runner_agent)
    assert [(letter["record"]["id"], letter["reason"]) for letter in letters] == [
        (2, "schema mismatch"),
        (5, "schema mismatch"),
    ]
    assert letters[0]["record"] == Record("event", 2, "created", ("created",), seqs[2], version[seqs[2]]).to_dict()
    assert (result.rejected, result.records) == (2, 8)
    assert [record.id for record in backend.records] == [0, 1, 3, 4, 6, 7, 8, 9]
    assert manager.pointers(runner_agent) == [seqs[-1]]
    assert manager.get_agent(runner_agent).rejected == 2


# Bounds and states


def test_run_is_bounded_to_the_head_seen_at_start(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given five pending changes and a backend that publishes two more during its first upload
    seqs = publish_objects(publisher, 5)
    late: list[int] = []

    def publish_during_run(_batch: Sequence[Record]) -> None:
        if not late:
            late.extend(publisher.emit_many([("event", 100, ["created"]), ("event", 101, ["created"])]))

    first = RecordingBackend(before_upload=publish_during_run)

    # When the agent runs
    result = run_agent(manager, runner_agent, batch_size=2, backend=first)

    # Then it stopped at the head it saw at start, and the next run delivers the late changes
    assert (result.head, result.pointer_after) == (seqs[-1], seqs[-1])
    assert [record.id for record in first.records] == [0, 1, 2, 3, 4]
    second = RecordingBackend()
    run_agent(manager, runner_agent, backend=second)
    assert [(record.id, record.seq) for record in second.records] == [(100, late[0]), (101, late[1])]


@pytest.mark.parametrize(
    ("state", "message"),
    [("paused", "paused"), ("needs_export", "export"), ("gap", "gap")],
)
def test_agent_that_may_not_run_raises_and_keeps_its_pointer(
    manager: SyncManager, publisher: Publisher, runner_agent: str, state: str, message: str
) -> None:
    # Given pending changes and an agent in a state that forbids runs
    publish_objects(publisher, 3)
    manager.set_state(runner_agent, state)  # type: ignore[arg-type]
    backend = RecordingBackend()

    # When it runs
    with pytest.raises(AgentNotRunnable, match=message):
        run_agent(manager, runner_agent, backend=backend)

    # Then nothing was uploaded and the pointer stayed
    assert backend.batches == []
    assert manager.pointers(runner_agent) == [0]


def test_run_with_nothing_pending_uploads_nothing(manager: SyncManager, publisher: Publisher) -> None:
    # Given an agent at the head
    publish_objects(publisher, 3)
    manager.add_agent(Agent(id="search", backend="null"))
    backend = RecordingBackend()

    # When it runs
    result = run_agent(manager, "search", backend=backend)

    # Then the backend was not even opened and the pointer stayed
    assert (backend.opened, backend.batches) == (0, [])
    assert (result.pointer_before, result.pointer_after, result.changes) == (3, 3, 0)


# Bookkeeping


def test_run_records_times_and_counters_in_the_agent_hash(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given two runs over six changes of four objects in total
    publisher.emit_many([("event", 1, ["created"]), ("event", 1, ["moved"]), ("event", 2, ["created"])])
    run_agent(manager, runner_agent, backend=RecordingBackend())
    publisher.emit_many([("event", 3, ["created"]), ("event", 4, ["created"]), ("event", 4, ["moved"])])
    run_agent(manager, runner_agent, backend=RecordingBackend())

    # When the agent is read back
    stored = manager.get_agent(runner_agent)

    # Then times and counters add up over both runs
    assert stored.runs == 2
    assert stored.changes == 6
    assert stored.records == 4
    assert (stored.failures, stored.rejected, stored.last_error) == (0, 0, None)
    assert stored.last_run_at is not None and stored.last_success_at is not None
    assert stored.last_success_at >= stored.last_run_at > 0


# Invariant 4 at run level


def test_run_prunes_only_buckets_every_agent_has_read(manager: SyncManager, publisher: Publisher) -> None:
    # Given two agents at the tail of five changes
    manager.add_agent(Agent(id="fast", backend="null"), start="tail")
    manager.add_agent(Agent(id="slow", backend="null"), start="tail")
    publish_objects(publisher, 5)

    # When only one of them runs
    first = run_agent(manager, "fast", backend=RecordingBackend())

    # Then nothing is pruned: the other still reads every change
    assert first.pruned_buckets == 0
    assert [change.id for change in manager.query("slow")] == [0, 1, 2, 3, 4]

    # And once the other ran too, the bucket is pruned
    second = run_agent(manager, "slow", backend=RecordingBackend())
    assert second.pruned_buckets == 1
    assert manager.track(0).buckets() == []


# Order


def test_records_of_one_object_across_runs_come_in_ascending_seq(
    manager: SyncManager, publisher: Publisher, runner_agent: str
) -> None:
    # Given an object changed between several runs of the same backend
    backend = RecordingBackend()
    for flag in ("created", "title_changed", "moved", "deleted"):
        publisher.emit_many([("event", 7, [flag]), ("category", 1, ["data_changed"])])
        run_agent(manager, runner_agent, backend=backend)

    # When its records are collected
    mine = [record for record in backend.records if record.type == "event"]

    # Then there is one per run, in ascending seq, ending with its deletion
    assert [record.action for record in mine] == ["created", "updated", "updated", "deleted"]
    assert [record.seq for record in mine] == sorted(record.seq for record in mine)
    assert len({record.seq for record in mine}) == 4


# The jsonl backend through a run


def test_jsonl_backend_end_to_end_holds_exactly_the_reduced_records(
    manager: SyncManager, publisher: Publisher, tmp_path: Path
) -> None:
    # Given a jsonl agent and changes that reduce to four records
    path = tmp_path / "out" / "records.jsonl"
    manager.add_agent(Agent(id="archive", backend="jsonl", options={"path": str(path)}), start="tail")
    publisher.emit_many(
        [
            ("event", 42, ["created"]),
            ("event", 42, ["title_changed"]),
            ("contribution", "c-7", ["deleted"]),
            ("event", 43, ["created"]),
            ("event", 43, ["deleted"]),
            ("category", 5, ["moved", "acl_changed"]),
        ]
    )
    v = {change.seq: change.version for change in manager.track(0).values()}

    # When the agent runs with its configured backend
    result = run_agent(manager, "archive", batch_size=2)

    # Then the file holds exactly the reduced records, one JSON object per line
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == [
        {
            "type": "event",
            "id": 42,
            "action": "created",
            "changes": ["created", "title_changed"],
            "seq": 2,
            "version": v[2],
        },
        {"type": "contribution", "id": "c-7", "action": "deleted", "changes": ["deleted"], "seq": 3, "version": v[3]},
        {
            "type": "event",
            "id": 43,
            "action": "deleted",
            "changes": ["created", "deleted"],
            "seq": 5,
            "version": v[5],
        },
        {
            "type": "category",
            "id": 5,
            "action": "updated",
            "changes": ["acl_changed", "moved"],
            "seq": 6,
            "version": v[6],
        },
    ]
    assert (result.records, result.pointer_after) == (4, 6)


# Partitions


def test_run_of_one_partition_moves_only_that_partitions_pointer(real_redis: redis.Redis, namespace: str) -> None:
    # Given an agent on two partitions with changes pending in both
    manager = SyncManager(real_redis, namespace, partitions=2)
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    Publisher(real_redis, namespace, partitions=2).emit_many([("event", i, ["created"]) for i in range(20)])
    heads = [track.head() for track in manager.tracks()]
    assert min(heads) > 0
    backend = RecordingBackend()

    # When partition 1 runs
    result = run_agent(manager, "search", 1, backend=backend)

    # Then only partition 1's changes were uploaded and only its pointer moved
    assert manager.pointers("search") == [0, heads[1]]
    assert {partition_of(record.type, record.id, 2) for record in backend.records} == {1}
    assert result.records == heads[1]


# One object per run: the agent, the track and the gap scan are read once


def test_a_run_fetches_its_agent_builds_its_track_and_scans_for_gaps_once(
    manager: SyncManager, publisher: Publisher, runner_agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given pending changes over several windows, and a manager that counts what the run asks of it
    publish_objects(publisher, 10)
    calls: dict[str, int] = {}
    for name in ("get_agent", "track", "tracks", "gap_message"):
        original = getattr(manager, name)

        def counted(*args: object, _name: str = name, _original: object = original, **kwargs: object) -> object:
            calls[_name] = calls.get(_name, 0) + 1
            return _original(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(manager, name, counted)

    # When the agent runs
    result = run_agent(manager, runner_agent, batch_size=3, window=4, backend=RecordingBackend())

    # Then it read the agent, built its track and scanned every partition for a gap once each
    # (``track`` twice: once for the run, once for the one partition the gap scan's ``tracks`` builds)
    assert result.pointer_after == 10
    assert result.windows == 3
    assert calls == {"get_agent": 1, "track": 2, "gap_message": 1, "tracks": 1}
