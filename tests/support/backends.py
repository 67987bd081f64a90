"""Backends the runner tests pass to ``run_agent``: they record, fail, reject or block.

None of them is registered as an entry point; tests hand a ready instance to
``runner.run_agent(..., backend=...)``. ``RunInThread`` runs such a run in a thread,
so a test can act while a blocking backend holds it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from livesync.backends import Backend
from livesync.errors import RecordRejected
from livesync.manager import SyncManager
from livesync.records import Record
from livesync.runner import RunResult, run_agent

#: Longest a blocking backend waits for the test to let it go, so a broken test fails instead of hanging.
BLOCK_TIMEOUT = 10.0


class BackendDown(RuntimeError):
    """What a failing test backend raises: the target is unreachable."""


class RecordingBackend(Backend):
    """Accepts every batch and keeps it, so a test sees exactly what was uploaded.

    ``before_upload`` (if given) is called with the batch before it is accepted; tests
    use it to act in the middle of a run (publish, read the pointer).
    """

    name = "recording"

    def __init__(
        self,
        agent_id: str = "test",
        *,
        before_upload: Callable[[Sequence[Record]], None] | None = None,
    ) -> None:
        super().__init__(agent_id, Backend.Options())
        self.batches: list[list[Record]] = []
        self.opened = 0
        self.closed = 0
        self._before_upload = before_upload

    @property
    def records(self) -> list[Record]:
        """Every accepted record, in upload order."""
        return [record for batch in self.batches for record in batch]

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def upload(self, records: Sequence[Record]) -> None:
        if self._before_upload is not None:
            self._before_upload(records)
        self.batches.append(list(records))


class FailingBackend(RecordingBackend):
    """Accepts batches until the ``fail_on``-th upload call (1-based), which raises :class:`BackendDown`."""

    name = "failing"

    def __init__(self, fail_on: int, agent_id: str = "test") -> None:
        super().__init__(agent_id)
        self.fail_on = fail_on
        self.calls = 0

    def upload(self, records: Sequence[Record]) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise BackendDown(f"target down at upload {self.calls}")
        super().upload(records)


class RejectingBackend(RecordingBackend):
    """Refuses, for good, every record whose id is in ``rejected_ids``; accepts the rest."""

    name = "rejecting"

    def __init__(self, rejected_ids: set[int | str], reason: str, agent_id: str = "test") -> None:
        super().__init__(agent_id)
        self.rejected_ids = rejected_ids
        self.reason = reason

    def upload(self, records: Sequence[Record]) -> None:
        refused = [(record, self.reason) for record in records if record.id in self.rejected_ids]
        super().upload([record for record in records if record.id not in self.rejected_ids])
        if refused:
            raise RecordRejected(refused)


class BlockingBackend(RecordingBackend):
    """Blocks in its first upload until the test sets :attr:`proceed`.

    :attr:`entered` is set once the first upload started, so the test knows the run is
    holding its lock and sits between reading and acking.
    """

    name = "blocking"

    def __init__(self, agent_id: str = "test") -> None:
        super().__init__(agent_id)
        self.entered = threading.Event()
        self.proceed = threading.Event()

    def upload(self, records: Sequence[Record]) -> None:
        if not self.entered.is_set():
            self.entered.set()
            if not self.proceed.wait(BLOCK_TIMEOUT):
                raise BackendDown("the test never let the blocked upload go")
        super().upload(records)


class RunInThread:
    """Runs ``run_agent`` in a thread and keeps its result or error."""

    def __init__(self, manager: SyncManager, backend: BlockingBackend) -> None:
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(manager, backend), daemon=True)
        self._thread.start()

    def _run(self, manager: SyncManager, backend: BlockingBackend) -> None:
        try:
            self.result = run_agent(manager, "search", backend=backend)
        except BaseException as exc:
            self.error = exc

    def join(self) -> None:
        self._thread.join(BLOCK_TIMEOUT)
        assert not self._thread.is_alive(), "the run did not finish"
