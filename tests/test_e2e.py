"""End to end: the local stack (``scripts/stack``) syncs every published change by itself.

The stack runs as real processes (private redis-server with AOF, two ``livesync worker``,
``livesync scheduler``, and the dashboard and metrics when this livesync has them) in its
own state dir, namespace and queue. A ``jsonl`` agent is registered, a separate process
publishes a mix of ``emit``, ``emit_many`` and ``collect`` for a few seconds and logs
every seq it got, and nobody calls ``run``: the scheduler's ticks and the workers must
bring the agent's pointer to the head. The target is then checked against the published
changes, and the emit-to-upload latency is reported (p50/p99; also written as JSON to
``$LIVESYNC_E2E_REPORT`` when set). The test asserts correctness, never timing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from reliability.checker import Change, expected_action, vanishes

from livesync.manager import SyncManager
from livesync.workload import replay_changes, replay_records

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "scripts" / "stack"
LIVESYNC = Path(sys.executable).with_name("livesync")
AGENT = "sink"
PARTITIONS = 2
PUBLISH_SECONDS = 3.0
PUBLISH_RATE = 200  # changes per second
OBJECTS = 250
DRAIN_TIMEOUT = 30.0  # seconds the agent may take to reach the head after the last publish
WATCH_INTERVAL = 0.02

pytestmark = [pytest.mark.timeout(110), pytest.mark.slow]

#: The publisher: a separate process, as an application would be. It replays a generated
#: valid workload in calls of emit (one change), emit_many (a batch) and collect (a unit of
#: work, which merges flags per object), at about RATE changes/s, and logs one JSON line
#: [partition, seq, type, id, flags, emit time] per published change, emit time being the
#: wall clock when the call that stored it returned.
PUBLISHER = """
import json, random, sys, time
from livesync import Publisher
from livesync.changes import flag_names
from livesync.namespace import partition_of
from livesync.workload import generate

url, namespace, log_path = sys.argv[1:4]
seconds, rate, objects = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
rng = random.Random(int(sys.argv[7]))
items = generate(int(seconds * rate * 1.5) + 100, objects, seed=rng.randrange(1 << 30))
pub = Publisher.from_url(url, namespace=namespace)
partitions = pub.meta.partitions
published = calls = 0
start = time.time()
with open(log_path, "w") as log:
    while items and time.time() - start < seconds:
        due = (time.time() - start) * rate
        if published > due:
            time.sleep((published - due) / rate)
        kind = rng.choice(("emit", "emit_many", "collect"))
        size = 1 if kind == "emit" else rng.randint(2, 12)
        batch, items = items[:size], items[size:]
        if kind == "emit":
            type_, id_, flags = batch[0]
            seqs, stored = [pub.emit(type_, id_, *flags)], batch
        elif kind == "emit_many":
            seqs, stored = pub.emit_many(batch), batch
        else:
            with pub.collect() as unit:
                for type_, id_, flags in batch:
                    unit.emit(type_, id_, *flags)
            seqs = unit.seqs
            stored = [(t, i, list(flag_names(mask))) for t, i, mask in unit.changes]
        now = time.time()
        for seq, (type_, id_, flags) in zip(seqs, stored, strict=True):
            log.write(json.dumps([partition_of(type_, id_, partitions), seq, type_, id_, list(flags), now]) + "\\n")
        published += len(seqs)
        calls += 1
    log.flush()
print(json.dumps({"published": published, "calls": calls, "seconds": time.time() - start}))
"""


# -- the stack ------------------------------------------------------------------------------


@dataclass
class Stack:
    directory: Path
    env: dict[str, str]  # the caller's environment plus the stack's env file
    state: dict[str, Any] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(LIVESYNC), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )


def run_stack(command: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK), command], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "export":
            key, _, value = words[1].partition("=")
            values[key] = value
    return values


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs, zombies (exited, waiting for their reaper) counting as dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid`` (the session ``scripts/stack`` started)."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def livesync_commands(executable: str) -> set[str]:
    """The subcommands of a livesync executable (what ``scripts/stack`` can start)."""
    listing = subprocess.run([executable, "--help"], capture_output=True, text=True, timeout=60, check=True).stdout
    section = listing.split("Commands:", 1)[1]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.strip()}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """``scripts/stack up`` in tmp_path with its own namespace and queue; always ``down`` after."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH: the local stack needs it")
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    directory = tmp_path / "stack"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LIVESYNC_", "RQ_DASHBOARD_"))}
    if os.environ.get("LIVESYNC_STACK_LIVESYNC"):  # another livesync executable for the stack
        env["LIVESYNC_STACK_LIVESYNC"] = os.environ["LIVESYNC_STACK_LIVESYNC"]
    env.update(
        {
            "LIVESYNC_STACK_DIR": str(directory),
            "LIVESYNC_NAMESPACE": name,
            "LIVESYNC_QUEUE": name,
            "LIVESYNC_TICK_INTERVAL": "1",
            "LIVESYNC_PARTITIONS": str(PARTITIONS),
            "LIVESYNC_DASHBOARD_USERNAME": "operator",
            "LIVESYNC_DASHBOARD_PASSWORD": "e2e-secret",
        }
    )
    started: dict[str, Any] = {}
    try:
        up = run_stack("up", env)
        state_file = directory / "stack.json"
        if state_file.exists():
            started = json.loads(state_file.read_text())
        assert up.returncode == 0, f"scripts/stack up failed:\n{up.stdout}\n{up.stderr}"
        assert "source" in up.stdout and str(directory / "env") in up.stdout, up.stdout
        values = read_env_file(directory / "env")
        assert values["LIVESYNC_NAMESPACE"] == name and values["LIVESYNC_QUEUE"] == name, values
        assert "LIVESYNC_DASHBOARD_PASSWORD" not in values  # secrets stay out of the env file
        yield Stack(directory, {**env, **values}, started)
    finally:
        if not started and (directory / "stack.json").exists():
            started = json.loads((directory / "stack.json").read_text())
        down = run_stack("down", env)
        again = run_stack("down", env)  # idempotent
        pids = {proc: entry["pid"] for proc, entry in started.get("processes", {}).items()}
        deadline = time.monotonic() + 5  # exited children may wait a moment for their reaper
        while any(process_alive(pid) or group_members(pid) for pid in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {proc: pid for proc, pid in pids.items() if process_alive(pid) or group_members(pid)}
        for pid in left.values():  # do not leak them into the next test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        assert down.returncode == 0, f"scripts/stack down failed:\n{down.stdout}\n{down.stderr}"
        assert again.returncode == 0 and "not running" in again.stdout, (again.stdout, again.stderr)
        assert not left, f"processes of the stack left after down: {left}"
        assert not list(directory.glob("*.pid")), "pid files left after down"


# -- watching the target --------------------------------------------------------------------


class Watcher(threading.Thread):
    """Polls a jsonl file every ``interval`` seconds; records each complete line with its arrival time."""

    def __init__(self, path: Path, interval: float = WATCH_INTERVAL) -> None:
        super().__init__(name="jsonl-watcher", daemon=True)
        self.path = path
        self.interval = interval
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._offset = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.poll()
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=5)
        self.poll()

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._offset)
                data = file.read()
        except FileNotFoundError:
            return
        now = time.time()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        self.lines.extend((now, json.loads(line)) for line in complete.splitlines())


# -- the model the target is checked against ----------------------------------------------------


def check_object(key: tuple[str, Any], changes: list[Change], records: list[dict[str, Any]]) -> list[str]:
    """Problems of one object's records against its published changes (ascending seq).

    The records must come in ascending seq, each ending at one of the object's seqs.
    The changes between two records were folded into the later record (the reliability
    checker's model: :func:`reliability.checker.expected_action`), and none may come after
    the last one. So every flag of the object shows in the record its window produced:
    that record's ``changes`` is exactly the union of the window's flags, and its action
    what the window reduces to.
    """
    problems = []
    seqs = [record["seq"] for record in records]
    if seqs != sorted(set(seqs)):
        problems.append(f"{key}: records not in strictly ascending seq: {seqs}")
        return problems
    published = {seq for seq, _ in changes}
    previous = 0
    for record in records:
        if record["seq"] not in published:
            problems.append(f"{key}: record seq {record['seq']} is not a seq of this object")
            continue
        group = [change for change in changes if previous < change[0] <= record["seq"]]
        previous = record["seq"]
        explained = any(
            vanishes(group[:split])
            and expected_action(group[split:]) == record["action"]
            and set().union(*(flags for _, flags in group[split:])) == set(record["changes"])
            for split in range(len(group))
        )
        if not explained:
            problems.append(f"{key}: record {record} does not match the changes {group}")
    rest = [change for change in changes if change[0] > previous]
    if rest and not vanishes(rest):
        problems.append(f"{key}: changes {rest} after the last record never reached the target")
    return problems


def nearest_rank(values: list[float], quantile: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(quantile * len(ordered)) - 1)]


# -- the test -----------------------------------------------------------------------------


def test_stack_syncs_every_published_change(stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = stack.env
    namespace = env["LIVESYNC_NAMESPACE"]
    url = env["LIVESYNC_REDIS_URL"]
    target = tmp_path / "target" / "sink.jsonl"
    publish_log = tmp_path / "published.jsonl"

    # What runs: redis, two workers, the scheduler, and the servers this livesync has.
    processes = stack.state["processes"]
    servers = {"dashboard", "metrics"} & livesync_commands(stack.state["livesync"])
    expected = {"redis", "worker-1", "worker-2", "scheduler"} | servers
    assert set(processes) == expected, (set(processes), expected)

    option = f"path={target}"
    added = stack.run(
        "agent", "add", AGENT, "--backend", "jsonl", "--option", option, "--update-time", "0", "--start", "tail"
    )
    assert added.returncode == 0, added.stderr

    watcher = Watcher(target)
    watcher.start()
    client = redis.Redis.from_url(url)
    try:
        publisher = subprocess.run(
            [
                sys.executable, "-c", PUBLISHER, url, namespace, str(publish_log),
                str(PUBLISH_SECONDS), str(PUBLISH_RATE), str(OBJECTS), "7",
            ],
            env=env, capture_output=True, text=True, timeout=PUBLISH_SECONDS + 60, check=False,
        )  # fmt: skip
        assert publisher.returncode == 0, publisher.stderr
        summary = json.loads(publisher.stdout)
        published_at = time.time()

        manager = SyncManager(client, namespace)
        tracks = manager.tracks()
        assert len(tracks) == PARTITIONS
        heads = [track.head() for track in tracks]
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while any((track.pointer(AGENT) or 0) < head for track, head in zip(tracks, heads, strict=True)):
            assert time.monotonic() < deadline, (
                f"agent pointers {[track.pointer(AGENT) for track in tracks]} did not reach heads {heads} "
                f"within {DRAIN_TIMEOUT}s; agent: {manager.get_agent(AGENT)}"
            )
            time.sleep(0.05)
        drained_after = time.time() - published_at

        # While it is up: status shows every process alive and the agent; metrics and dashboard answer.
        status = run_stack("status", env)
        assert status.returncode == 0, status.stdout + status.stderr
        for name in processes:
            assert any(line.split()[:1] == [name] and " alive " in line for line in status.stdout.splitlines()), (
                name,
                status.stdout,
            )
        assert AGENT in status.stdout and "2 worker(s)" in status.stdout, status.stdout
        if "metrics" in processes:
            with urllib.request.urlopen(stack.state["metrics_url"], timeout=10) as response:
                metrics = response.read().decode()
            assert f'livesync_up{{namespace="{namespace}"}} 1.0' in metrics, metrics[:2000]
            assert "livesync_agent_pointer" in metrics
        if "dashboard" in processes:
            with pytest.raises(urllib.error.HTTPError) as denied:
                urllib.request.urlopen(stack.state["dashboard_url"], timeout=10)
            assert denied.value.code == 401
            token = base64.b64encode(b"operator:e2e-secret").decode()
            request = urllib.request.Request(stack.state["dashboard_url"], headers={"Authorization": f"Basic {token}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
    finally:
        watcher.stop()
        client.close()

    # The publisher's log covers every seq of every partition exactly once.
    published = [json.loads(line) for line in publish_log.read_text().splitlines()]
    assert len(published) == summary["published"] == sum(heads) > 0
    for partition, head in enumerate(heads):
        assert sorted(seq for part, seq, *_ in published if part == partition) == list(range(1, head + 1))

    records = [record for _, record in watcher.lines]
    assert records, "the target received nothing"
    by_object: dict[tuple[str, Any], list[Change]] = {}
    for _part, seq, type_, id_, flags, _t in sorted(published, key=lambda row: (row[0], row[1])):
        by_object.setdefault((type_, id_), []).append((seq, frozenset(flags)))
    records_by_object: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for record in records:
        records_by_object.setdefault((record["type"], record["id"]), []).append(record)

    # Same live set; records per object in ascending seq; every flag in the record of its window.
    items = [(type_, id_, flags) for _part, _seq, type_, id_, flags, _t in published]
    assert replay_records(records) == replay_changes(items)
    assert set(records_by_object) <= set(by_object), set(records_by_object) - set(by_object)
    problems = [
        problem
        for key, changes in by_object.items()
        for problem in check_object(key, changes, records_by_object.get(key, []))
    ]
    assert not problems, "\n".join(problems[:20])

    # Emit-to-upload latency: first arrival of a record of the object with seq >= the change's.
    arrivals: dict[tuple[str, Any], list[tuple[int, float]]] = {}
    for arrived, record in watcher.lines:
        arrivals.setdefault((record["type"], record["id"]), []).append((record["seq"], arrived))
    latencies: list[float] = []
    slowest: list[tuple[float, int, int, float]] = []  # (latency, partition, seq, emitted after the first)
    unmatched = 0
    first_emit = min(row[5] for row in published)
    for part, seq, type_, id_, _flags, emitted in published:
        arrived_at = next((t for s, t in arrivals.get((type_, id_), []) if s >= seq), None)
        if arrived_at is None:
            unmatched += 1  # reduced away: the object appeared and disappeared within a window
        else:
            latencies.append(arrived_at - emitted)
            slowest.append((arrived_at - emitted, part, seq, emitted - first_emit))
    assert latencies
    slowest.sort(reverse=True)
    report = {
        "changes": len(published),
        "publish_calls": summary["calls"],
        "publish_seconds": round(summary["seconds"], 3),
        "objects": len(by_object),
        "partitions": PARTITIONS,
        "records": len(records),
        "measured": len(latencies),
        "reduced_away": unmatched,
        "latency_p50_s": round(nearest_rank(latencies, 0.50), 4),
        "latency_p99_s": round(nearest_rank(latencies, 0.99), 4),
        "latency_max_s": round(max(latencies), 4),
        "drain_after_last_publish_s": round(drained_after, 3),
        "tick_interval_s": int(env["LIVESYNC_TICK_INTERVAL"]),
        "watch_interval_s": WATCH_INTERVAL,
        "slowest": [
            {"latency_s": round(lat, 4), "partition": part, "seq": seq, "emitted_at_s": round(at, 3)}
            for lat, part, seq, at in slowest[:5]
        ],
    }
    with capsys.disabled():
        print(
            f"\ne2e: {report['changes']} changes in {report['publish_calls']} calls over {report['objects']} objects "
            f"-> {report['records']} records; emit-to-upload latency p50 {report['latency_p50_s']:.3f}s "
            f"p99 {report['latency_p99_s']:.3f}s max {report['latency_max_s']:.3f}s "
            f"({report['measured']} measured, {report['reduced_away']} reduced away)"
        )
    report_path = os.environ.get("LIVESYNC_E2E_REPORT")
    if report_path:
        Path(report_path).write_text(json.dumps(report, indent=2) + "\n")


def test_the_target_model_catches_lost_flags_order_and_changes() -> None:
    """The check above is not vacuous: it accepts what reduction may do and refuses the rest."""
    created, title, deleted, undeleted = (
        frozenset({flag}) for flag in ("created", "title_changed", "deleted", "undeleted")
    )
    key = ("event", 1)
    changes: list[Change] = [(1, created), (2, title), (3, deleted), (4, undeleted), (5, title)]

    def record(action: str, flags: set[str], seq: int) -> dict[str, Any]:
        return {"type": "event", "id": 1, "action": action, "changes": sorted(flags), "seq": seq}

    one_window = [record("created", {"created", "title_changed", "deleted", "undeleted"}, 5)]
    two_windows = [
        record("created", {"created", "title_changed"}, 2),
        record("created", {"deleted", "undeleted", "title_changed"}, 5),
    ]
    deleted_first = [
        record("deleted", {"created", "title_changed", "deleted"}, 3),  # created ... deleted: still its delete
        record("created", {"undeleted", "title_changed"}, 5),
    ]
    assert check_object(key, changes, one_window) == []
    assert check_object(key, changes, two_windows) == []
    assert check_object(key, changes, deleted_first) == []

    vanished_first = [record("created", {"undeleted", "title_changed"}, 5)]  # window 1..3 sent no delete
    assert check_object(key, changes, vanished_first)
    assert check_object(key, changes[:3], [])  # created ... deleted in one window: its delete must come

    lost_flag = [record("created", {"created", "deleted", "undeleted"}, 5)]
    wrong_action = [record("updated", {"created", "title_changed", "deleted", "undeleted"}, 5)]
    out_of_order = [*reversed(two_windows)]
    not_a_seq = [record("created", {"created", "title_changed"}, 7)]
    assert check_object(key, changes, lost_flag)
    assert check_object(key, changes, wrong_action)
    assert check_object(key, changes, out_of_order)
    assert check_object(key, changes, not_a_seq)
    assert check_object(key, changes, [record("created", {"created", "title_changed"}, 2)])  # 3..5 never arrived
    assert check_object(key, changes[:2], [])  # a live object the target never saw
