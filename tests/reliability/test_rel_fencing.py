"""A runner that stalls past its lock TTL cannot move the pointer when it wakes (invariant 3).

Real processes, real signals: a forking ``livesync worker`` runs a jsonl agent whose
backend holds after writing a batch of window 2 (window 1 acknowledged). The test
SIGSTOPs the work horse, which stops the lock's renewal thread too, waits until the
lock key expires (``LIVESYNC_LOCK_TTL=2``), runs the agent from another process
(``livesync agent run``: it takes the lock, delivers and acknowledges up to the head),
then SIGCONTs the horse and releases the hold. The stalled run must fail with
``LockLost``, say so in the job and in the agent's ``last_error``, and leave the pointer
where the second runner put it. Both fences are pinned:

- ``check``: the hold is after batch 7 of 10; the test SIGCONTs the horse and releases
  the hold only once the renewal thread logged the lost lock, so the run stops at its
  next ``lock.check()``;
- ``ack``: the hold is after the window's last batch (10). The test releases the hold
  and pauses Redis writes (``CLIENT PAUSE ... WRITE``: a slow or stalled Redis) before
  the SIGCONT, so the renewal cannot answer before the run passes its last
  ``lock.check()``; it waits until both the renewal and the ack of seq 200 (behind the
  pointer, 300) are blocked, then unpauses: the ack script must refuse the token.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import redis
from reliability.checker import check, load_published, load_records
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from support.held_backend import publish_rounds, release, wait_held
from support.processes import Processes
from support.servers import RedisServer
from support.waiting import wait_for

from livesync import Publisher
from livesync.manager import SyncManager

OBJECTS = 100
ROUNDS = 3
WINDOW = 100
BATCH = 20
LOCK_TTL = 2
LOST = "was lost (expired or taken over); stopping without moving the pointer"  # lock.check()
REFUSED = f"is no longer held by this runner; pointer of 'A' not moved to {2 * WINDOW}"  # the ack script
# fence -> (upload after which the run holds, the stalled run's error, duplicates at the target)
FENCES = {
    "check": (7, LOST, 2 * BATCH),
    "ack": (10, REFUSED, WINDOW),
}
HELD = "support.held_backend:HeldBackend"
WAIT = 20.0


def blocked_scripts(client: redis.Redis) -> int:
    """How many clients wait to run a Lua script (held by ``CLIENT PAUSE WRITE``)."""
    return sum(1 for entry in client.client_list() if "b" in entry["flags"] and entry["cmd"] == "evalsha")


@pytest.mark.parametrize("fence", list(FENCES))
def test_runner_stalled_past_its_lock_ttl_cannot_move_the_pointer_after_a_takeover(
    fence: str, redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given worker 1 holding in window 2 of a held jsonl agent (window 1 acknowledged), no RQ retries
    hold_batch, error, duplicates = FENCES[fence]
    processes.env.update(
        {
            "LIVESYNC_REDIS_URL": redis_server.url,
            "LIVESYNC_LOCK_TTL": str(LOCK_TTL),
            "LIVESYNC_WINDOW": str(WINDOW),
            "LIVESYNC_BATCH_SIZE": str(BATCH),
            "LIVESYNC_RETRY_MAX": "0",
        }
    )
    worker = processes.livesync("worker1", "worker", "--name", f"w1-{namespace}")  # starts while we publish
    published, target, hold_dir = tmp_path / "published.jsonl", tmp_path / "target.jsonl", tmp_path / "hold"
    client = redis_server.client()
    manager = SyncManager(client, namespace)
    head = publish_rounds(Publisher.from_url(redis_server.url, namespace), published, objects=OBJECTS, rounds=ROUNDS)
    added = processes.run(
        "agent", "add", "A", "--backend", HELD, "--option", f"path={target}", "--option", f"hold_dir={hold_dir}",
        "--option", "hold_at=after_last", "--option", f"hold_batch={hold_batch}", "--update-time", "0",
        "--start", "tail",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    ticked = processes.run("tick", "--json")
    assert ticked.returncode == 0, ticked.stderr
    [job_id] = json.loads(ticked.stdout)["enqueued"]
    horse_pid = wait_held(hold_dir, WAIT)
    assert manager.pointers("A") == [WINDOW]

    # When its horse is SIGSTOPped until the lock expires, another process runs the agent, and the horse goes on
    lock_key = manager.track(0).keys.lock("A")
    assert client.exists(lock_key)
    os.kill(horse_pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not client.exists(lock_key), LOCK_TTL + 3, "the stalled runner's lock to expire")
        takeover = processes.run("agent", "run", "A", timeout=WAIT)
        assert takeover.returncode == 0, takeover.stdout + takeover.stderr
        assert manager.pointers("A") == [head]
        if fence == "ack":
            release(hold_dir)
            client.execute_command("CLIENT", "PAUSE", 5000, "WRITE")
    finally:
        os.kill(horse_pid, signal.SIGCONT)
    if fence == "check":
        wait_for(lambda: "lost; the run will stop" in worker.output(), 10, "the stalled runner to notice its lost lock")
        release(hold_dir)
    else:
        try:
            wait_for(lambda: blocked_scripts(client) >= 2, 4, "the stalled run's renewal and ack to wait for Redis")
        finally:
            client.execute_command("CLIENT", "UNPAUSE")

    # Then the stalled run failed with LockLost, said so, and the pointer stayed where the second runner put it
    job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
    wait_for(lambda: job.get_status(refresh=True) in (JobStatus.FAILED, JobStatus.FINISHED), WAIT, "job 1 to end")
    assert job.get_status() == JobStatus.FAILED
    result = job.latest_result()
    assert result is not None and result.exc_string is not None
    assert f"LockLost: lock {lock_key} {error}" in result.exc_string, result.exc_string
    assert manager.get_agent("A").last_error == f"LockLost: lock {lock_key} {error}"
    assert manager.pointers("A") == [head]
    assert client.get(lock_key) is None
    report = check(load_published([published]), load_records(target))
    assert report.ok, report.summary() + "\n" + "\n".join(report.problems[:10])
    assert report.duplicates == duplicates  # window 2's batches the stalled run wrote, sent again by the takeover
