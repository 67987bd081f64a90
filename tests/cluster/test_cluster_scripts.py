"""livesync's keys, Lua scripts, manager and CLI on a real Redis Cluster (3 masters, 3 replicas).

Redis Cluster refuses a command whose keys span hash slots (CROSSSLOT) and a script that
touches a key outside its declared slot, so running every Lua script, every manager
operation and the operators' commands against a real cluster proves the key layout of
``livesync/keys.py``: every key one script touches carries one hash tag, ``{ns}`` or
``{ns:p}``. Each test's namespace spreads its 6 partitions over all three masters.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cluster.conftest import ClusterProcesses, RedisClusterServers, run_ok
from pydantic import ValidationError
from redis.crc import key_slot
from support.backends import RecordingBackend, RejectingBackend

from livesync import Publisher, deadletters
from livesync.changes import validate
from livesync.codec import encode_body
from livesync.config import Settings
from livesync.errors import AgentBusy, LockLost, NamespaceDamaged
from livesync.jobs import note_job
from livesync.lock import RunLock
from livesync.lua import SCRIPT_NAMES, source
from livesync.manager import Agent, SyncManager
from livesync.namespace import partition_of
from livesync.outbox.publish import RelayTrack
from livesync.runner import run_agent

PARTITIONS = 6
SCRIPT_BY_SHA = {hashlib.sha1(source(name).encode()).hexdigest(): name for name in SCRIPT_NAMES}

pytestmark = pytest.mark.timeout(60)


def body(*ids: int) -> tuple[int, bytes]:
    """A packed run of ``created`` changes of events ``ids``, as the publisher stores it."""
    return len(ids), encode_body([validate("event", id_, ["created"]) for id_ in ids])


class RecordingCluster(redis.RedisCluster):
    """A cluster client that records the keys of every script call (EVALSHA)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.script_calls: list[tuple[str, list[bytes | str]]] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        self.script_calls.append((SCRIPT_BY_SHA.get(sha, sha), list(keys_and_args[:numkeys])))
        return super().evalsha(sha, numkeys, *keys_and_args)


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServers) -> Iterator[RecordingCluster]:
    port = redis_cluster.alive_nodes()[0].port
    client = RecordingCluster(host="127.0.0.1", port=port, socket_connect_timeout=2)
    yield client
    client.close()


def namespace_keys_on_nodes(cluster: RedisClusterServers, namespace: str) -> dict[int, list[str]]:
    """Every key of ``namespace`` on each master, asked of the masters one by one."""
    found: dict[int, list[str]] = {}
    for port in cluster.masters():
        with cluster.node(port).client() as client:
            keys = sorted(key.decode() for key in client.scan_iter(match=f"livesync:{{{namespace}*", count=1000))
        if keys:
            found[port] = keys
    return found


def slot_of(key: bytes | str) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


def test_every_lua_script_touches_one_hash_slot(
    redis_cluster: RedisClusterServers, cluster_client: RecordingCluster, cluster_namespace: str
) -> None:
    # Given a namespace with 6 partitions on 3 masters, 1 s buckets, and an agent in each partition
    manager = SyncManager(cluster_client, cluster_namespace, partitions=PARTITIONS, granularity=1)
    tracks = manager.tracks()
    assert len({redis_cluster.master_of_slot(slot_of(t.keys.seq)) for t in tracks}) == 3

    # When every script runs in every partition: publish (two buckets), relay an outbox row, ack under the
    # lock, renew, prune (read buckets, and the retention branch), release, record the run and note a job
    pruned = []
    for track in tracks:
        track.add_pointer("a", 0)
        assert track.publish([body(1), body(2)]) == 1
    time.sleep(1.05)  # the next publish lands in the next 1 s bucket
    meta = manager.meta
    for track in tracks:
        assert track.publish([body(3)]) == 3
        relay = RelayTrack(cluster_client, track.keys, meta.granularity, meta.epoch, partitions=meta.partitions)
        assert relay.relay([body(4)], [f"{meta.epoch}:{track.partition}:0"], 60_000) == 4
        assert len(track.buckets()) == 2
        lock = RunLock(track, "a", ttl=10, renew=False).acquire()
        assert lock.renew()
        track.acknowledge("a", lock.token, 4)
        pruned.append(track.prune(retention=3600))
        lock.release()
        assert not cluster_client.exists(lock.key)
    manager.record_run("a", started=0.0, changes=0, records=0, rejected=0, error=None)
    note_job(manager, "a:0", "job-1")

    # Then no script hit CROSSSLOT, each ran with keys of one slot, and each did its job
    assert pruned == [2] * PARTITIONS
    assert [track.pointer("a") for track in tracks] == [4] * PARTITIONS
    assert [list(track.iter_changes()) for track in tracks] == [[]] * PARTITIONS
    assert {name for name, _keys in cluster_client.script_calls} == set(SCRIPT_NAMES)
    for name, keys in cluster_client.script_calls:
        assert len({slot_of(key) for key in keys}) == 1, f"{name} touches several slots: {keys}"


def test_publisher_spreads_partitions_over_the_masters(
    redis_cluster: RedisClusterServers, cluster_namespace: str
) -> None:
    # Given publishers on the cluster URL, one of them waiting for a replica on every publish
    url = redis_cluster.url()
    pub = Publisher.from_url(url, cluster_namespace, partitions=PARTITIONS, granularity=60)
    waiting = Publisher.from_url(url, cluster_namespace, wait_replicas=1, wait_timeout=2.0)

    # When both publish single changes, batches over every partition, and units of work
    seqs = pub.emit_many([("event", number, ["created"]) for number in range(60)])
    seqs += waiting.emit_many([("event", number, ["title_changed"]) for number in range(60)])
    seqs.append(waiting.emit("event", 7, "moved"))
    with waiting.collect() as unit:
        unit.emit("contribution", "c-1", "created")
        unit.emit("contribution", "c-1", "deleted")
    pub.close()
    waiting.close()

    # Then each partition's head and changes sit on the master of its hash tag, and seqs are consecutive
    manager = SyncManager(redis_cluster.client(), cluster_namespace)
    heads = [track.head() for track in manager.tracks()]
    assert sum(heads) == len(seqs) + len(unit.seqs) == 123
    for track in manager.tracks():
        assert [change.seq for change in track.iter_changes()] == list(range(1, track.head() + 1))
        port = redis_cluster.master_of_slot(slot_of(track.keys.seq))
        with redis_cluster.node(port).client() as node:
            assert int(node.get(track.keys.seq) or 0) == track.head()
            assert node.execute_command("CLUSTER", "KEYSLOT", track.keys.seq) == slot_of(track.keys.seq)
    masters = {redis_cluster.master_of_slot(slot_of(track.keys.seq)) for track in manager.tracks()}
    assert len(masters) >= 2, f"6 partitions on {masters}"


def test_run_lock_fences_on_the_cluster(cluster_client: RecordingCluster, cluster_namespace: str) -> None:
    manager = SyncManager(cluster_client, cluster_namespace, partitions=PARTITIONS)
    for track in manager.tracks():
        track.add_pointer("a", 0)
        track.publish([body(1, 2)])
        # a held lock keeps a second runner out
        lock = RunLock(track, "a", ttl=5, renew=False).acquire()
        with pytest.raises(AgentBusy):
            RunLock(track, "a", ttl=5, renew=False).acquire()
        assert lock.renew()
        assert 4000 < cluster_client.pttl(lock.key) <= 5000
        # a lock that expired (or was taken over) neither renews nor acks
        cluster_client.delete(lock.key)
        assert not lock.renew()
        with pytest.raises(LockLost):
            lock.check()
        with pytest.raises(LockLost):
            track.acknowledge("a", lock.token, 1)
        assert track.pointer("a") == 0
        lock.release()


def test_manager_operations_on_the_cluster(
    redis_cluster: RedisClusterServers, cluster_client: RecordingCluster, cluster_namespace: str
) -> None:
    # Given 60 changes over 6 partitions and two agents
    pub = Publisher(cluster_client, cluster_namespace, partitions=PARTITIONS)
    pub.emit_many([("event", number, ["created"]) for number in range(60)])
    manager = SyncManager(cluster_client, cluster_namespace)
    heads = [track.head() for track in manager.tracks()]
    manager.add_agent(Agent(id="a", backend="null"), start="tail")
    manager.add_agent(Agent(id="b", backend="null", update_time=0), start="head")

    # When pointers are read, reset, advanced; agents paused, updated, run and removed
    assert manager.pointers("a") == [0] * PARTITIONS
    assert manager.pointers("b") == heads
    assert [agent.id for agent in manager.list_agents()] == ["a", "b"]
    assert manager.reset_agent("a", "head") == heads
    assert manager.reset_agent("b", "tail") == [0] * PARTITIONS
    manager.advance("b", 1, partition=5)
    assert manager.pointers("b")[5] == 1
    assert manager.set_state("a", "paused").state == "paused"
    assert manager.update_agent("a", description="x", state="active").description == "x"
    assert sum(len(list(manager.query("b", partition=p))) for p in range(PARTITIONS)) == 59
    manager.remove_agent("a")

    # Then nothing of agent a is left, anywhere
    assert [agent.id for agent in manager.list_agents()] == ["b"]
    leftovers = [key for keys in namespace_keys_on_nodes(redis_cluster, cluster_namespace).values() for key in keys]
    assert not [key for key in leftovers if key.endswith((":agent:a", ":lock:a", ":dlq:a"))]
    assert all("a" not in track.pointers() for track in manager.tracks())

    # And the three resets work across the masters
    manager.destroy(track_only=True)
    assert [track.head() for track in manager.tracks()] == heads
    assert manager.pointers("b") == heads
    assert all(track.size() == 0 for track in manager.tracks())
    manager.destroy(agents_only=True)
    assert manager.list_agents() == []
    manager.destroy()
    assert namespace_keys_on_nodes(redis_cluster, cluster_namespace) == {}


def test_runs_and_dead_letters_on_the_cluster(cluster_client: RecordingCluster, cluster_namespace: str) -> None:
    # Given 60 created objects over 6 partitions and an agent reading from the tail
    pub = Publisher(cluster_client, cluster_namespace, partitions=PARTITIONS)
    pub.emit_many([("event", number, ["created"]) for number in range(60)])
    manager = SyncManager(cluster_client, cluster_namespace)
    manager.add_agent(Agent(id="a", backend="null"), start="tail")

    # When each partition runs through a backend that rejects two objects, in windows of 5 and batches of 3
    backend = RejectingBackend({3, 4}, "no")
    results = [
        run_agent(manager, "a", p, backend=backend, batch_size=3, window=5, lock_ttl=5) for p in range(PARTITIONS)
    ]

    # Then every change became a record or a dead letter and every pointer is at its head
    assert sum(result.rejected for result in results) == 2
    assert sorted(record.id for record in backend.records) == [n for n in range(60) if n not in (3, 4)]
    assert manager.pointers("a") == [track.head() for track in manager.tracks()]
    assert deadletters.count(manager, "a") == 2
    assert sorted(entry["record"]["id"] for entry in deadletters.entries(manager, "a")) == [3, 4]
    assert deadletters.requeue(manager, "a", backend=RecordingBackend()) == {"requeued": 2, "rejected": 0}
    assert deadletters.count(manager, "a") == 0
    agent = manager.get_agent("a")
    assert (agent.runs, agent.failures, agent.records, agent.rejected) == (PARTITIONS, 0, 58, 2)


def write_changes(path: Path, count: int) -> Path:
    """A ``publish --file`` input: ``count`` events created."""
    path.write_text(
        "".join(json.dumps({"type": "event", "id": n, "changes": ["created"]}) + "\n" for n in range(count))
    )
    return path


def test_cli_on_the_cluster(
    redis_cluster: RedisClusterServers, cluster_processes: ClusterProcesses, cluster_namespace: str, tmp_path: Path
) -> None:
    target = tmp_path / "a.jsonl"
    changes = write_changes(tmp_path / "changes.jsonl", 30)

    run_ok(cluster_processes, "init", "--partitions", str(PARTITIONS))
    run_ok(cluster_processes, "agent", "add", "a", "--backend", "jsonl", "--option", f"path={target}",
           "--start", "tail")  # fmt: skip
    published = json.loads(run_ok(cluster_processes, "publish", "--file", str(changes), "--json"))
    assert published["published"] == 30 and len(published["partitions"]) >= 2
    listed = json.loads(run_ok(cluster_processes, "list", "--json"))
    assert sorted(change["id"] for change in listed) == list(range(30))
    pending = json.loads(run_ok(cluster_processes, "list", "--agent", "a", "--json"))
    assert len(pending) == 30

    status = json.loads(run_ok(cluster_processes, "status", "--json"))
    assert [p["head"] for p in status["partitions"]] == [
        int(published["partitions"].get(str(p), {"last_seq": 0})["last_seq"]) for p in range(PARTITIONS)
    ]
    assert status["agents"][0]["lag_changes"] == 30
    assert status["queue"]["name"] == f"q-{cluster_namespace}"

    enqueued = json.loads(run_ok(cluster_processes, "tick", "--json"))["enqueued"]
    assert len(enqueued) == len(published["partitions"])
    runs = json.loads(run_ok(cluster_processes, "agent", "run", "a", "--json"))
    assert sum(run["records"] for run in runs) == 30
    assert len(target.read_text().splitlines()) == 30
    heads = [p["head"] for p in status["partitions"]]
    assert f"pointer at {heads}" in run_ok(cluster_processes, "agent", "reset", "a", "--to", "tail")  # all pruned
    shown = json.loads(run_ok(cluster_processes, "agent", "show", "a", "--json"))
    assert (shown["runs"], shown["records"], shown["pointers"]) == (PARTITIONS, 30, heads)
    run_ok(cluster_processes, "agent", "pause", "a")
    run_ok(cluster_processes, "agent", "resume", "a")

    assert "deleted the track and agents" in run_ok(cluster_processes, "destroy", "--yes")
    assert namespace_keys_on_nodes(redis_cluster, cluster_namespace) == {}
    gone = cluster_processes.run("status")
    assert gone.returncode == 2 and "does not exist" in gone.stderr


def test_cluster_flag_selects_the_cluster_client(
    redis_cluster: RedisClusterServers, cluster_processes: ClusterProcesses, cluster_env: dict[str, str]
) -> None:
    # LIVESYNC_REDIS_CLUSTER=1 with a plain redis:// URL of one node: the cluster client follows the slots
    plain = cluster_env["LIVESYNC_REDIS_URL"].replace("redis+cluster://", "redis://")
    env = {"LIVESYNC_REDIS_URL": plain, "LIVESYNC_REDIS_CLUSTER": "1"}
    run_ok(cluster_processes, "init", "--partitions", str(PARTITIONS), env=env)
    published = json.loads(run_ok(cluster_processes, "publish", "event", "1", "created", "--json", env=env))
    assert published["published"] == 1
    status = json.loads(run_ok(cluster_processes, "status", "--json", env=env))
    assert sum(p["head"] for p in status["partitions"]) == 1
    run_ok(cluster_processes, "destroy", "--yes", env=env)


def test_cli_list_names_each_changes_partition(
    cluster_processes: ClusterProcesses, cluster_namespace: str, tmp_path: Path
) -> None:
    changes = write_changes(tmp_path / "changes.jsonl", 30)
    run_ok(cluster_processes, "init", "--partitions", str(PARTITIONS))
    run_ok(cluster_processes, "publish", "--file", str(changes))
    listed = json.loads(run_ok(cluster_processes, "list", "--json"))
    wrong = [c for c in listed if c["partition"] != partition_of(c["type"], c["id"], PARTITIONS)]
    assert not wrong, f"{len(wrong)} of {len(listed)} changes listed with the wrong partition, e.g. {wrong[:2]}"


def test_settings_refuse_a_cluster_without_a_plain_rq_redis(
    redis_cluster: RedisClusterServers, cluster_processes: ClusterProcesses, cluster_env: dict[str, str]
) -> None:
    url = redis_cluster.url()
    for kwargs in ({"redis_url": url}, {"redis_url": url.replace("+cluster", ""), "redis_cluster": True}):
        with pytest.raises(ValidationError, match="LIVESYNC_RQ_URL"):
            Settings(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="RQ does not support Redis Cluster"):
        Settings(redis_url=url, rq_url=url)
    assert Settings(redis_url=url, rq_url=cluster_env["LIVESYNC_RQ_URL"]).cluster

    # the CLI says so in one line and exits 2, for status and for a worker
    env = {key: value for key, value in cluster_env.items() if key != "LIVESYNC_RQ_URL"}
    cluster_processes.env = env
    for command in (["status"], ["worker", "--burst"]):
        done = cluster_processes.run(*command)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "LIVESYNC_RQ_URL" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_epochs_guard_partitions_on_every_master(cluster_client: RecordingCluster, cluster_namespace: str) -> None:
    # Given a publisher that cached the meta of a namespace of 6 partitions over 3 masters
    _ = SyncManager(cluster_client, cluster_namespace, partitions=PARTITIONS).meta
    publisher = Publisher(cluster_client, cluster_namespace)
    publisher.emit_many([("event", i, ["created"]) for i in range(30)])
    old = publisher.meta.epoch
    # When the namespace is destroyed and re-created with 2 partitions, then the publisher emits
    SyncManager(cluster_client, cluster_namespace).destroy()
    recreated = SyncManager(cluster_client, cluster_namespace, partitions=2)
    assert recreated.partitions == 2
    publisher.emit_many([("event", i, ["created"]) for i in range(30)])
    # Then its changes landed in the 2 partitions of the new creation, whose epoch is greater
    assert recreated.meta.epoch > old
    for track in recreated.tracks():
        assert all(partition_of("event", c.id, 2) == track.partition for c in track.values())
    assert sum(track.head() for track in recreated.tracks()) == 30
    # And once its meta is lost, managers refuse instead of re-creating it with defaults
    cluster_client.delete(recreated.keys.meta)
    with pytest.raises(NamespaceDamaged, match=r"\{" + cluster_namespace + r":\d\}:"):
        _ = SyncManager(cluster_client, cluster_namespace).meta
