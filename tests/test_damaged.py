"""A namespace whose meta is missing while its other keys exist is damaged, never re-created.

Re-creating the meta with defaults (1 partition, 60 s) would hide partitions 1..P-1 for
ever. Managers and publishers refuse with :class:`NamespaceDamaged` naming the keys
found; ``livesync init --repair --partitions P`` restores the meta. A long-lived
publisher notices a destroyed or re-created namespace through the epoch the publish
script checks, and never writes with stale partitioning.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis
from click.testing import CliRunner, Result
from support.backends import RecordingBackend

from livesync import Publisher
from livesync.cli import main
from livesync.errors import EpochChanged, HeadLost, NamespaceDamaged, ReplicationError
from livesync.keys import namespace_keys
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of, read_meta
from livesync.runner import run_agent

Invoke = Callable[..., Result]


@pytest.fixture
def damaged_cli(redis_url: str, namespace: str, real_redis: redis.Redis) -> Invoke:
    """``livesync ARGS...`` in-process against the test Redis and namespace."""
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace}
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), env=env)

    return invoke


def used_namespace(client: redis.Redis, namespace: str, partitions: int = 3) -> SyncManager:
    """A namespace with ``partitions`` partitions, an agent and changes in every partition."""
    manager = SyncManager(client, namespace, partitions=partitions)
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    Publisher(client, namespace).emit_many([("event", i, ["created"]) for i in range(30)])
    return manager


def test_manager_refuses_to_re_create_a_missing_meta_when_other_keys_exist(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given a used namespace of 3 partitions that lost its meta
    used_namespace(real_redis, namespace)
    real_redis.delete(namespace_keys(namespace).meta)
    # When a manager (every RQ job makes one) opens it
    with pytest.raises(NamespaceDamaged) as excinfo:
        _ = SyncManager(real_redis, namespace).meta
    # Then it refuses, naming the namespace, keys it found and the fix, and writes no meta
    message = str(excinfo.value)
    assert repr(namespace) in message
    assert f"livesync:{{{namespace}}}:agents" in message
    assert "livesync init --repair --partitions" in message
    assert read_meta(real_redis, namespace_keys(namespace)) is None


def test_publisher_refuses_a_namespace_whose_meta_is_missing(real_redis: redis.Redis, namespace: str) -> None:
    # Given a namespace with changes but no meta (no agent at all)
    Publisher(real_redis, namespace, partitions=2).emit_many([("event", i, ["created"]) for i in range(10)])
    real_redis.delete(namespace_keys(namespace).meta)
    # When a new publisher emits
    with pytest.raises(NamespaceDamaged, match=r":seq"):
        Publisher(real_redis, namespace).emit("event", 1, "moved")
    # Then nothing was written and no meta created
    assert read_meta(real_redis, namespace_keys(namespace)) is None


def test_an_empty_namespace_is_still_created_on_first_use(real_redis: redis.Redis, namespace: str) -> None:
    # Given a namespace without any key
    # When a publisher emits
    seq = Publisher(real_redis, namespace).emit("event", 1, "created")
    # Then it was created with the defaults
    meta = read_meta(real_redis, namespace_keys(namespace))
    assert seq == 1 and meta is not None and meta.partitions == 1


def test_init_repair_restores_the_meta_and_agents_go_on(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a used namespace of 3 partitions that lost its meta
    manager = used_namespace(real_redis, namespace)
    epoch = manager.meta.epoch
    real_redis.delete(namespace_keys(namespace).meta)
    # When the operator repairs it
    result = damaged_cli("init", "--repair", "--partitions", "3", "--json")
    # Then the meta is back with the epoch the partitions hold, and the agent runs every partition
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["partitions"], data["epoch"], data["repaired"]) == (3, epoch, True)
    repaired = SyncManager(real_redis, namespace)
    assert repaired.meta.epoch == epoch and repaired.partitions == 3
    pending = sum(track.head() for track in repaired.tracks())
    done = sum(run_agent(repaired, "search", p, backend=RecordingBackend()).changes for p in range(3))
    assert done == pending == 30


def test_init_repair_with_disagreeing_epochs_writes_a_greater_epoch_everywhere(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a damaged namespace whose partitions hold different epochs (restored from different backups)
    manager = used_namespace(real_redis, namespace)
    keys = namespace_keys(namespace)
    epoch = manager.meta.epoch
    real_redis.set(keys.partition(1).epoch, epoch + 1000)
    real_redis.delete(keys.meta)
    # When the operator repairs it
    result = damaged_cli("init", "--repair", "--partitions", "3", "--json")
    # Then a new epoch above every one found is in the meta and in every partition
    assert result.exit_code == 0, result.output
    new = json.loads(result.stdout)["epoch"]
    assert new > epoch + 1000
    assert [int(real_redis.get(keys.partition(p).epoch) or 0) for p in range(3)] == [new] * 3


def test_init_repair_refuses_fewer_partitions_than_hold_keys(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a damaged namespace of 3 partitions
    used_namespace(real_redis, namespace)
    real_redis.delete(namespace_keys(namespace).meta)
    # When the operator repairs it with 2
    result = damaged_cli("init", "--repair", "--partitions", "2")
    # Then it is refused in one line naming partition 2, and nothing is written
    assert result.exit_code == 2, result.output
    assert "partition 2" in result.output and "Traceback" not in result.output
    assert read_meta(real_redis, namespace_keys(namespace)) is None


def test_init_without_repair_refuses_a_damaged_namespace(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a damaged namespace
    used_namespace(real_redis, namespace)
    real_redis.delete(namespace_keys(namespace).meta)
    # When plain init runs
    result = damaged_cli("init", "--partitions", "3")
    # Then it refuses in one line pointing at --repair
    assert result.exit_code == 2, result.output
    assert "--repair" in result.output


def test_long_lived_publisher_follows_a_re_created_namespace(real_redis: redis.Redis, namespace: str) -> None:
    # Given a publisher that cached the meta of a 1-partition namespace
    publisher = Publisher(real_redis, namespace)
    publisher.emit("event", 0, "created")
    assert publisher.meta.partitions == 1
    # And the namespace destroyed and re-created with 3 partitions by another manager
    SyncManager(real_redis, namespace).destroy()
    recreated = SyncManager(real_redis, namespace, partitions=3)
    assert recreated.partitions == 3
    # When the publisher emits again
    publisher.emit_many([("event", i, ["created"]) for i in range(1, 31)])
    publisher.emit("event", 31, "created")
    # Then every change landed in its partition of the new namespace, none with the stale partitioning
    for track in recreated.tracks():
        ids = [change.id for change in track.values()]
        assert ids and all(partition_of("event", i, 3) == track.partition for i in ids)
    assert sum(track.head() for track in recreated.tracks()) == 31
    assert publisher.meta.epoch == recreated.meta.epoch


def test_long_lived_publisher_re_creates_a_namespace_that_is_entirely_gone(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given a publisher that cached the meta, and the namespace destroyed (nothing left)
    publisher = Publisher(real_redis, namespace)
    publisher.emit("event", 0, "created")
    old = publisher.meta.epoch
    SyncManager(real_redis, namespace).destroy()
    # When it emits
    assert publisher.emit("event", 1, "created") == 1
    # Then the namespace exists again with a greater epoch
    meta = read_meta(real_redis, namespace_keys(namespace))
    assert meta is not None and meta.epoch > old


def test_long_lived_publisher_refuses_a_destroyed_namespace_that_left_keys(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given a publisher that cached the meta, and the namespace destroyed but for an agent set
    publisher = Publisher(real_redis, namespace)
    publisher.emit("event", 0, "created")
    SyncManager(real_redis, namespace).destroy()
    real_redis.sadd(namespace_keys(namespace).agents, "search")
    # When it emits
    with pytest.raises(NamespaceDamaged):
        publisher.emit("event", 1, "created")
    # Then nothing was written
    assert real_redis.get(namespace_keys(namespace).partition(0).seq) is None


def test_publish_that_half_landed_before_the_epoch_changed_says_what_was_stored(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given a publisher of a 2-partition namespace, and partition 1 restored from another era
    publisher = Publisher(real_redis, namespace, partitions=2)
    publisher.emit("event", 0, "created")
    keys = namespace_keys(namespace)
    real_redis.set(keys.partition(1).epoch, publisher.meta.epoch + 7)
    items = [("event", i, ["created"]) for i in range(10)]
    first = partition_of("event", 0, 2)
    assert first == 0, "event 0 must be in partition 0, so partition 0 is written first"
    # When a batch over both partitions is published
    with pytest.raises(EpochChanged) as excinfo:
        publisher.emit_many(items)
    # Then partition 0's changes are stored, partition 1's not, and the message says so
    message = str(excinfo.value)
    assert "partition 0" in message and "partition 1" in message
    assert real_redis.get(keys.partition(1).seq) is None
    stored = int(real_redis.get(keys.partition(0).seq) or 0)
    assert stored == 1 + sum(1 for _t, i, _f in items if partition_of("event", i, 2) == 0)


def test_commands_on_a_damaged_namespace_say_so_in_one_line(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a damaged namespace
    used_namespace(real_redis, namespace)
    real_redis.delete(namespace_keys(namespace).meta)
    # When status is asked
    result = damaged_cli("status")
    # Then it says the namespace is damaged and how to repair it, instead of "does not exist"
    assert result.exit_code == 2, result.output
    assert "no meta" in result.output and "--repair" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_destroy_deletes_a_damaged_namespace_entirely(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a damaged namespace of 3 partitions
    used_namespace(real_redis, namespace)
    real_redis.delete(namespace_keys(namespace).meta)
    # When it is destroyed
    result = damaged_cli("destroy", "--yes")
    # Then no key of it is left, and it can be created afresh
    assert result.exit_code == 0, result.output
    assert list(real_redis.scan_iter(match=f"livesync:{{{namespace}*")) == []
    assert SyncManager(real_redis, namespace, partitions=2).partitions == 2


def test_init_repair_refuses_a_granularity_the_buckets_contradict(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a damaged namespace of 3 partitions with 60 s buckets
    used_namespace(real_redis, namespace)
    real_redis.delete(namespace_keys(namespace).meta)
    # When the operator repairs it with 1 s buckets
    result = damaged_cli("init", "--repair", "--partitions", "3", "--granularity", "1")
    # Then it is refused in one line saying what the buckets show, and nothing is written
    assert result.exit_code == 2, result.output
    assert "granularity: 1 s does not match" in result.output and "--granularity" in result.output
    assert read_meta(real_redis, namespace_keys(namespace)) is None


def test_publisher_waiting_for_replicas_follows_a_re_created_namespace_too(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given a publisher that waits for a replica (publish and WAIT in one pipeline), its meta cached
    publisher = Publisher(real_redis, namespace, wait_replicas=1, wait_timeout=0.01)
    _ = publisher.meta
    # And the namespace re-created with 3 partitions
    SyncManager(real_redis, namespace).destroy()
    recreated = SyncManager(real_redis, namespace, partitions=3)
    assert recreated.partitions == 3
    # When it emits (the test Redis has no replica: WAIT reports 0 of 1)
    with pytest.raises(ReplicationError):
        publisher.emit("event", 4, "created")
    # Then the change is stored, in its partition of the new namespace
    [track] = [t for t in recreated.tracks() if t.partition == partition_of("event", 4, 3)]
    assert [(c.type, c.id) for c in track.values()] == [("event", 4)]


# --- a lost head is refused at publish and restored by init --repair ----------------------------


def agent_past_three_changes(client: redis.Redis, namespace: str) -> SyncManager:
    """One partition, an agent that read seqs 1..3."""
    manager = SyncManager(client, namespace)
    manager.add_agent(Agent(id="search", backend="null"), start="tail")
    Publisher(client, namespace).emit_many([("event", i, ["created"]) for i in range(3)])
    assert run_agent(manager, "search", backend=RecordingBackend()).pointer_after == 3
    return manager


def test_publish_refuses_a_partition_that_lost_its_head_while_pointers_remain(
    real_redis: redis.Redis, namespace: str
) -> None:
    # Given a partition whose head key was lost (evicted, deleted by hand) while an agent is at seq 3
    manager = agent_past_three_changes(real_redis, namespace)
    keys = manager.track(0).keys
    real_redis.delete(keys.seq, keys.clock)
    stored = real_redis.zcard(keys.buckets)
    # When a publisher emits
    with pytest.raises(HeadLost) as excinfo:
        Publisher(real_redis, namespace).emit("event", 9, "moved")
    # Then it is refused (seq 1 again would sit below the agent's pointer), saying how to restore it
    message = str(excinfo.value)
    assert isinstance(excinfo.value, NamespaceDamaged)
    for part in ("partition 0", repr(namespace), "lost its head", "livesync init --repair --partitions 1"):
        assert part in message
    # And nothing was written
    assert real_redis.get(keys.seq) is None
    assert real_redis.zcard(keys.buckets) == stored


def test_publish_refuses_a_lost_head_whose_clock_remains(real_redis: redis.Redis, namespace: str) -> None:
    # Given a partition with changes but no agent, whose head key alone was lost
    publisher = Publisher(real_redis, namespace)
    publisher.emit_many([("event", i, ["created"]) for i in range(3)])
    real_redis.delete(namespace_keys(namespace).partition(0).seq)
    # When the publisher emits again, it is refused
    with pytest.raises(HeadLost, match="lost its head"):
        publisher.emit("event", 9, "moved")


def test_init_repair_restores_a_lost_head_above_every_pointer_and_stored_seq(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a partition that lost its head while an agent is at seq 3 and seqs 1..3 are stored
    manager = agent_past_three_changes(real_redis, namespace)
    keys = manager.track(0).keys
    real_redis.delete(keys.seq)
    # When the operator repairs the namespace
    result = damaged_cli("init", "--repair", "--partitions", "1")
    # Then the head is back at 3, publishing goes on above it, and the agent reads the new change
    assert result.exit_code == 0, result.output
    assert "head" in result.output
    assert manager.track(0).head() == 3
    assert Publisher(real_redis, namespace).emit("event", 9, "moved") == 4
    backend = RecordingBackend()
    assert run_agent(manager, "search", backend=backend).pointer_after == 4
    assert [record.id for record in backend.records] == [9]


def test_init_repair_refuses_more_partitions_than_hold_epoch_keys(
    real_redis: redis.Redis, namespace: str, damaged_cli: Invoke
) -> None:
    # Given a damaged namespace of 3 partitions (each holds the namespace's epoch)
    used_namespace(real_redis, namespace)
    real_redis.delete(namespace_keys(namespace).meta)
    # When the operator repairs it with 5
    result = damaged_cli("init", "--repair", "--partitions", "5")
    # Then it is refused in one line saying it had 3, and nothing is written
    assert result.exit_code == 2, result.output
    assert "3 partition(s)" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert read_meta(real_redis, namespace_keys(namespace)) is None
