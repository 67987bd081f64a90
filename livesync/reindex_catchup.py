"""A reindex's catch-up: the changes after its start position, reduced and sent into the new generation.

Window by window, like a run (the agent's expander, type filters and loader), each
window acknowledged on the reindex pointer (``<agent>@reindex``) by the fenced ack, its
refused records filed under the agent's dead letters in the same call. A hole in the
track (retention pruned what the reindex still needed) or a rewound partition stops it
with a message saying what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from livesync import deadletters, upload
from livesync.backends import Backend
from livesync.changes import Change
from livesync.errors import AgentNotRunnable, LockLost
from livesync.keys import reindex_pointer
from livesync.loaders import NamedLoader
from livesync.lock import RunLock
from livesync.manager import Agent, SyncManager
from livesync.reduce import reduce
from livesync.reindex_state import ReindexLocks, ReindexState, save_state
from livesync.track import Track

Progress = Callable[[str, int, int | None], None]
"""Called with the phase (``export``, ``catch-up``), the count done and the total when known."""


class CatchUp:
    """Sends an agent's changes after its reindex pointers into the new generation; counts what it did.

    ``state`` is the reindex's (its ``changes`` and ``rejected`` grow, and are saved, per
    window); ``accepted`` counts the records the new generation took.
    """

    def __init__(
        self,
        manager: SyncManager,
        agent: Agent,
        locks: ReindexLocks,
        state: ReindexState,
        *,
        batch_size: int,
        window: int,
        progress: Progress,
    ) -> None:
        self.manager = manager
        self.agent = agent
        self.locks = locks
        self.tracks = locks.tracks
        self.state = state
        self.batch_size = batch_size
        self.window = window
        self.progress = progress
        self.pointer_id = reindex_pointer(agent.id)
        self.accepted = 0

    def run(self, uploader: Backend, loader: NamedLoader | None, till: Sequence[int] | None = None) -> int:
        """Send the changes after each reindex pointer up to ``till`` (default: the heads); return how many."""
        spans = []
        for track, end in zip(self.tracks, till if till is not None else [None] * len(self.tracks), strict=True):
            pointer, head = self.position(track)
            spans.append((pointer, max(pointer, head if end is None else min(end, head))))
        total, done = sum(end - pointer for pointer, end in spans), 0
        self.progress("catch-up", 0, total)
        for track, lock, (pointer, end) in zip(self.tracks, self.locks.own, spans, strict=True):
            if end <= pointer:
                continue
            reached = pointer
            for changes in track.iter_windows(pointer, end, self.window):
                if changes[0].seq != reached + 1 or changes[-1].seq - changes[0].seq + 1 != len(changes):
                    raise self.lost(track, reached)
                self.send_window(uploader, loader, track, lock, changes)
                reached = changes[-1].seq
                done += len(changes)
                self.progress("catch-up", done, total)
            if reached != end:
                raise self.lost(track, reached)
        return total

    def send_window(
        self, uploader: Backend, loader: NamedLoader | None, track: Track, lock: RunLock, changes: Sequence[Change]
    ) -> None:
        """Reduce one window as the agent sees it, send it, and move the reindex pointer past it (fenced)."""
        lock.check()
        records = reduce(self.manager.agent_view(self.agent, changes))
        rejections: list[upload.Rejection] = []
        for uploaded in upload.send_batches(uploader, records, self.batch_size, check=lock.check, loader=loader):
            rejections += uploaded.rejected
            self.accepted += uploaded.accepted
        letters = deadletters.encode(rejections)
        last = changes[-1]
        track.acknowledge(
            self.pointer_id, lock.token, last.seq, dead_letters=letters, version=last.version, letters_for=self.agent.id
        )
        self.state.rejected += len(letters)
        self.state.changes += len(changes)
        save_state(self.manager, self.agent.id, self.state, "rejected", "changes")

    def position(self, track: Track) -> tuple[int, int]:
        """The reindex pointer and head of ``track``; refuses a pointer gone, rewound or overtaken by retention."""
        pointer, head = track.pointer(self.pointer_id), track.head()
        agent_id, partition = self.agent.id, track.partition
        if pointer is None:
            raise LockLost(f"the reindex pointer of {agent_id!r} in partition {partition} is gone (agent removed?)")
        if pointer > head:
            raise AgentNotRunnable(
                f"reindex of {agent_id!r}: partition {partition} was rewound (head {head}, reindex at {pointer}); "
                f"abandon it (livesync agent reindex {agent_id} --abandon) and start again"
            )
        if track.pruned_upto() > pointer:
            raise self.lost(track, pointer)
        return pointer, head

    def lost(self, track: Track, reached: int) -> AgentNotRunnable:
        """The error of changes the catch-up needed that retention pruned: this reindex cannot complete."""
        return AgentNotRunnable(
            f"reindex of {self.agent.id!r}: changes after seq {reached} of partition {track.partition} were pruned "
            f"(up to {track.pruned_upto()}) before the new generation had them; retention must outlast a reindex: "
            f"abandon it (livesync agent reindex {self.agent.id} --abandon) and start again"
        )
