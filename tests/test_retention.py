"""Retention (invariant 4, second half): old buckets go even unread, and who lost them is marked ``gap``.

Buckets are ``server time // granularity``. Rather than waiting for buckets to age, the
tests write the documented Redis layout by hand (DESIGN.md, "Redis layout"), with bucket
ids hours in the past: a member ``b"<seq>:<ts ms>:" + msgpack body`` scored by its first
seq in ``b:<bucket>``, the bucket id scored by its first seq in ``buckets``, the head in
``seq``. Retention is one hour; the "recent" bucket is two minutes old.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from support.backends import RecordingBackend

from livesync import Publisher, jobs
from livesync.changes import FLAG_BITS
from livesync.cli import main
from livesync.codec import encode_body
from livesync.config import Settings
from livesync.errors import AgentNotRunnable, ConfigurationError, LiveSyncError
from livesync.keys import PartitionKeys
from livesync.manager import Agent, SyncManager
from livesync.runner import run_agent
from livesync.status import agent_status
from livesync.track import Track

GRANULARITY = 60
RETENTION = 3600
CREATED = FLAG_BITS["created"]
NOW_BUCKET = int(time.time()) // GRANULARITY
#: Buckets 5 h and 2 h old (older than the retention) and one 2 min old (within it).
OLD, OLDER_THAN_RETENTION, RECENT = NOW_BUCKET - 300, NOW_BUCKET - 120, NOW_BUCKET - 2
#: Seqs stored in each bucket by :func:`stored`.
SEQS = {OLD: (1, 2, 3), OLDER_THAN_RETENTION: (4, 5, 6), RECENT: (7, 8, 9)}


@pytest.fixture
def retention_manager(real_redis: redis.Redis, namespace: str) -> SyncManager:
    return SyncManager(real_redis, namespace, granularity=GRANULARITY)


@pytest.fixture
def retention_keys(retention_manager: SyncManager) -> PartitionKeys:
    return retention_manager.keys.partition(0)


@pytest.fixture
def retention_track(retention_manager: SyncManager) -> Track:
    return retention_manager.track(0)


def write_bucket(redis_client: Any, keys: PartitionKeys, bucket: int, seqs: tuple[int, ...]) -> None:
    """Store events ``seqs`` (id = seq, created) as one member of ``bucket``, as publish would; raise the head.

    The namespace must exist (its meta): keys written without one make it a damaged namespace.
    """
    first = seqs[0]
    version = (bucket * GRANULARITY + 1) * 1_000_000  # server µs, one second into the bucket
    raw = f"{first}:{version}:".encode() + encode_body([("event", seq, CREATED) for seq in seqs])
    redis_client.zadd(keys.bucket(bucket), {raw: first})
    redis_client.zadd(keys.buckets, {str(bucket): first}, nx=True)
    redis_client.set(keys.seq, max(seqs[-1], int(redis_client.get(keys.seq) or 0)))


@pytest.fixture
def stored(retention_manager: SyncManager, retention_keys: PartitionKeys, real_redis: redis.Redis) -> SyncManager:
    """Seqs 1-3 in a 5 h old bucket, 4-6 in a 2 h old one, 7-9 in a 2 min old one; head 9."""
    assert retention_manager.granularity == GRANULARITY
    for bucket, seqs in SEQS.items():
        write_bucket(real_redis, retention_keys, bucket, seqs)
    return retention_manager


def add_agent(manager: SyncManager, agent_id: str, start: int | str) -> None:
    manager.add_agent(Agent(id=agent_id, backend="null", update_time=0), start=start)  # type: ignore[arg-type]


def bucket_ids(track: Track) -> list[int]:
    return [bucket for bucket, _first in track.buckets()]


def existing_bucket_keys(real_redis: redis.Redis, keys: PartitionKeys) -> list[int]:
    return [bucket for bucket in SEQS if real_redis.exists(keys.bucket(bucket))]


@pytest.fixture
def retention_settings(namespace: str, configure_jobs: Callable[..., Settings]) -> Settings:
    """Jobs configured with a one-hour retention and a queue of the test's own."""
    return configure_jobs(namespace, retention=RETENTION)


# What retention deletes


def test_retention_deletes_buckets_older_than_it_even_if_unread_and_keeps_newer_ones(
    stored: SyncManager, retention_track: Track, retention_keys: PartitionKeys, real_redis: redis.Redis
) -> None:
    # Given an agent that has read nothing
    add_agent(stored, "slow", 0)

    # When the track is pruned with a one-hour retention
    deleted = retention_track.prune(RETENTION)

    # Then the two buckets older than an hour are gone, keys and index, and the recent one stays
    assert deleted == 2
    assert bucket_ids(retention_track) == [RECENT]
    assert existing_bucket_keys(real_redis, retention_keys) == [RECENT]
    assert [change.seq for change in retention_track.values()] == [7, 8, 9]


def test_without_retention_unread_buckets_are_never_deleted(
    stored: SyncManager, retention_track: Track, retention_keys: PartitionKeys, real_redis: redis.Redis
) -> None:
    # Given hours-old buckets and an agent that has read nothing
    add_agent(stored, "slow", 0)

    # When the namespace is maintained without retention
    outcome = stored.maintain(None)

    # Then nothing is deleted and nobody has a gap
    assert outcome == {"pruned_buckets": 0, "rollbacks": [], "gaps": []}
    assert bucket_ids(retention_track) == [OLD, OLDER_THAN_RETENTION, RECENT]
    assert existing_bucket_keys(real_redis, retention_keys) == list(SEQS)
    assert retention_track.pruned_upto() == 0


def test_retention_without_any_agent_deletes_only_old_buckets(
    stored: SyncManager, retention_track: Track, retention_keys: PartitionKeys, real_redis: redis.Redis
) -> None:
    # Given hours-old buckets and no agent at all
    assert stored.list_agents() == []

    # When the namespace is maintained with a one-hour retention
    outcome = stored.maintain(RETENTION)

    # Then only the buckets older than an hour are gone; the recent bucket and the head stay
    assert outcome == {"pruned_buckets": 2, "rollbacks": [], "gaps": []}
    assert existing_bucket_keys(real_redis, retention_keys) == [RECENT]
    assert bucket_ids(retention_track) == [RECENT]
    assert retention_track.head() == 9


def test_pruned_upto_reports_the_highest_seq_deleted(stored: SyncManager, retention_track: Track) -> None:
    # Given nothing pruned yet
    add_agent(stored, "slow", 0)
    assert retention_track.pruned_upto() == 0

    # When retention deletes the buckets holding seqs 1-6
    retention_track.prune(RETENTION)

    # Then pruned_upto is the last seq of the newest deleted bucket
    assert retention_track.pruned_upto() == 6


# Who lost changes: gap


def test_maintain_marks_an_agent_below_pruned_upto_as_gap_and_leaves_others_alone(stored: SyncManager) -> None:
    # Given an agent that read nothing, one that read seqs 1-6 and one that read everything
    add_agent(stored, "slow", 0)
    add_agent(stored, "even", 6)
    add_agent(stored, "done", 9)

    # When the namespace is maintained with a one-hour retention
    outcome = stored.maintain(RETENTION)

    # Then only the agent that had not read the deleted changes is marked gap, saying which it lost
    assert outcome == {"pruned_buckets": 2, "rollbacks": [], "gaps": ["slow"]}
    slow = stored.get_agent("slow")
    assert slow.state == "gap"
    assert slow.last_error is not None
    assert "gap: changes 1..6 of partition 0 were pruned by retention" in slow.last_error
    for other in ("even", "done"):
        agent = stored.get_agent(other)
        assert (agent.state, agent.last_error) == ("active", None)


def test_tick_applies_the_configured_retention_and_reports_gaps(
    stored: SyncManager, retention_settings: Settings, namespace: str
) -> None:
    # Given an agent that read nothing and jobs configured with a one-hour retention
    add_agent(stored, "slow", 0)

    # When the tick job runs
    outcome = jobs.tick(namespace)

    # Then it pruned the old buckets and marked the agent gap
    assert (outcome["pruned_buckets"], outcome["gaps"]) == (2, ["slow"])
    assert stored.get_agent("slow").state == "gap"


def test_tick_does_not_enqueue_gap_agents(stored: SyncManager, retention_settings: Settings, namespace: str) -> None:
    # Given an agent that read nothing and one that read seqs 1-6, both with pending changes
    add_agent(stored, "slow", 0)
    add_agent(stored, "even", 6)

    # When the tick job prunes with retention and enqueues due agents
    outcome = jobs.tick(namespace)

    # Then only the agent without a gap got a run
    queue = jobs.make_queue(retention_settings)
    assert [queue.fetch_job(job_id).args[1] for job_id in outcome["enqueued"]] == ["even"]  # type: ignore[union-attr]


def test_run_of_a_gap_agent_is_refused_naming_the_gap_and_keeps_the_pointer(stored: SyncManager) -> None:
    # Given an agent marked gap by maintenance
    add_agent(stored, "slow", 0)
    stored.maintain(RETENTION)
    backend = RecordingBackend()

    # When it is run
    with pytest.raises(AgentNotRunnable, match=r"gap") as excinfo:
        run_agent(stored, "slow", backend=backend)

    # Then the message says what to do, nothing was uploaded and the pointer stayed
    assert "reset" in str(excinfo.value)
    assert backend.opened == 0
    assert stored.pointers("slow") == [0]


def test_run_notices_a_gap_maintenance_has_not_marked_yet(stored: SyncManager, retention_track: Track) -> None:
    # Given an agent that read nothing, and retention applied by a bare prune (no gap marking)
    add_agent(stored, "slow", 0)
    retention_track.prune(RETENTION)
    assert stored.get_agent("slow").state == "active"

    # When it is run
    with pytest.raises(AgentNotRunnable, match=r"changes 1\.\.6 of partition 0 were pruned"):
        run_agent(stored, "slow", backend=RecordingBackend())

    # Then it is marked gap with the reason as last error, and its pointer stayed
    agent = stored.get_agent("slow")
    assert agent.state == "gap"
    assert agent.last_error is not None and "changes 1..6" in agent.last_error
    assert stored.pointers("slow") == [0]


def test_status_shows_a_gap_agent(stored: SyncManager) -> None:
    # Given an agent marked gap
    add_agent(stored, "slow", 0)
    stored.maintain(RETENTION)

    # When its status is computed
    status = agent_status(stored, stored.get_agent("slow"))

    # Then it shows the gap state and why
    assert status["state"] == "gap"
    assert "pruned by retention" in status["last_error"]


def test_status_command_json_shows_a_gap_agent(
    stored: SyncManager, redis_url: str, namespace: str, real_redis: redis.Redis
) -> None:
    # Given an agent marked gap and one without
    add_agent(stored, "slow", 0)
    add_agent(stored, "done", 9)
    stored.maintain(RETENTION)

    # When `livesync status --json` runs
    env = {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": f"q-{namespace}"}
    result = CliRunner().invoke(main, ["status", "--json"], env=env)

    # Then each agent's state is reported
    assert result.exit_code == 0, result.output
    states = {agent["id"]: agent["state"] for agent in json.loads(result.stdout)["agents"]}
    assert states == {"done": "active", "slow": "gap"}


# Getting out of a gap


def test_reset_to_tail_clears_the_gap_and_the_agent_runs_what_is_still_stored(stored: SyncManager) -> None:
    # Given an agent marked gap after seqs 1-6 were pruned
    add_agent(stored, "slow", 0)
    stored.maintain(RETENTION)

    # When it is reset to the tail and run
    assert stored.reset_agent("slow", "tail") == [6]
    assert stored.get_agent("slow").state == "active"
    backend = RecordingBackend()
    result = run_agent(stored, "slow", backend=backend)

    # Then it delivers exactly what is still stored
    assert [record.id for record in backend.records] == [7, 8, 9]
    assert result.pointer_after == 9


def test_reset_to_a_seq_below_pruned_upto_is_refused(stored: SyncManager) -> None:
    # Given an agent marked gap after seqs 1-6 were pruned
    add_agent(stored, "slow", 0)
    stored.maintain(RETENTION)

    # When it is reset to seq 3, which is no longer stored
    with pytest.raises(ConfigurationError, match=r"seqs up to 6 are no longer stored"):
        stored.reset_agent("slow", 3)

    # Then its pointer and gap state stay
    assert stored.pointers("slow") == [0]
    assert stored.get_agent("slow").state == "gap"


def test_reset_to_pruned_upto_itself_is_accepted(stored: SyncManager) -> None:
    # Given an agent marked gap after seqs 1-6 were pruned
    add_agent(stored, "slow", 0)
    stored.maintain(RETENTION)

    # When it is reset to seq 6, the last one pruned
    stored.reset_agent("slow", 6)

    # Then it is active again at 6 and reads from 7 on
    assert stored.pointers("slow") == [6]
    assert stored.get_agent("slow").state == "active"
    assert [change.seq for change in stored.query("slow")] == [7, 8, 9]


def test_add_agent_starting_below_pruned_upto_is_refused(stored: SyncManager, retention_track: Track) -> None:
    # Given seqs 1-6 pruned by retention
    retention_track.prune(RETENTION)

    # When an agent is added at seq 2
    with pytest.raises(ConfigurationError, match=r"seqs up to 6 are no longer stored"):
        add_agent(stored, "late", 2)

    # Then it was not registered
    assert stored.list_agents() == []


def test_run_with_retention_also_prunes_what_retention_allows(stored: SyncManager, retention_track: Track) -> None:
    # Given an agent at the head and another that read nothing
    add_agent(stored, "done", 9)
    add_agent(stored, "slow", 0)

    # When the up-to-date agent runs with a one-hour retention
    result = run_agent(stored, "done", retention=RETENTION, backend=RecordingBackend())

    # Then its run pruned the old buckets the slow agent had not read, and kept the recent one
    assert result.pruned_buckets == 2
    assert bucket_ids(retention_track) == [RECENT]
    assert retention_track.pruned_upto() == 6
    assert stored.gap_message("slow") is not None


def test_run_without_retention_keeps_what_another_agent_has_not_read(
    stored: SyncManager, retention_track: Track
) -> None:
    # Given an agent at the head and another that read nothing
    add_agent(stored, "done", 9)
    add_agent(stored, "slow", 0)

    # When the up-to-date agent runs without retention
    result = run_agent(stored, "done", backend=RecordingBackend())

    # Then nothing was pruned
    assert result.pruned_buckets == 0
    assert bucket_ids(retention_track) == [OLD, OLDER_THAN_RETENTION, RECENT]


# Retention racing a run


def test_retention_pruning_ahead_of_a_running_agent_marks_it_gap(
    stored: SyncManager, real_redis: redis.Redis, namespace: str
) -> None:
    # Given an agent that read nothing, and an up-to-date agent whose run prunes with retention
    add_agent(stored, "slow", 0)
    add_agent(stored, "done", 9)
    Publisher(real_redis, namespace).emit("event", 10, "created")
    other = SyncManager(real_redis, namespace)
    pruned_meanwhile: list[int] = []

    def other_agent_runs(_batch: object) -> None:
        if not pruned_meanwhile:
            pruned_meanwhile.append(
                run_agent(other, "done", retention=RETENTION, backend=RecordingBackend()).pruned_buckets
            )

    backend = RecordingBackend(before_upload=other_agent_runs)

    # When the slow agent runs in windows of 3 and, during its first upload, the other run prunes seqs 1-6
    with contextlib.suppress(LiveSyncError):  # refusing to go on would be a fine outcome too
        run_agent(stored, "slow", window=3, batch_size=3, backend=backend)
    assert pruned_meanwhile == [2]

    # Then the slow agent, which never read seqs 4-6, ends up marked gap
    # (today it delivers 1-3 and 7-10, acks 10 and stays active: 4-6 are lost silently)
    stored.maintain(RETENTION)
    assert 4 not in [record.id for record in backend.records]
    assert stored.get_agent("slow").state == "gap"


def test_gap_marked_during_a_run_keeps_its_reason(stored: SyncManager, real_redis: redis.Redis, namespace: str) -> None:
    # Given an agent that read nothing
    add_agent(stored, "slow", 0)
    other = SyncManager(real_redis, namespace)
    marked: list[list[str]] = []

    def tick_meanwhile(_batch: object) -> None:
        if not marked:
            marked.append(other.maintain(RETENTION)["gaps"])

    # When a tick's maintenance prunes with retention during the agent's first upload
    with pytest.raises(AgentNotRunnable, match="gap"):
        run_agent(stored, "slow", window=3, batch_size=3, backend=RecordingBackend(before_upload=tick_meanwhile))
    assert marked == [["slow"]]

    # Then the run stopped at the hole, the agent is gap and its last error still says why
    agent = stored.get_agent("slow")
    assert agent.state == "gap"
    assert agent.last_error is not None and "pruned by retention" in agent.last_error
