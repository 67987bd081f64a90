"""A model target that applies records the way DESIGN.md asks a target to.

The rule for backends (DESIGN.md, "Versions and epochs"; ``livesync.backends.base``):

- a target keeps, per object, the highest ``version`` it applied, tombstones of deletes
  included, and drops a record whose version is not above it (a stale duplicate);
- an ``updated`` record for an object the target does not have live is ignored (it
  neither creates the object nor moves its version): only ``created`` makes an object live.
"""

from __future__ import annotations

from collections.abc import Sequence

from livesync.records import ObjectId, Record
from support.backends import RecordingBackend

ObjectKey = tuple[str, ObjectId]


class VersionTarget(RecordingBackend):
    """Accepts every batch and applies it to ``state``: object -> (live, version)."""

    name = "version-target"

    def __init__(self, agent_id: str = "test") -> None:
        super().__init__(agent_id)
        self.state: dict[ObjectKey, tuple[bool, int]] = {}

    def upload(self, records: Sequence[Record]) -> None:
        super().upload(records)
        for record in records:
            apply(self.state, record)

    @property
    def live(self) -> set[ObjectKey]:
        """Objects live at the target."""
        return {key for key, (alive, _version) in self.state.items() if alive}


def apply(state: dict[ObjectKey, tuple[bool, int]], record: Record) -> None:
    """Apply one record to ``state`` under the rule above."""
    key = (record.type, record.id)
    current = state.get(key)
    if record.action == "updated":
        if current is not None and current[0] and record.version > current[1]:
            state[key] = (True, record.version)
        return
    if current is not None and record.version <= current[1]:
        return
    state[key] = (record.action == "created", record.version)
