"""Operator-facing defects of the CLI (issue 9, items 17 and 19).

``agent reset`` needs ``--to`` and prints the old and new pointer; bad Redis URLs are bad
input (exit 2); Ctrl-C during ``agent run`` exits 130 without counting a failure; a
requeue whose records are rejected again fails; ``destroy`` of a missing namespace says
so. Every test drives ``livesync.cli.main`` through click's ``CliRunner`` against the
real test Redis, in the test's own namespace and RQ queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import redis
from cli.helpers import Invoke, as_json, ok
from click.testing import CliRunner, Result

from livesync import connection
from livesync import export as export_module
from livesync.backends.null import NullBackend
from livesync.cli import main
from livesync.client import Publisher
from livesync.errors import ConfigurationError, RecordRejected
from livesync.manager import SyncManager
from livesync.records import Record
from livesync.runner import run_agent


def publish(cli: Invoke, *ids: int) -> None:
    lines = "".join(json.dumps({"type": "event", "id": n, "changes": ["created"]}) + "\n" for n in ids)
    ok(cli("publish", "--file", "-", input=lines))


def one_line_without_traceback(result: Result) -> str:
    """The single line a failing command printed; no exception escaped click."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


# item 17: agent reset needs --to and shows what it moved


def test_agent_reset_without_to_exits_2_and_leaves_the_pointer(cli: Invoke) -> None:
    # Given changes 1..3 and an agent at seq 1
    publish(cli, 1, 2, 3)
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "1"))
    # When it is reset without --to
    result = cli("agent", "reset", "a")
    # Then it is bad usage naming the choices and the risk, and the pointer did not move
    assert result.exit_code == 2
    line = one_line_without_traceback(result)
    assert "agent reset: --to is required (head, tail, a seq or an ISO time)" in line
    assert "cannot be restored after a prune" in line
    assert as_json(cli("agent", "show", "a", "--json"))["pointers"] == [1]


def test_agent_reset_prints_the_old_and_new_pointer(cli: Invoke) -> None:
    # Given changes 1..3 and an agent at seq 1
    publish(cli, 1, 2, 3)
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "1"))
    # When it is reset to the head
    output = ok(cli("agent", "reset", "a", "--to", "head")).output
    # Then the output says where the pointer was, so the operator can move it back
    assert "pointer of a: partition 0: 1 -> 3" in output


def test_agent_reset_prints_every_partition_of_a_partitioned_namespace(cli: Invoke, namespace: str) -> None:
    # Given a namespace of 2 partitions with changes in both and an agent at the tail
    ok(cli("init", "--partitions", "2"))
    publish(cli, *range(1, 21))
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    heads = [p["head"] for p in as_json(cli("status", "--json"))["partitions"]]
    assert all(heads)
    # When it is reset to the head
    output = ok(cli("agent", "reset", "a", "--to", "head")).output
    # Then each partition's move is on its own line
    for partition, head in enumerate(heads):
        assert f"pointer of a: partition {partition}: 0 -> {head}" in output


# item 19 (a): invalid port or database in a Redis URL is bad input


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("redis://localhost:notaport/0", "port 'notaport'"),
        ("redis://localhost:99999/0", "port '99999'"),
        ("redis://localhost:0/0", "port '0'"),
        ("redis://localhost:6379/x", "database 'x'"),
        ("redis://localhost:6379/-1", "database '-1'"),
        ("redis://localhost:6379/0?db=y", "database 'y'"),
        ("unix:///tmp/redis.sock?db=two", "database 'two'"),
    ],
)
def test_validate_url_names_the_bad_part(url: str, part: str) -> None:
    # Given a Redis URL with a bad port or database number
    # When it is validated
    with pytest.raises(ConfigurationError) as excinfo:
        connection.validate_url(url)
    # Then the error names the part and the URL
    assert part in str(excinfo.value)
    assert "invalid Redis URL" in str(excinfo.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",
        "redis://localhost/",
        "rediss://user:p%40ss@example.org:6380/15",
        "redis+cluster://a:7000",
        "unix:///tmp/redis.sock",
        "unix:///tmp/redis.sock?db=3",
        "redis://:pw@[::1]:6379/2",
        "redis://localhost:6379/0?password=p@ss",
    ],
)
def test_validate_url_accepts_valid_urls(url: str) -> None:
    connection.validate_url(url)


@pytest.mark.parametrize(
    "url", ["redis://:se/cr3t@localhost:6379/0", "redis://:se?cr3t@localhost:6379/0", "redis://:s#e:cr3t@host/0"]
)
def test_validate_url_never_echoes_a_password_with_unencoded_reserved_characters(url: str) -> None:
    # Given a password holding "/", "?" or "#" unencoded (the URL parser takes part of it for the port or path)
    # When the URL is validated
    with pytest.raises(ConfigurationError) as excinfo:
        connection.validate_url(url)
    # Then no piece of the password is in the message, which says to percent-encode it
    message = str(excinfo.value)
    assert "cr3t" not in message and "se/" not in message and "se?" not in message
    assert "percent-encoded" in message


def test_connect_refuses_a_database_that_is_not_a_number_instead_of_using_db_0() -> None:
    # Given a URL whose database part is not a number (redis-py would silently use db 0)
    # When a client is built for it
    # Then it is a configuration error, raised before any connection is tried
    with pytest.raises(ConfigurationError, match="database 'x'"):
        connection.connect("redis://localhost:6379/x")


@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("redis://:hunter2@localhost:notaport/0", "port 'notaport'"),
        ("redis://:hunter2@localhost:6379/x", "database 'x'"),
        ("redis://:hunter2@localhost:99999/0", "port '99999'"),
    ],
)
def test_cli_invalid_redis_url_exits_2_with_one_masked_line(url: str, part: str, namespace: str) -> None:
    # Given a Redis URL with a bad port or database (and a password)
    # When any command uses it
    result = CliRunner().invoke(main, ["--redis-url", url, "--namespace", namespace, "agent", "list"])
    # Then it is bad input: exit 2, one line naming the part, the password masked
    assert result.exit_code == 2, result.output
    line = one_line_without_traceback(result)
    assert part in line
    assert "hunter2" not in result.output
    assert "redis://:***@localhost" in line


# item 19 (b): Ctrl-C during agent run


def interrupt(self: NullBackend, records: Sequence[Record]) -> None:
    raise KeyboardInterrupt


def test_ctrl_c_during_agent_run_exits_130_without_a_failure(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch, namespace: str
) -> None:
    # Given an agent at the tail with three pending changes, whose backend gets Ctrl-C in upload
    publish(cli, 1, 2, 3)
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    monkeypatch.setattr(NullBackend, "upload", interrupt)
    # When it runs
    result = cli("agent", "run", "a")
    # Then it exits 130 with one line saying where the pointer is
    assert result.exit_code == 130, (result.output, result.exception)
    line = one_line_without_traceback(result)
    assert "interrupted; pointer at 0" in line
    # And the run is not counted as a failure, and the window in flight was not acknowledged
    shown = as_json(cli("agent", "show", "a", "--json"))
    assert (shown["failures"], shown["last_error"], shown["pointers"]) == (0, None, [0])


def test_agent_run_after_ctrl_c_takes_the_lock_and_delivers(cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a run of an agent that was interrupted by Ctrl-C
    publish(cli, 1, 2, 3)
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    monkeypatch.setattr(NullBackend, "upload", interrupt)
    assert cli("agent", "run", "a").exit_code == 130
    monkeypatch.undo()
    # When it runs again
    [run] = as_json(cli("agent", "run", "a", "--json"))
    # Then the lock was released: the run delivers everything
    assert (run["pointer_before"], run["pointer_after"]) == (0, 3)


def ctrl_c(*args: object, **kwargs: object) -> Any:
    raise KeyboardInterrupt


def test_ctrl_c_during_an_export_source_exits_130_with_one_line(cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an agent waiting for its export, and a source that gets Ctrl-C while it lists the objects
    ok(cli("agent", "add", "a", "--backend", "null", "--needs-export"))
    monkeypatch.setattr(export_module, "load_source", lambda spec, allowed=(): ctrl_c)
    # When the export runs
    result = cli("agent", "export", "a", "--source", "anything")
    # Then it exits 130 with one line, as --help promises, not click's "Aborted!" and 1
    assert result.exit_code == 130, (result.output, result.exception)
    line = one_line_without_traceback(result)
    assert "interrupted" in line and "Aborted" not in line


def test_ctrl_c_during_publish_from_a_file_exits_130_with_one_line(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a publisher that gets Ctrl-C while it writes
    monkeypatch.setattr(Publisher, "emit_validated", ctrl_c)
    lines = json.dumps({"type": "event", "id": 1, "changes": ["created"]}) + "\n"
    # When changes are published from a file
    result = cli("publish", "--file", "-", input=lines)
    # Then it exits 130 with one line
    assert result.exit_code == 130, (result.output, result.exception)
    line = one_line_without_traceback(result)
    assert "interrupted" in line and "Aborted" not in line


def test_run_agent_interrupted_records_the_run_without_a_failure(real_redis: redis.Redis, namespace: str) -> None:
    # Given an agent at the tail with pending changes, with one earlier failure on record
    from livesync.client import Publisher
    from livesync.manager import Agent

    manager = SyncManager(real_redis, namespace)
    Publisher(real_redis, namespace).emit_many([("event", n, ["created"]) for n in (1, 2, 3)])
    manager.add_agent(Agent(id="a", backend="null"), start="tail")
    manager.record_run("a", started=0.0, changes=0, records=0, rejected=0, error="RuntimeError: target down")

    class Interrupted(NullBackend):
        def upload(self, records: Sequence[Record]) -> None:
            raise KeyboardInterrupt

    # When a run gets Ctrl-C in upload
    with pytest.raises(KeyboardInterrupt):
        run_agent(manager, "a", backend=Interrupted("a", NullBackend.Options()))
    # Then the run is recorded, the failure count and last error stay, and the pointer did not move
    agent = manager.get_agent("a")
    assert (agent.runs, agent.failures, agent.last_error) == (2, 1, "RuntimeError: target down")
    assert manager.pointers("a") == [0]


# item 19 (c): dlq --requeue fails when records are rejected again


def reject_ids(*ids: int) -> Callable[[NullBackend, Sequence[Record]], None]:
    def upload(self: NullBackend, records: Sequence[Record]) -> None:
        refused = [(record, "refused by the test target") for record in records if record.id in ids]
        if refused:
            raise RecordRejected(refused)

    return upload


def test_dlq_requeue_exits_1_when_records_are_rejected_again(cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an agent with two dead letters (events 1 and 2)
    publish(cli, 1, 2, 3)
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    monkeypatch.setattr(NullBackend, "upload", reject_ids(1, 2))
    ok(cli("agent", "run", "a"))
    assert len(as_json(cli("agent", "dlq", "a", "--json"))) == 2
    # When they are requeued and the target still refuses event 1
    monkeypatch.setattr(NullBackend, "upload", reject_ids(1))
    result = cli("agent", "dlq", "a", "--requeue")
    # Then it fails (exit 1) saying how many were rejected again; that one stays on the list
    assert result.exit_code == 1, result.output
    assert "requeued 1 record(s); 1 rejected again" in result.output
    assert "1 dead letter(s) of a were rejected again" in result.output
    [letter] = as_json(cli("agent", "dlq", "a", "--json"))
    assert letter["record"]["id"] == 1


def test_dlq_requeue_exits_0_when_every_record_is_accepted(cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an agent with two dead letters
    publish(cli, 1, 2, 3)
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    monkeypatch.setattr(NullBackend, "upload", reject_ids(1, 2))
    ok(cli("agent", "run", "a"))
    monkeypatch.undo()
    # When they are requeued to a target that accepts them
    output = ok(cli("agent", "dlq", "a", "--requeue")).output
    # Then it succeeds and the list is empty
    assert "requeued 2 record(s); 0 rejected again" in output
    assert as_json(cli("agent", "dlq", "a", "--json")) == []


# item 19 (d): destroy of a namespace that does not exist


def test_destroy_of_a_missing_namespace_says_nothing_was_deleted(
    cli: Invoke, real_redis: redis.Redis, namespace: str
) -> None:
    # Given a namespace that does not exist
    # When destroy --yes runs on it
    result = cli("destroy", "--yes")
    # Then it succeeds (the namespace is absent, as asked) but says it did not exist
    assert result.exit_code == 0, result.output
    assert f"namespace {namespace!r} does not exist" in result.output
    assert "nothing deleted" in result.output
    assert list(real_redis.scan_iter(match=f"livesync:{{{namespace}*")) == []
