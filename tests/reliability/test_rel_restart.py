"""Redis crashes and restarts: nothing published or acknowledged is lost, and errors say where (invariants 1, 2).

Every test runs a private redis-server with AOF fsynced on every write and crashes it
with SIGKILL (``RedisServer.kill`` / ``restart(crash=True)``), then starts it again on
the same data. Publishers, runs and workers are real processes. What a target got is
compared with a replay of what was published (``reliability.checker``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability.checker import check, load_published, load_records
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from support.held_backend import publish_rounds, release, wait_held
from support.processes import Processes
from support.servers import RedisServer, free_port
from support.waiting import wait_for

from livesync import Publisher
from livesync.manager import SyncManager

OBJECTS = 100
ROUNDS = 3
WINDOW = 100
BATCH = 20
LOCK_TTL = 2
HELD = "support.held_backend:HeldBackend"
PASSWORD = "s3cret"
WAIT = 20.0


class PasswordRedisServer(RedisServer):
    """A private redis-server that wants a password; ``url`` carries it."""

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    @property
    def masked_url(self) -> str:
        return f"redis://:***@127.0.0.1:{self.port}/0"


@pytest.fixture
def password_server(tmp_path: Path) -> Iterator[PasswordRedisServer]:
    """A private AOF redis-server with ``--requirepass``, stopped afterwards."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PasswordRedisServer(directory, free_port(), extra=["--requirepass", PASSWORD])
    server.start()
    yield server
    server.stop()


def use(processes: Processes, server: RedisServer) -> SyncManager:
    """Point the test's processes at ``server`` (windows of 100, batches of 20); return a manager on it."""
    processes.env.update(
        {
            "LIVESYNC_REDIS_URL": server.url,
            "LIVESYNC_LOCK_TTL": str(LOCK_TTL),
            "LIVESYNC_WINDOW": str(WINDOW),
            "LIVESYNC_BATCH_SIZE": str(BATCH),
            "LIVESYNC_TICK_INTERVAL": "1",
        }
    )
    return SyncManager(server.client(), processes.env["LIVESYNC_NAMESPACE"])


def add_agent(processes: Processes, target: Path, *options: str) -> None:
    backend = HELD if options else "jsonl"
    extra = [arg for option in options for arg in ("--option", option)]
    added = processes.run(
        "agent", "add", "A", "--backend", backend, "--option", f"path={target}", *extra, "--update-time", "0",
        "--start", "tail",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr


def assert_delivered(published: Path, target: Path) -> int:
    """The target matches the replay of everything published; return the duplicates."""
    report = check(load_published([published]), load_records(target))
    assert report.ok, report.summary() + "\n" + "\n".join(report.problems[:10])
    return report.duplicates


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# a. restart between publishing and running


def test_changes_published_before_a_redis_crash_are_all_delivered_after_the_restart(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given an agent and 300 published changes
    manager = use(processes, redis_server)
    published, target = tmp_path / "published.jsonl", tmp_path / "target.jsonl"
    add_agent(processes, target)
    head = publish_rounds(Publisher.from_url(redis_server.url, namespace), published, objects=OBJECTS, rounds=ROUNDS)

    # When Redis is SIGKILLed and started again on its data, then the agent runs
    redis_server.restart(crash=True)
    run = processes.run("agent", "run", "A", timeout=WAIT)

    # Then every published change was still there and reached the target
    assert run.returncode == 0, run.stdout + run.stderr
    assert manager.track(0).head() == head
    assert manager.pointers("A") == [head]
    assert assert_delivered(published, target) == 0


# b. restart during a run


def test_redis_crash_during_a_run_keeps_every_acknowledged_window_and_the_next_run_delivers_the_rest(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given `agent run` holding after batch 7 (window 2; window 1 acknowledged)
    manager = use(processes, redis_server)
    published, target, hold_dir = tmp_path / "published.jsonl", tmp_path / "target.jsonl", tmp_path / "hold"
    head = publish_rounds(Publisher.from_url(redis_server.url, namespace), published, objects=OBJECTS, rounds=ROUNDS)
    add_agent(processes, target, f"hold_dir={hold_dir}", "hold_at=between", "hold_batch=7")
    first = processes.livesync("run1", "agent", "run", "A")
    wait_held(hold_dir, WAIT)
    acknowledged = manager.pointers("A")[0]

    # When Redis is SIGKILLed, the run goes on, and Redis is started again
    redis_server.kill()
    release(hold_dir)
    assert first.wait(WAIT) == 1, first.output()
    redis_server.start()

    # Then the run failed with the pointer at its last ack, and the next run delivers everything
    assert acknowledged == WINDOW
    assert lines(first.output())[-1].startswith(f"Error: lost the connection to {redis_server.url}"), first.output()
    assert manager.pointers("A") == [acknowledged]
    lock_key = manager.track(0).keys.lock("A")
    wait_for(lambda: not manager.redis.exists(lock_key), LOCK_TTL + 3, "the failed run's lock to expire")
    second = processes.run("agent", "run", "A", timeout=WAIT)
    assert second.returncode == 0, second.stdout + second.stderr
    assert manager.pointers("A") == [head]
    assert assert_delivered(published, target) == WINDOW  # window 2 was uploaded whole, then its ack failed


def test_agent_run_reports_a_redis_crash_in_one_line_naming_the_masked_url(
    password_server: PasswordRedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given `agent run` holding in window 2 (window 1 acknowledged by this run), on a Redis with a password
    manager = use(processes, password_server)
    published, target, hold_dir = tmp_path / "published.jsonl", tmp_path / "target.jsonl", tmp_path / "hold"
    publish_rounds(Publisher.from_url(password_server.url, namespace), published, objects=OBJECTS, rounds=2)
    add_agent(processes, target, f"hold_dir={hold_dir}", "hold_at=before_first", "hold_batch=6")
    run = processes.livesync("run", "agent", "run", "A")
    wait_held(hold_dir, WAIT)
    assert manager.pointers("A") == [WINDOW]

    # When Redis is SIGKILLed while the run goes on
    password_server.kill()
    release(hold_dir)

    # Then the run exits 1 with one line naming the masked URL, no traceback, no password, no false claim
    assert run.wait(WAIT) == 1
    output = run.output()
    assert PASSWORD not in output
    assert "Traceback" not in output, output
    assert len(lines(output)) == 1, output
    assert password_server.masked_url in output, output
    assert "pointer unchanged" not in output, output


def test_scheduler_and_a_new_worker_resume_a_run_that_a_redis_crash_interrupted(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given worker 1 holding after batch 7 (window 2; window 1 acknowledged)
    manager = use(processes, redis_server)
    worker = processes.livesync("worker1", "worker", "--name", f"w1-{namespace}")  # starts while we publish
    published, target, hold_dir = tmp_path / "published.jsonl", tmp_path / "target.jsonl", tmp_path / "hold"
    head = publish_rounds(Publisher.from_url(redis_server.url, namespace), published, objects=OBJECTS, rounds=ROUNDS)
    add_agent(processes, target, f"hold_dir={hold_dir}", "hold_at=between", "hold_batch=7")
    ticked = processes.run("tick", "--json")
    assert ticked.returncode == 0, ticked.stderr
    [job_id] = json.loads(ticked.stdout)["enqueued"]
    wait_held(hold_dir, WAIT)

    # When Redis is SIGKILLed, the run goes on, Redis starts again, and a scheduler and worker 2 start
    redis_server.kill()
    release(hold_dir)
    wait_for(lambda: not worker.alive(), WAIT, "worker 1 to give up on the lost Redis")
    redis_server.start()
    processes.livesync("scheduler", "scheduler")
    processes.livesync("worker2", "worker", "--name", f"w2-{namespace}")

    # Then within a few ticks everything is delivered (it is not: the interrupted job is still 'started')
    job = Job.fetch(job_id, connection=manager.redis, serializer=JSONSerializer)
    assert job.get_status() == JobStatus.STARTED
    wait_for(lambda: manager.pointers("A") == [head], LOCK_TTL + 3, "a run to resume after the restart")
    assert_delivered(published, target)


# c. publishers


def test_publish_while_redis_is_down_fails_in_one_line_naming_the_masked_url(
    password_server: PasswordRedisServer, processes: Processes
) -> None:
    # Given a namespace with one change
    manager = use(processes, password_server)
    assert processes.run("publish", "event", "1", "created").returncode == 0
    head = manager.track(0).head()

    # When `livesync publish` runs while Redis is down
    password_server.kill()
    down = processes.run("publish", "event", "2", "created")
    password_server.start()

    # Then it exits 1 with one line naming the masked URL, and nothing was stored
    output = down.stdout + down.stderr
    assert down.returncode == 1, output
    assert lines(output) == [line for line in lines(output) if line.startswith("Error: ")] and len(lines(output)) == 1
    assert f"cannot reach Redis at {password_server.masked_url}" in output, output
    assert PASSWORD not in output and "Traceback" not in output
    assert manager.track(0).head() == head


PUBLISHER = """
import sys, time
from pathlib import Path
from livesync import Publisher, RedisUnavailable
from reliability.checker import log_published

url, namespace, retries, workdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
publisher = Publisher.from_url(url, namespace, retries=retries, retry_backoff=0.2)
publisher.meta  # connected and the namespace read: the crash comes after this
(workdir / "ready").touch()
deadline = time.monotonic() + 20
while not (workdir / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("nobody said go")
    time.sleep(0.01)
items = [("event", n, ["created", "title_changed"]) for n in range(60)]
items += [("contribution", f"c-{n}", ["data_changed"]) for n in range(40)]
started = time.monotonic()
try:
    seqs = publisher.emit_many(items)
except RedisUnavailable as exc:
    print(f"RedisUnavailable after {time.monotonic() - started:.2f}s: {exc}")
    sys.exit(3)
log_published(workdir / "published.jsonl", [(0, seq) for seq in seqs], items)
print(f"published {len(seqs)} after {time.monotonic() - started:.2f}s")
"""


def publish_across_a_restart(
    server: PasswordRedisServer, processes: Processes, namespace: str, workdir: Path, retries: int
) -> tuple[int, str]:
    """Run ``emit_many`` of 100 changes in a subprocess while Redis is down; start Redis ~0.5 s later.

    Returns the subprocess's exit code and output.
    """
    workdir.mkdir()
    publisher = processes.start(
        f"publisher-{retries}", [sys.executable, "-c", PUBLISHER, server.url, namespace, str(retries), str(workdir)]
    )
    wait_for(lambda: (workdir / "ready").exists() or not publisher.alive(), WAIT, "the publisher to connect")
    server.kill()
    (workdir / "go").touch()
    time.sleep(0.5)
    server.start()
    return publisher.wait(WAIT), publisher.output()


def test_publisher_with_retries_survives_a_redis_restart_and_stores_its_batch_whole(
    password_server: PasswordRedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given a namespace with one change
    manager = use(processes, password_server)
    Publisher.from_url(password_server.url, namespace).emit("event", 1000, "created")
    head = manager.track(0).head()

    # When a publisher with retries=3, backoff 0.2 s, calls emit_many while Redis restarts
    code, output = publish_across_a_restart(password_server, processes, namespace, tmp_path / "pub", retries=3)

    # Then the call succeeded and every change of the batch is stored once, with its content
    assert code == 0, output
    logged = [json.loads(line) for line in (tmp_path / "pub" / "published.jsonl").read_text().splitlines()]
    stored = {change.seq: change for change in manager.track(0).iter_changes(head)}
    assert [entry["seq"] for entry in logged] == list(range(head + 1, head + 101))
    assert sorted(stored) == [entry["seq"] for entry in logged]
    for entry in logged:
        change = stored[entry["seq"]]
        assert (change.type, change.id, change.flag_names) == (
            entry["type"],
            entry["id"],
            tuple(sorted(entry["changes"])),
        )


def test_publisher_without_retries_raises_redis_unavailable_naming_the_masked_url(
    password_server: PasswordRedisServer, processes: Processes, namespace: str, tmp_path: Path
) -> None:
    # Given a namespace with one change
    manager = use(processes, password_server)
    Publisher.from_url(password_server.url, namespace).emit("event", 1000, "created")
    head = manager.track(0).head()

    # When a publisher without retries calls emit_many while Redis restarts
    code, output = publish_across_a_restart(password_server, processes, namespace, tmp_path / "pub", retries=0)

    # Then it raised RedisUnavailable naming the masked URL, and nothing of the batch was stored
    assert code == 3, output
    assert f"cannot reach {password_server.masked_url}: " in output, output
    assert PASSWORD not in output
    assert manager.track(0).head() == head
