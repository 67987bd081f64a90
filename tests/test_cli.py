"""The ``livesync`` command line: publish, list, destroy, init, agents, status, tick, worker.

Every test drives ``livesync.cli.main`` through click's ``CliRunner`` against the real
test Redis, in the test's own namespace and RQ queue (``LIVESYNC_QUEUE``), and checks
exit codes (0 success, 2 bad usage or bad input, 1 other failures) and output; data is
read back through ``--json``. A few tests start real processes to prove that
``python -m livesync`` and the ``livesync`` console script work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from livesync import jobs
from livesync.cli import main
from livesync.keys import namespace_keys

UNREACHABLE_URL = "redis://:hunter2@127.0.0.1:1/0"
CONSOLE_SCRIPT = Path(sys.executable).with_name("livesync")

Invoke = Callable[..., Result]


@pytest.fixture
def env(redis_url: str, namespace: str) -> dict[str, str]:
    """The environment that points the CLI at the test Redis, namespace and queue."""
    return {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace, "LIVESYNC_QUEUE": f"q-{namespace}"}


@pytest.fixture
def cli(env: dict[str, str], namespace: str, real_redis: redis.Redis) -> Iterator[Invoke]:
    """Invoke ``livesync ARGS...`` in-process; the namespace and queue are deleted afterwards."""
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None, extra_env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, list(args), input=input, env={**env, **(extra_env or {})})

    yield invoke
    real_redis.srem("rq:queues", f"rq:queue:q-{namespace}")


def ok(result: Result) -> Result:
    """Assert a command succeeded, showing its output when it did not."""
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def as_json(result: Result) -> Any:
    """The JSON a successful ``--json`` command printed on standard output."""
    return json.loads(ok(result).stdout)


def listed(cli: Invoke, *args: str) -> list[dict[str, Any]]:
    """``livesync list --json ARGS...`` as a list of change dicts."""
    return as_json(cli("list", "--json", *args))  # type: ignore[no-any-return]


def seqs(changes: list[dict[str, Any]]) -> list[int]:
    return [change["seq"] for change in changes]


def jsonl(*items: dict[str, Any]) -> str:
    return "".join(json.dumps(item) + "\n" for item in items)


def line(type_: str, id_: Any, *changes: str) -> dict[str, Any]:
    return {"type": type_, "id": id_, "changes": list(changes)}


def head(real_redis: redis.Redis, namespace: str) -> int:
    """The head of partition 0, read without creating the namespace."""
    return int(real_redis.get(namespace_keys(namespace).partition(0).seq) or 0)


# publish: arguments


def test_publish_arguments_store_one_change_and_exit_0(cli: Invoke) -> None:
    # Given an empty namespace
    # When one change is published from the arguments
    result = cli("publish", "event", "42", "created", "title_changed")
    # Then it exits 0, says what it published, and the change is stored with its flags
    assert ok(result).output.startswith("published 1 change(s): seq 1")
    [change] = listed(cli)
    assert (change["seq"], change["type"], change["changes"]) == (1, "event", ["created", "title_changed"])


def test_publish_all_digit_id_becomes_an_integer(cli: Invoke) -> None:
    # Given an all-digit ID argument
    # When it is published
    ok(cli("publish", "event", "42", "created"))
    # Then the stored id is the integer 42
    [change] = listed(cli)
    assert change["id"] == 42
    assert isinstance(change["id"], int)


def test_publish_string_id_flag_keeps_an_all_digit_id_a_string(cli: Invoke) -> None:
    # Given an all-digit ID argument and --string-id
    # When it is published
    ok(cli("publish", "--string-id", "event", "42", "created"))
    # Then the stored id is the string "42"
    [change] = listed(cli)
    assert change["id"] == "42"


def test_publish_non_numeric_id_stays_a_string(cli: Invoke) -> None:
    # Given an ID argument that is not a number
    # When it is published
    ok(cli("publish", "contribution", "c-7", "deleted"))
    # Then the stored id is the string as given
    [change] = listed(cli)
    assert (change["type"], change["id"], change["changes"]) == ("contribution", "c-7", ["deleted"])


def test_publish_json_output_reports_published_count_and_seqs(cli: Invoke) -> None:
    # Given an empty namespace
    # When a change is published with --json
    data = as_json(cli("publish", "--json", "event", "1", "created"))
    # Then the output names how many were published and their seq span per partition
    assert data == {"published": 1, "partitions": {"0": {"first_seq": 1, "last_seq": 1}}}


@pytest.mark.parametrize(
    ("args", "field"),
    [
        pytest.param(["event", "", "created"], "id", id="empty-id"),
        pytest.param(["event", "x" * 257, "created"], "id", id="id-257-chars"),
        pytest.param(["event", "a\x01b", "created"], "id", id="control-character-in-id"),
        pytest.param(["event", "42", "bogus"], "changes[0]", id="unknown-flag"),
        pytest.param(["Event", "42", "created"], "type", id="bad-type"),
        pytest.param(["event", "42", "created", "deleted"], "changes", id="appear-and-disappear"),
    ],
)
def test_publish_invalid_arguments_exit_2_naming_the_field(
    cli: Invoke, real_redis: redis.Redis, namespace: str, args: list[str], field: str
) -> None:
    # Given an invalid change on the command line
    # When it is published
    result = cli("publish", *args)
    # Then it exits 2 with a one-line message naming the field, and nothing is stored
    assert result.exit_code == 2, result.output
    assert f"Error: {field}:" in result.output
    assert head(real_redis, namespace) == 0


def test_publish_without_arguments_or_file_is_a_usage_error(cli: Invoke) -> None:
    # Given neither TYPE ID CHANGE... nor --file
    # When publish runs
    result = cli("publish", "event")
    # Then it is bad usage: exit 2
    assert result.exit_code == 2
    assert "TYPE ID CHANGE" in result.output


# publish --file


def test_publish_file_path_publishes_every_line_in_order(cli: Invoke, tmp_path: Path) -> None:
    # Given a file of three JSON lines
    path = tmp_path / "changes.jsonl"
    path.write_text(
        jsonl(line("event", 1, "created"), line("contribution", "c-7", "deleted"), line("event", "42", "moved"))
    )
    # When it is published with --file PATH
    ok(cli("publish", "--file", str(path)))
    # Then every line is stored, in order, each id with its JSON type
    changes = listed(cli)
    assert [(c["seq"], c["type"], c["id"], c["changes"]) for c in changes] == [
        (1, "event", 1, ["created"]),
        (2, "contribution", "c-7", ["deleted"]),
        (3, "event", "42", ["moved"]),
    ]


def test_publish_file_dash_reads_standard_input(cli: Invoke) -> None:
    # Given JSON lines on standard input
    # When they are published with --file -
    data = as_json(
        cli("publish", "--json", "--file", "-", input=jsonl(line("event", 1, "created"), line("event", 2, "created")))
    )
    # Then both are published
    assert data["published"] == 2
    assert seqs(listed(cli)) == [1, 2]


def test_publish_file_skips_blank_lines(cli: Invoke) -> None:
    # Given JSON lines with blank and whitespace-only lines between them
    text = "\n" + jsonl(line("event", 1, "created")) + "   \n\n" + jsonl(line("event", 2, "moved")) + "\n"
    # When they are published
    ok(cli("publish", "--file", "-", input=text))
    # Then only the two changes are stored
    assert [c["id"] for c in listed(cli)] == [1, 2]


def test_publish_file_and_arguments_together_are_bad_usage(cli: Invoke) -> None:
    # Given both TYPE ... and --file
    # When publish runs
    result = cli("publish", "--file", "-", "event", "1", "created", input=jsonl(line("event", 1, "created")))
    # Then it exits 2 and says to choose one
    assert result.exit_code == 2
    assert "not both" in result.output


GOOD = json.dumps(line("event", 1, "created")).encode()


@pytest.mark.parametrize(
    ("bad_line", "fragments"),
    [
        pytest.param(b'{"type": "event", "id": 1,', ["invalid JSON"], id="malformed-json"),
        pytest.param(b'{"type": "event", "id": 1.5, "changes": ["created"]}', ["id:", "float"], id="id-float"),
        pytest.param(b'{"type": "event", "id": true, "changes": ["created"]}', ["id:", "bool"], id="id-bool"),
        pytest.param(b'{"type": "event", "id": 1, "changes": "created"}', ["changes:"], id="changes-a-string"),
        pytest.param(
            b'{"type": "event", "id": 1, "changes": {"created": 1}}',
            ["changes"],
            id="changes-an-object",
        ),
        pytest.param(b'{"type": "event", "id": 1, "changes": ["bogus"]}', ["changes[0]:", "bogus"], id="unknown-flag"),
        pytest.param(b'{"type": "event", "id": "", "changes": ["created"]}', ["id:", "empty"], id="empty-id"),
        pytest.param(
            json.dumps(line("event", "x" * 257, "created")).encode(), ["id:", "257"], id="oversized-id-257-chars"
        ),
        pytest.param(
            b'{"type": "event", "id": "a\\u0001b", "changes": ["created"]}', ["id:", "control"], id="control-char-id"
        ),
        pytest.param(b'{"type": "event", "id": "caf\xe9", "changes": ["created"]}', ["UTF-8"], id="invalid-utf8"),
        pytest.param(b"[1, 2]", ["JSON object"], id="not-an-object"),
        pytest.param(
            b'{"type": "event", "id": 1, "changes": ["created"], "colour": "red"}',
            ["colour:", "unknown field"],
            id="unknown-field",
        ),
        pytest.param(b'{"type": "event", "id": 1}', ["changes:", "required"], id="missing-field"),
        pytest.param(
            b'{"type": "event", "id": "' + b"x" * (1 << 20) + b'", "changes": ["created"]}',
            ["longer than 1048576 bytes"],
            id="line-over-1-mib",
        ),
    ],
)
def test_publish_file_with_one_bad_line_publishes_nothing_and_names_the_line(
    cli: Invoke, real_redis: redis.Redis, namespace: str, bad_line: bytes, fragments: list[str]
) -> None:
    # Given a namespace with one change, and a file whose line 3 is bad between good lines
    ok(cli("publish", "event", "100", "created"))
    text = GOOD + b"\n\n" + bad_line + b"\n" + GOOD + b"\n"
    # When the file is published
    result = cli("publish", "--file", "-", input=text)
    # Then it exits 2 naming line 3 and the problem, and nothing of the file was published
    assert result.exit_code == 2, result.output
    assert "Error: line 3: " in result.output
    for fragment in fragments:
        assert fragment in result.output
    assert "Traceback" not in result.output
    assert head(real_redis, namespace) == 1
    assert seqs(listed(cli)) == [1]


# agents: bad input


@pytest.mark.parametrize(
    "command",
    [["show"], ["run"], ["remove"], ["pause"], ["resume"], ["reset"]],
    ids=lambda command: command[0],
)
def test_unknown_agent_is_named_with_exit_2(cli: Invoke, command: list[str]) -> None:
    # Given a namespace without agent "nope"
    ok(cli("publish", "event", "1", "created"))
    # When an agent command names it
    result = cli("agent", *command, "nope")
    # Then it exits 2 with a message naming the agent
    assert result.exit_code == 2, result.output
    assert "unknown agent 'nope'" in result.output


def test_agent_add_unknown_backend_lists_available_ones(cli: Invoke) -> None:
    # Given a backend name nobody registered
    # When an agent is added with it
    result = cli("agent", "add", "a", "--backend", "nope")
    # Then it exits 2 naming it and listing the available backends
    assert result.exit_code == 2, result.output
    assert "unknown backend 'nope'" in result.output
    assert "available:" in result.output
    for name in ("debug", "jsonl", "null"):
        assert name in result.output


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        pytest.param(["--option", "path"], "--option 'path': expected KEY=VALUE", id="no-equals"),
        pytest.param(
            ["--option", "path=/tmp/x.jsonl", "--option", "colour=red"],
            "option 'colour': unknown option for backend jsonl (known: path)",
            id="unknown-key",
        ),
        pytest.param([], "option 'path': field required", id="missing-required-path"),
    ],
)
def test_agent_add_bad_option_exits_2_naming_the_option(cli: Invoke, options: list[str], fragment: str) -> None:
    # Given a jsonl agent with a bad --option
    # When it is added
    result = cli("agent", "add", "a", "--backend", "jsonl", *options)
    # Then it exits 2 naming the option, and no agent was added
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_agent_add_existing_id_is_bad_input(cli: Invoke) -> None:
    # Given an agent "a"
    ok(cli("agent", "add", "a", "--backend", "null"))
    # When another agent "a" is added
    result = cli("agent", "add", "a", "--backend", "null")
    # Then it exits 2 saying it exists
    assert result.exit_code == 2
    assert "agent 'a' already exists" in result.output


# unreachable Redis


@pytest.mark.parametrize(
    "command", [["status"], ["publish", "event", "1", "created"], ["agent", "list"]], ids=lambda c: " ".join(c)
)
def test_unreachable_redis_is_one_line_with_masked_url_and_exit_1(cli: Invoke, command: list[str]) -> None:
    # Given a Redis URL with a password where nothing listens
    # When a command needs Redis
    result = cli("--redis-url", UNREACHABLE_URL, *command)
    # Then it fails with exit 1 and one line naming the masked URL, never the password
    assert result.exit_code == 1, result.output
    assert "hunter2" not in result.output
    assert "redis://:***@127.0.0.1:1/0" in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
    assert result.output.startswith("Error: cannot reach Redis at")


def test_console_script_unreachable_redis_prints_no_traceback(env: dict[str, str]) -> None:
    # Given the installed console script and an unreachable Redis with a password
    # When status runs in a real process
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "--redis-url", UNREACHABLE_URL, "status"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Then stderr has one line naming the masked URL, no traceback, and it exits 1
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "redis://:***@127.0.0.1:1/0" in proc.stderr
    assert "hunter2" not in proc.stderr
    assert "Traceback" not in proc.stderr


# destroy


@pytest.fixture
def populated(cli: Invoke) -> Invoke:
    """A namespace with three changes and one agent ``a`` at the tail."""
    ok(cli("publish", "--file", "-", input=jsonl(*(line("event", n, "created") for n in (1, 2, 3)))))
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    return cli


def test_destroy_without_yes_refuses_and_deletes_nothing(populated: Invoke) -> None:
    # Given a namespace with changes and an agent
    # When destroy runs without --yes
    result = populated("destroy")
    # Then it exits 2 and everything is still there
    assert result.exit_code == 2
    assert "without --yes" in result.output
    assert seqs(listed(populated)) == [1, 2, 3]
    assert [a["id"] for a in as_json(populated("agent", "list", "--json"))] == ["a"]


def test_destroy_with_yes_deletes_track_and_agents(populated: Invoke, real_redis: redis.Redis, namespace: str) -> None:
    # Given a namespace with changes and an agent
    # When destroy runs with --yes
    ok(populated("destroy", "--yes"))
    # Then the namespace is gone: no key of it is left and reads say it does not exist
    assert list(real_redis.scan_iter(match=f"livesync:{{{namespace}*")) == []
    result = populated("list")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_destroy_agents_only_keeps_the_track(populated: Invoke) -> None:
    # Given a namespace with changes and an agent
    # When destroy runs with --agents-only --yes
    ok(populated("destroy", "--agents-only", "--yes"))
    # Then the agents are gone and the changes are still listed
    assert as_json(populated("agent", "list", "--json")) == []
    assert seqs(listed(populated)) == [1, 2, 3]


def test_destroy_track_only_keeps_the_agents(populated: Invoke) -> None:
    # Given a namespace with changes and an agent at the tail
    # When destroy runs with --track-only --yes
    ok(populated("destroy", "--track-only", "--yes"))
    # Then the changes are gone, the agent stays with its pointer at the kept head (nothing pending)
    assert listed(populated) == []
    [agent] = as_json(populated("agent", "list", "--json"))
    assert (agent["id"], agent["pointers"], agent["lag_changes"]) == ("a", [3], 0)
    assert as_json(populated("publish", "--json", "event", "9", "created"))["partitions"]["0"]["first_seq"] == 4


def test_destroy_agents_only_with_track_only_is_bad_usage(populated: Invoke) -> None:
    # Given a namespace with changes and an agent
    # When destroy gets both --agents-only and --track-only
    result = populated("destroy", "--agents-only", "--track-only", "--yes")
    # Then it exits 2 and deletes nothing
    assert result.exit_code == 2
    assert "exclude each other" in result.output
    assert seqs(listed(populated)) == [1, 2, 3]
    assert len(as_json(populated("agent", "list", "--json"))) == 1


# list: interval ]from, to]


def test_list_seq_bounds_exclude_from_and_include_to(populated: Invoke) -> None:
    # Given changes with seqs 1, 2, 3
    # When listing ]seq:1, seq:3]
    changes = listed(populated, "--from", "seq:1", "--to", "seq:3")
    # Then seqs 2 and 3 are listed
    assert seqs(changes) == [2, 3]


def test_list_bucket_bounds_include_the_to_bucket(populated: Invoke) -> None:
    # Given changes published in one call (one server time, so one bucket)
    bucket = listed(populated)[0]["bucket"]
    # When listing ]bucket - 1, bucket]
    changes = listed(populated, "--from", str(bucket - 1), "--to", str(bucket))
    # Then all of them are listed
    assert seqs(changes) == [1, 2, 3]
    assert {c["bucket"] for c in changes} == {bucket}


def test_list_bucket_bounds_exclude_the_from_bucket(populated: Invoke) -> None:
    # Given changes published in one bucket
    bucket = listed(populated)[0]["bucket"]
    # When listing ]bucket, bucket]
    changes = listed(populated, "--from", str(bucket), "--to", str(bucket))
    # Then nothing is listed
    assert changes == []


def test_list_iso_time_bounds_exclude_from_and_include_to(cli: Invoke) -> None:
    # Given two changes published a few milliseconds apart
    ok(cli("publish", "event", "1", "created"))
    time.sleep(0.005)
    ok(cli("publish", "event", "2", "created"))
    first, second = listed(cli)
    assert first["time"] < second["time"]
    # When listing ]time of the first, time of the second]
    between = listed(cli, "--from", first["time"], "--to", second["time"])
    # Then the first is excluded and the second included
    assert seqs(between) == [2]
    # And ]time of the second, ...] is empty, while a naive (UTC) --to at the first includes the first
    assert listed(cli, "--from", second["time"]) == []
    assert seqs(listed(cli, "--to", first["time"].removesuffix("Z"))) == [1]


def test_list_mixed_bound_kinds_is_bad_usage(populated: Invoke) -> None:
    # Given a namespace with changes
    bucket = listed(populated)[0]["bucket"]
    # When --from is a seq and --to a bucket id
    result = populated("list", "--from", "seq:1", "--to", str(bucket))
    # Then it exits 2 saying the bounds must be of the same kind
    assert result.exit_code == 2
    assert "same kind" in result.output


def test_list_unparsable_bound_is_bad_usage(populated: Invoke) -> None:
    # Given a bound that is neither a bucket id, seq:N nor an ISO time
    # When listing with it
    result = populated("list", "--to", "yesterday")
    # Then it exits 2 naming the option
    assert result.exit_code == 2
    assert "--to: 'yesterday'" in result.output


def test_list_non_ascii_digit_bound_is_bad_usage(populated: Invoke) -> None:
    # Given a bound made of a non-ASCII digit
    # When listing with it
    result = populated("list", "--from", "seq:²")
    # Then it is bad input: exit 2, no exception
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("filter_option", "expected"),
    [(["--include-type", "event"], [3]), (["--exclude-type", "event"], [2, 4])],
    ids=["include-type", "exclude-type"],
)
def test_list_agent_shows_only_unacknowledged_changes_after_its_type_filter(
    cli: Invoke, filter_option: list[str], expected: list[int]
) -> None:
    # Given events and contributions with seqs 1..4, and an agent that acknowledged seq 1
    ok(
        cli(
            "publish",
            "--file",
            "-",
            input=jsonl(
                line("event", 1, "created"),
                line("contribution", "c-1", "created"),
                line("event", 2, "created"),
                line("contribution", "c-2", "created"),
            ),
        )
    )
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "1", *filter_option))
    # When listing what the agent has pending
    changes = listed(cli, "--agent", "a")
    # Then only unacknowledged changes of the types it syncs are listed
    assert seqs(changes) == expected


def test_list_agent_after_a_run_shows_only_newer_changes(cli: Invoke) -> None:
    # Given an agent that ran over seqs 1 and 2, then a third change
    ok(cli("publish", "--file", "-", input=jsonl(line("event", 1, "created"), line("event", 2, "created"))))
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "tail"))
    ok(cli("agent", "add", "keeper", "--backend", "null", "--start", "tail"))  # keeps the buckets stored
    ok(cli("agent", "run", "a"))
    ok(cli("publish", "event", "3", "created"))
    # When listing what the agent has pending
    changes = listed(cli, "--agent", "a")
    # Then only the third change is listed, while everything is still stored
    assert seqs(changes) == [3]
    assert seqs(listed(cli)) == [1, 2, 3]


def test_list_limit_stops_after_n_changes(cli: Invoke) -> None:
    # Given five changes
    ok(cli("publish", "--file", "-", input=jsonl(*(line("event", n, "created") for n in range(1, 6)))))
    # When listing with --limit 2
    changes = listed(cli, "--limit", "2")
    # Then the two oldest are listed
    assert seqs(changes) == [1, 2]
    # And as a table, stderr says the limit stopped it
    result = ok(cli("list", "--limit", "2"))
    assert "stopped at --limit 2" in result.stderr
    assert [row.split()[0] for row in result.stdout.strip().splitlines()[2:]] == ["1", "2"]
    # And --limit 0 lists everything
    assert seqs(listed(cli, "--limit", "0")) == [1, 2, 3, 4, 5]


def test_list_table_shows_each_change(populated: Invoke) -> None:
    # Given three changes
    # When listing as a table
    output = ok(populated("list")).output
    # Then the header and one row per change are printed
    lines = output.strip().splitlines()
    assert lines[0].split() == ["seq", "partition", "time", "bucket", "type", "id", "changes"]
    assert [row.split()[0] for row in lines[2:]] == ["1", "2", "3"]


def test_list_missing_namespace_is_bad_input(cli: Invoke, namespace: str) -> None:
    # Given a namespace nobody created
    # When listing it
    result = cli("list")
    # Then it exits 2 saying the namespace does not exist (reads create nothing)
    assert result.exit_code == 2
    assert f"namespace {namespace!r} does not exist" in result.output


# agents


@pytest.mark.parametrize(("start", "pointer"), [("head", 3), ("tail", 0), ("2", 2)])
def test_agent_add_start_sets_the_pointer(populated: Invoke, start: str, pointer: int) -> None:
    # Given changes with seqs 1..3
    # When an agent is added with --start
    added = as_json(populated("agent", "add", "b", "--backend", "null", "--start", start, "--json"))
    # Then its pointer is there, in the add output and in show
    assert added["pointers"] == [pointer]
    assert as_json(populated("agent", "show", "b", "--json"))["pointers"] == [pointer]


def test_agent_add_defaults_to_head(populated: Invoke) -> None:
    # Given changes with seqs 1..3
    # When an agent is added without --start
    ok(populated("agent", "add", "b", "--backend", "null"))
    # Then its pointer is at the head: nothing is pending
    assert as_json(populated("agent", "show", "b", "--json"))["pointers"] == [3]
    assert listed(populated, "--agent", "b") == []


def test_agent_add_start_beyond_head_is_bad_input(populated: Invoke) -> None:
    # Given a head of 3
    # When an agent is added starting at seq 99
    result = populated("agent", "add", "b", "--backend", "null", "--start", "99")
    # Then it exits 2 naming the start
    assert result.exit_code == 2
    assert "start: seq 99" in result.output


def test_agent_list_json_shows_every_agent(populated: Invoke, tmp_path: Path) -> None:
    # Given agents "a" (null, at the tail) and "b" (jsonl, at the head)
    ok(populated("agent", "add", "b", "--backend", "jsonl", "--option", f"path={tmp_path / 'b.jsonl'}"))
    # When agents are listed with --json
    agents = as_json(populated("agent", "list", "--json"))
    # Then both appear, sorted by id, with backend, state, pointers and lag
    assert [(a["id"], a["backend"], a["state"], a["pointers"], a["lag_changes"]) for a in agents] == [
        ("a", "null", "active", [0], 3),
        ("b", "jsonl", "active", [3], 0),
    ]


def test_agent_list_table_mentions_each_agent(populated: Invoke) -> None:
    # Given agents "a" and "second"
    ok(populated("agent", "add", "second", "--backend", "null"))
    # When agents are listed as a table
    output = ok(populated("agent", "list")).output
    # Then each agent has its row
    rows = [row.split()[0] for row in output.strip().splitlines()[2:]]
    assert rows == ["a", "second"]


def test_agent_show_json_shows_settings_and_pointers(cli: Invoke, tmp_path: Path) -> None:
    # Given an agent added with options, name, description and update time
    ok(cli("publish", "event", "1", "created"))
    target = tmp_path / "search.jsonl"
    ok(
        cli(
            "agent",
            "add",
            "search",
            "--backend",
            "jsonl",
            "--option",
            f"path={target}",
            "--name",
            "search index",
            "--description",
            "feeds search",
            "--update-time",
            "5",
            "--start",
            "tail",
        )
    )
    # When it is shown with --json
    data = as_json(cli("agent", "show", "search", "--json"))
    # Then every setting, its pointers and lag are there
    assert data["id"] == "search"
    assert data["backend"] == "jsonl"
    assert data["options"] == {"path": str(target)}
    assert (data["name"], data["description"], data["update_time"]) == ("search index", "feeds search", 5)
    assert data["state"] == "active"
    assert data["pointers"] == [0]
    assert data["lag_changes"] == 1


def test_agent_pause_shows_paused_state(populated: Invoke) -> None:
    # Given an active agent
    # When it is paused
    assert "paused agent a" in ok(populated("agent", "pause", "a")).output
    # Then show reports it paused, and a run of it is refused
    assert as_json(populated("agent", "show", "a", "--json"))["state"] == "paused"
    result = populated("agent", "run", "a")
    assert result.exit_code == 1
    assert "paused" in result.output


def test_agent_resume_shows_active_state(populated: Invoke) -> None:
    # Given a paused agent
    ok(populated("agent", "pause", "a"))
    # When it is resumed
    assert "resumed agent a" in ok(populated("agent", "resume", "a")).output
    # Then show reports it active again
    assert as_json(populated("agent", "show", "a", "--json"))["state"] == "active"


def test_agent_run_delivers_records_to_the_jsonl_file(cli: Invoke, tmp_path: Path) -> None:
    # Given a jsonl agent at the tail and changes of two objects (one created then renamed)
    target = tmp_path / "out" / "search.jsonl"
    ok(
        cli(
            "publish",
            "--file",
            "-",
            input=jsonl(
                line("event", 1, "created"), line("contribution", "c-7", "deleted"), line("event", 1, "title_changed")
            ),
        )
    )
    ok(cli("agent", "add", "search", "--backend", "jsonl", "--option", f"path={target}", "--start", "tail"))
    version = {change["seq"]: change["version"] for change in listed(cli)}
    # When the agent runs
    [result] = as_json(cli("agent", "run", "search", "--json"))
    # Then the file holds one reduced record per object (with its last change's version), and the
    # pointer is at the head
    records = [json.loads(text) for text in target.read_text().splitlines()]
    assert records == [
        {
            "type": "contribution",
            "id": "c-7",
            "action": "deleted",
            "changes": ["deleted"],
            "seq": 2,
            "version": version[2],
        },
        {
            "type": "event",
            "id": 1,
            "action": "created",
            "changes": ["created", "title_changed"],
            "seq": 3,
            "version": version[3],
        },
    ]
    assert (result["changes"], result["records"], result["pointer_before"], result["pointer_after"]) == (3, 2, 0, 3)
    assert as_json(cli("agent", "show", "search", "--json"))["pointers"] == [3]


def test_agent_run_table_output_summarises_the_run(populated: Invoke) -> None:
    # Given an agent at the tail with three pending changes
    # When it runs without --json
    output = ok(populated("agent", "run", "a")).output
    # Then one line says what it did
    assert "a partition 0: 3 change(s) -> 3 record(s) (0 dead-lettered), pointer 0 -> 3" in output


@pytest.mark.parametrize(("to", "pointer"), [("tail", 0), ("head", 3), ("2", 2)])
def test_agent_reset_moves_the_pointer(cli: Invoke, to: str, pointer: int) -> None:
    # Given changes 1..3 and an agent in the middle (seq 1)
    ok(cli("publish", "--file", "-", input=jsonl(*(line("event", n, "created") for n in (1, 2, 3)))))
    ok(cli("agent", "add", "a", "--backend", "null", "--start", "1"))
    # When its pointer is reset
    assert f"agent a: pointer at {pointer}" in ok(cli("agent", "reset", "a", "--to", to)).output
    # Then show reports the new pointer
    assert as_json(cli("agent", "show", "a", "--json"))["pointers"] == [pointer]


def test_agent_reset_to_non_ascii_digit_is_bad_usage(populated: Invoke) -> None:
    # Given an agent
    # When its pointer is reset to a non-ASCII digit
    result = populated("agent", "reset", "a", "--to", "²")
    # Then it is bad input: exit 2, no exception
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_agent_remove_deletes_the_agent_and_keeps_the_track(populated: Invoke) -> None:
    # Given an agent "a"
    # When it is removed
    assert "removed agent a" in ok(populated("agent", "remove", "a")).output
    # Then it is gone and the changes stay
    assert as_json(populated("agent", "list", "--json")) == []
    assert seqs(listed(populated)) == [1, 2, 3]


# status


def test_status_json_reports_partitions_agents_and_queue(populated: Invoke, namespace: str) -> None:
    # Given three changes, agent "a" that ran over them, agent "b" that did not, then one more change
    ok(populated("agent", "add", "b", "--backend", "null", "--start", "tail"))
    ok(populated("agent", "run", "a"))
    ok(populated("publish", "event", "4", "created"))
    # When status runs with --json
    data = as_json(populated("status", "--json"))
    # Then it reports each partition's head and stored changes
    assert data["namespace"] == namespace
    [partition] = data["partitions"]
    assert (partition["partition"], partition["head"], partition["stored"]) == (0, 4, 4)
    # And per agent its state, pointers, lag, last run, last error and dead letters
    agents = {agent["id"]: agent for agent in data["agents"]}
    assert set(agents) == {"a", "b"}
    a, b = agents["a"], agents["b"]
    assert (a["state"], a["pointers"], a["lag_changes"], a["last_error"], a["dead_letters"]) == (
        "active",
        [3],
        1,
        None,
        0,
    )
    assert a["last_run_at"] is not None
    assert a["lag_seconds"] is not None and a["lag_seconds"] >= 0
    assert (b["pointers"], b["lag_changes"], b["last_run_at"]) == ([0], 4, None)
    # And the RQ queue of the namespace's settings
    queue = data["queue"]
    assert queue["name"] == f"q-{namespace}"
    assert (queue["queued"], queue["workers"], queue["failed"]) == (0, 0, 0)


def test_status_table_mentions_each_agent(populated: Invoke, namespace: str) -> None:
    # Given agents "a" and "second"
    ok(populated("agent", "add", "second", "--backend", "null"))
    # When status runs as a table
    output = ok(populated("status")).output
    # Then the namespace, each agent and the queue are mentioned
    assert f"namespace {namespace}" in output
    agent_rows = [row.split()[0] for row in output.splitlines() if row.startswith(("a ", "second "))]
    assert agent_rows == ["a", "second"]
    assert f"queue q-{namespace}:" in output


# tick and worker


@pytest.fixture
def jobs_state() -> Iterator[None]:
    """Forget what the worker command configured in ``livesync.jobs``."""
    yield
    jobs.reset()


def test_tick_enqueues_due_runs_once(cli: Invoke, jobs_state: None, namespace: str, tmp_path: Path) -> None:
    # Given an agent with pending changes that never ran
    ok(cli("publish", "event", "1", "created"))
    ok(cli("agent", "add", "a", "--backend", "jsonl", "--option", f"path={tmp_path / 'a.jsonl'}", "--start", "tail"))
    # When tick runs twice
    first = as_json(cli("tick", "--json"))["enqueued"]
    second = as_json(cli("tick", "--json"))["enqueued"]
    # Then the first enqueues one run and the second nothing, as that run is still queued
    assert len(first) == 1
    assert first[0].startswith(f"livesync-{namespace}-a-0-")
    assert second == []
    assert as_json(cli("status", "--json"))["queue"]["queued"] == 1


def test_worker_burst_runs_the_enqueued_jobs_into_the_jsonl_target(
    cli: Invoke, jobs_state: None, namespace: str, tmp_path: Path
) -> None:
    # Given two changes and a jsonl agent whose run a tick enqueued
    target = tmp_path / "a.jsonl"
    ok(cli("publish", "--file", "-", input=jsonl(line("event", 1, "created"), line("event", 2, "created"))))
    ok(cli("agent", "add", "a", "--backend", "jsonl", "--option", f"path={target}", "--start", "tail"))
    assert len(as_json(cli("tick", "--json"))["enqueued"]) == 1
    # When a burst worker runs
    ok(cli("worker", "--burst", "--simple", "--name", f"w-{namespace}"))
    # Then the target received the records, the pointer is at the head and the queue is empty
    records = [json.loads(text) for text in target.read_text().splitlines()]
    assert [(r["id"], r["action"], r["seq"]) for r in records] == [(1, "created", 1), (2, "created", 2)]
    status = as_json(cli("status", "--json"))
    assert status["agents"][0]["pointers"] == [2]
    assert (status["queue"]["queued"], status["queue"]["failed"]) == (0, 0)


# init and partitions


def test_init_partitions_are_fixed_once_the_namespace_exists(cli: Invoke) -> None:
    # Given a namespace created with 4 partitions
    assert as_json(cli("init", "--partitions", "4", "--json"))["partitions"] == 4
    # When init asks for 2
    result = cli("init", "--partitions", "2")
    # Then it exits 2 saying the partitions are fixed
    assert result.exit_code == 2
    assert "has 4 partition(s), not 2" in result.output
    assert "fixed" in result.output


def test_partitions_env_creates_a_new_namespace_with_that_many_partitions(cli: Invoke) -> None:
    # Given LIVESYNC_PARTITIONS=4 and a namespace that does not exist yet
    # When a change is published
    ok(cli("publish", "event", "1", "created", extra_env={"LIVESYNC_PARTITIONS": "4"}))
    # Then the namespace has 4 partitions, and the change is in one of them
    partitions = as_json(cli("status", "--json"))["partitions"]
    assert [p["partition"] for p in partitions] == [0, 1, 2, 3]
    assert sorted(p["head"] for p in partitions) == [0, 0, 0, 1]


# help


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["publish"],
        ["list"],
        ["init"],
        ["destroy"],
        ["status"],
        ["tick"],
        ["worker"],
        ["demo"],
        ["agent"],
        ["agent", "add"],
        ["agent", "list"],
        ["agent", "show"],
        ["agent", "remove"],
        ["agent", "pause"],
        ["agent", "resume"],
        ["agent", "run"],
        ["agent", "reset"],
    ],
    ids=lambda command: " ".join(command) or "livesync",
)
def test_help_exits_0(command: list[str]) -> None:
    # Given any command path
    # When it is asked for --help
    result = CliRunner().invoke(main, [*command, "--help"])
    # Then it prints its usage and exits 0
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")


# real processes


def test_python_dash_m_livesync_publishes_and_lists(env: dict[str, str], real_redis: redis.Redis) -> None:
    # Given the test namespace in the environment
    run_env = {**os.environ, **env}
    # When a change is published and listed through `python -m livesync`
    publish = subprocess.run(
        [sys.executable, "-m", "livesync", "publish", "event", "42", "created"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    listing = subprocess.run(
        [sys.executable, "-m", "livesync", "list", "--json"], env=run_env, capture_output=True, text=True, timeout=30
    )
    # Then both exit 0 and the change is listed with an integer id
    assert publish.returncode == 0, publish.stderr
    assert listing.returncode == 0, listing.stderr
    assert [(c["seq"], c["id"]) for c in json.loads(listing.stdout)] == [(1, 42)]


def test_console_script_bad_input_exits_2(env: dict[str, str], real_redis: redis.Redis) -> None:
    # Given the installed `livesync` console script
    # When it publishes an unknown flag
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "publish", "event", "1", "bogus"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Then it exits 2 with one line naming the field
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("Error: changes[0]: unknown flag 'bogus'")
    assert "Traceback" not in proc.stderr


def test_console_script_prints_its_version() -> None:
    # Given the installed `livesync` console script
    # When it is asked for its version
    proc = subprocess.run([str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, timeout=30)
    # Then it exits 0 naming the program and the package version
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("livesync, version ")
