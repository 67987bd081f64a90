"""Initial export: an agent added with ``--needs-export`` gets every existing object as ``created``.

The CLI is driven in-process through click's ``CliRunner``; the export source is a small
module written into the test's temporary directory and put on ``sys.path``. Its
callables read ``LIVESYNC_*`` from the environment the runner sets, so one of them can
publish a change while the export is going on.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from support.backends import RecordingBackend, RejectingBackend

from livesync import deadletters, upload
from livesync import export as export_module
from livesync.changes import FLAG_BITS
from livesync.cli import main
from livesync.codec import encode_body
from livesync.manager import Agent, SyncManager

Invoke = Callable[..., Result]
SOURCE = "tests_export_source"
MISSING_MODULE = "no_such_module_for_livesync_tests"
#: 20 objects: odd numbers as (type, id) pairs of events, even ones as dicts of contributions.
OBJECT_COUNT = 20

SOURCE_CODE = '''
"""Export sources of test_export.py."""

import os

from livesync import Publisher


def objects():
    out = []
    for n in range(20):
        out.append(("event", n) if n % 2 else {"type": "contribution", "id": f"c-{n}"})
    return out


class Sized:
    """An iterable with a length whose iteration runs a generator (the CLI sizes its progress bar)."""

    def __init__(self, generator, length):
        self.generator = generator
        self.length = length

    def __len__(self):
        return self.length

    def __iter__(self):
        return self.generator()


def _publishing():
    publisher = Publisher.from_url(os.environ["LIVESYNC_REDIS_URL"], os.environ["LIVESYNC_NAMESPACE"])
    for n in range(10):
        if n == 5:
            publisher.emit("event", 101, "created")
        yield ("event", n)


def publishing():
    """Ten events; after the fifth, the application publishes a change of event 101."""
    return Sized(_publishing, 10)


def _failing_midway():
    yield ("event", 1)
    raise RuntimeError("database went away")


def failing_midway():
    return Sized(_failing_midway, 2)


def generated():
    """A plain generator of the twenty objects (no length)."""
    return iter(objects())


def raising():
    raise RuntimeError("cannot connect to the database")


def not_an_object():
    return [("event", 1), "event 2"]


def bad_type():
    return [("event", 1), ("Event", 2)]


def bad_id():
    return [("event", 1), {"type": "event", "id": -3}]


def missing_id():
    return [("event", 1), {"type": "event"}]


NOT_CALLABLE = 42
'''


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The export source module, importable as ``tests_export_source``; forgotten afterwards."""
    directory = tmp_path / "source"
    directory.mkdir()
    (directory / f"{SOURCE}.py").write_text(SOURCE_CODE)
    sys.modules.pop(SOURCE, None)
    monkeypatch.syspath_prepend(str(directory))
    yield SOURCE
    sys.modules.pop(SOURCE, None)


@pytest.fixture
def export_cli(redis_url: str, namespace: str, real_redis: redis.Redis) -> Iterator[Invoke]:
    """Invoke ``livesync ARGS...`` in-process on the test's namespace and queue."""
    runner = CliRunner()
    env = {
        "LIVESYNC_REDIS_URL": redis_url,
        "LIVESYNC_NAMESPACE": namespace,
        "LIVESYNC_QUEUE": f"q-{namespace}",
        # export sources given as module:callable must be inside the allowed imports
        "LIVESYNC_ALLOWED_IMPORTS": f"{SOURCE},{MISSING_MODULE}",
    }

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), env=env)

    yield invoke
    real_redis.srem("rq:queues", f"rq:queue:q-{namespace}")


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    return tmp_path / "out" / "search.jsonl"


@pytest.fixture
def waiting(export_cli: Invoke, target: Path, source: str) -> Invoke:
    """Changes 1-3 published, then jsonl agent "search" added with --needs-export (pointer at 3)."""
    ok(export_cli("publish", "event", "1", "created"))
    ok(export_cli("publish", "event", "2", "created"))
    ok(export_cli("publish", "event", "3", "created"))
    ok(export_cli("agent", "add", "search", "--backend", "jsonl", "--option", f"path={target}", "--needs-export"))
    return export_cli


def lines(target: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in target.read_text().splitlines()]


def state(cli: Invoke) -> str:
    return str(as_json(cli("agent", "show", "search", "--json"))["state"])


# Adding an agent that needs an export


def test_add_with_needs_export_fences_the_pointer_at_the_head(export_cli: Invoke, target: Path) -> None:
    # Given changes 1-3
    for number in ("1", "2", "3"):
        ok(export_cli("publish", "event", number, "created"))

    # When a jsonl agent is added with --needs-export
    added = as_json(
        export_cli(
            "agent", "add", "search", "--backend", "jsonl", "--option", f"path={target}", "--needs-export", "--json"
        )
    )

    # Then it waits for its export with the pointer at the head
    assert (added["state"], added["pointers"]) == ("needs_export", [3])
    assert state(export_cli) == "needs_export"


def test_add_with_needs_export_and_another_start_is_bad_usage(export_cli: Invoke, target: Path) -> None:
    # When an agent needing an export is added at the tail
    result = export_cli(
        "agent",
        "add",
        "search",
        "--backend",
        "jsonl",
        "--option",
        f"path={target}",
        "--needs-export",
        "--start",
        "tail",
    )

    # Then it is refused: the export sends what exists, the track what follows
    assert result.exit_code == 2
    assert "--needs-export" in result.output


def test_run_of_an_agent_needing_an_export_is_refused(waiting: Invoke, target: Path) -> None:
    # Given an agent waiting for its export, with a change pending
    ok(waiting("publish", "event", "4", "created"))

    # When it is run
    result = waiting("agent", "run", "search")

    # Then the run is refused naming the export, and nothing was delivered
    assert result.exit_code == 1
    assert "export" in result.output
    assert not target.exists()


def test_tick_does_not_enqueue_an_agent_needing_an_export(waiting: Invoke) -> None:
    # Given an agent waiting for its export, with a change pending
    ok(waiting("publish", "event", "4", "created"))

    # When due agents are enqueued, even ignoring update times
    enqueued = as_json(waiting("tick", "--force", "--json"))["enqueued"]

    # Then it was not
    assert enqueued == []


# Exporting


def test_export_sends_every_object_as_created_in_batches_and_activates_the_agent(
    waiting: Invoke, target: Path, source: str
) -> None:
    # Given an agent waiting for its export, its pointer at 3
    # When 20 objects are exported in batches of 7
    result = as_json(
        waiting("agent", "export", "search", "--source", f"{source}:objects", "--batch-size", "7", "--json")
    )

    # Then every object arrived once as a created record carrying the pointer as seq, in 3 batches
    assert result == {
        "agent": "search",
        "objects": OBJECT_COUNT,
        "records": OBJECT_COUNT,
        "rejected": 0,
        "batches": 3,
        "elapsed": result["elapsed"],
        "completed": True,
    }
    records = lines(target)
    assert len(records) == OBJECT_COUNT
    expected = [("event", n) if n % 2 else ("contribution", f"c-{n}") for n in range(OBJECT_COUNT)]
    assert [(r["type"], r["id"]) for r in records] == expected
    assert {(r["action"], tuple(r["changes"]), r["seq"]) for r in records} == {("created", ("created",), 3)}
    assert state(waiting) == "active"


def test_export_uploads_batches_of_the_requested_size(manager: SyncManager, waiting: Invoke, source: str) -> None:
    # Given an agent waiting for its export and a backend keeping each batch
    backend = RecordingBackend()
    objects = export_module.load_source(f"{source}:objects", [SOURCE])()

    # When 20 objects are exported in batches of 7
    result = export_module.export_agent(manager, "search", objects, batch_size=7, backend=backend)

    # Then the batches hold 7, 7 and 6 records
    assert [len(batch) for batch in backend.batches] == [7, 7, 6]
    assert (result.batches, result.completed) == (3, True)


def test_export_text_output_says_the_agent_is_active(waiting: Invoke, source: str) -> None:
    # When the export runs without --json
    output = ok(waiting("agent", "export", "search", "--source", f"{source}:objects")).output

    # Then it says what was sent and that the agent is active
    assert f"exported {OBJECT_COUNT} object(s) to search: {OBJECT_COUNT} record(s) accepted, 0 rejected" in output
    assert "search is active" in output


def test_export_shows_no_progress_bar_when_stderr_is_not_a_terminal(waiting: Invoke, source: str) -> None:
    # When the export runs with output captured (not a terminal)
    result = ok(waiting("agent", "export", "search", "--source", f"{source}:objects", "--batch-size", "3"))

    # Then no progress bar was drawn
    assert "exporting to" not in result.output
    assert result.stderr == ""
    assert "#" not in result.output and "[" not in result.output


def test_changes_published_around_the_export_follow_with_the_next_run(
    waiting: Invoke, target: Path, source: str
) -> None:
    # Given a change published after the agent was added (seq 4)
    ok(waiting("publish", "event", "100", "title_changed"))

    # When the export runs, the application publishing event 101 (seq 5) in the middle of it, then the agent runs
    ok(waiting("agent", "export", "search", "--source", f"{source}:publishing"))
    [run] = as_json(waiting("agent", "run", "search", "--json"))

    # Then after the ten export records come the two changes, with higher seqs
    records = lines(target)
    assert [(r["id"], r["action"], r["seq"]) for r in records[:10]] == [(n, "created", 3) for n in range(10)]
    assert [(r["id"], r["action"], r["seq"]) for r in records[10:]] == [(100, "updated", 4), (101, "created", 5)]
    assert (run["pointer_before"], run["pointer_after"]) == (3, 5)


# Rejections and failures


def test_export_with_rejected_records_keeps_the_agent_waiting_and_dead_letters_them(
    manager: SyncManager, waiting: Invoke, source: str
) -> None:
    # Given a target that refuses events 3 and 7
    objects = export_module.load_source(f"{source}:objects", [SOURCE])()
    backend = RejectingBackend({3, 7}, "refused by the target")

    # When the export runs
    result = export_module.export_agent(manager, "search", objects, batch_size=7, backend=backend)

    # Then the others were accepted, the two refused are dead letters, and the agent still waits
    assert (result.records, result.rejected, result.completed) == (OBJECT_COUNT - 2, 2, False)
    assert [(e["record"]["id"], e["reason"]) for e in deadletters.entries(manager, "search")] == [
        (3, "refused by the target"),
        (7, "refused by the target"),
    ]
    assert manager.get_agent("search").state == "needs_export"


def test_cli_export_with_rejections_exits_1_and_a_rerun_after_the_fix_succeeds(
    waiting: Invoke, target: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a target that refuses events 3 and 7
    real_create_backend = upload.create_backend
    monkeypatch.setattr(upload, "create_backend", lambda *_args: RejectingBackend({3, 7}, "refused by the target"))

    # When the export runs
    result = waiting("agent", "export", "search", "--source", f"{source}:objects")

    # Then it exits 1 saying what to do, the refused records are dead letters, the agent still waits
    assert result.exit_code == 1, result.output
    assert "2 record(s) were rejected" in result.output
    assert "agent dlq search" in result.output
    assert [e["record"]["id"] for e in as_json(waiting("agent", "dlq", "search", "--json"))] == [3, 7]
    assert state(waiting) == "needs_export"

    # When the target is fixed and the export runs again
    monkeypatch.setattr(upload, "create_backend", real_create_backend)
    ok(waiting("agent", "export", "search", "--source", f"{source}:objects"))

    # Then every object arrived and the agent is active
    assert len(lines(target)) == OBJECT_COUNT
    assert state(waiting) == "active"


def test_cli_export_failing_midway_exits_1_and_keeps_the_agent_waiting(waiting: Invoke, source: str) -> None:
    # When the source fails after its first object
    result = waiting("agent", "export", "search", "--source", f"{source}:failing_midway")

    # Then the export fails in one line naming the cause and the agent still waits
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "database went away" in result.output
    assert "run it again" in result.output
    assert state(waiting) == "needs_export"


def test_cli_export_of_a_generator_source_sends_every_object(waiting: Invoke, target: Path, source: str) -> None:
    # When the source returns a generator (no length) of the 20 objects
    result = waiting("agent", "export", "search", "--source", f"{source}:generated", "--batch-size", "7")

    # Then every object arrived and the agent is active
    assert result.exit_code == 0, (result.output, result.exception)
    assert len(lines(target)) == OBJECT_COUNT
    assert state(waiting) == "active"


def test_cli_export_whose_source_raises_exits_1_in_one_line(waiting: Invoke, source: str) -> None:
    # When the source callable itself raises
    result = waiting("agent", "export", "search", "--source", f"{source}:raising")

    # Then the export fails in one line (no traceback) and the agent still waits
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), result.exception
    assert "cannot connect to the database" in result.output
    assert state(waiting) == "needs_export"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (SOURCE, "expected module:callable"),
        (f"{MISSING_MODULE}:objects", f"cannot import {MISSING_MODULE!r}"),
        (f"{SOURCE}:missing", "has no 'missing'"),
        (f"{SOURCE}:NOT_CALLABLE", "'NOT_CALLABLE' is not callable"),
    ],
    ids=["no-colon", "missing-module", "missing-attribute", "not-callable"],
)
def test_cli_export_with_a_bad_source_exits_2_naming_it(
    waiting: Invoke, target: Path, spec: str, fragment: str
) -> None:
    # When the export is given a source that cannot be used
    result = waiting("agent", "export", "search", "--source", spec)

    # Then it is bad input naming the source and why, and nothing was sent
    assert result.exit_code == 2, result.output
    assert f"--source {spec!r}" in result.output
    assert fragment in result.output
    assert not target.exists()
    assert state(waiting) == "needs_export"


@pytest.mark.parametrize(
    ("callable_name", "fragment"),
    [
        ("not_an_object", "object 1: must be a (type, id) pair or a dict with type and id"),
        ("bad_type", "object 1: type:"),
        ("bad_id", "object 1: id: must be non-negative"),
        ("missing_id", "object 1: id: field required"),
    ],
)
def test_cli_export_of_an_invalid_object_exits_2_naming_it(
    waiting: Invoke, source: str, callable_name: str, fragment: str
) -> None:
    # When the source returns an invalid second object
    result = waiting("agent", "export", "search", "--source", f"{source}:{callable_name}")

    # Then it is bad input naming that object, and the agent still waits
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert state(waiting) == "needs_export"


def test_cli_export_of_an_active_agent_is_refused(export_cli: Invoke, target: Path, source: str) -> None:
    # Given an active agent
    ok(export_cli("agent", "add", "search", "--backend", "jsonl", "--option", f"path={target}"))

    # When it is exported
    result = export_cli("agent", "export", "search", "--source", f"{source}:objects")

    # Then it is refused, saying it is not waiting for an export, and nothing was sent
    assert result.exit_code == 1
    assert "is active: only an agent added with --needs-export or one with a gap can be exported" in result.output
    assert not target.exists()


def test_cli_export_of_an_unknown_agent_is_bad_input(export_cli: Invoke, source: str) -> None:
    # Given a namespace without that agent
    ok(export_cli("publish", "event", "1", "created"))

    # When it is exported
    result = export_cli("agent", "export", "nosuch", "--source", f"{source}:objects")

    # Then it exits 2 naming the agent
    assert result.exit_code == 2
    assert "unknown agent 'nosuch'" in result.output


def test_cli_export_of_a_gap_agent_is_accepted(
    export_cli: Invoke, manager: SyncManager, real_redis: redis.Redis, target: Path, source: str
) -> None:
    # Given an agent that lost unread changes of a five-hour-old bucket to a one-hour retention
    keys = manager.keys.partition(0)
    bucket = int(time.time()) // manager.granularity - 300
    body = encode_body([("event", 1, FLAG_BITS["created"])])
    real_redis.zadd(keys.bucket(bucket), {f"1:{bucket * manager.granularity * 1000}:".encode() + body: 1})
    real_redis.zadd(keys.buckets, {str(bucket): 1})
    real_redis.set(keys.seq, 1)
    manager.add_agent(Agent(id="search", backend="jsonl", options={"path": str(target)}), start="tail")
    assert manager.maintain(3600)["gaps"] == ["search"]
    assert "re-export" in (manager.get_agent("search").last_error or "")

    # When it is re-exported, as its gap message suggests
    result = export_cli("agent", "export", "search", "--source", f"{source}:objects")

    # Then the export is accepted and the agent active again
    assert result.exit_code == 0, result.output
    assert state(export_cli) == "active"
