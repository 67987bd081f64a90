"""Real targets after crashes: a PostgreSQL mirror and an OpenSearch index end up equal to the source (issue 11).

The whole path runs as real processes, on a private AOF redis-server: three publishers
of an application (``support.source_app``) commit each change to its SQLite database,
then publish it exactly once; ``livesync worker`` processes and ``livesync scheduler`` run
one continuous agent with livesync's SQLAlchemy loader on that database, into a real
target: the ``sql`` backend's mirror table on PostgreSQL, or the ``opensearch`` backend's
index (behind an alias, with tombstones) on osmem-server. A supervisor (``support.fleet``)
starts again every process that dies.

While the publishers publish (until the test tells them to stop), the test crashes the
stack: (a) it SIGKILLs workers with their work horses again and again, each time a run is
in flight, and waits for the agent to make progress before the next kill; (b) it
SIGKILLs Redis while the agent is halfway with a run in flight, waits for the runs to
fail, starts Redis again on its data and waits for progress. Then the publishers stop,
and once the agent's pointer is at the head of every partition the target is read back
and compared with the source (``checker.source_model`` and ``checker.check_target``):
every object live in the source is live in the target, with the version of its latest
change (read from the track, which a paused witness agent keeps whole) and the document
the database holds now (whose ``changes`` count equals the changes logged for the
object); nothing else is live.

Two gaps these runs found are kept out of them: a crash between RQ's dequeue of a job
and its start (``Fleet.crash`` and ``Fleet.frozen`` avoid that moment;
``test_rel_dequeue_crash`` pins it), and a tick killed mid-pass, whose lock stops every
tick for ``LIVESYNC_TICK_LOCK_TTL`` (30 s by default; 2 s here).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from reliability.checker import TargetReport, check_target, load_published, source_model
from support.fleet import Fleet
from support.processes import Proc, Processes
from support.real_targets import RealTarget, drained, latest_changes, opensearch_target, sql_target
from support.servers import RedisServer
from support.source_app import documents
from support.source_stack import Workload, launch
from support.sql_databases import admin_engine, drop_table, server_url, unique_table, unreachable
from support.waiting import wait_for

from livesync.manager import SyncManager

AGENT = "mirror"
PARTITIONS = 2
PUBLISHERS = 3
OBJECTS = 120  # per publisher
RATE = 80  # changes/s per publisher
#: Publishers publish until the test has crashed what it crashes (and the agent moved on), this long at most.
PUBLISH_SECONDS = 45.0
LOCK_TTL = 2
_ENV = {
    "LIVESYNC_LOCK_TTL": str(LOCK_TTL),
    # a tick killed mid-pass keeps its lock: with the default 30 s no run would start for that long
    "LIVESYNC_TICK_LOCK_TTL": str(LOCK_TTL),
    "LIVESYNC_WINDOW": "50",
    "LIVESYNC_BATCH_SIZE": "20",
    "LIVESYNC_TICK_INTERVAL": "1",
}
WORKLOAD = Workload(PARTITIONS, PUBLISHERS, OBJECTS, RATE, PUBLISH_SECONDS, _ENV)
#: Kills of a worker with a job in flight (a run nearly always: ticks last milliseconds) test (a) makes at least.
CRASHES = 4
#: Longest the test waits for the agent to move after a kill, for a run to be in flight, for a drain.
PROGRESS_TIMEOUT = 20.0
DRAIN_TIMEOUT = 40.0

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["postgresql", "opensearch"])
def real_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RealTarget]:
    """A real, empty target: a new mirror table on PostgreSQL, or a new index behind an alias."""
    if request.param == "postgresql":
        url = server_url("postgresql", tmp_path, dict(os.environ))
        problem = unreachable(url)
        if problem is not None:
            pytest.skip(problem)
        admin, table = admin_engine(url), unique_table()
        yield sql_target("postgresql", url, table, admin)
        drop_table(admin, table)
        admin.dispose()
    else:
        cluster = request.getfixturevalue("opensearch_cluster")
        alias = cluster.new_index()
        yield opensearch_target("opensearch", cluster, alias, tombstones=True)
        cluster.client().indices.delete(index=alias.removesuffix("-alias") + "-1", ignore=404)


@dataclass
class Stack:
    """The running application and livesync stack of one test."""

    manager: SyncManager
    fleet: Fleet
    publishers: list[Proc]
    logs: list[Path]
    database: Path
    stop_file: Path

    def publishing(self) -> bool:
        return any(publisher.alive() for publisher in self.publishers)

    def stop_publishing(self) -> None:
        """Tell the publishers to finish their call and exit."""
        assert self.publishing(), "the publishers stopped by themselves: the crashes must come while they publish"
        self.stop_file.touch()

    def acknowledged(self) -> int:
        """Changes the agent acknowledged, summed over the partitions."""
        return sum(track.pointer(AGENT) or 0 for track in self.manager.tracks())

    def diagnosis(self) -> str:
        """What a timed-out wait shows: where the agent is, and the tail of every process's log."""
        where = {track.partition: (track.head(), track.pointer(AGENT)) for track in self.manager.tracks()}
        agent = self.manager.get_agent(AGENT)
        tails = "\n".join(f"--- {proc.name}\n{proc.output()[-1200:]}" for proc in self.fleet.processes.started)
        return f"(head, pointer) per partition {where}; state {agent.state}, last error {agent.last_error}\n{tails}"


def start_stack(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path, target: RealTarget, workers: int
) -> Stack:
    """The namespace, the witness, the agent on ``target``, the fleet; then the publishers start."""
    up = launch(redis_server, processes, namespace, tmp_path, AGENT, target.agent_args(), WORKLOAD, workers)
    return Stack(
        SyncManager(redis_server.client(), namespace), up.fleet, up.publishers, up.logs, up.database, up.stop_file
    )


def drain_and_compare(stack: Stack, target: RealTarget, test: str) -> TargetReport:
    """Stop the publishers, wait for the agent to reach the head (the fleet kept up), compare the target."""
    fleet = stack.fleet
    stack.stop_publishing()
    wait_for(lambda: fleet.keep_up() and not stack.publishing(), PROGRESS_TIMEOUT, "the publishers to finish")
    for publisher in stack.publishers:
        assert publisher.wait(1) == 0, f"{publisher.name} failed:\n{publisher.output()[-3000:]}"
    wait_for(lambda: fleet.keep_up() and drained(stack.manager, AGENT), DRAIN_TIMEOUT, "the agent to reach the head",
             0.2, stack.diagnosis)  # fmt: skip
    published = load_published(stack.logs)
    model = source_model(published, latest_changes(stack.manager), documents(stack.database), counter="changes")
    assert not model.problems, "the workload itself is broken:\n" + "\n".join(model.problems[:10])
    report = check_target(model.objects, target.read())
    agent = stack.manager.get_agent(AGENT)
    figures = {
        "test": test,
        "target": target.name,
        "changes": sum(len(changes) for changes in published.values()),
        "objects": report.objects,
        "live": report.live,
        "held": report.held,
        "runs": agent.runs,
        "failed_runs": agent.failures,
        "crashes": fleet.crashes,
        "restarted_processes": fleet.restarts,
        "publishers": [json.loads(p.output().strip().splitlines()[-1]) for p in stack.publishers],
    }
    print(f"{test} {target.name}: {report.summary()}")
    print(json.dumps(figures))
    return report


def wait_progress(stack: Stack, acknowledged: int) -> None:
    """Wait (the fleet kept up) until the agent acknowledged more than ``acknowledged`` changes."""
    wait_for(lambda: stack.fleet.keep_up() and stack.acknowledged() > acknowledged, PROGRESS_TIMEOUT,
             "the agent to move on after a crash", 0.05, stack.diagnosis)  # fmt: skip


def assert_equal_to_source(report: TargetReport) -> None:
    assert report.ok, report.summary() + "\n" + "\n".join(report.problems[:15])
    assert report.live > OBJECTS, f"only {report.live} objects live at the end: the workload tests too little"


def test_a_real_target_equals_the_source_after_workers_are_sigkilled_mid_run_again_and_again(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path, real_target: RealTarget
) -> None:
    # Given three workers and a scheduler running the agent while three publishers publish
    stack = start_stack(redis_server, processes, namespace, tmp_path, real_target, workers=3)
    fleet, rng = stack.fleet, random.Random(11)

    # When a worker with a run in flight is SIGKILLed with its horse, again after every bit of progress
    deadline = time.monotonic() + 2 * CRASHES * PROGRESS_TIMEOUT
    while fleet.crashes < CRASHES:
        assert time.monotonic() < deadline, f"only {fleet.crashes} kills hit a job in flight\n{stack.diagnosis()}"
        wait_for(lambda: fleet.keep_up() and bool(fleet.running_horses()), PROGRESS_TIMEOUT, "a run in flight",
                 0.02, stack.diagnosis)  # fmt: skip
        slots = sorted(fleet.running_horses())
        if not slots or not fleet.crash(rng.choice(slots)):
            continue  # its job ended meanwhile, or another one was starting
        wait_progress(stack, stack.acknowledged())

    # Then, once drained, the target holds exactly the source's live objects, each in its latest state
    report = drain_and_compare(stack, real_target, "killed-workers")
    assert_equal_to_source(report)


def test_a_real_target_equals_the_source_after_redis_is_sigkilled_and_restarted_mid_run(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path, real_target: RealTarget
) -> None:
    # Given two workers and a scheduler running the agent while three publishers publish
    stack = start_stack(redis_server, processes, namespace, tmp_path, real_target, workers=2)
    fleet = stack.fleet

    # When Redis is SIGKILLed with a run in flight and the agent halfway, and started again on its data once
    # the runs in flight failed
    heads = lambda: sum(track.head() for track in stack.manager.tracks())  # noqa: E731
    deadline, acknowledged = time.monotonic() + 2 * PROGRESS_TIMEOUT, 0
    while redis_server.process is not None and redis_server.process.poll() is None:
        assert time.monotonic() < deadline, "no moment without a job between dequeue and start\n" + stack.diagnosis()
        wait_for(
            lambda: fleet.keep_up() and bool(fleet.running_horses()) and 0 < stack.acknowledged() < heads() - 100,
            PROGRESS_TIMEOUT, "a run in flight with the agent halfway", 0.05, stack.diagnosis,
        )  # fmt: skip
        with fleet.frozen() as settled:
            if settled:
                acknowledged = stack.acknowledged()
                redis_server.kill()
    wait_for(lambda: not fleet.running_horses(), PROGRESS_TIMEOUT, "the runs in flight to fail on the lost Redis",
             0.05, stack.diagnosis)  # fmt: skip
    redis_server.start()
    wait_progress(stack, acknowledged)  # the publishers still publishing

    # Then, once drained, the target holds exactly the source's live objects, each in its latest state
    report = drain_and_compare(stack, real_target, "redis-restart")
    assert_equal_to_source(report)
