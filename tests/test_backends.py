"""Backends: discovery by entry point, options, and the built-in null/debug/jsonl."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from livesync import plugins
from livesync.backends import (
    ENTRY_POINT_GROUP,
    Backend,
    available_backends,
    create_backend,
    load_backend,
    parse_options,
)
from livesync.backends.debug import DebugBackend
from livesync.backends.jsonl import JsonlBackend
from livesync.backends.null import NullBackend
from livesync.errors import ConfigurationError, RecordRejected, UnknownBackend
from livesync.records import Record

CONTRACT_KEYS = {"type", "id", "action", "changes", "seq", "version"}


def records() -> list[Record]:
    return [
        Record(type="event", id=42, action="updated", changes=("title_changed",), seq=7, version=1_700_000_000_000_007),
        Record(
            type="contribution", id="c-7", action="deleted", changes=("deleted",), seq=9, version=1_700_000_000_000_009
        ),
        Record(
            type="event",
            id=43,
            action="created",
            changes=("created", "data_changed"),
            seq=12,
            version=1_700_000_000_000_012,
        ),
    ]


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class ThirdPartyBackend(Backend):
    """Stands in for a backend another package registers."""

    name = "thirdparty"

    def upload(self, records: Sequence[Record]) -> None:
        pass


@pytest.fixture(autouse=True)
def fresh_entry_points() -> Iterator[None]:
    """Entry points are scanned once per process: tests that fake them scan afresh, and after."""
    plugins.forget_entry_points()
    yield
    plugins.forget_entry_points()


@pytest.fixture
def fake_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    real_entry_points = metadata.entry_points
    extra = metadata.EntryPoint(name="thirdparty", value=f"{__name__}:ThirdPartyBackend", group=ENTRY_POINT_GROUP)

    def entry_points(*, group: str) -> metadata.EntryPoints:
        found = real_entry_points(group=group)
        return metadata.EntryPoints([*found, extra]) if group == ENTRY_POINT_GROUP else found

    monkeypatch.setattr(metadata, "entry_points", entry_points)


# Discovery


@pytest.mark.parametrize(
    ("name", "expected"), [("null", NullBackend), ("debug", DebugBackend), ("jsonl", JsonlBackend)]
)
def test_load_backend_finds_builtins_by_entry_point(name: str, expected: type[Backend]) -> None:
    assert load_backend(name) is expected
    assert expected.name == name
    assert name in available_backends()


def test_unknown_backend_raises_naming_it_and_listing_available() -> None:
    with pytest.raises(UnknownBackend) as info:
        load_backend("nope")

    message = str(info.value)
    assert "'nope'" in message
    assert "debug, jsonl, null" in message
    assert isinstance(info.value, ConfigurationError)


def test_third_party_backend_registered_by_entry_point_is_loadable(fake_entry_point: None) -> None:
    assert "thirdparty" in available_backends()
    assert load_backend("thirdparty") is ThirdPartyBackend

    backend = create_backend("thirdparty", "agent-1", {})

    assert isinstance(backend, ThirdPartyBackend)
    assert backend.agent_id == "agent-1"


def test_entry_point_that_is_not_a_backend_raises_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bogus = metadata.EntryPoint(name="bogus", value="os:path", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(metadata, "entry_points", lambda **params: metadata.EntryPoints([bogus]))

    with pytest.raises(ConfigurationError, match=r"'bogus'.*not a livesync Backend"):
        load_backend("bogus")


# Options


def test_jsonl_missing_path_raises_configuration_error_naming_path() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_options(JsonlBackend, {})

    assert str(info.value) == "option 'path': field required"


def test_unknown_option_raises_configuration_error_naming_it() -> None:
    with pytest.raises(ConfigurationError) as info:
        create_backend("jsonl", "agent-1", {"path": "out.jsonl", "foo": "1"})

    message = str(info.value)
    assert message.startswith("option 'foo': unknown option for backend jsonl")
    assert "path" in message
    assert "\n" not in message


def test_option_for_backend_without_options_says_it_takes_none() -> None:
    with pytest.raises(ConfigurationError, match="option 'path': unknown option for backend null"):
        parse_options(NullBackend, {"path": "x"})


def test_options_of_another_backend_are_refused_at_creation(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"JsonlBackend\.Options"):
        JsonlBackend("agent-1", DebugBackend.Options())


# jsonl


def test_jsonl_appends_records_as_json_lines_with_contract_keys(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    backend = create_backend("jsonl", "agent-1", {"path": str(path)})

    with backend:
        backend.upload(records())

    lines = read_lines(path)
    assert [set(line) for line in lines] == [CONTRACT_KEYS] * 3
    assert lines[0] == {
        "type": "event",
        "id": 42,
        "action": "updated",
        "changes": ["title_changed"],
        "seq": 7,
        "version": 1_700_000_000_000_007,
    }
    assert type(lines[0]["id"]) is int
    assert lines[1]["id"] == "c-7"
    assert [Record.from_dict(line) for line in lines] == records()


def test_jsonl_writes_compact_utf8_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    record = Record(type="event", id="café", action="updated", changes=("title_changed",), seq=1, version=5)

    with create_backend("jsonl", "agent-1", {"path": str(path)}) as backend:
        backend.upload([record])

    assert path.read_bytes() == (
        '{"type":"event","id":"café","action":"updated","changes":["title_changed"],"seq":1,"version":5}\n'.encode()
    )


def test_jsonl_fsyncs_once_per_batch_after_writing_it_completely(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.jsonl"
    lines_at_fsync: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        lines_at_fsync.append(len(path.read_bytes().splitlines()))
        real_fsync(fd)

    with create_backend("jsonl", "agent-1", {"path": str(path)}) as backend:
        # Patched after open(), which fsyncs the directory of a newly created file.
        monkeypatch.setattr(os, "fsync", counting_fsync)
        backend.upload(records())
        backend.upload(records()[:2])

    assert lines_at_fsync == [3, 5]


def test_jsonl_appends_across_opens_without_truncating(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first, second = records()[:1], records()[1:]

    with create_backend("jsonl", "agent-1", {"path": str(path)}) as backend:
        backend.upload(first)
    with create_backend("jsonl", "agent-1", {"path": str(path)}) as backend:
        backend.upload(second)

    assert [line["seq"] for line in read_lines(path)] == [7, 9, 12]


def test_jsonl_creates_missing_parent_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.jsonl"

    with create_backend("jsonl", "agent-1", {"path": str(path)}) as backend:
        backend.upload(records())

    assert len(read_lines(path)) == 3


def test_jsonl_write_error_propagates_and_leaves_no_partial_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.jsonl"

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with create_backend("jsonl", "agent-1", {"path": str(path)}) as backend:
        backend.upload(records()[:1])
        monkeypatch.setattr(os, "fsync", failing_fsync)
        with pytest.raises(OSError, match="No space left"):
            backend.upload(records()[1:])

    assert [line["seq"] for line in read_lines(path)] == [7]


def test_jsonl_rejects_unencodable_record_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    broken = Record(type="event", id="bad\udcff", action="updated", changes=("moved",), seq=8, version=8)

    with (
        create_backend("jsonl", "agent-1", {"path": str(path)}) as backend,
        pytest.raises(RecordRejected) as info,
    ):
        backend.upload([records()[0], broken, records()[1]])

    assert [record for record, _ in info.value.rejections] == [broken]
    assert [line["seq"] for line in read_lines(path)] == [7, 9]


def test_jsonl_upload_before_open_raises(tmp_path: Path) -> None:
    backend = create_backend("jsonl", "agent-1", {"path": str(tmp_path / "out.jsonl")})

    with pytest.raises(RuntimeError, match="not open"):
        backend.upload(records())


# debug


def test_debug_prints_one_readable_line_per_record(capsys: pytest.CaptureFixture[str]) -> None:
    with create_backend("debug", "agent-1", {}) as backend:
        backend.upload(records())

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[agent-1] batch of 3 record(s)"
    assert len(lines) == 4
    assert "updated" in lines[1]
    assert "event" in lines[1]
    assert "42" in lines[1]
    assert "seq 7" in lines[1]
    assert "title_changed" in lines[1]
    assert "deleted contribution 'c-7' (seq 9, version 1700000000000009; deleted)" in lines[2]


def test_debug_puts_prefix_before_every_line(capsys: pytest.CaptureFixture[str]) -> None:
    with create_backend("debug", "agent-1", {"prefix": ">> "}) as backend:
        backend.upload(records()[:1])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ">> [agent-1] batch of 1 record(s)"
    assert lines[1].startswith(">> ")


def test_debug_writes_to_given_stream() -> None:
    stream = io.StringIO()
    backend = DebugBackend("agent-1", DebugBackend.Options(), stream=stream)

    backend.upload(records()[:1])

    assert "seq 7" in stream.getvalue()


# null


def test_null_accepts_anything_and_counts_it() -> None:
    backend = create_backend("null", "agent-1", {})
    assert isinstance(backend, NullBackend)

    with backend:
        backend.upload(records())
        backend.upload([])

    assert backend.batches == 2
    assert backend.records == 3
