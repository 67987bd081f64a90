"""The ``jsonl`` backend under concurrent writers and after crashes; its path checked at ``agent add``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from livesync.backends import create_backend
from livesync.backends.jsonl import JsonlBackend
from livesync.errors import ConfigurationError
from livesync.keys import namespace_keys
from livesync.manager import Agent, SyncManager
from livesync.records import Record


def batch(first_seq: int, count: int = 3) -> list[Record]:
    return [
        Record(type="event", id=seq, action="updated", changes=("title_changed",), seq=seq, version=seq)
        for seq in range(first_seq, first_seq + count)
    ]


def seqs_in(path: Path) -> list[int]:
    """The seqs of every line; fails the test on a line that is not one whole JSON record."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"torn last line: {data[-80:]!r}"
    return [json.loads(line)["seq"] for line in data.splitlines()]


def jsonl(path: Path, agent: str = "agent-1") -> JsonlBackend:
    backend = create_backend("jsonl", agent, {"path": str(path)})
    assert isinstance(backend, JsonlBackend)
    return backend


# Item 5a: concurrent writers (one per partition) share the file


def test_failed_batch_of_one_writer_never_cuts_the_acknowledged_batch_of_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two writers of one file (two partitions' runners), each with its own backend
    path = tmp_path / "out.jsonl"
    failing, other = jsonl(path, "p0"), jsonl(path, "p1")
    failing.open()
    other.open()
    failing.upload(batch(1))
    assert failing._file is not None
    failing_fd = failing._file.fileno()

    # and the other writer uploading (in its own thread) while the first one is between its
    # write and its fsync, which then fails
    other_started = threading.Event()
    other_done = threading.Event()
    other_progressed = threading.Event()  # done, or waiting for a lock
    real_fsync, real_flock = os.fsync, fcntl.flock

    def other_writer() -> None:
        other.upload(batch(100))
        other_done.set()
        other_progressed.set()

    def flock(fd: int, operation: int) -> None:
        if threading.current_thread() in threads and operation & fcntl.LOCK_EX:
            other_progressed.set()
        real_flock(fd, operation)

    def fsync(fd: int) -> None:
        if fd != failing_fd:
            real_fsync(fd)
            return
        thread = threading.Thread(target=other_writer)
        threads.append(thread)
        other_started.set()
        thread.start()
        # Either the other writer finishes (no lock: it wrote in the middle of this batch),
        # or it waits for the lock this writer holds; in both cases fail now.
        assert other_progressed.wait(timeout=10)
        raise OSError(5, "Input/output error")

    threads: list[threading.Thread] = []
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(fcntl, "flock", flock)

    # When the first writer's batch fails
    with pytest.raises(OSError, match="Input/output"):
        failing.upload(batch(10))
    for thread in threads:
        thread.join(timeout=10)
    monkeypatch.setattr(os, "fsync", real_fsync)
    failing.close()
    other.close()

    # Then the other writer's batch was acknowledged and is in the file, whole; the failed one is not
    assert other_started.is_set() and other_done.is_set()
    assert seqs_in(path) == [1, 2, 3, 100, 101, 102]


def test_partial_write_is_cut_back_and_the_next_batch_lands_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a writer whose next write stops half-way with a full disk
    path = tmp_path / "out.jsonl"
    real_write = os.write
    calls = {"n": 0}

    def half_write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            written = real_write(fd, bytes(data)[: len(data) // 2 + 1])
            assert written > 0
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    with jsonl(path) as backend:
        backend.upload(batch(1))
        monkeypatch.setattr(os, "write", half_write)

        # When that batch fails part-way and is sent again
        with pytest.raises(OSError, match="No space left"):
            backend.upload(batch(10))
        backend.upload(batch(10))

    # Then the file holds the first batch and the resent one, every line whole
    assert calls["n"] >= 2
    assert seqs_in(path) == [1, 2, 3, 10, 11, 12]


WRITER = """
import json, os, sys
from livesync.backends import create_backend
from livesync.records import Record

path, name, first, batches, fail_every = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
real_fsync, state = os.fsync, {"n": 0}
backend = create_backend("jsonl", name, {"path": path})

def fsync(fd):
    state["n"] += 1
    if state["n"] % fail_every == 0:
        raise OSError(5, "injected")
    real_fsync(fd)

acknowledged = []
with backend:
    os.fsync = fsync
    for number in range(batches):
        seq = first + number * 10
        records = [Record(type="event", id=seq + i, action="updated", changes=("moved",), seq=seq + i, version=seq + i)
                   for i in range(5)]
        try:
            backend.upload(records)
        except OSError:
            continue
        acknowledged += [record.seq for record in records]
print(json.dumps(acknowledged))
"""


def test_writers_in_separate_processes_keep_every_acknowledged_record_whole(tmp_path: Path) -> None:
    # Given two processes appending to one file, each failing every 5th batch at fsync
    path = tmp_path / "out.jsonl"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"p{n}", str(first), "150", "5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n, first in enumerate((1, 1_000_001))
    ]

    # When both are done
    acknowledged: list[int] = []
    for writer in writers:
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0
        acknowledged += json.loads(out)

    # Then every line is whole and every acknowledged record is in the file
    assert len(acknowledged) == 2 * 120 * 5
    stored = seqs_in(path)
    assert set(acknowledged) <= set(stored)


# Item 5b: a torn last line left by a crashed writer


def torn(path: Path) -> bytes:
    """A file with two whole lines and the first part of a third, as a crash mid-write leaves it."""
    whole = b"".join(json.dumps(record.to_dict()).encode() + b"\n" for record in batch(1, 2))
    tail = b'{"type":"event","id":3,"act'
    path.write_bytes(whole + tail)
    return tail


def test_torn_last_line_is_cut_off_on_open_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Given a file whose last line was torn by a crash
    path = tmp_path / "out.jsonl"
    tail = torn(path)

    # When a backend opens it
    with caplog.at_level(logging.WARNING, logger="livesync.backends.jsonl"), jsonl(path):
        pass

    # Then the torn line is gone and a warning names the file and the bytes dropped
    assert seqs_in(path) == [1, 2]
    assert any(str(path) in message and f"{len(tail)} byte" in message for message in caplog.messages)


def test_batch_after_a_torn_last_line_keeps_its_first_record(tmp_path: Path) -> None:
    # Given a file whose last line was torn by a crash
    path = tmp_path / "out.jsonl"
    torn(path)

    # When the batch is sent again
    with jsonl(path) as backend:
        backend.upload(batch(3))

    # Then its first record is a line of its own
    assert seqs_in(path) == [1, 2, 3, 4, 5]


def test_torn_line_left_by_another_writer_while_open_is_cut_before_the_next_batch(tmp_path: Path) -> None:
    # Given an open backend, and another writer (process) that crashes half-way through a line
    path = tmp_path / "out.jsonl"
    with jsonl(path) as backend:
        backend.upload(batch(1, 2))
        crash = (
            "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND); os.write(fd, b'{\"ty'); os._exit(9)"
        )
        assert subprocess.run([sys.executable, "-c", crash, str(path)], check=False).returncode == 9

        # When the open backend uploads its next batch
        backend.upload(batch(3))

    # Then the torn line is gone and the new batch is whole
    assert seqs_in(path) == [1, 2, 3, 4, 5]


def test_file_holding_only_a_torn_line_is_emptied_on_open(tmp_path: Path) -> None:
    # Given a file with no newline at all (the crash came during its first line)
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"type":"ev')

    # When a backend opens it and uploads
    with jsonl(path) as backend:
        backend.upload(batch(1))

    # Then only the new batch is there
    assert seqs_in(path) == [1, 2, 3]


# Item 18: the path is resolved and checked when the agent is added


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory every user may enter (tmp_path's parents may not be)."""
    base = Path(tempfile.mkdtemp(prefix="livesync-jsonl-"))
    base.chmod(0o755)
    yield base
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.rmtree(base)


NOBODY = 65534


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """As root, run the block with the effective ids of nobody (root may write anywhere)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def cli_env(redis_url: str, namespace: str) -> dict[str, str]:
    return {"LIVESYNC_REDIS_URL": redis_url, "LIVESYNC_NAMESPACE": namespace}


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def test_add_agent_stores_a_relative_path_as_absolute(manager: SyncManager, in_tmp: Path) -> None:
    # Given / When an agent is added with a path relative to the current directory
    manager.add_agent(Agent(id="files", backend="jsonl", options={"path": "out/x.jsonl"}))

    # Then the stored option is the absolute path in that directory
    assert manager.get_agent("files").options["path"] == str(in_tmp / "out" / "x.jsonl")


def test_add_agent_expands_the_home_directory(
    manager: SyncManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    manager.add_agent(Agent(id="files", backend="jsonl", options={"path": "~/x.jsonl"}))
    assert manager.get_agent("files").options["path"] == str(tmp_path / "x.jsonl")


def test_add_agent_refuses_a_path_in_an_unwritable_directory(manager: SyncManager, shared_tmp: Path) -> None:
    # Given a directory the user adding the agent may not write to
    locked = shared_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)

    # When / Then adding an agent writing there fails, naming the option and why
    with unprivileged(), pytest.raises(ConfigurationError, match=r"option 'path'.*directory .* is not writable"):
        manager.add_agent(Agent(id="files", backend="jsonl", options={"path": str(locked / "x.jsonl")}))
    assert manager.list_agents() == []


def test_add_agent_refuses_an_existing_file_that_is_read_only(manager: SyncManager, shared_tmp: Path) -> None:
    path = shared_tmp / "x.jsonl"
    path.write_bytes(b"")
    path.chmod(0o444)
    with unprivileged(), pytest.raises(ConfigurationError, match=r"option 'path'.*x.jsonl is not writable"):
        manager.add_agent(Agent(id="files", backend="jsonl", options={"path": str(path)}))
    assert manager.list_agents() == []


def test_add_agent_refuses_a_path_that_is_a_directory(manager: SyncManager, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"option 'path'.*is a directory"):
        manager.add_agent(Agent(id="files", backend="jsonl", options={"path": str(tmp_path)}))


def test_add_agent_refuses_a_path_below_a_file(manager: SyncManager, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(ConfigurationError, match=r"option 'path'.*not a directory"):
        manager.add_agent(Agent(id="files", backend="jsonl", options={"path": str(blocker / "x.jsonl")}))


def test_add_agent_accepts_a_missing_directory_below_a_writable_one(manager: SyncManager, tmp_path: Path) -> None:
    # The backend creates missing directories on open: a writable ancestor is enough.
    target = tmp_path / "a" / "b" / "x.jsonl"
    manager.add_agent(Agent(id="files", backend="jsonl", options={"path": str(target)}))
    assert manager.get_agent("files").options["path"] == str(target)
    assert not (tmp_path / "a").exists()


def test_cli_agent_add_stores_a_relative_path_as_absolute(
    real_redis: redis.Redis, redis_url: str, namespace: str, in_tmp: Path
) -> None:
    from livesync.cli import main

    runner = CliRunner()
    env = cli_env(redis_url, namespace)
    added = runner.invoke(
        main, ["agent", "add", "files", "--backend", "jsonl", "--option", "path=rel/x.jsonl"], env=env
    )
    shown = runner.invoke(main, ["agent", "show", "files", "--json"], env=env)

    assert added.exit_code == 0, added.output
    assert json.loads(shown.output)["options"]["path"] == str(in_tmp / "rel" / "x.jsonl")


def test_cli_agent_add_with_a_path_below_a_file_exits_2_naming_the_option(
    real_redis: redis.Redis, redis_url: str, namespace: str, in_tmp: Path
) -> None:
    from livesync.cli import main

    (in_tmp / "file").write_bytes(b"")
    result = CliRunner().invoke(
        main,
        ["agent", "add", "files", "--backend", "jsonl", "--option", "path=file/x.jsonl"],
        env=cli_env(redis_url, namespace),
    )

    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"Error: option 'path': {in_tmp / 'file' / 'x.jsonl'} cannot be created: {in_tmp / 'file'} is not a directory"
    ]


def test_cli_agent_add_with_an_unwritable_directory_exits_2_naming_the_option(
    real_redis: redis.Redis, redis_url: str, namespace: str, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from livesync.cli import main

    # Given a directory the user adding the agent may not write to, below the current one
    locked = shared_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    monkeypatch.chdir(shared_tmp)
    runner = CliRunner()
    env = cli_env(redis_url, namespace)
    # (a first command, with a writable path, imports everything the second one needs)
    ok(runner.invoke(main, ["agent", "add", "other", "--backend", "jsonl", "--option", "path=x.jsonl"], env=env))

    # When an agent writing there is added with a relative path
    with unprivileged():
        result = runner.invoke(
            main, ["agent", "add", "files", "--backend", "jsonl", "--option", "path=locked/x.jsonl"], env=env
        )

    # Then it exits 2 with one line naming the option, the resolved path and why, and adds nothing
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"Error: option 'path': {locked / 'x.jsonl'} cannot be created: directory {locked} is not writable"
    ]
    keys = namespace_keys(namespace)
    assert not real_redis.exists(keys.agent("files"))
    assert not real_redis.sismember(keys.agents, "files")
