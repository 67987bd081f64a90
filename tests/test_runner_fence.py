"""Dead letters are written by the fenced ack, and a run dead-letters at most a limit.

A runner that lost its lock (expired, taken over) or whose agent was removed (and
maybe added again) while it uploaded must not write dead letters: they go to Redis in
the same atomic, token-checked call that moves the pointer. And a target that refuses
every record must not empty the whole backlog into the dead-letter list in one run:
past ``dead_letter_limit`` the run stops before acking, and the agent is paused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis
from support.backends import BLOCK_TIMEOUT, BlockingBackend, RecordingBackend, RunInThread

from livesync import Publisher, deadletters
from livesync.config import Settings
from livesync.errors import DeadLetterLimit, LockLost, RecordRejected
from livesync.export import export_agent
from livesync.manager import Agent, SyncManager
from livesync.records import Record
from livesync.runner import run_agent, run_with_settings
from livesync.track import Track


class RefusingBackend(RecordingBackend):
    """Refuses every record of every batch, for good (a target answering 400 to all)."""

    name = "refusing"

    def upload(self, records: Sequence[Record]) -> None:
        super().upload(records)
        raise RecordRejected([(record, "400 Bad Request") for record in records])


class BlockingRefusingBackend(BlockingBackend):
    """Blocks in its first upload until the test lets it go, then refuses every record."""

    name = "blocking-refusing"

    def upload(self, records: Sequence[Record]) -> None:
        super().upload(records)
        raise RecordRejected([(record, "400 Bad Request") for record in records])


def publish(real_redis: redis.Redis, namespace: str, count: int) -> int:
    """Publish ``count`` created events (distinct objects); return the head."""
    return Publisher(real_redis, namespace).emit_many([("event", i, ["created"]) for i in range(count)])[-1]


# The fence


@pytest.mark.parametrize("how", ["taken over", "expired"])
def test_a_runner_that_lost_its_lock_mid_window_writes_no_dead_letters(
    search_manager: SyncManager, search_track: Track, real_redis: redis.Redis, namespace: str, how: str
) -> None:
    # Given a run blocked in its upload, whose records the target will refuse
    publish(real_redis, namespace, 3)
    blocked = BlockingRefusingBackend()
    run = RunInThread(search_manager, blocked)
    assert blocked.entered.wait(BLOCK_TIMEOUT)

    # When its lock expires (and maybe another runner takes it), then the upload returns
    lock_key = search_track.keys.lock("search")
    real_redis.delete(lock_key)
    if how == "taken over":
        real_redis.set(lock_key, "token-of-runner-b", px=30_000)
    blocked.proceed.set()
    run.join()

    # Then the run fails with LockLost and neither the pointer nor the dead letters changed
    assert isinstance(run.error, LockLost)
    assert deadletters.count(search_manager, "search") == 0
    assert search_track.pointer("search") == 0


def test_an_agent_removed_and_added_again_mid_run_inherits_no_dead_letters_of_the_old_run(
    search_manager: SyncManager, search_track: Track, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a run blocked in its upload, whose records the target will refuse
    head = publish(real_redis, namespace, 3)
    blocked = BlockingRefusingBackend()
    run = RunInThread(search_manager, blocked)
    assert blocked.entered.wait(BLOCK_TIMEOUT)

    # When the agent is removed and added again under the same id, then the upload returns
    search_manager.remove_agent("search")
    search_manager.add_agent(Agent(id="search", backend="null"), start="head")
    blocked.proceed.set()
    run.join()

    # Then the old run wrote nothing for the new agent: no dead letters, its pointer as added
    assert isinstance(run.error, LockLost)
    assert deadletters.count(search_manager, "search") == 0
    assert not real_redis.exists(search_track.keys.dlq("search"))
    assert search_track.pointer("search") == head


def test_dead_letters_are_written_by_the_same_call_that_moves_the_pointer(
    search_manager: SyncManager,
    search_track: Track,
    real_redis: redis.Redis,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a backlog the target refuses, and a watch on every acknowledge call
    head = publish(real_redis, namespace, 3)
    seen: list[tuple[Any, ...]] = []
    acknowledge = Track.acknowledge

    def watched(self: Track, agent_id: str, token: str, seq: int | None, *args: Any, **kwargs: Any) -> None:
        before = (self.pointer(agent_id), deadletters.count(search_manager, agent_id))
        acknowledge(self, agent_id, token, seq, *args, **kwargs)
        seen.append((seq, *before, self.pointer(agent_id), deadletters.count(search_manager, agent_id)))

    monkeypatch.setattr(Track, "acknowledge", watched)

    # When the agent runs
    result = run_agent(search_manager, "search", backend=RefusingBackend())

    # Then one ack call moved the pointer and wrote the three dead letters; none came before it
    assert seen == [(head, 0, 0, head, 3)]
    assert result.rejected == 3
    assert [entry["record"]["id"] for entry in deadletters.entries(search_manager, "search")] == [0, 1, 2]


# The dead-letter limit per run


def test_a_run_that_would_dead_letter_more_than_the_limit_stops_before_that_window_and_pauses_the_agent(
    search_manager: SyncManager, search_track: Track, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a backlog of 20 changes and a target refusing every record; windows of 4, batches of 2
    publish(real_redis, namespace, 20)
    backend = RefusingBackend()

    # When the agent runs with a limit of 5 dead letters per run
    with pytest.raises(DeadLetterLimit) as raised:
        run_agent(search_manager, "search", backend=backend, window=4, batch_size=2, dead_letter_limit=5)

    # Then the first window (4 letters) was acked; the second stopped at its first batch
    # (4 + 2 > 5), before its ack: nothing beyond the limit was dead-lettered
    assert search_track.pointer("search") == 4
    assert deadletters.count(search_manager, "search") == 4
    assert len(backend.batches) == 3
    # and the agent is paused, saying why and what to do
    agent = search_manager.get_agent("search")
    assert agent.state == "paused"
    message = (
        "paused: the backend refused 6 records in one run (limit LIVESYNC_DEAD_LETTER_LIMIT=5); check the "
        "target, then 'livesync agent dlq search --requeue' and 'livesync agent resume search'"
    )
    assert str(raised.value) == message
    assert agent.last_error == f"DeadLetterLimit: {message}"
    assert (agent.runs, agent.failures, agent.rejected) == (1, 1, 4)


def test_a_run_dead_lettering_exactly_the_limit_completes(
    search_manager: SyncManager, search_track: Track, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a backlog of 6 changes and a target refusing every record
    head = publish(real_redis, namespace, 6)

    # When the agent runs with a limit of 6
    result = run_agent(search_manager, "search", backend=RefusingBackend(), window=4, batch_size=2, dead_letter_limit=6)

    # Then every record went to the dead-letter list and the agent stays active
    assert (result.pointer_after, result.rejected) == (head, 6)
    assert search_manager.get_agent("search").state == "active"


def test_run_with_settings_applies_the_dead_letter_limit_of_the_settings(
    search_manager: SyncManager, real_redis: redis.Redis, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a backlog the target refuses and settings allowing 2 dead letters per run
    publish(real_redis, namespace, 3)
    monkeypatch.setattr("livesync.upload.create_backend", lambda *_args: RefusingBackend())
    settings = Settings(dead_letter_limit=2)

    # When the agent runs the way jobs and the CLI run it
    with pytest.raises(DeadLetterLimit, match="LIVESYNC_DEAD_LETTER_LIMIT=2"):
        run_with_settings(search_manager, "search", 0, settings)

    # Then nothing was dead-lettered and the agent is paused
    assert deadletters.count(search_manager, "search") == 0
    assert search_manager.get_agent("search").state == "paused"


def test_an_export_whose_lock_was_taken_over_writes_no_dead_letters(real_redis: redis.Redis, namespace: str) -> None:
    # Given an agent waiting for its export, and a target that refuses the batch while
    # another runner takes the export's lock
    manager = SyncManager(real_redis, namespace)
    manager.add_agent(Agent(id="search", backend="null", state="needs_export"))
    lock_key = manager.keys.partition(0).lock("search")

    def taken_over(_batch: Sequence[Record]) -> None:
        real_redis.set(lock_key, "token-of-someone-else", px=30_000)

    class TakenOverRefusing(RefusingBackend):
        def __init__(self) -> None:
            super().__init__(before_upload=taken_over)

    # When the export sends its objects
    with pytest.raises(LockLost):
        export_agent(manager, "search", [("event", 1), ("event", 2)], backend=TakenOverRefusing())

    # Then none of the refused records was dead-lettered
    assert deadletters.count(manager, "search") == 0
