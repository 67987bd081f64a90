"""A worker that dies between RQ's dequeue and the job's start must not stall its agent.

RQ's dequeue moves a job id from the queue into the queue's intermediate list
(``BLMOVE``); only then does the worker mark the job started and fork its horse. A host
that dies in between leaves the job there, still marked ``queued``, in no queue. RQ
fails such a job only in its maintenance (every 10 minutes per worker, and only once the
job was seen there a minute before). Had the tick counted such a ``queued`` run job as standing
(``jobs._active``), it would enqueue no run of that (agent, partition) meanwhile: its
changes would wait for minutes although every worker is idle.

Found by ``test_rel_targets`` (SIGKILLed workers): an idle worker killed at the moment it
dequeued a run. This test makes that moment exact: it enqueues a run with ``livesync
tick``, moves the job into the intermediate list as a dequeuing worker does, and (the
worker gone) starts a worker and a scheduler. It failed until the tick treated a queued
job that is in no queue like a started one (standing only while the run lock lives).
"""

from __future__ import annotations

from pathlib import Path

from rq import Queue
from support.processes import Processes
from support.servers import RedisServer
from support.waiting import holds_within

from livesync.manager import SyncManager

#: Ticks every second, run locks of 2 s: a run stands again within a few seconds of a crash.
ENV = {"LIVESYNC_TICK_INTERVAL": "1", "LIVESYNC_LOCK_TTL": "2"}
WAIT = 10.0


def test_a_run_job_lost_between_dequeue_and_start_is_enqueued_again_within_a_few_ticks(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given an agent with a change pending and its run enqueued by a tick
    processes.env.update({"LIVESYNC_REDIS_URL": redis_server.url, **ENV})
    for args in (
        ("agent", "add", "A", "--backend", "null", "--update-time", "0", "--start", "tail"),
        ("publish", "event", "1", "created"),
        ("tick",),
    ):
        done = processes.run(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    client = redis_server.client()
    queue = Queue(processes.env["LIVESYNC_QUEUE"], connection=client)
    [job_id] = queue.job_ids

    # When a worker dequeues it (BLMOVE into the intermediate list) and dies before starting it
    assert client.lmove(queue.key, queue.intermediate_queue_key) == job_id.encode()
    processes.livesync("worker", "worker")
    processes.livesync("scheduler", "scheduler")

    # Then within a few ticks a run delivers the change
    manager = SyncManager(client, namespace)
    delivered = holds_within(lambda: manager.pointers("A") == [manager.track(0).head()], WAIT, interval=0.1)
    job = queue.fetch_job(job_id)
    assert delivered, f"no run within {WAIT}s; job {job_id} is {job.get_status() if job else 'gone'}"
