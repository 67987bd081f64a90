"""The ``null`` backend: accepts every record and keeps none."""

from __future__ import annotations

from collections.abc import Sequence

from livesync.backends.base import Backend
from livesync.records import Record


class NullBackend(Backend):
    """Discards every record; useful to drain a track or to measure the pipeline.

    It counts what it was given (:attr:`batches`, :attr:`records`) so tests can check
    what a run uploaded.
    """

    name = "null"

    def __init__(self, agent_id: str, options: Backend.Options) -> None:
        super().__init__(agent_id, options)
        self.batches = 0
        self.records = 0

    def upload(self, records: Sequence[Record]) -> None:
        """Accept the batch and forget it."""
        self.batches += 1
        self.records += len(records)
