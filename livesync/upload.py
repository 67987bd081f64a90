"""Upload: records to an agent's backend in batches, and what the backend made of them.

The one upload loop of runs, exports and dead-letter requeues: the backend is created
for the agent (unless a ready one is given) and used as the context manager its
docstring promises (open, upload, close also on error); each batch is one
``Backend.upload`` whose three outcomes (accepted, :class:`RecordRejected`, any other
error) become an :class:`Uploaded`. Where refused records go (the dead-letter list,
always through the fenced ack script) and when they are written stays with the caller:
a run writes them with its window's ack, an export per batch, a requeue per partition.
An agent with a loader (:mod:`livesync.loaders`) gets its documents loaded per batch,
right before the batch is uploaded: a loader error fails that batch like a backend error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from livesync.backends import Backend, create_backend
from livesync.errors import RecordRejected
from livesync.loaders import NamedLoader, load_documents, load_loader
from livesync.manager import Agent, SyncManager
from livesync.records import Record

Rejection = tuple[Record, str]


@dataclass
class Uploaded:
    """What the backend did with one or more batches: records accepted, records refused with the reason."""

    accepted: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    batches: int = 0


@contextmanager
def backend_for(
    manager: SyncManager, agent: Agent, backend: Backend | None = None, partition: int | None = None
) -> Iterator[Backend]:
    """The agent's backend (``backend`` when given), opened for the ``with`` block and closed after it.

    ``partition`` is the one partition whose records it will upload (a run), ``None`` for
    records of every partition (an export, a requeue): :attr:`Backend.partition`.
    """
    uploader = backend or create_backend(agent.backend, agent.id, agent.options, manager.allowed_imports)
    uploader.partition = partition
    with uploader:
        yield uploader


def loader_for(manager: SyncManager, agent: Agent) -> NamedLoader | None:
    """The agent's loader, or ``None`` when it has none; a name that does not load raises ConfigurationError."""
    return load_loader(agent.loader, manager.allowed_imports) if agent.loader else None


def send(backend: Backend, batch: Sequence[Record], loader: NamedLoader | None = None) -> Uploaded:
    """Upload one batch (with its documents, given a ``loader``); a :class:`RecordRejected` becomes the refused part.

    Any other error (the loader's :class:`~livesync.errors.LoaderError` too) propagates:
    nothing of the batch counts.
    """
    if loader is not None:
        batch = load_documents(batch, loader)
    try:
        backend.upload(batch)
    except RecordRejected as refused:
        return Uploaded(accepted=len(batch) - len(refused.rejections), rejected=refused.rejections, batches=1)
    return Uploaded(accepted=len(batch), batches=1)


def send_batches(
    backend: Backend,
    records: Iterable[Record],
    size: int,
    *,
    check: Callable[[], None] | None = None,
    loader: NamedLoader | None = None,
) -> Iterator[Uploaded]:
    """Upload ``records`` in batches of ``size``, yielding each batch's result as it comes back.

    ``check`` runs before each upload (a run lock's ``check``): a runner that lost its
    lock sends nothing more. ``records`` may be lazy; it is read one batch at a time.
    """
    for batch in batches(records, size):
        if check is not None:
            check()
        yield send(backend, batch, loader)


def batches(records: Iterable[Record], size: int) -> Iterator[Sequence[Record]]:
    """``records`` in lists of ``size`` (the last one shorter), read lazily."""
    if isinstance(records, Sequence):  # a list: slices, no copying record by record
        for start in range(0, len(records), size):
            yield records[start : start + size]
        return
    batch: list[Record] = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
