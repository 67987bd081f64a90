"""Records: what a backend receives, one per object and window."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from livesync.changes import ObjectId

Action = Literal["created", "updated", "deleted"]
ACTIONS: tuple[Action, ...] = ("created", "updated", "deleted")


class Record(NamedTuple):
    """The reduced outcome of an object's changes in one window.

    ``changes`` is the sorted union of every flag folded into the record and ``seq``
    the highest seq folded into it, so a target can drop stale duplicates. A named
    tuple: immutable, and cheap to create by the million on the reduction hot path.
    """

    type: str
    id: ObjectId
    action: Action
    changes: tuple[str, ...]
    seq: int

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON-ready dict of the public contract."""
        return {
            "type": self.type,
            "id": self.id,
            "action": self.action,
            "changes": list(self.changes),
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Rebuild a record from :meth:`to_dict` output (dead letters, exports)."""
        action = data["action"]
        if action not in ACTIONS:
            raise ValueError(f"action: unknown action {action!r}")
        return cls(
            type=str(data["type"]),
            id=data["id"],
            action=action,
            changes=tuple(data["changes"]),
            seq=int(data["seq"]),
        )

    def __str__(self) -> str:
        flags = ", ".join(self.changes) or "-"
        return f"{self.action:<7} {self.type} {self.id!r} (seq {self.seq}; {flags})"
