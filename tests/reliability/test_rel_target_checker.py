"""The real-target checker finds what it claims to: lost, stale and resurrected objects, and a broken source.

``checker.source_model`` and ``checker.check_target`` decide whether the real-target runs
(``test_rel_targets``) pass; these tests feed them small hand-made sources and targets.
"""

from __future__ import annotations

from typing import Any

from reliability.checker import SourceObject, check_target, source_model

from livesync.testing import TargetState

# the publishers' log: (seq, flags) per object
PUBLISHED: dict[tuple[str, Any], list[tuple[int, frozenset[str]]]] = {
    ("event", 1): [(1, frozenset({"created"})), (4, frozenset({"title_changed"}))],
    ("event", 2): [(2, frozenset({"created"})), (5, frozenset({"deleted"}))],
    ("contribution", "c-3"): [(3, frozenset({"created"}))],
}
LATEST = {("event", "1"): (4, 104), ("event", "2"): (5, 105), ("contribution", "c-3"): (3, 103)}
DOCUMENTS: dict[tuple[str, str], dict[str, Any]] = {
    ("event", "1"): {"id": 1, "changes": 2},
    ("contribution", "c-3"): {"id": "c-3", "changes": 1},
}
TARGET = {
    ("event", "1"): TargetState(104, True, {"id": 1, "changes": 2}),
    ("event", "2"): TargetState(105, False, None),
    ("contribution", "c-3"): TargetState(103, True, {"id": "c-3", "changes": 1}),
}


def model() -> dict[tuple[str, str], SourceObject]:
    built = source_model(PUBLISHED, LATEST, DOCUMENTS, counter="changes")
    assert not built.problems, built.problems
    return built.objects


def test_the_source_model_holds_each_objects_liveness_latest_version_and_document() -> None:
    assert model() == {
        ("event", "1"): SourceObject(True, 104, {"id": 1, "changes": 2}),
        ("event", "2"): SourceObject(False, 105, None),
        ("contribution", "c-3"): SourceObject(True, 103, {"id": "c-3", "changes": 1}),
    }


def test_a_target_equal_to_the_source_passes_with_or_without_its_tombstones() -> None:
    assert check_target(model(), TARGET).ok
    without_tombstone = {key: state for key, state in TARGET.items() if state.live}
    assert check_target(model(), without_tombstone).ok


def test_a_tombstone_of_another_version_than_the_latest_is_a_problem() -> None:
    # every window ending in a delete yields it (also one that undeleted first): the tombstone is the latest
    assert not check_target(model(), {**TARGET, ("event", "2"): TargetState(102, False, None)}).ok
    assert not check_target(model(), {**TARGET, ("event", "2"): TargetState(106, False, None)}).ok


def test_a_live_object_absent_or_deleted_in_the_target_is_lost() -> None:
    absent = {key: state for key, state in TARGET.items() if key != ("event", "1")}
    deleted = {**TARGET, ("event", "1"): TargetState(104, False, None)}
    for target in (absent, deleted):
        report = check_target(model(), target)
        assert report.lost == [("event", "1")] and not report.ok


def test_an_older_version_or_an_older_document_is_stale() -> None:
    old_version = {**TARGET, ("event", "1"): TargetState(101, True, {"id": 1, "changes": 2})}
    old_document = {**TARGET, ("event", "1"): TargetState(104, True, {"id": 1, "changes": 1})}
    for target in (old_version, old_document):
        report = check_target(model(), target)
        assert report.stale == [("event", "1")] and not report.ok


def test_an_object_gone_from_the_source_but_live_in_the_target_is_resurrected() -> None:
    report = check_target(model(), {**TARGET, ("event", "2"): TargetState(102, True, {"id": 2, "changes": 1})})
    assert report.resurrected == [("event", "2")] and not report.ok


def test_an_object_nobody_published_is_a_problem() -> None:
    assert not check_target(model(), {**TARGET, ("event", "9"): TargetState(1, True, {})}).ok


def test_a_source_whose_accounts_disagree_is_reported_as_broken() -> None:
    # the database holds a deleted object live; the track's latest change is not the logged one;
    # a document counts a change nobody logged
    cases: list[dict[tuple[str, str], dict[str, Any]]] = [
        {**DOCUMENTS, ("event", "2"): {"id": 2, "changes": 2}},
        DOCUMENTS,
        {**DOCUMENTS, ("event", "1"): {"id": 1, "changes": 3}},
    ]
    latest = [LATEST, {**LATEST, ("event", "1"): (6, 106)}, LATEST]
    for documents, track in zip(cases, latest, strict=True):
        assert source_model(PUBLISHED, track, documents, counter="changes").problems
