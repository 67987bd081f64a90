"""The ``jsonl`` backend: appends one JSON record per line to a file."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import Field

from livesync.backends.base import Backend
from livesync.errors import ConfigurationError, RecordRejected
from livesync.records import Record

logger = logging.getLogger(__name__)

TAIL_CHUNK = 64 * 1024
"""Bytes read per step when looking back for the last newline of a torn file."""


class JsonlBackend(Backend):
    """Appends each record as one compact JSON object per line (UTF-8).

    A batch counts as uploaded only once it is written, flushed and fsynced. Several
    writers may share one file (the runners of an agent's partitions, in other
    threads or processes): each batch is written, fsynced and, when that fails, cut
    back off the file while the writer holds an exclusive ``flock`` on the file, so a
    failed batch never cuts another writer's lines and batches never interleave.

    A last line without its newline can only be left by a writer that crashed (or
    whose write and cut both failed) mid-batch; that batch never counted, so the torn
    line is cut back to the last newline (with a warning) when the file is opened and
    before each batch, under the same lock, and the resent records start on a line of
    their own. The file is never truncated otherwise: runs append to it, and readers
    keep, per object, the newest record (see :class:`~livesync.backends.base.Backend`).

    The lock is the file's own ``flock``: only livesync's writers take it, so the file
    must not be written by anything else (a foreign writer's half line in flight would
    be taken for a torn one). All writers of one file must run on one host, or on a
    file system whose locks span hosts (on NFS, Linux maps ``flock`` to NFS locks).
    """

    name = "jsonl"

    class Options(Backend.Options):
        """Options of the ``jsonl`` backend."""

        path: Path = Field(description="file to append to; its directory is created if missing")

    options: Options

    def __init__(self, agent_id: str, options: Backend.Options) -> None:
        super().__init__(agent_id, options)
        self.path = self.options.path.expanduser()
        self._file: io.FileIO | None = None

    @classmethod
    def prepare_options(cls, options: Backend.Options, raw: Mapping[str, object]) -> dict[str, object]:
        """Store ``path`` absolute (workers run elsewhere) and refuse one this process cannot write."""
        assert isinstance(options, cls.Options)
        path = Path(os.path.abspath(options.path.expanduser()))
        problem = _unwritable(path)
        if problem:
            raise ConfigurationError(f"option 'path': {path} {problem}")
        return {**raw, "path": str(path)}

    def open(self) -> None:
        """Open the file for appending, creating it and its directory if needed; repair a torn tail."""
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        # O_APPEND: every write lands at the current end, whoever wrote last; readable
        # too, to find a torn line's start.
        file = open(self.path, "a+b", buffering=0)  # noqa: SIM115 - closed in close()
        try:
            if created:
                _fsync_directory(self.path.parent)
            with _locked(file):
                self._repair(file)
        except BaseException:
            file.close()
            raise
        self._file = file

    def upload(self, records: Sequence[Record]) -> None:
        """Append the batch, flush and fsync it; refuse records that cannot be encoded."""
        if self._file is None:
            raise RuntimeError(f"{self!r} is not open; use it as a context manager or call open()")
        lines: list[bytes] = []
        rejections: list[tuple[Record, str]] = []
        for record in records:
            try:
                lines.append(_encode(record))
            except (TypeError, ValueError) as exc:
                rejections.append((record, f"cannot encode as JSON: {exc}"))
        if lines:
            self._append(self._file, b"".join(lines))
        if rejections:
            raise RecordRejected(rejections)

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def _append(self, file: io.FileIO, data: bytes) -> None:
        fd = file.fileno()
        with _locked(file):
            # Another writer may have crashed mid-line since the last batch.
            self._repair(file)
            # Under the lock nobody else appends, so the end is where this batch starts,
            # and cutting back to it removes this batch's bytes and nothing else.
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                try:
                    os.ftruncate(fd, start)
                except OSError as exc:
                    # The next batch (ours or another writer's) cuts the torn line off.
                    logger.warning("could not cut failed batch off %s at byte %d: %s", self.path, start, exc)
                raise

    def _repair(self, file: io.FileIO) -> None:
        """Cut a last line without newline back to the previous newline (caller holds the lock)."""
        fd = file.fileno()
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return
        end = _last_line_end(fd, size)
        logger.warning(
            "%s ends in a torn line (a writer crashed mid-batch): dropping its last %d byte(s), from byte %d",
            self.path,
            size - end,
            end,
        )
        os.ftruncate(fd, end)
        os.fsync(fd)


class _locked:
    """An exclusive ``flock`` on an open file, held for a ``with`` block.

    ``flock`` locks belong to the open file description, so two backends of one
    process exclude each other just as two processes do.
    """

    def __init__(self, file: io.FileIO) -> None:
        self.fd = file.fileno()

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


def _last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline before ``size`` (0 when there is none)."""
    end = size
    while end > 0:
        begin = max(0, end - TAIL_CHUNK)
        chunk = os.pread(fd, end - begin, begin)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


def _unwritable(path: Path) -> str:
    """Why this process could not append to ``path`` (creating it and its directories), or ``""``."""
    try:
        if path.is_dir():
            return "is a directory"
        if path.exists():
            return "" if _may(path, os.W_OK) else "is not writable"
        # The backend creates missing directories: the nearest existing one must take new entries.
        ancestor = path.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
    except OSError as exc:  # e.g. a directory on the way that may not be searched
        return f"cannot be checked: {exc.strerror or exc}"
    if not ancestor.is_dir():
        return f"cannot be created: {ancestor} is not a directory"
    if not _may(ancestor, os.W_OK | os.X_OK):
        return f"cannot be created: directory {ancestor} is not writable"
    return ""


def _may(path: Path, mode: int) -> bool:
    # The effective ids are the ones open() and mkdir() are checked against.
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _encode(record: Record) -> bytes:
    text = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8") + b"\n"


def _fsync_directory(directory: Path) -> None:
    # A new file's directory entry is only durable once the directory is fsynced (POSIX).
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
