"""A full Redis (``noeviction``, at ``maxmemory``) refuses publishes but never wedges runs.

Every test runs on a PRIVATE redis-server (the shared one must never see CONFIG SET):
the namespace and its agent are created, then ``maxmemory`` is set a little above the
memory in use and a backlog is published until Redis refuses it. A refused big publish
frees its query buffer again, which can leave Redis just under the limit; so the limit
is then lowered a little below the memory in use, and the server stays over it whatever
client buffers come and go. What frees memory, or is needed to get there, must still
work: the run lock (acquire, renew, release), the fenced ack, prune and the run's
bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from backends_for_tests import RecordingBackend
from click.testing import CliRunner
from reliability.conftest import RedisServer, free_port

from livesync import Publisher, deadletters
from livesync.cli import main
from livesync.errors import DeadLetterLimit, RecordRejected
from livesync.lock import RunLock
from livesync.manager import Agent, SyncManager
from livesync.records import Record
from livesync.runner import run_agent

#: Head room above the memory in use when maxmemory is set; the backlog fills it.
HEADROOM = 2 * 1024 * 1024
#: How far below the memory in use maxmemory is set once the backlog is refused.
OVER = 256 * 1024
#: Changes per publish while filling (distinct objects, so none cancels out).
FILL_BATCH = 5000
#: Most publishes the fill may take before the test gives up (Redis never refused).
MAX_FILL_CALLS = 400


class RefusingBackend(RecordingBackend):
    """Refuses every record of every batch (a target answering 400 to all)."""

    def upload(self, records: Sequence[Record]) -> None:
        raise RecordRejected([(record, "400 Bad Request") for record in records])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with ``noeviction`` (Redis's default, stated for clarity)."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, free_port(), extra=["--maxmemory-policy", "noeviction", "--appendonly", "no"])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    client = server.client()
    yield client
    client.close()


@pytest.fixture
def manager(client: redis.Redis, namespace: str) -> SyncManager:
    """A namespace with one null agent reading from the tail."""
    manager = SyncManager(client, namespace, granularity=1)
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    return manager


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def fill(client: redis.Redis, namespace: str) -> int:
    """Set maxmemory just above what is used, publish until Redis refuses, then keep it over; return the head."""
    client.config_set("maxmemory", used_memory(client) + HEADROOM)
    publisher = Publisher(client, namespace)
    head = 0
    for call in range(MAX_FILL_CALLS):
        items = [("event", call * FILL_BATCH + n, ["created"]) for n in range(FILL_BATCH)]
        try:
            head = publisher.emit_many(items)[-1]
        except redis.exceptions.OutOfMemoryError:
            client.config_set("maxmemory", used_memory(client) - OVER)
            return head
    raise AssertionError(f"Redis never refused a publish after {MAX_FILL_CALLS * FILL_BATCH} changes")


def stored_changes(manager: SyncManager) -> int:
    track = manager.track(0)
    return sum(int(manager.redis.zcard(track.keys.bucket(bucket))) for bucket, _first in track.buckets())


@pytest.fixture
def full(client: redis.Redis, manager: SyncManager, namespace: str) -> int:
    """Fill the server to maxmemory with a backlog of the agent; return the head."""
    head = fill(client, namespace)
    assert head > 0
    return head


def test_publishing_to_a_full_redis_is_refused_with_nothing_written(
    client: redis.Redis, manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory
    track = manager.track(0)
    members_before = stored_changes(manager)

    # When one more publish comes
    with pytest.raises(redis.exceptions.OutOfMemoryError, match="maxmemory"):
        Publisher(client, namespace).emit("event", "extra", "created")

    # Then it is refused and nothing of it was written: head and stored members unchanged
    assert track.head() == full
    assert stored_changes(manager) == members_before


def test_the_run_lock_can_be_taken_renewed_and_released_at_maxmemory(
    client: redis.Redis, manager: SyncManager, full: int
) -> None:
    # Given a Redis at maxmemory
    track = manager.track(0)

    # When a runner takes, renews and releases the lock
    lock = RunLock(track, "search", ttl=30, renew=False).acquire()
    held = client.get(lock.key)
    renewed = lock.renew()
    lock.release()

    # Then each step worked
    assert held == lock.token.encode()
    assert renewed is True
    assert not client.exists(lock.key)


def test_a_run_at_maxmemory_drains_the_backlog_frees_memory_and_publishing_works_again(
    client: redis.Redis, manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory holding a backlog of the agent
    track = manager.track(0)
    memory_full = used_memory(client)
    assert track.pointer("search") == 0

    # When the agent runs (null backend)
    result = run_agent(manager, "search", window=50_000)

    # Then it took the lock, acknowledged every window, pruned, and released the lock
    assert result.pointer_after == track.head() == full
    assert track.pointer("search") == full
    assert result.windows > 0
    assert result.pruned_buckets > 0
    assert track.buckets() == []
    assert not client.exists(track.keys.lock("search"))
    # the memory fell
    assert used_memory(client) < memory_full
    # the run's bookkeeping was stored too
    agent = manager.get_agent("search")
    assert (agent.runs, agent.failures, agent.changes) == (1, 0, full)
    assert agent.last_success_at is not None
    # and publishing works again
    assert Publisher(client, namespace).emit("event", "extra", "created") == full + 1


def test_the_fenced_ack_and_prune_free_memory_at_maxmemory(
    client: redis.Redis, manager: SyncManager, namespace: str
) -> None:
    # Given a runner holding the lock while Redis fills to maxmemory with the agent's backlog
    track = manager.track(0)
    lock = RunLock(track, "search", ttl=60, renew=False).acquire()
    head = fill(client, namespace)
    memory_full = used_memory(client)

    # When it acknowledges the whole backlog and prunes
    track.acknowledge("search", lock.token, head)
    pruned = track.prune()
    lock.release()

    # Then the pointer moved, every bucket went and the memory fell
    assert track.pointer("search") == head
    assert pruned > 0 and track.buckets() == []
    assert used_memory(client) < memory_full


def test_the_run_bookkeeping_is_stored_at_maxmemory(client: redis.Redis, manager: SyncManager, full: int) -> None:
    # Given a Redis at maxmemory
    # When the outcome of a run is recorded
    manager.record_run("search", started=1.0, changes=5, records=4, rejected=1, error=None)

    # Then the agent's counters show it
    agent = manager.get_agent("search")
    assert (agent.runs, agent.changes, agent.records, agent.rejected, agent.failures) == (1, 5, 4, 1, 0)
    assert agent.last_run_at == 1.0


def test_dead_letters_are_written_with_the_ack_at_maxmemory(
    client: redis.Redis, manager: SyncManager, namespace: str
) -> None:
    # Given a runner holding the lock while Redis fills to maxmemory with the agent's backlog
    track = manager.track(0)
    lock = RunLock(track, "search", ttl=60, renew=False).acquire()
    head = fill(client, namespace)
    letters = deadletters.encode([(Record("event", 1, "created", ("created",), 1, 1), "refused")])

    # When it acknowledges the backlog with a dead letter
    track.acknowledge("search", lock.token, head, dead_letters=letters)
    lock.release()

    # Then both were stored
    assert track.pointer("search") == head
    assert deadletters.count(manager, "search") == 1


def test_a_run_at_maxmemory_past_the_dead_letter_limit_pauses_the_agent(
    client: redis.Redis, manager: SyncManager, full: int
) -> None:
    # Given a Redis at maxmemory and a target that refuses every record
    track = manager.track(0)

    # When the agent runs with a limit of 10 dead letters per run
    with pytest.raises(DeadLetterLimit):
        run_agent(manager, "search", backend=RefusingBackend(), window=5, batch_size=5, dead_letter_limit=10)

    # Then it stopped at the limit and the agent is paused, saying why
    assert track.pointer("search") == 10
    assert deadletters.count(manager, "search") == 10
    agent = manager.get_agent("search")
    assert agent.state == "paused"
    assert agent.last_error is not None and "LIVESYNC_DEAD_LETTER_LIMIT=10" in agent.last_error


def test_livesync_agent_run_drains_a_full_redis(
    server: RedisServer, client: redis.Redis, manager: SyncManager, namespace: str, full: int
) -> None:
    # Given a Redis at maxmemory holding the agent's backlog
    env = {"LIVESYNC_REDIS_URL": server.url, "LIVESYNC_NAMESPACE": namespace}

    # When an operator runs the agent from the command line
    result = CliRunner().invoke(main, ["agent", "run", "search"], env=env)

    # Then it drained the backlog and publishing works again
    assert result.exit_code == 0, result.output
    assert f"pointer 0 -> {full}" in result.output
    assert Publisher(client, namespace).emit("event", "extra", "created") == full + 1
