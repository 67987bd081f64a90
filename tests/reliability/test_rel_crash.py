"""A worker killed at any point of a run loses nothing; only the window in flight is sent again (invariant 2).

Real processes, real signals: a forking ``livesync worker`` runs a jsonl agent whose
backend holds once at a known point (``support.held_backend``); the test SIGKILLs
the worker and then its work horse (RQ forks one per job, in its own process group),
like a host that dies. The run lock (``LIVESYNC_LOCK_TTL=2``) expires and a new run
resumes from the pointer. The target is compared with a replay of what was published
(``reliability.checker``), and every record the target got twice must belong to the
window that was in flight at the kill.

The workload is 3 rounds of one change per object over 100 objects; with windows of
100 changes and batches of 20, every window is 100 records in 5 batches. The hold is
in the second window, so window 1 (seqs 1-100) was acknowledged before the kill and
must not be sent again.

Two more tests pin how a run that did not finish gets resumed without an operator: by
the scheduler and a second worker after a kill, and by RQ's retry after a failed upload
(``livesync worker`` runs RQ's scheduler, which puts retries back on the queue).
"""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import redis
from reliability.checker import check, load_published, load_records
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from support.held_backend import publish_rounds, release, wait_held
from support.processes import Proc, Processes
from support.servers import RedisServer
from support.waiting import wait_for

from livesync import Publisher
from livesync.manager import SyncManager

OBJECTS = 100
ROUNDS = 3
WINDOW = 100
BATCH = 20
LOCK_TTL = 2
HELD = "support.held_backend:HeldBackend"
#: Longest the test waits for a process to get somewhere.
WAIT = 20.0

# (hold_at, hold_batch, records delivered of window 2 before the kill)
CRASH_POINTS = {
    "before_first": ("before_first", 6, 0),  # upload 6 = first batch of window 2, nothing of it written
    "between": ("between", 6, BATCH),  # batch 6 delivered, batch 7 not
    "after_last": ("after_last", 10, WINDOW),  # upload 10 = last batch of window 2, written, not acked
}


def pointer(client: redis.Redis, namespace: str) -> int:
    return SyncManager(client, namespace).pointers("A")[0]


def lock_key(client: redis.Redis, namespace: str) -> str:
    return SyncManager(client, namespace).track(0).keys.lock("A")


def gone(pid: int) -> bool:
    """Whether ``pid`` is dead (a zombie counts: nobody may reap an orphaned horse at once)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def crash(worker: Proc, horse_pid: int) -> None:
    """SIGKILL the worker (its process group: RQ's scheduler too), then its horse: a host crash.

    Nobody is left to report the job. The horse runs in a process group of its own.
    """
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(10)
    os.kill(horse_pid, signal.SIGKILL)
    wait_for(lambda: gone(horse_pid), 10, f"work horse {horse_pid} to die")


def start_held_run(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path, hold_at: str, hold_batch: int
) -> tuple[Proc, int, str, Path, Path]:
    """Publish the backlog, add the held agent, start worker 1 and enqueue its run; wait for the hold.

    Returns worker 1, the pid of the horse holding, the run's job id, the published log
    and the target.
    """
    processes.env.update(
        {
            "LIVESYNC_REDIS_URL": redis_server.url,
            "LIVESYNC_LOCK_TTL": str(LOCK_TTL),
            "LIVESYNC_WINDOW": str(WINDOW),
            "LIVESYNC_BATCH_SIZE": str(BATCH),
            "LIVESYNC_TICK_INTERVAL": "1",
        }
    )
    worker = processes.livesync("worker1", "worker", "--name", f"w1-{namespace}")  # starts while we publish
    published, target, hold_dir = tmp_path / "published.jsonl", tmp_path / "target.jsonl", tmp_path / "hold"
    head = publish_rounds(Publisher.from_url(redis_server.url, namespace), published, objects=OBJECTS, rounds=ROUNDS)
    assert head == OBJECTS * ROUNDS
    added = processes.run(
        "agent", "add", "A", "--backend", HELD, "--option", f"path={target}", "--option", f"hold_dir={hold_dir}",
        "--option", f"hold_at={hold_at}", "--option", f"hold_batch={hold_batch}", "--update-time", "0",
        "--start", "tail",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    ticked = processes.run("tick", "--json")
    assert ticked.returncode == 0, ticked.stderr
    [job_id] = json.loads(ticked.stdout)["enqueued"]
    try:
        horse_pid = wait_held(hold_dir, WAIT)
    except AssertionError:
        pytest.fail(f"worker 1 never held; its log:\n{worker.output()}")
    assert horse_pid != worker.pid, "the run must be in a forked work horse"
    return worker, horse_pid, job_id, published, target


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_worker_killed_mid_run_loses_nothing_and_resends_only_the_window_in_flight(
    point: str, redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given worker 1 holding at the crash point in window 2 (window 1 acknowledged)
    hold_at, hold_batch, delivered_in_flight = CRASH_POINTS[point]
    worker, horse_pid, _job_id, published, target = start_held_run(
        redis_server, processes, namespace, tmp_path, hold_at, hold_batch
    )
    client = redis_server.client()

    # When the worker and its horse are SIGKILLed, the lock expires and the agent runs again
    crash(worker, horse_pid)
    pointer_at_kill = pointer(client, namespace)
    key = lock_key(client, namespace)
    wait_for(lambda: not client.exists(key), LOCK_TTL + 3, "the dead runner's lock to expire")
    takeover = processes.run("agent", "run", "A", timeout=WAIT)

    # Then everything published reached the target, and nothing but the window in flight came twice
    assert takeover.returncode == 0, takeover.stdout + takeover.stderr
    assert pointer_at_kill == WINDOW
    assert pointer(client, namespace) == OBJECTS * ROUNDS
    records = load_records(target)
    report = check(load_published([published]), records)
    assert report.ok, report.summary() + "\n" + "\n".join(report.problems[:10])
    print(f"crash {hold_at} (batch {hold_batch}): {report.summary()}")
    copies = Counter((record["type"], record["id"], record["seq"]) for record in records)
    resent = sorted(seq for (_type, _id, seq), count in copies.items() for _ in range(count - 1))
    assert all(pointer_at_kill < seq <= pointer_at_kill + WINDOW for seq in resent), resent
    assert len(resent) == report.duplicates == delivered_in_flight
    assert len(records) == OBJECTS * ROUNDS + delivered_in_flight


def test_scheduler_and_a_second_worker_resume_a_killed_run_after_the_lock_ttl(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given worker 1 holding between two batches, with the scheduler ticking every second
    worker, horse_pid, job_id, published, target = start_held_run(
        redis_server, processes, namespace, tmp_path, "between", 6
    )
    processes.livesync("scheduler", "scheduler")
    client = redis_server.client()

    # When worker 1 and its horse are SIGKILLed and worker 2 starts
    crash(worker, horse_pid)
    processes.livesync("worker2", "worker", "--name", f"w2-{namespace}")
    key = lock_key(client, namespace)
    wait_for(lambda: not client.exists(key), LOCK_TTL + 3, "the dead runner's lock to expire")

    # Then within a few ticks worker 2 delivers everything (it does not: the killed job is still 'started')
    status = Job.fetch(job_id, connection=client, serializer=JSONSerializer).get_status()
    assert status == JobStatus.STARTED  # what RQ believes of the killed run
    wait_for(lambda: pointer(client, namespace) == OBJECTS * ROUNDS, 4, "worker 2 to resume the run")
    report = check(load_published([published]), load_records(target))
    assert report.ok, report.summary()


def test_a_run_whose_upload_failed_is_retried_by_rq_and_delivers_everything(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given worker 1 holding between batches 6 and 7 (window 1 acknowledged), RQ retrying after 1 s
    processes.env.update({"LIVESYNC_RETRY_MAX": "2", "LIVESYNC_RETRY_INTERVALS": "[1]"})
    _worker, _horse_pid, job_id, published, target = start_held_run(
        redis_server, processes, namespace, tmp_path, "between", 6
    )
    client = redis_server.client()

    # When upload 7 fails (the target is down for a moment)
    release(tmp_path / "hold", fail=True)
    job = Job.fetch(job_id, connection=client, serializer=JSONSerializer)
    wait_for(lambda: job.get_status(refresh=True) != JobStatus.STARTED, WAIT, "the failed run to end")

    # Then the pointer stayed at window 1, and RQ's retry of the same job delivers everything, no operator needed
    assert job.get_status() == JobStatus.SCHEDULED  # its retry is due in 1 s
    assert pointer(client, namespace) == WINDOW
    assert "HeldUploadFailed" in (SyncManager(client, namespace).get_agent("A").last_error or "")
    wait_for(lambda: pointer(client, namespace) == OBJECTS * ROUNDS, 8, "the retry to deliver everything")
    wait_for(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, WAIT, "the retried job to finish")
    job.refresh()
    assert job.retries_left == 1
    report = check(load_published([published]), load_records(target))
    assert report.ok, report.summary()
    assert report.duplicates == BATCH  # batch 6, delivered before the failure and again by the retry
