"""The one upload loop: backends used as context managers, batches, refused records, one default each."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from types import TracebackType

import pytest
from support.backends import BackendDown, RecordingBackend, RejectingBackend

from livesync import Publisher, deadletters, defaults, export, namespace, track, upload
from livesync.config import Settings
from livesync.errors import RecordRejected
from livesync.manager import SyncManager
from livesync.records import Record
from livesync.runner import RunOptions, run_agent


class ContextBackend(RecordingBackend):
    """Records whether it was entered and exited as a context manager (``with backend:``)."""

    def __init__(self, agent_id: str = "test") -> None:
        super().__init__(agent_id)
        self.events: list[str] = []

    def __enter__(self) -> ContextBackend:
        self.events.append("enter")
        return super().__enter__()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.events.append("exit")
        super().__exit__(exc_type, exc, traceback)


def record(id_: int) -> Record:
    return Record("event", id_, "created", ("created",), id_, id_)


@pytest.fixture
def pending_manager(search_manager: SyncManager, publisher: Publisher) -> SyncManager:
    """The ``search`` agent's namespace with five changes it has not read."""
    publisher.emit_many([("event", i, ["created"]) for i in range(5)])
    return search_manager


def test_a_run_uses_its_backend_as_a_context_manager(pending_manager: SyncManager) -> None:
    # Given a backend that notes being entered and exited
    backend = ContextBackend()

    # When the agent runs
    run_agent(pending_manager, "search", backend=backend)

    # Then the run opened it with `with backend:` and closed it once
    assert backend.events == ["enter", "exit"]
    assert (backend.opened, backend.closed) == (1, 1)


def test_an_export_and_a_requeue_use_their_backend_as_a_context_manager(pending_manager: SyncManager) -> None:
    # Given an agent waiting for its export, with a dead letter
    pending_manager.update_agent("search", state="needs_export")
    deadletters.add(pending_manager, "search", 0, [(record(1), "bad")])

    # When it is exported and its dead letters requeued
    exported, requeued = ContextBackend(), ContextBackend()
    export.export_agent(pending_manager, "search", [("event", 1)], backend=exported)
    deadletters.requeue(pending_manager, "search", backend=requeued)

    # Then both entered and exited their backend
    assert exported.events == ["enter", "exit"]
    assert requeued.events == ["enter", "exit"]


def test_send_turns_record_rejected_into_the_refused_part_of_the_result() -> None:
    # Given a backend refusing record 2 of a batch of three
    backend = RejectingBackend({2}, "too big")

    # When the batch is sent
    uploaded = upload.send(backend, [record(1), record(2), record(3)])

    # Then two were accepted and one refused with its reason
    assert (uploaded.accepted, uploaded.batches) == (2, 1)
    assert [(r.id, reason) for r, reason in uploaded.rejected] == [(2, "too big")]


def test_send_lets_any_other_error_through() -> None:
    class Down(RecordingBackend):
        def upload(self, records: Sequence[Record]) -> None:
            raise BackendDown("target down")

    with pytest.raises(BackendDown, match="target down"):
        upload.send(Down(), [record(1)])


def test_send_batches_reads_lazily_and_checks_before_each_upload() -> None:
    # Given a lazy stream of 5 records and a check that counts its calls
    read: list[int] = []

    def stream() -> Iterator[Record]:
        for i in range(5):
            read.append(i)
            yield record(i)

    checks: list[int] = []
    backend = RecordingBackend()

    # When the first batch of 2 comes back
    batches = upload.send_batches(backend, stream(), 2, check=lambda: checks.append(len(read)))
    first = next(batches)

    # Then only that batch was read and checked
    assert (first.accepted, read, checks) == (2, [0, 1], [2])

    # And the rest comes in batches of 2 and 1
    assert [u.accepted for u in batches] == [2, 1]
    assert [len(b) for b in backend.batches] == [2, 2, 1]


def test_record_rejected_is_no_longer_needed_to_add_dead_letters(pending_manager: SyncManager) -> None:
    # When dead letters are added from plain pairs and from a backend's error
    added = deadletters.add(pending_manager, "search", 0, [(record(1), "bad")])
    added += deadletters.add(pending_manager, "search", 0, RecordRejected.one(record(2), "worse"))

    # Then both landed
    assert added == 2
    assert [e["reason"] for e in deadletters.entries(pending_manager, "search")] == ["bad", "worse"]


def test_each_default_is_written_once_in_defaults_and_used_by_settings_and_the_runners() -> None:
    fields = Settings.model_fields
    # Settings declares its fields with the constants of livesync.defaults
    assert Settings().retry_intervals == list(defaults.RETRY_INTERVALS)
    for name in ("batch_size", "window", "lock_ttl", "dead_letter_limit", "prune_chunk", "granularity", "partitions"):
        assert fields[name].default == getattr(defaults, name.upper()), name
    # and the run, the export, the requeue and the publisher side default to the same ones
    run = inspect.signature(run_agent).parameters
    for name in ("batch_size", "window", "lock_ttl", "dead_letter_limit", "prune_chunk"):
        assert run[name].default == fields[name].default == getattr(RunOptions(), name), name
    exported = inspect.signature(export.export_agent).parameters
    assert exported["batch_size"].default == fields["batch_size"].default
    assert exported["lock_ttl"].default == fields["lock_ttl"].default
    assert inspect.signature(deadletters.requeue).parameters["lock_ttl"].default == fields["lock_ttl"].default
    assert fields["prune_chunk"].default == track.PRUNE_CHUNK
    assert (
        fields["granularity"].default,
        fields["partitions"].default,
    ) == (namespace.DEFAULT_GRANULARITY, namespace.DEFAULT_PARTITIONS)
