"""A reindex in flight on a real target: killed mid-export, resumed, swapped in while the agent runs (issue 11).

The stack of ``test_rel_targets`` runs as real processes on a private AOF redis-server:
three publishers of ``support.source_app`` commit each change to its SQLite database and
publish it; ``livesync worker`` processes and a scheduler run one continuous agent with
the SQLAlchemy loader into a real target with generations: the ``sql`` backend's mirror
table on PostgreSQL, or the ``opensearch`` backend writing through an alias of one index
on osmem-server.

While they publish, ``livesync agent reindex mirror --source support.source_app:objects``
(every live object, in a stable order) runs as a process of its own, three times:

1. it is SIGKILLed mid-export, held in its third export batch (``source_app.hold``),
   the new generation half built and readers still on the old one;
2. run again, it resumes the same generation after the objects the first run exported,
   and is SIGKILLed the same way;
3. run again, it finishes the export; held in its catch-up, a worker with a run of the
   agent in flight is SIGKILLed with its horse, and the agent must move on; released,
   the reindex catches up, takes the agent's run locks and swaps the generation in.

Then the publishers stop, the agent drains, and the new generation (what the mirror table
name or the alias now points to) is compared with the source by ``checker.check_target``:
nothing lost, nothing stale, nothing resurrected. The export writes every object with
its partition's clock at the start, so an object live and unchanged since then holds
that version rather than its latest change's (:func:`after_reindex`). The old generation
is kept without ``--drop-old`` (sql) and gone with it (opensearch).

These runs found the swap starved by the agent's own runs (on OpenSearch, whose runs
last longer): runs of two partitions overlapped, so the swap, taking every run lock or
none at each try, never found them all free (``test_reindex_swap_locks`` pins the fix).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from reliability.checker import SourceObject, TargetKey, TargetReport, check_target, load_published, source_model
from support.fleet import Fleet
from support.processes import Proc, Processes
from support.real_targets import RealTarget, drained, latest_changes
from support.reindex_targets import SearchTarget, SqlTarget, Target
from support.servers import RedisServer
from support.source_app import (
    HOLD_AT_VARIABLE,
    HOLD_VARIABLE,
    documents,
    held_marker,
    live_objects,
)
from support.source_stack import Workload, launch
from support.sql_databases import admin_engine, server_url, unreachable
from support.waiting import wait_for

from livesync.keys import reindex_pointer
from livesync.manager import SyncManager
from livesync.namespace import partition_of
from livesync.reindex_state import ReindexState, load_state

AGENT = "mirror"
SOURCE = "support.source_app:objects"
PARTITIONS = 2
PUBLISHERS = 3
OBJECTS = 120  # per publisher
RATE = 60  # changes/s per publisher
#: Publishers publish until the test tells them to stop (after the swap), this long at most.
PUBLISH_SECONDS = 150.0
LOCK_TTL = 2
_ENV = {
    "LIVESYNC_LOCK_TTL": str(LOCK_TTL),
    "LIVESYNC_TICK_LOCK_TTL": str(LOCK_TTL),  # a tick killed with a worker blocks ticks this long at most
    "LIVESYNC_WINDOW": "50",
    "LIVESYNC_BATCH_SIZE": "20",
    "LIVESYNC_TICK_INTERVAL": "1",
}
WORKLOAD = Workload(PARTITIONS, PUBLISHERS, OBJECTS, RATE, PUBLISH_SECONDS, _ENV)
#: Objects per export batch of the reindex, and the load call (one per batch) a killed run is held in.
EXPORT_BATCH = 10
HELD_BATCH = 3
#: Live objects the source holds at least before the reindex begins: an export of many batches.
MIN_LIVE = 150
#: Longest the test waits for progress, for a reindex to reach a step, for a drain, for a reindex to end.
PROGRESS_TIMEOUT = 20.0
STEP_TIMEOUT = 40.0
DRAIN_TIMEOUT = 40.0
REINDEX_TIMEOUT = 90.0

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(params=["postgresql", "opensearch"])
def target(request: pytest.FixtureRequest, tmp_path: Path, processes: Processes) -> Iterator[Target]:
    """An empty target with generations: a new mirror table on PostgreSQL, or a new index behind an alias.

    Removed once the test's processes stopped: a worker's run would create the mirror table again.
    """
    if request.param == "postgresql":
        url = server_url("postgresql", tmp_path, dict(os.environ))
        problem = unreachable(url)
        if problem is not None:
            pytest.skip(problem)
        admin = admin_engine(url)
        created: Target = SqlTarget(url, admin)
    else:
        admin = None
        created = SearchTarget(request.getfixturevalue("opensearch_cluster"))
    yield created
    processes.stop_all()
    created.cleanup()
    if admin is not None:
        admin.dispose()


# -- the stack ---------------------------------------------------------------------------


@dataclass
class Stack:
    """The running application and livesync stack of one test."""

    manager: SyncManager
    fleet: Fleet
    processes: Processes
    publishers: list[Proc]
    logs: list[Path]
    database: Path
    stop_file: Path

    def acknowledged(self) -> int:
        """Changes the agent acknowledged, summed over the partitions."""
        return sum(track.pointer(AGENT) or 0 for track in self.manager.tracks())

    def state(self) -> ReindexState | None:
        return load_state(self.manager, AGENT)

    def phase(self) -> str | None:
        state = self.state()
        return None if state is None else state.phase

    def reindex_locked(self) -> bool:
        """Whether a reindex process (alive, or killed less than a lock TTL ago) holds a reindex lock."""
        keys = [track.keys.lock(reindex_pointer(AGENT)) for track in self.manager.tracks()]
        return bool(self.manager.redis.exists(*keys))

    def diagnosis(self) -> str:
        """What a timed-out wait shows: where the agent and the reindex are, and the tail of every process's log."""
        where = {track.partition: (track.head(), track.pointer(AGENT), track.pointer(reindex_pointer(AGENT)))
                 for track in self.manager.tracks()}  # fmt: skip
        agent = self.manager.get_agent(AGENT)
        tails = "\n".join(f"--- {proc.name}\n{proc.output()[-1500:]}" for proc in self.processes.started)
        return (
            f"(head, pointer, reindex pointer) per partition {where}; state {agent.state}, last error "
            f"{agent.last_error}; reindex {self.state()}\n{tails}"
        )


def start_stack(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path, target: RealTarget
) -> Stack:
    """The namespace, the witness, the agent on ``target``, two workers and a scheduler; then the publishers."""
    up = launch(redis_server, processes, namespace, tmp_path, AGENT, target.agent_args(), WORKLOAD, 2)
    manager = SyncManager(redis_server.client(), namespace)
    return Stack(manager, up.fleet, processes, up.publishers, up.logs, up.database, up.stop_file)


def start_reindex(stack: Stack, number: int, target: Target, hold: Path, hold_at: int) -> Proc:
    """``livesync agent reindex`` as a process, its loads held on ``hold`` from call ``hold_at`` on."""
    drop = ["--drop-old"] if target.drop_old else []
    args = ["agent", "reindex", AGENT, "--source", SOURCE, "--batch-size", str(EXPORT_BATCH), "--json", *drop]
    env = {HOLD_VARIABLE: str(hold), HOLD_AT_VARIABLE: str(hold_at)}
    return stack.processes.livesync(f"reindex-{number}", *args, env=env)


def wait_held(stack: Stack, proc: Proc, hold: Path, what: str) -> ReindexState:
    """Wait (the fleet kept up) until ``proc`` holds a load on ``hold``; its reindex's state then."""
    wait_for(lambda: stack.fleet.keep_up() and (held_marker(hold).exists() or not proc.alive()), STEP_TIMEOUT,
             what, 0.02, stack.diagnosis)  # fmt: skip
    assert proc.alive(), f"{proc.name} ended before it was held:\n{proc.output()[-3000:]}"
    state = stack.state()
    assert state is not None
    return state


def kill(proc: Proc) -> None:
    """SIGKILL ``proc``'s process group and wait for it."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_progress(stack: Stack, acknowledged: int) -> None:
    wait_for(lambda: stack.fleet.keep_up() and stack.acknowledged() > acknowledged, PROGRESS_TIMEOUT,
             "the agent to move on", 0.05, stack.diagnosis)  # fmt: skip


def crash_a_running_worker(stack: Stack, rng: random.Random) -> None:
    """SIGKILL a worker (with its horse) while a run of it is in flight; wait for the agent to move on."""
    fleet = stack.fleet
    crashes, deadline = fleet.crashes, time.monotonic() + 2 * PROGRESS_TIMEOUT
    while fleet.crashes == crashes:
        assert time.monotonic() < deadline, f"no kill hit a job in flight\n{stack.diagnosis()}"
        wait_for(lambda: fleet.keep_up() and bool(fleet.running_horses()), PROGRESS_TIMEOUT, "a run in flight",
                 0.02, stack.diagnosis)  # fmt: skip
        slots = sorted(fleet.running_horses())
        if slots:
            fleet.crash(rng.choice(slots))  # False: its job ended meanwhile, or another one was starting
    wait_progress(stack, stack.acknowledged())


def result_of(proc: Proc) -> dict[str, Any]:
    """The JSON result ``--json`` printed: the last object in the process's log (warnings may precede it)."""
    output = proc.output()
    start = output.rfind("\n{") + 1
    assert output[start:].startswith("{"), f"{proc.name} printed no result:\n{output[-3000:]}"
    result: dict[str, Any] = json.JSONDecoder().raw_decode(output[start:])[0]
    return result


# -- the expectation ---------------------------------------------------------------------


def after_reindex(model: dict[TargetKey, SourceObject], start_versions: list[int]) -> dict[TargetKey, SourceObject]:
    """What the new generation must hold: the source's model, with the export's version as a floor.

    The export writes every live object as ``created`` with its partition's clock at the
    reindex's start; the changes after the start carry higher versions. So an object live
    in the source holds the version of its latest change, or the export's when it has not
    changed since. Objects not live keep their expectation (absent, or a tombstone of their
    latest change: the source yields only live objects).
    """
    expected = {}
    for key, obj in model.items():
        floor = start_versions[partition_of(key[0], key[1], len(start_versions))]
        expected[key] = replace(obj, version=max(obj.version, floor)) if obj.live else obj
    return expected


def drain_and_compare(stack: Stack, target: Target, start_versions: list[int]) -> tuple[TargetReport, dict[str, Any]]:
    """Stop the publishers, wait for the agent to reach the head (the fleet kept up), compare the new generation."""
    fleet = stack.fleet
    assert any(publisher.alive() for publisher in stack.publishers), "the publishers stopped before the swap"
    stack.stop_file.touch()
    wait_for(lambda: fleet.keep_up() and not any(p.alive() for p in stack.publishers), PROGRESS_TIMEOUT,
             "the publishers to finish")  # fmt: skip
    for publisher in stack.publishers:
        assert publisher.wait(1) == 0, f"{publisher.name} failed:\n{publisher.output()[-3000:]}"
    wait_for(lambda: fleet.keep_up() and drained(stack.manager, AGENT), DRAIN_TIMEOUT, "the agent to reach the head",
             0.2, stack.diagnosis)  # fmt: skip
    published = load_published(stack.logs)
    model = source_model(published, latest_changes(stack.manager), documents(stack.database), counter="changes")
    assert not model.problems, "the workload itself is broken:\n" + "\n".join(model.problems[:10])
    report = check_target(after_reindex(model.objects, start_versions), target.real.read())
    agent = stack.manager.get_agent(AGENT)
    figures = {
        "target": target.real.name,
        "changes": sum(len(changes) for changes in published.values()),
        "objects": report.objects,
        "live": report.live,
        "held": report.held,
        "runs": agent.runs,
        "failed_runs": agent.failures,
        "worker_crashes": fleet.crashes,
        "restarted_processes": fleet.restarts,
    }
    return report, figures


# -- the test ----------------------------------------------------------------------------


def test_a_reindex_killed_mid_export_resumes_and_swaps_in_a_generation_equal_to_the_source(
    redis_server: RedisServer, processes: Processes, namespace: str, tmp_path: Path, target: Target
) -> None:
    # Given the agent running continuously on a real target while three publishers publish, the source holding
    # enough live objects for an export of many batches
    stack = start_stack(redis_server, processes, namespace, tmp_path, target.real)
    rng, began = random.Random(12), time.monotonic()
    seconds: dict[str, float] = {}
    filled = lambda: len(live_objects(stack.database)) >= MIN_LIVE  # noqa: E731
    wait_for(lambda: stack.fleet.keep_up() and stack.acknowledged() > 0 and filled(), STEP_TIMEOUT,
             "the source to fill and the agent to run", 0.2, stack.diagnosis)  # fmt: skip

    # When the reindex is SIGKILLed mid-export (held in its third export batch), twice
    killed: list[ReindexState] = []
    runs: list[Proc] = []
    for number in (1, 2):
        hold = tmp_path / f"hold-{number}"
        hold.touch()
        proc = start_reindex(stack, number, target, hold, HELD_BATCH)
        state = wait_held(stack, proc, hold, f"reindex run {number} to be held mid-export")
        assert state.phase == "export" and state.generation, state
        target.assert_building(state.generation)
        kill(proc)
        seconds[f"killed_{number}"] = time.monotonic() - began
        killed.append(state)
        runs.append(proc)
        wait_for(lambda: stack.fleet.keep_up() and not stack.reindex_locked(), 5 * LOCK_TTL,
                 "the killed reindex's locks to expire", 0.05, stack.diagnosis)  # fmt: skip
    first, second = killed
    # Then each run resumed the same generation, the second one after the objects the first one exported
    assert (second.token, second.generation, second.versions) == (first.token, first.generation, first.versions)
    assert first.exported == (HELD_BATCH - 1) * EXPORT_BATCH
    # unless the last object the first run exported was deleted meanwhile: then the export starts over (harmless)
    exported_again = "the source no longer yields" in runs[1].output()
    assert second.exported == (1 if exported_again else 2) * (HELD_BATCH - 1) * EXPORT_BATCH, second

    # When it runs again, and a worker with a run of the agent in flight is SIGKILLed during its catch-up
    hold = tmp_path / "hold-3"
    proc = start_reindex(stack, 3, target, hold, 1)
    wait_for(lambda: stack.fleet.keep_up() and (stack.phase() != "export" or not proc.alive()), REINDEX_TIMEOUT,
             "the resumed reindex to finish its export", 0.02, stack.diagnosis)  # fmt: skip
    hold.touch()
    state = wait_held(stack, proc, hold, "the reindex to be held in its catch-up")
    assert state.phase == "catchup", state
    crash_a_running_worker(stack, rng)
    hold.unlink()
    seconds["worker_killed_in_catch_up"] = time.monotonic() - began

    # Then it catches up and swaps in the new generation
    wait_for(lambda: stack.fleet.keep_up() and not proc.alive(), REINDEX_TIMEOUT, "the reindex to end", 0.1,
             stack.diagnosis)  # fmt: skip
    assert proc.wait(1) == 0, proc.output()[-3000:]
    seconds["swapped"] = time.monotonic() - began
    result = result_of(proc)
    assert result["resumed"] and result["generation"] == first.generation, result
    target.assert_swapped(result)
    assert stack.state() is None
    assert all(track.pointer(reindex_pointer(AGENT)) is None for track in stack.manager.tracks())

    # And once the publishers stop and the agent drained, the new generation holds exactly the source's live
    # objects, each in its latest state
    report, figures = drain_and_compare(stack, target, first.versions)
    seconds["compared"] = time.monotonic() - began
    figures.update(reindex_kills=len(killed), exported_at_kills=[s.exported for s in killed],
                   exported_again=exported_again, reindex={k: result[k] for k in ("objects", "records", "changes")},
                   caught_up_at_hold=state.changes, seconds={k: round(v, 1) for k, v in seconds.items()})  # fmt: skip
    print(f"reindex {target.real.name}: {report.summary()}")
    print(json.dumps(figures))
    assert report.ok, report.summary() + "\n" + "\n".join(report.problems[:15])
    assert report.live > OBJECTS, f"only {report.live} objects live at the end: the workload tests too little"
