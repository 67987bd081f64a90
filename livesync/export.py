"""Initial export: send every existing object to a new agent's target as ``created``.

The successor of the original's ``agent ID export``. An agent added with
``needs_export`` has its pointers fenced at the head and its runs refused; the export
streams the application's objects to the backend in batches, and only when every
record was accepted does the agent become active. Changes published meanwhile stay
pending behind the pointer and are delivered by the next runs, after the export.
Export records carry the agent's pointer as ``seq``, so a target keeps any newer
record it receives later.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from livesync import deadletters, defaults, plugins, upload
from livesync.backends import Backend
from livesync.changes import validate_id, validate_type
from livesync.errors import AgentNotRunnable, ConfigurationError, InvalidChange
from livesync.lock import RunLock
from livesync.manager import SyncManager
from livesync.namespace import partition_of
from livesync.records import ObjectId, Record

Progress = Callable[[int], None]


@dataclass
class ExportResult:
    """What an export sent."""

    agent: str
    objects: int = 0
    records: int = 0
    rejected: int = 0
    batches: int = 0
    elapsed: float = 0.0
    completed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


#: Entry point group of export sources: ``--source NAME`` for a package's registered one.
SOURCE_GROUP = "livesync.sources"


def load_source(spec: str, allowed_imports: Iterable[str] = ()) -> Callable[[], Iterable[Any]]:
    """Resolve an entry point of ``livesync.sources``, or ``module:callable`` inside ``allowed_imports``.

    The callable returns the objects to export. An import path outside
    ``allowed_imports`` (``Settings.allowed_imports``) raises
    :class:`~livesync.errors.ImportNotAllowed`; nothing is imported.
    """
    if ":" not in spec and spec not in plugins.entry_points(SOURCE_GROUP):
        raise ConfigurationError(f"--source {spec!r}: expected module:callable or a {SOURCE_GROUP} entry point")
    target = plugins.load_plugin(SOURCE_GROUP, spec, allowed_imports, kind="--source", shape="module:callable")
    if not callable(target):
        raise ConfigurationError(f"--source {spec!r}: {spec.partition(':')[2] or spec!r} is not callable")
    return target  # type: ignore[no-any-return]


def iter_objects(objects: Iterable[Any]) -> Iterator[tuple[str, ObjectId]]:
    """Validated ``(type, id)`` from pairs or ``{"type", "id"}`` dicts; errors name the item."""
    for index, item in enumerate(objects):
        where = f"object {index}: "
        if isinstance(item, Mapping):
            if "type" not in item or "id" not in item:
                raise InvalidChange(f"{where}{'type' if 'type' not in item else 'id'}", "field required")
            type_, id_ = item["type"], item["id"]
        elif isinstance(item, tuple | list) and len(item) == 2:
            type_, id_ = item
        else:
            raise InvalidChange(f"object {index}", "must be a (type, id) pair or a dict with type and id")
        yield validate_type(type_, f"{where}type"), validate_id(id_, f"{where}id")


def export_agent(
    manager: SyncManager,
    agent_id: str,
    objects: Iterable[Any],
    *,
    batch_size: int = defaults.BATCH_SIZE,
    lock_ttl: float = defaults.LOCK_TTL,
    backend: Backend | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Send ``objects`` to the agent's backend as ``created`` records, in batches.

    For an agent added with ``needs_export``, or one with a gap (a re-export). Runs
    under every partition's run lock. The agent becomes active only when all records
    were accepted; rejected ones go to its dead-letter list, and the export can simply
    be run again.
    """
    agent = manager.get_agent(agent_id)
    if agent.state not in ("needs_export", "gap"):
        raise AgentNotRunnable(
            f"agent {agent_id!r} is {agent.state}: only an agent added with --needs-export or one with a gap "
            "can be exported (use 'agent reset' to resend what the track still holds)"
        )
    tracks = manager.tracks()
    locks: list[RunLock] = []
    result = ExportResult(agent=agent_id)
    clock = time.perf_counter()
    try:
        for track in tracks:
            locks.append(RunLock(track, agent_id, ttl=lock_ttl).acquire())
        pointers = []
        for track in tracks:
            # the export sends every object as it is now, which covers whatever was
            # pruned below the pointer (a gap); changes after the pointer follow the export
            current = track.pointer(agent_id)
            pointer = max(current or 0, track.pruned_upto())
            if pointer != current:  # moved: the version acknowledged at the old pointer no longer applies
                track.move_pointer(agent_id, pointer)
            pointers.append(pointer)
        # the objects are read as they are now: their records outrank every change published
        # so far (the partition's clock), and changes published later outrank them
        versions = [track.clock() for track in tracks]

        def records() -> Iterator[Record]:
            for type_, id_ in iter_objects(objects):
                result.objects += 1
                if agent.object_excluded(type_):
                    continue
                partition = partition_of(type_, id_, len(tracks))
                yield Record(type_, id_, "created", ("created",), pointers[partition], versions[partition])

        def check() -> None:
            for lock in locks:
                lock.check()

        with upload.backend_for(manager, agent, backend) as uploader:
            for uploaded in upload.send_batches(uploader, records(), batch_size, check=check):
                result.records += uploaded.accepted
                result.batches += 1
                _dead_letter(manager, agent_id, uploaded.rejected, result, locks)
                if progress is not None and uploaded.accepted + len(uploaded.rejected) == batch_size:
                    progress(result.objects)
            if progress is not None:
                progress(result.objects)
        if result.rejected == 0:
            manager.update_agent(agent_id, state="active", last_error=None)
            result.completed = True
    finally:
        for lock in locks:
            lock.release()
        result.elapsed = time.perf_counter() - clock
    return result


def _dead_letter(
    manager: SyncManager, agent_id: str, rejected: list[upload.Rejection], result: ExportResult, locks: list[RunLock]
) -> None:
    """Put a batch's refused records on the dead-letter list of their partitions, right away.

    Fenced by that partition's lock: an export that lost it writes no dead letters.
    """
    by_partition: dict[int, list[upload.Rejection]] = {}
    for record, reason in rejected:
        by_partition.setdefault(partition_of(record.type, record.id, len(locks)), []).append((record, reason))
    for partition, rejections in by_partition.items():
        result.rejected += deadletters.add(manager, agent_id, partition, rejections, lock=locks[partition])
