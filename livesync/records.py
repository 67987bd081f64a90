"""Records: what a backend receives, one per object and window."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

#: An object's id: a non-negative integer or a string (validated by :func:`livesync.changes.validate_id`).
#: Defined here, the lowest module that needs it, so records import nothing of livesync's.
ObjectId = int | str

Action = Literal["created", "updated", "deleted"]
ACTIONS: tuple[Action, ...] = ("created", "updated", "deleted")


class Record(NamedTuple):
    """The reduced outcome of an object's changes in one window.

    ``changes`` is the sorted union of every flag folded into the record, ``seq`` the
    highest seq folded into it (its position in its partition) and ``version`` the
    version of that change: targets compare versions, never seqs, to drop stale
    duplicates (seqs repeat after a rollback or re-creation; versions only grow). A
    named tuple: immutable, and cheap to create by the million on the reduction hot path.
    """

    type: str
    id: ObjectId
    action: Action
    changes: tuple[str, ...]
    seq: int
    version: int
    """Server microseconds of the change (DESIGN.md, "Versions and epochs"); required, so none is forgotten."""
    document: dict[str, Any] | None = None
    """The object's document from the agent's loader; ``None`` for deletes and agents without one."""

    def to_dict(self) -> dict[str, Any]:
        """The record as the JSON-ready dict of the public contract (``document`` only when it has one)."""
        return {
            "type": self.type,
            "id": self.id,
            "action": self.action,
            "changes": list(self.changes),
            "seq": self.seq,
            "version": self.version,
            **({"document": self.document} if self.document is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Rebuild a record from :meth:`to_dict` output (dead letters, exports).

        Dead letters written before versions existed have none: they get version 0.
        """
        action = data["action"]
        if action not in ACTIONS:
            raise ValueError(f"action: unknown action {action!r}")
        return cls(
            type=str(data["type"]),
            id=data["id"],
            action=action,
            changes=tuple(data["changes"]),
            seq=int(data["seq"]),
            version=int(data.get("version", 0)),
            document=data.get("document"),
        )

    def __str__(self) -> str:
        flags = ", ".join(self.changes) or "-"
        return f"{self.action:<7} {self.type} {self.id!r} (seq {self.seq}, version {self.version}; {flags})"
