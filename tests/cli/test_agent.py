"""``livesync agent ...`` (livesync.cli.agent): add, list, show, pause, resume, run, reset, remove."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import Invoke, as_json, jsonl, line, listed, ok, seqs

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
