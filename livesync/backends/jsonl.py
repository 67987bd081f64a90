"""The ``jsonl`` backend: appends one JSON record per line to a file."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from livesync.backends.base import Backend
from livesync.errors import RecordRejected
from livesync.records import Record

logger = logging.getLogger(__name__)


class JsonlBackend(Backend):
    """Appends each record as one compact JSON object per line (UTF-8).

    A batch counts as uploaded only once it is written, flushed and fsynced. A batch
    that fails part-way is cut off the file again (best effort), so a failed upload
    leaves no half line behind; the runner then sends the batch again. The file is
    never truncated on open: several runs append to the same file, and readers keep
    the record with the highest ``seq`` per object.
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

    def open(self) -> None:
        """Open the file for appending, creating it and its directory if needed."""
        if self._file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        # Unbuffered: every byte written is in the file, so a failed batch can be cut off.
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        if created:
            _fsync_directory(self.path.parent)

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
        start = os.fstat(file.fileno()).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[file.write(view) :]
            file.flush()
            os.fsync(file.fileno())
        except BaseException:
            try:
                os.ftruncate(file.fileno(), start)
            except OSError as exc:
                logger.warning("could not cut failed batch off %s at byte %d: %s", self.path, start, exc)
            raise


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
