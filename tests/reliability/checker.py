"""An independent model of what each target must end up holding.

Publishers log every change they published (``log_published``); the checker replays
them per object in seq order and compares with the records an agent's ``jsonl``
target received:

- live sets are equal, applying records the way a target does (a record whose seq is
  not above the last one applied for its object is a stale duplicate and is dropped);
- every record is explained by the object's changes: some earlier record of the same
  object (or nothing) ends where its window starts, and the changes since fold into the
  record: same action and exactly the union of the flags (a window whose last lifecycle
  change is a disappear folds into ``deleted``, also when it began with an appear: the
  target may hold the object from a resend). So every change of every object reaches the
  target;
- records per object come in ascending seq (equal seqs: a resend of the window in
  flight, counted as duplicates).

It shares no code with livesync's reduction on purpose.

For a real target (a database table, a search index), whose records cannot be read back
but whose state can, :func:`source_model` says what every object must end up as, and
:func:`check_target` compares that with what the target holds, read back as
``(type, str(id)) -> TargetState``:

- nothing lost: every object live in the source is live in the target;
- no stale state: its version is the version of the object's latest change and its
  document is the source's current one (a document that counts the object's changes
  proves its freshness without versions);
- nothing resurrected: an object the source does not hold live is absent from the
  target or a tombstone, never of a version above its latest change.

These two functions are the seam for any run that ends with a drained target: SIGKILLed
workers, Redis restarts, a reindex in flight.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livesync.testing import TargetState

APPEAR = frozenset({"created", "undeleted", "published"})
DISAPPEAR = frozenset({"deleted", "unpublished"})

ObjectKey = tuple[str, Any]
Change = tuple[int, frozenset[str]]  # (seq, flags) of one object


def log_published(path: Path, partition_seqs: Iterable[tuple[int, int]], items: Iterable[Any]) -> None:
    """Append ``{"p", "seq", "type", "id", "changes"}`` lines for published items.

    ``partition_seqs`` gives (partition, seq) per item, in the same order as ``items``
    (``(type, id, [flags])`` tuples).
    """
    with path.open("a", encoding="utf-8") as out:
        for (partition, seq), (type_, id_, flags) in zip(partition_seqs, items, strict=True):
            out.write(json.dumps({"p": partition, "seq": seq, "type": type_, "id": id_, "changes": list(flags)}) + "\n")


def load_published(paths: Iterable[Path]) -> dict[ObjectKey, list[Change]]:
    """Every logged change per object, in seq order (an object lives in one partition)."""
    changes: dict[ObjectKey, list[Change]] = defaultdict(list)
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                changes[(entry["type"], entry["id"])].append((entry["seq"], frozenset(entry["changes"])))
    for key in changes:
        changes[key].sort(key=lambda change: change[0])
    return dict(changes)


def load_records(path: Path) -> list[dict[str, Any]]:
    """The records a jsonl target received, in file order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def replay_changes(published: dict[ObjectKey, list[Change]]) -> set[ObjectKey]:
    """Objects live after every published change (appear adds, disappear removes)."""
    live = set()
    for key, changes in published.items():
        for _seq, flags in changes:
            if flags & APPEAR:
                live.add(key)
            if flags & DISAPPEAR:
                live.discard(key)
    return live


def expected_action(changes: list[Change]) -> str | None:
    """What one window of an object's changes reduces to."""
    lifecycle = [flags for _, flags in changes if flags & (APPEAR | DISAPPEAR)]
    if not lifecycle:
        return "updated"
    if lifecycle[-1] & DISAPPEAR:
        return "deleted"
    return "created"


def vanishes(changes: list[Change]) -> bool:
    """Whether the changes split into windows that each yield no record."""
    return _vanishes(tuple(changes))


@functools.lru_cache(maxsize=65536)
def _vanishes(changes: tuple[Change, ...]) -> bool:
    possible = [True] + [False] * len(changes)
    for end in range(1, len(changes) + 1):
        possible[end] = any(possible[begin] and expected_action(changes[begin:end]) is None for begin in range(end))
    return possible[-1]


@dataclass
class Report:
    """What the checker found for one target."""

    objects: int = 0
    changes: int = 0
    records: int = 0
    duplicates: int = 0
    lost: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing unexplained."""
        return not self.problems and self.lost == 0

    def summary(self) -> str:
        """One line for logs and the README."""
        return (
            f"{self.changes} changes over {self.objects} objects -> {self.records} records "
            f"({self.duplicates} duplicates), lost {self.lost}, problems {len(self.problems)}"
        )


def check(published: dict[ObjectKey, list[Change]], records: list[dict[str, Any]]) -> Report:
    """Compare a target's records with the published changes."""
    report = Report(objects=len(published), changes=sum(len(c) for c in published.values()), records=len(records))
    by_object: dict[ObjectKey, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_object[(record["type"], record["id"])].append(record)
    for key in by_object.keys() - published.keys():
        report.problems.append(f"{key}: records for an object nobody published")
    live: set[ObjectKey] = set()
    for key, changes in published.items():
        applied = _check_object(key, changes, by_object.get(key, []), report)
        if applied is not None and applied["action"] != "deleted":
            live.add(key)
    expected = replay_changes(published)
    report.lost = len(expected ^ live)
    if report.lost:
        sample = sorted(map(str, expected ^ live))[:5]
        report.problems.append(f"live sets differ in {report.lost} objects, e.g. {sample}")
    return report


def _check_object(
    key: ObjectKey, changes: list[Change], records: list[dict[str, Any]], report: Report
) -> dict[str, Any] | None:
    """Check one object's records; return the last record a target keeps (None: none)."""
    seqs = [record["seq"] for record in records]
    if seqs != sorted(seqs):
        report.problems.append(f"{key}: records out of seq order: {seqs}")
        return None
    published = {seq for seq, _ in changes}
    boundaries = [0]
    applied: dict[str, Any] | None = None
    for record in records:
        if applied is not None and record["seq"] <= applied["seq"]:
            report.duplicates += 1
            if record != applied:
                report.problems.append(f"{key}: resent record {record} differs from {applied}")
            continue
        if record["seq"] not in published:
            report.problems.append(f"{key}: record seq {record['seq']} is not a seq of this object")
            continue
        # newest boundary first: a resend after a crash is the rare case
        if not any(_explains(changes, start, record) for start in reversed(boundaries)):
            report.problems.append(f"{key}: record {record} does not match the changes {changes}")
        boundaries.append(record["seq"])
        applied = record
    rest = [change for change in changes if change[0] > boundaries[-1]]
    if rest and not vanishes(rest):
        report.problems.append(f"{key}: changes {rest} after the last record never reached the target")
    return applied


def _explains(changes: list[Change], start: int, record: dict[str, Any]) -> bool:
    group = [change for change in changes if start < change[0] <= record["seq"]]
    return any(
        vanishes(group[:split])
        and expected_action(group[split:]) == record["action"]
        and set().union(*(flags for _, flags in group[split:])) == set(record["changes"])
        for split in range(len(group))
    )


# -- real targets: a target's state, read back, against the source --------------------

TargetKey = tuple[str, str]  # (type, str(id)): how targets key objects


@dataclass(frozen=True)
class SourceObject:
    """What one object must end up as in a target once every change is delivered."""

    live: bool
    version: int
    """The version of the object's latest change."""
    document: dict[str, Any] | None
    """The source's current document (``None`` when the object is not live)."""


@dataclass
class SourceModel:
    """Every object's expected state, and where the source disagreed with itself."""

    objects: dict[TargetKey, SourceObject] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def source_model(
    published: dict[ObjectKey, list[Change]],
    latest: Mapping[TargetKey, tuple[int, int]],
    documents: Mapping[TargetKey, dict[str, Any]],
    *,
    counter: str | None = None,
) -> SourceModel:
    """The expected state of every published object, from three independent accounts of the source.

    ``published`` is the publishers' log (which objects are live: :func:`replay_changes`),
    ``latest`` the ``(seq, version)`` of each object's latest change as stored on the
    track, ``documents`` what the loader returns now for the live objects. They must
    agree: the same live objects in the log and the documents, the same latest seq in the
    log and on the track, and, with ``counter``, a document field counting the object's
    changes equal to the changes logged for it. Disagreements are the model's
    ``problems`` (the workload is broken, not the target).
    """
    model = SourceModel()
    live = {(type_, str(id_)) for type_, id_ in replay_changes(published)}
    logged = {(type_, str(id_)): changes for (type_, id_), changes in published.items()}
    if live != documents.keys():
        model.problems.append(
            f"source: the log's live objects and the documents differ in {_sample(live ^ documents.keys())}"
        )
    for key, changes in sorted(logged.items()):
        if key not in latest:
            model.problems.append(f"source: {key} was published but the track holds no change of it")
            continue
        seq, version = latest[key]
        if seq != changes[-1][0]:
            model.problems.append(f"source: {key}'s latest change is seq {seq} on the track, {changes[-1][0]} logged")
        document = documents.get(key)
        if counter is not None and document is not None and document.get(counter) != len(changes):
            model.problems.append(
                f"source: {key}'s document counts {document.get(counter)} changes, {len(changes)} logged"
            )
        model.objects[key] = SourceObject(key in live, version, document if key in live else None)
    for key in latest.keys() - logged.keys():
        model.problems.append(f"source: the track holds changes of {key}, which nobody logged")
    return model


@dataclass
class TargetReport:
    """What :func:`check_target` found in one target."""

    objects: int = 0
    live: int = 0
    held: int = 0
    lost: list[TargetKey] = field(default_factory=list)
    stale: list[TargetKey] = field(default_factory=list)
    resurrected: list[TargetKey] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing stale, nothing resurrected."""
        return not self.problems

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"{self.objects} objects ({self.live} live in the source), {self.held} held by the target: "
            f"lost {len(self.lost)}, stale {len(self.stale)}, resurrected {len(self.resurrected)}, "
            f"problems {len(self.problems)}"
        )


def check_target(model: Mapping[TargetKey, SourceObject], held: Mapping[TargetKey, TargetState]) -> TargetReport:
    """Compare what a target holds (read back after the runs drained) with the source's model."""
    report = TargetReport(objects=len(model), live=sum(obj.live for obj in model.values()), held=len(held))
    for key in sorted(held.keys() - model.keys()):
        report.problems.append(f"{key}: held by the target, never published")
    for key, expected in sorted(model.items()):
        state = held.get(key)
        if expected.live:
            if state is None or not state.live:
                report.lost.append(key)
                report.problems.append(f"{key}: live in the source, {'absent' if state is None else 'a tombstone'}")
            elif state.version != expected.version or state.document != expected.document:
                report.stale.append(key)
                report.problems.append(
                    f"{key}: stale: version {state.version} {state.document}, "
                    f"the source's latest {expected.version} {expected.document}"
                )
        elif state is not None and state.live:
            report.resurrected.append(key)
            report.problems.append(f"{key}: live in the target (version {state.version}), gone from the source")
        elif state is not None and state.version != expected.version:
            # every window ending in a disappear yields its delete, so a tombstone has the latest version
            report.problems.append(f"{key}: tombstone of version {state.version}, not the latest {expected.version}")
    return report


def _sample(keys: Iterable[Any]) -> str:
    keys = sorted(map(str, keys))
    return f"{len(keys)} objects, e.g. {keys[:5]}"
