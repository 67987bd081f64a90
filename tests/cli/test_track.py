"""``livesync publish``, ``list``, ``destroy`` and ``init`` (livesync.cli.track)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from .helpers import Invoke, as_json, head, jsonl, line, listed, ok, seqs

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


# destroy


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
