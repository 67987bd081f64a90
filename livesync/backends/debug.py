"""The ``debug`` backend: prints each record on one readable line."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from pydantic import Field

from livesync.backends.base import Backend
from livesync.records import Record


class DebugBackend(Backend):
    """Prints every batch to a stream (standard output by default) and accepts it.

    Output, one header per batch and one line per record (``str(record)``)::

        [agent-1] batch of 2 record(s)
          updated event 42 (seq 7, version 1764633600000007; title_changed)
          deleted contribution 'c-7' (seq 9, version 1764633600000009; deleted)
    """

    name = "debug"

    class Options(Backend.Options):
        """Options of the ``debug`` backend."""

        prefix: str = Field(default="", description="text put in front of every printed line")
        limit: int = Field(default=0, ge=0, description="records printed per batch at most (0: all)")

    options: Options

    def __init__(self, agent_id: str, options: Backend.Options, stream: TextIO | None = None) -> None:
        super().__init__(agent_id, options)
        self._stream = stream

    def upload(self, records: Sequence[Record]) -> None:
        """Print the batch header and one line per record."""
        # Resolved per call, not at creation: click and pytest swap sys.stdout.
        stream = self._stream if self._stream is not None else sys.stdout
        prefix = self.options.prefix
        lines = [f"{prefix}[{self.agent_id}] batch of {len(records)} record(s)"]
        shown = records[: self.options.limit] if self.options.limit else records
        lines.extend(f"{prefix}  {record}" for record in shown)
        if len(shown) < len(records):
            lines.append(f"{prefix}  ... and {len(records) - len(shown)} more")
        stream.write("\n".join(lines) + "\n")
        stream.flush()
