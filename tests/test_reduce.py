"""Tests for :func:`livesync.reduce.reduce`: the per-object reduction rules of DESIGN.md."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from livesync.changes import APPEAR, DISAPPEAR, FLAG_BITS, FLAGS, LIFECYCLE, Change
from livesync.records import ObjectId, Record
from livesync.reduce import reduce

Key = tuple[str, ObjectId]

APPEAR_FLAGS = tuple(name for name in FLAGS if FLAG_BITS[name] & APPEAR)
DISAPPEAR_FLAGS = tuple(name for name in FLAGS if FLAG_BITS[name] & DISAPPEAR)
MODIFY_FLAGS = tuple(name for name in FLAGS if not FLAG_BITS[name] & LIFECYCLE)


def version(seq: int) -> int:
    """The version the tests give the change with ``seq`` (server microseconds)."""
    return 1_700_000_000_000_000 + 10 * seq


def change(seq: int, type_: str, id_: ObjectId, *flags: str) -> Change:
    """Build a change with ``ts`` and ``version`` derived from ``seq``."""
    mask = 0
    for name in flags:
        mask |= FLAG_BITS[name]
    return Change(seq, version(seq) // 1000, type_, id_, mask, version(seq))


def only(records: list[Record]) -> Record:
    assert len(records) == 1, records
    return records[0]


# --- one test per rule -------------------------------------------------------------------


def test_created_then_deleted_yields_deleted() -> None:
    # Given an object created and then deleted within the window
    changes = [change(1, "event", 1, "created"), change(2, "event", 1, "deleted")]
    # When reduced
    records = reduce(changes)
    # Then the target hears of the delete: it may hold the object all the same (delivery is
    # at-least-once: a resend whose first answer was lost, an export, a lost ack)
    assert records == [Record("event", 1, "deleted", ("created", "deleted"), 2, version(2))]


def test_modified_then_deleted_yields_deleted() -> None:
    # Given a live object modified and then deleted
    changes = [change(1, "event", 1, "data_changed"), change(2, "event", 1, "deleted")]
    # When reduced
    records = reduce(changes)
    # Then one deleted record carries both flags and the last seq
    assert records == [Record("event", 1, "deleted", ("data_changed", "deleted"), 2, version(2))]


def test_deleted_then_undeleted_yields_created() -> None:
    # Given an object deleted and then undeleted
    changes = [change(3, "event", 1, "deleted"), change(5, "event", 1, "undeleted")]
    # When reduced
    records = reduce(changes)
    # Then the last lifecycle change (an appear) wins: created
    assert records == [Record("event", 1, "created", ("deleted", "undeleted"), 5, version(5))]


def test_created_then_updates_yields_created_with_union_of_flags() -> None:
    # Given an object created and then modified several times
    changes = [
        change(1, "event", 1, "created"),
        change(2, "event", 1, "title_changed"),
        change(3, "event", 1, "data_changed", "moved"),
    ]
    # When reduced
    records = reduce(changes)
    # Then a single created record holds the sorted union of all flags
    assert records == [
        Record("event", 1, "created", ("created", "data_changed", "moved", "title_changed"), 3, version(3))
    ]


def test_only_modifications_yield_updated_with_union_of_flags() -> None:
    # Given an object that only receives modifications
    changes = [
        change(1, "category", "x", "acl_changed"),
        change(2, "category", "x", "title_changed", "acl_changed"),
        change(4, "category", "x", "location_changed"),
    ]
    # When reduced
    records = reduce(changes)
    # Then it is updated, with the sorted union of flags and the highest seq
    assert records == [
        Record("category", "x", "updated", ("acl_changed", "location_changed", "title_changed"), 4, version(4))
    ]


def test_published_yields_created() -> None:
    # Given an object that was published
    changes = [change(7, "event", 9, "published")]
    # When reduced
    record = only(reduce(changes))
    # Then publishing counts as an appear: created
    assert record == Record("event", 9, "created", ("published",), 7, version(7))


def test_unpublished_yields_deleted() -> None:
    # Given an object that was unpublished
    changes = [change(7, "event", 9, "unpublished")]
    # When reduced
    record = only(reduce(changes))
    # Then unpublishing counts as a disappear: deleted
    assert record == Record("event", 9, "deleted", ("unpublished",), 7, version(7))


def test_published_then_unpublished_yields_deleted() -> None:
    # Given an object published and unpublished again within the window
    changes = [change(1, "event", 9, "published"), change(2, "event", 9, "unpublished")]
    # When reduced
    records = reduce(changes)
    # Then it leaves the target, which may hold it from an earlier attempt
    assert records == [Record("event", 9, "deleted", ("published", "unpublished"), 2, version(2))]


def test_undeleted_then_deleted_yields_deleted() -> None:
    # Given a deleted object undeleted and deleted again
    changes = [change(1, "event", 9, "undeleted"), change(2, "event", 9, "deleted")]
    # When reduced
    records = reduce(changes)
    # Then the last lifecycle change is a disappear: deleted
    assert records == [Record("event", 9, "deleted", ("deleted", "undeleted"), 2, version(2))]


def test_deleted_undeleted_deleted_yields_deleted() -> None:
    # Given a live object deleted, undeleted and deleted again
    changes = [
        change(1, "event", 9, "deleted"),
        change(2, "event", 9, "undeleted"),
        change(3, "event", 9, "deleted"),
    ]
    # When reduced
    records = reduce(changes)
    # Then it started live and ended gone: deleted
    assert records == [Record("event", 9, "deleted", ("deleted", "undeleted"), 3, version(3))]


def test_change_with_two_appear_flags_yields_created() -> None:
    # Given one change holding two appear flags (allowed: both appear)
    changes = [change(1, "event", 9, "created", "undeleted")]
    # When reduced
    records = reduce(changes)
    # Then it is created, with both flags
    assert records == [Record("event", 9, "created", ("created", "undeleted"), 1, version(1))]


def test_records_are_ordered_by_ascending_highest_seq() -> None:
    # Given interleaved changes of three objects, whose last changes come in order b, c, a
    changes = [
        change(1, "event", "a", "data_changed"),
        change(2, "event", "b", "data_changed"),
        change(3, "event", "c", "created"),
        change(4, "event", "b", "moved"),
        change(5, "event", "c", "title_changed"),
        change(6, "event", "a", "deleted"),
    ]
    # When reduced
    records = reduce(changes)
    # Then records come in ascending seq, each carrying its object's highest seq
    assert [(r.id, r.seq) for r in records] == [("b", 4), ("c", 5), ("a", 6)]


def test_int_and_str_ids_are_distinct_objects_and_keep_their_types() -> None:
    # Given changes for id 42 (int) and id "42" (str) of the same type
    changes = [
        change(1, "event", 42, "created"),
        change(2, "event", "42", "deleted"),
        change(3, "event", 42, "data_changed"),
    ]
    # When reduced
    records = reduce(changes)
    # Then they are two objects and each id keeps its Python type
    assert records == [
        Record("event", "42", "deleted", ("deleted",), 2, version(2)),
        Record("event", 42, "created", ("created", "data_changed"), 3, version(3)),
    ]
    assert type(records[0].id) is str
    assert type(records[1].id) is int


def test_empty_input_yields_no_records() -> None:
    # Given no changes; When reduced; Then no records
    assert reduce([]) == []
    assert reduce(iter(())) == []


# --- property tests ------------------------------------------------------------------------

TYPES = ("event", "category", "note")
IDS: tuple[ObjectId, ...] = (0, 1, 2, 42, "0", "1", "42", "a")
OBJECTS: tuple[Key, ...] = tuple((t, i) for t in TYPES for i in IDS)


@dataclass(frozen=True)
class Scenario:
    initial: frozenset[Key]
    changes: list[Change]


def _bits(names: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(FLAG_BITS[name] for name in names)


APPEAR_BITS = _bits(APPEAR_FLAGS)
DISAPPEAR_BITS = _bits(DISAPPEAR_FLAGS)
MODIFY_BITS = (*_bits(MODIFY_FLAGS), 0)  # the trailing 0 picks "no modification"

# One step: (object index, seq gap, lifecycle selector, two modification picks). Flat integer
# draws keep generation fast; the selector picks a subset of the lifecycle flags that are
# legal for the object at that moment (0: none).
_STEP = st.tuples(
    st.integers(min_value=0, max_value=5),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=7),
    st.integers(min_value=0, max_value=len(MODIFY_BITS) - 1),
    st.integers(min_value=0, max_value=len(MODIFY_BITS) - 1),
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """An initial live set and a valid change sequence over it, in ascending seq.

    Appear flags only go to objects not live at that moment, disappear flags only to live
    ones, modification flags anywhere; every change has at least one flag.
    """
    objects = draw(st.lists(st.sampled_from(OBJECTS), min_size=1, max_size=6, unique=True))
    initial = frozenset(draw(st.sets(st.sampled_from(objects))))
    seq = draw(st.integers(min_value=0, max_value=1000))
    live = set(initial)
    changes: list[Change] = []
    for index, gap, selector, mod_a, mod_b in draw(st.lists(_STEP, max_size=30)):
        key = objects[index % len(objects)]
        seq += gap
        allowed = DISAPPEAR_BITS if key in live else APPEAR_BITS
        mask = MODIFY_BITS[mod_a] | MODIFY_BITS[mod_b]
        for position, bit in enumerate(allowed):
            if selector >> position & 1:
                mask |= bit
        if not mask:
            mask = FLAG_BITS["data_changed"]
        if mask & APPEAR:
            live.add(key)
        elif mask & DISAPPEAR:
            live.discard(key)
        changes.append(Change(seq, seq * 10, key[0], key[1], mask, seq * 10_000))
    return Scenario(initial, changes)


def apply_changes(live: set[Key], changes: list[Change]) -> set[Key]:
    for c in changes:
        if c.flags & APPEAR:
            live.add((c.type, c.id))
        elif c.flags & DISAPPEAR:
            live.discard((c.type, c.id))
    return live


def apply_records(live: set[Key], records: list[Record]) -> set[Key]:
    for r in records:
        if r.action == "created":
            live.add((r.type, r.id))
        elif r.action == "deleted":
            live.discard((r.type, r.id))
    return live


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_records_replay_to_same_live_set_as_raw_changes(scenario: Scenario) -> None:
    # Given a valid change sequence over an initial live set
    changes = scenario.changes
    # When reduced
    records = reduce(changes)
    # Then applying the records gives the same live set as applying every raw change
    assert apply_records(set(scenario.initial), records) == apply_changes(set(scenario.initial), changes)

    # And records come in ascending seq, at most one per object
    assert [r.seq for r in records] == sorted(r.seq for r in records)
    by_key = {(r.type, r.id): r for r in records}
    assert len(by_key) == len(records)

    # And each record holds every flag seen for its object, the object's highest seq and
    # that change's version, and an id of the original type
    seen: dict[Key, set[str]] = {}
    max_seq: dict[Key, int] = {}
    max_version: dict[Key, int] = {}
    lifecycles: dict[Key, list[int]] = {}
    original_id: dict[Key, ObjectId] = {}
    for c in changes:
        key = (c.type, c.id)
        original_id.setdefault(key, c.id)
        seen.setdefault(key, set()).update(c.flag_names)
        max_seq[key] = c.seq
        max_version[key] = c.version
        if c.flags & LIFECYCLE:
            lifecycles.setdefault(key, []).append(c.flags & LIFECYCLE)
    for key, record in by_key.items():
        assert set(record.changes) >= seen[key]
        assert record.changes == tuple(sorted(seen[key]))
        assert record.seq == max_seq[key]
        assert record.version == max_version[key]
        assert type(record.id) is type(original_id[key])

    # And every object has a record, a deleted one exactly when its last lifecycle change
    # was a disappear (also when it appeared first: the target may hold it from a resend)
    assert set(seen) == set(by_key)
    gone = {key for key, lc in lifecycles.items() if lc[-1] & DISAPPEAR}
    assert {key for key, record in by_key.items() if record.action == "deleted"} == gone


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.data())
def test_reducing_two_consecutive_windows_replays_to_same_live_set(scenario: Scenario, data: st.DataObject) -> None:
    # Given a valid change sequence split into two consecutive windows
    changes = scenario.changes
    split = data.draw(st.integers(min_value=0, max_value=len(changes)))
    first, second = changes[:split], changes[split:]
    # When each window is reduced and its records applied in turn
    live = apply_records(set(scenario.initial), reduce(first))
    live = apply_records(live, reduce(second))
    # Then the live set matches applying every raw change, and reducing all at once
    assert live == apply_changes(set(scenario.initial), changes)
    assert live == apply_records(set(scenario.initial), reduce(changes))
