"""Backend faults: the real webhook backend against a misbehaving target on loopback.

The target (pytest-httpserver, threaded) answers 500 for its first requests, holds some
requests past the backend's 0.3 s timeout, and refuses the records of a few objects
with 422. The agent runs in real ``livesync`` processes (``agent run`` repeated until
the pointer reaches the head, and an RQ ``worker --burst`` retrying a failed job).

What must hold (invariant 2, "ack after upload", and the webhook contract):

- failed attempts are retried with backoff, then fail the run with the pointer where
  it was; the next run resumes;
- the dead-letter list holds exactly the refused records, with ``HTTP 422`` and the
  target's body excerpt; everything else reaches the target: its accepted records,
  applied the way a target does (stale seqs dropped), match a replay of the published
  changes (``checker.check``);
- the pointer never passes a record before the target accepted it: on every request
  the handler reads the pointer from Redis and every record in the request has a seq
  above it (in particular the first time the target sees a seq).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from checker import check, load_published, log_published
from pytest_httpserver import HTTPServer
from support.processes import Processes
from support.servers import RedisServer
from support.waiting import wait_for
from werkzeug import Request, Response

from livesync import Publisher, deadletters
from livesync.keys import namespace_keys
from livesync.manager import Agent, SyncManager
from livesync.runner import run_agent
from livesync.signing import SignatureError, WebhookError, verify

SECRET = "fault-injection-secret"
AGENT = "hook"
#: Objects (type "event") whose records the target refuses with 422.
REFUSED_IDS = frozenset({7, 23, 38})
REFUSAL_BODY = "schema violation: record {id} is not allowed here"
TIMEOUT = 0.3
BACKOFF = 0.05
#: How long a held request waits before the handler gives up (well past the client's timeout).
HOLD = 1.0


@dataclass
class Target:
    """A webhook target with scripted faults; keeps what it saw, accepted and refused."""

    pointer_key: str
    client: redis.Redis
    fail: frozenset[int] = frozenset()
    hold: frozenset[int] = frozenset()
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    seen: set[tuple[str, Any, int]] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)

    def handle(self, request: Request) -> Response:
        body = request.get_data()
        # (read the pointer first: the runner is waiting for this answer, it cannot move it now)
        pointer = int(self.client.hget(self.pointer_key, AGENT) or 0)
        with self.lock:
            number = len(self.requests) + 1
            try:
                verify(body, request.headers, SECRET)
                records = json.loads(body)["records"]
            except (SignatureError, ValueError, KeyError) as exc:
                self.violations.append(f"request {number}: bad request: {exc}")
                records = []
            entry = {"n": number, "at": time.monotonic(), "pointer": pointer, "records": records, "answer": None}
            self.requests.append(entry)
            for record in records:
                key = (record["type"], record["id"], record["seq"])
                if record["seq"] <= pointer:
                    first = "first" if key not in self.seen else "again"
                    self.violations.append(f"request {number}: record {key} ({first} seen) but pointer at {pointer}")
                self.seen.add(key)
        if number in self.fail:
            return self._answer(entry, Response("target warming up", 500))
        if number in self.hold:
            self.release.wait(HOLD)
            return self._answer(entry, Response("too late", 503))
        bad = [record["id"] for record in records if record["type"] == "event" and record["id"] in REFUSED_IDS]
        if bad:
            if len(records) == 1:
                with self.lock:
                    self.refused.append(records[0])
            return self._answer(entry, Response(REFUSAL_BODY.format(id=bad[0]), 422))
        with self.lock:
            self.accepted.extend(records)
        return self._answer(entry, Response("ok", 200))

    @staticmethod
    def _answer(entry: dict[str, Any], response: Response) -> Response:
        entry["answer"] = response.status_code
        return response

    def answers(self) -> Counter[int]:
        return Counter(entry["answer"] for entry in self.requests)


@pytest.fixture
def httpserver_threaded() -> Iterator[HTTPServer]:
    """A threaded HTTP server on loopback: a held request does not block the retry behind it."""
    server = HTTPServer(host="127.0.0.1", threaded=True)
    server.start()
    yield server
    server.clear()
    if server.is_running():
        server.stop()


def valid_stream(rng: random.Random, objects: int, changes: int) -> list[tuple[str, int, list[str]]]:
    """A valid change stream: appear only when not live, modify or disappear only when live."""
    live: dict[int, bool] = {}
    out: list[tuple[str, int, list[str]]] = []
    for _ in range(changes):
        id_ = rng.randrange(objects)
        state = live.get(id_)
        if state is None:
            flags = ["created", *rng.sample(["title_changed", "data_changed"], rng.randrange(2))]
            live[id_] = True
        elif state:
            flags = rng.choice([["moved"], ["data_changed"], ["title_changed", "acl_changed"], ["deleted"]])
            live[id_] = flags != ["deleted"]
        else:
            flags = ["undeleted"]
            live[id_] = True
        out.append(("event", id_, flags))
    return out


def setup_agent(server: RedisServer, namespace: str, url: str, *, max_retries: int) -> SyncManager:
    manager = SyncManager(server.client(), namespace)
    options = {
        "url": url,
        "secret": SECRET,
        "timeout": str(TIMEOUT),
        "max_retries": str(max_retries),
        "backoff": str(BACKOFF),
    }
    manager.add_agent(Agent(id=AGENT, backend="webhook", options=options, update_time=0), start="head")
    return manager


def publish(server: RedisServer, namespace: str, log: Path, items: list[tuple[str, int, list[str]]]) -> int:
    """Publish in batches of 25, logging every change for the checker; return the head."""
    publisher = Publisher(server.client(), namespace)
    for start in range(0, len(items), 25):
        batch = items[start : start + 25]
        seqs = publisher.emit_many(batch)
        log_published(log, [(0, seq) for seq in seqs], batch)
    return int(server.client().get(namespace_keys(namespace).partition(0).seq) or 0)


def assert_delivered_like_a_replay(target: Target, log: Path) -> None:
    """Outside the refused objects, the accepted records match the replay; refused objects never got one."""
    published = {key: value for key, value in load_published([log]).items() if key[1] not in REFUSED_IDS}
    accepted = [record for record in target.accepted if record["id"] not in REFUSED_IDS]
    report = check(published, accepted)
    assert report.ok, (report.summary(), report.problems[:5])
    assert report.records == len(accepted) > 0
    assert not [record for record in target.accepted if record["id"] in REFUSED_IDS]


def assert_dead_letters_are_exactly_the_refused(manager: SyncManager, target: Target) -> list[dict[str, Any]]:
    letters = deadletters.entries(manager, AGENT)
    stored = {(letter["record"]["id"], letter["record"]["seq"]) for letter in letters}
    refused = {(record["id"], record["seq"]) for record in target.refused}
    assert refused, "the target refused nothing: the scenario did not run"
    assert stored == refused
    for letter in letters:
        record = letter["record"]
        assert record["type"] == "event" and record["id"] in REFUSED_IDS
        assert letter["reason"] == f"HTTP 422: {REFUSAL_BODY.format(id=record['id'])}", letter
    return letters


def test_agent_runs_survive_500s_timeouts_and_rejections_without_acking_ahead(
    redis_server: RedisServer,
    processes: Processes,
    httpserver_threaded: HTTPServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a target that answers 500 to its first 4 requests, holds requests 40-42 past the 0.3 s
    # timeout (a run in mid-track), and refuses events 7, 23 and 38 with 422
    keys = namespace_keys(namespace).partition(0)
    target = Target(keys.pointers, redis_server.client(), fail=frozenset(range(1, 5)), hold=frozenset({40, 41, 42}))
    httpserver_threaded.expect_request("/hook", method="POST").respond_with_handler(target.handle)
    manager = setup_agent(redis_server, namespace, httpserver_threaded.url_for("/hook"), max_retries=2)
    # and 400 changes over 50 objects, read in windows of 40 and uploaded in batches of 10
    log = tmp_path / "published.jsonl"
    head = publish(redis_server, namespace, log, valid_stream(random.Random(7), 50, 400))
    env = {"LIVESYNC_REDIS_URL": redis_server.url, "LIVESYNC_WINDOW": "40", "LIVESYNC_BATCH_SIZE": "10"}

    # When `livesync agent run` is started again and again until the pointer reaches the head (at most 10 times)
    runs: list[tuple[int, int, str]] = []
    try:
        for _ in range(10):
            before = manager.pointers(AGENT)[0]
            done = processes.run("agent", "run", AGENT, env=env, timeout=60)
            runs.append((before, done.returncode, done.stdout + done.stderr))
            if manager.pointers(AGENT)[0] == head:
                break
    finally:
        target.release.set()
    wait_for(lambda: all(entry["answer"] is not None for entry in target.requests), 5, "held requests to end")
    outputs = "\n".join(output for _before, _rc, output in runs)

    # Then the pointer reached the head after some failed runs, each failing in one line without traceback
    assert manager.pointers(AGENT) == [head], outputs
    failed = [output for _before, rc, output in runs if rc != 0]
    assert [rc for _before, rc, _output in runs].count(1) == len(failed) >= 2, outputs
    assert any("HTTP 500: target warming up after 3 attempt(s)" in output for output in failed), outputs
    assert any(f"timed out after {TIMEOUT:g}s" in output and "after 3 attempt(s)" in output for output in failed)
    assert "Traceback" not in outputs and SECRET not in outputs
    for output in failed:  # retry warnings, then exactly one error line, last
        lines = output.strip().splitlines()
        assert lines[-1].startswith("Error: webhook http://127.0.0.1:"), output
        assert [line for line in lines if line.startswith("Error: ")] == [lines[-1]], output
    assert f"retry 1 of 2 in {BACKOFF:.3g}s" in outputs and f"retry 2 of 2 in {2 * BACKOFF:.3g}s" in outputs

    # and the faults were retried with backoff: 4 answers of 500, 3 held requests, the same batch resent each time
    requests = target.requests
    answers = target.answers()
    assert answers[500] == 4 and answers[503] == 3, answers
    for first, last in ((1, 3), (4, 5), (40, 42)):
        batches = [entry["records"] for entry in requests[first - 1 : last]]
        assert all(batch == batches[0] for batch in batches), (first, last)
    gaps = {n: requests[n]["at"] - requests[n - 1]["at"] for n in (1, 2, 40, 41)}
    assert gaps[1] >= BACKOFF * 0.9 and gaps[2] >= 2 * BACKOFF * 0.9, gaps
    assert gaps[40] >= TIMEOUT + BACKOFF * 0.9 and gaps[41] >= TIMEOUT + 2 * BACKOFF * 0.9, gaps
    # (the timed-out run had acked some windows: the next one resumed in mid-track)
    assert any(0 < before < head for before, _rc, _output in runs), [before for before, _rc, _output in runs]

    # and the dead-letter list holds exactly the refused records, with status and body excerpt
    letters = assert_dead_letters_are_exactly_the_refused(manager, target)
    assert answers[422] >= len({(letter["record"]["id"], letter["record"]["seq"]) for letter in letters})

    # and every other record reached the target: applied like a target does, it matches the replay
    assert_delivered_like_a_replay(target, log)

    # and the pointer never passed a record the target had not accepted, and never went back
    assert target.violations == []
    pointers = [entry["pointer"] for entry in requests]
    assert pointers == sorted(pointers)
    stats = manager.get_agent(AGENT)
    assert stats.last_error is None


def test_worker_retries_a_failing_run_job_until_the_target_recovers(
    redis_server: RedisServer,
    processes: Processes,
    httpserver_threaded: HTTPServer,
    namespace: str,
    tmp_path: Path,
) -> None:
    # Given a target answering 500 to its first 6 requests and refusing events 7, 23 and 38,
    # and an agent whose backend tries each batch twice (so the first three run jobs fail)
    keys = namespace_keys(namespace).partition(0)
    target = Target(keys.pointers, redis_server.client(), fail=frozenset(range(1, 7)))
    httpserver_threaded.expect_request("/hook", method="POST").respond_with_handler(target.handle)
    manager = setup_agent(redis_server, namespace, httpserver_threaded.url_for("/hook"), max_retries=1)
    log = tmp_path / "published.jsonl"
    head = publish(redis_server, namespace, log, valid_stream(random.Random(11), 40, 200))
    env = {
        "LIVESYNC_REDIS_URL": redis_server.url,
        "LIVESYNC_WINDOW": "50",
        "LIVESYNC_BATCH_SIZE": "10",
        "LIVESYNC_RETRY_MAX": "5",
        "LIVESYNC_RETRY_INTERVALS": "[0]",
    }

    # When a tick enqueues the run and a burst worker works the queue (RQ retries at once, interval 0)
    tick = processes.run("tick", "--force", "--json", env=env)
    assert tick.returncode == 0, tick.stderr
    [job_id] = json.loads(tick.stdout)["enqueued"]
    worker = processes.livesync("worker", "worker", "--burst", env=env)
    assert worker.wait(60) == 0, worker.output()
    wait_for(lambda: manager.pointers(AGENT) == [head], 5, "the pointer to reach the head")

    # Then the job failed three times, was retried by RQ, and finished; the pointer is at the head
    from rq.job import Job
    from rq.serializers import JSONSerializer

    job = Job.fetch(job_id, connection=redis_server.client(), serializer=JSONSerializer)
    assert job.get_status() == "finished", worker.output()
    assert job.retries_left == 5 - 3
    assert target.answers()[500] == 6
    assert worker.output().count("HTTP 500: target warming up after 2 attempt(s)") >= 3

    # and dead letters, delivery and the pointer hold as with `agent run`
    assert_dead_letters_are_exactly_the_refused(manager, target)
    assert_delivered_like_a_replay(target, log)
    assert target.violations == []
    assert SECRET not in worker.output()


def test_a_window_retried_after_a_failure_does_not_dead_letter_a_record_twice(
    real_redis: redis.Redis, namespace: str, httpserver_threaded: HTTPServer
) -> None:
    # Given events 7 (refused by the target), 1, 2, 3 in one window uploaded in batches of 2, and a target
    # that fails the second batch (requests 4 and 5: batch [7, 1], then 7 alone, 1 alone, then [2, 3] twice)
    keys = namespace_keys(namespace).partition(0)
    target = Target(keys.pointers, real_redis, fail=frozenset({4, 5}))
    httpserver_threaded.expect_request("/hook", method="POST").respond_with_handler(target.handle)
    manager = SyncManager(real_redis, namespace)
    options = {"url": httpserver_threaded.url_for("/hook"), "secret": SECRET, "max_retries": "1", "backoff": "0"}
    manager.add_agent(Agent(id=AGENT, backend="webhook", options=options), start="head")
    Publisher(real_redis, namespace).emit_many([("event", i, ["created"]) for i in (7, 1, 2, 3)])

    # When the agent runs: the first run fails on the second batch, the second run delivers
    with pytest.raises(WebhookError, match="HTTP 500"):
        run_agent(manager, AGENT, 0, batch_size=2)
    assert manager.pointers(AGENT) == [0]
    run_agent(manager, AGENT, 0, batch_size=2)
    assert manager.pointers(AGENT) == [4]
    assert [record["id"] for record in target.refused] == [7, 7]

    # Then event 7 is on the dead-letter list once
    assert [letter["record"]["id"] for letter in deadletters.entries(manager, AGENT)] == [7]
