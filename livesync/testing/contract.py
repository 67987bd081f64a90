"""The contract tests: :class:`BackendContract`, subclassed by a backend's test module (see :mod:`livesync.testing`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import pytest

from livesync.backends.base import Backend
from livesync.errors import RecordRejected
from livesync.records import Record
from livesync.testing.target import BASE_VERSION, TargetState, apply_version_rule, make_record, same_document

#: The ``make_backend`` fixture: a new, unopened backend on the test's target.
MakeBackend = Callable[[], Backend]
#: The ``read_target`` fixture's callable: what the target holds, by ``(type, str(id))``.
ReadTarget = Callable[[], Mapping[tuple[str, str], TargetState]]
#: The ``refused_record`` fixture: a record turned into one the target refuses for good.
RefusedRecord = Callable[[Record], Record]
#: The ``broken_target`` fixture: a context manager inside which uploads fail as a whole.
BrokenTarget = Callable[[], AbstractContextManager[object]]


class BackendContract:
    """The contract every backend satisfies, as pytest test methods; subclass it with your fixtures.

    Required fixtures: ``make_backend`` (a callable returning a new, unopened backend on a
    target that is empty at the start of each test) and ``read_target`` (a callable
    returning ``{(type, str(id)): TargetState}``, or ``None`` when the target cannot be
    read back). Optional: ``refused_record`` and ``broken_target`` (see the module's docstring).
    """

    __test__: ClassVar[bool] = False
    """The base itself is no test class; every subclass is one unless it says ``__test__ = False``."""

    stores_documents: ClassVar[bool] = True
    """Whether ``read_target`` reports the records' documents (``False``: documents are not compared)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    # -- optional fixtures: by default the tests that need them skip ------------------------

    @pytest.fixture
    def refused_record(self) -> RefusedRecord | None:
        """Turns a record into one the target refuses for good; ``None``: the target refuses none."""
        return None

    @pytest.fixture
    def broken_target(self) -> BrokenTarget | None:
        """A context manager factory: while inside, uploads fail as a whole; ``None``: cannot be broken."""
        return None

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def upload(make_backend: MakeBackend, *batches: Sequence[Record]) -> None:
        """Send ``batches`` through one new backend, as one run does (open, batches, close)."""
        with make_backend() as backend:
            for batch in batches:
                backend.upload(list(batch))

    @staticmethod
    def state(read_target: ReadTarget | None) -> dict[tuple[str, str], TargetState]:
        """What the target holds; skips the test when it cannot be read back."""
        if read_target is None:
            pytest.skip("the target cannot be read back (read_target is None): only the upload outcomes are checked")
        return dict(read_target())

    def assert_holds(
        self, state: Mapping[tuple[str, str], TargetState], expected: Mapping[tuple[str, str], TargetState]
    ) -> None:
        """``state`` agrees with ``expected`` on every object of ``expected``.

        A live object must be live at the same version, with the same document. A tombstone
        (``live=False``) may be absent from ``state``; if present it is not live and keeps
        the delete's version.
        """
        for key, want in expected.items():
            have = state.get(key)
            if want.live:
                assert have is not None, f"{key} should be live at version {want.version}, the target has nothing"
                assert have.live, f"{key} should be live at version {want.version}, the target has {have}"
                assert have.version == want.version, f"{key} should be at version {want.version}, it has {have}"
                if self.stores_documents:
                    assert same_document(have.document, want.document), (
                        f"{key} should hold {want.document!r}, it holds {have.document!r}"
                    )
            elif have is not None:
                assert not have.live, f"{key} should be deleted (tombstone {want.version}), the target has {have}"
                assert have.version == want.version, f"{key}'s tombstone should keep version {want.version}: {have}"

    @staticmethod
    def live(state: Mapping[tuple[str, str], TargetState]) -> set[tuple[str, str]]:
        """The objects live in ``state``."""
        return {key for key, held in state.items() if held.live}

    def expect(self, *batches: Sequence[Record]) -> dict[tuple[str, str], TargetState]:
        """What the version rule makes of ``batches`` applied in order to an empty target."""
        state: dict[tuple[str, str], TargetState] = {}
        for batch in batches:
            apply_version_rule(state, batch)
        return state

    # -- the contract ------------------------------------------------------------------------

    def test_a_batch_of_creates_updates_and_deletes_lands(
        self, make_backend: MakeBackend, read_target: ReadTarget | None
    ) -> None:
        first = [
            make_record("event", 1, "created", 10, {"title": "Opening", "rooms": [1, 2]}),
            make_record("event", "e-2", "created", 11, {"title": "Zürich ✓"}),
            make_record("contribution", 1, "created", 12),
            make_record("contribution", "c-9", "created", 13, {"nested": {"a": None, "b": 1.5}}),
        ]
        second = [
            make_record("event", 1, "updated", 20, {"title": "Opening (moved)", "rooms": [3]}),
            make_record("contribution", 1, "deleted", 21),
            make_record("contribution", "c-9", "updated", 22),
        ]
        self.upload(make_backend, first, second)
        state = self.state(read_target)
        self.assert_holds(state, self.expect(first, second))
        assert self.live(state) == {("event", "1"), ("event", "e-2"), ("contribution", "c-9")}

    def test_the_same_batch_sent_again_changes_nothing(
        self, make_backend: MakeBackend, read_target: ReadTarget | None
    ) -> None:
        batch = [
            make_record("event", 1, "created", 10, {"title": "A"}),
            make_record("event", 2, "created", 11, {"title": "B"}),
            make_record("event", 2, "updated", 12, {"title": "B2"}),
            make_record("event", "x", "deleted", 13),
        ]
        # once, again by the same backend (a retried batch), again by a new run (after a crash)
        with make_backend() as backend:
            backend.upload(list(batch))
            backend.upload(list(batch))
        self.upload(make_backend, batch)
        state = self.state(read_target)
        self.assert_holds(state, self.expect(batch))
        assert self.live(state) == {("event", "1"), ("event", "2")}

    @pytest.mark.parametrize("together", [True, False], ids=["one-batch", "separate-batches"])
    def test_a_stale_update_never_overwrites_a_newer_state(
        self, make_backend: MakeBackend, read_target: ReadTarget | None, together: bool
    ) -> None:
        newer = [
            make_record("event", 1, "created", 10, {"title": "v10"}),
            make_record("event", 1, "updated", 30, {"title": "v30"}),
        ]
        stale = [make_record("event", 1, "updated", 20, {"title": "v20"})]
        self.upload(make_backend, *([newer + stale] if together else [newer, stale]))
        self.assert_holds(
            self.state(read_target), {("event", "1"): TargetState(BASE_VERSION + 30, True, {"title": "v30"})}
        )

    @pytest.mark.parametrize("together", [True, False], ids=["one-batch", "separate-batches"])
    def test_a_stale_delete_never_removes_a_newer_state(
        self, make_backend: MakeBackend, read_target: ReadTarget | None, together: bool
    ) -> None:
        newer = [make_record("event", 1, "created", 30, {"title": "v30"})]
        stale = [make_record("event", 1, "deleted", 20)]
        self.upload(make_backend, *([newer + stale] if together else [newer, stale]))
        self.assert_holds(
            self.state(read_target), {("event", "1"): TargetState(BASE_VERSION + 30, True, {"title": "v30"})}
        )

    @pytest.mark.parametrize("together", [True, False], ids=["one-batch", "separate-batches"])
    def test_a_stale_create_never_overwrites_a_newer_update(
        self, make_backend: MakeBackend, read_target: ReadTarget | None, together: bool
    ) -> None:
        newer = [
            make_record("event", 1, "created", 10, {"title": "v10"}),
            make_record("event", 1, "updated", 30, {"title": "v30"}),
        ]
        stale = [make_record("event", 1, "created", 20, {"title": "v20"})]
        self.upload(make_backend, *([newer + stale] if together else [newer, stale]))
        self.assert_holds(
            self.state(read_target), {("event", "1"): TargetState(BASE_VERSION + 30, True, {"title": "v30"})}
        )

    @pytest.mark.parametrize("together", [True, False], ids=["one-batch", "separate-batches"])
    def test_a_delete_keeps_its_version_so_a_late_stale_create_cannot_resurrect(
        self, make_backend: MakeBackend, read_target: ReadTarget | None, together: bool
    ) -> None:
        history = [
            make_record("event", 1, "created", 10, {"title": "v10"}),
            make_record("event", 1, "deleted", 30),
        ]
        late = [make_record("event", 1, "created", 20, {"title": "v20"})]
        self.upload(make_backend, *([history + late] if together else [history, late]))
        state = self.state(read_target)
        assert ("event", "1") not in self.live(state)
        self.assert_holds(state, {("event", "1"): TargetState(BASE_VERSION + 30, False, None)})

    def test_a_create_newer_than_the_tombstone_brings_the_object_back(
        self, make_backend: MakeBackend, read_target: ReadTarget | None
    ) -> None:
        batches = (
            [make_record("event", 1, "created", 10, {"title": "v10"})],
            [make_record("event", 1, "deleted", 20)],
            [make_record("event", 1, "created", 30, {"title": "v30"})],
        )
        self.upload(make_backend, *batches)
        self.assert_holds(
            self.state(read_target), {("event", "1"): TargetState(BASE_VERSION + 30, True, {"title": "v30"})}
        )

    def test_versions_decide_never_seqs(self, make_backend: MakeBackend, read_target: ReadTarget | None) -> None:
        # after a Redis rollback seqs start again low while versions keep growing
        batches = (
            [make_record("event", 1, "created", 10, {"title": "v10"}, seq=900)],
            [make_record("event", 1, "updated", 30, {"title": "v30"}, seq=5)],
            [make_record("event", 1, "updated", 20, {"title": "v20"}, seq=1000)],
        )
        self.upload(make_backend, *batches)
        self.assert_holds(
            self.state(read_target), {("event", "1"): TargetState(BASE_VERSION + 30, True, {"title": "v30"})}
        )

    def test_an_update_for_an_absent_object_changes_nothing(
        self, make_backend: MakeBackend, read_target: ReadTarget | None
    ) -> None:
        self.upload(make_backend, [make_record("event", 1, "updated", 30, {"title": "v30"})])
        state = self.state(read_target)
        assert ("event", "1") not in self.live(state)
        # nor did it store its version: an older create still makes the object live
        self.upload(make_backend, [make_record("event", 1, "created", 20, {"title": "v20"})])
        self.assert_holds(
            self.state(read_target), {("event", "1"): TargetState(BASE_VERSION + 20, True, {"title": "v20"})}
        )

    def test_an_update_for_a_deleted_object_neither_revives_it_nor_moves_its_version(
        self, make_backend: MakeBackend, read_target: ReadTarget | None
    ) -> None:
        self.upload(
            make_backend,
            [make_record("event", 1, "created", 10, {"title": "v10"}), make_record("event", 1, "deleted", 20)],
            [make_record("event", 1, "updated", 40, {"title": "v40"})],
        )
        state = self.state(read_target)
        assert ("event", "1") not in self.live(state)
        self.assert_holds(state, {("event", "1"): TargetState(BASE_VERSION + 20, False, None)})
        self.upload(make_backend, [make_record("event", 1, "created", 30, {"title": "v30"})])
        self.assert_holds(
            self.state(read_target), {("event", "1"): TargetState(BASE_VERSION + 30, True, {"title": "v30"})}
        )

    def test_deletes_of_unknown_objects_succeed(
        self, make_backend: MakeBackend, read_target: ReadTarget | None
    ) -> None:
        batch = [make_record("event", 404, "deleted", 10), make_record("contribution", "gone", "deleted", 11)]
        self.upload(make_backend, batch)
        state = self.state(read_target)
        assert not self.live(state)
        self.assert_holds(state, self.expect(batch))

    def test_objects_of_different_types_with_one_id_are_distinct(
        self, make_backend: MakeBackend, read_target: ReadTarget | None
    ) -> None:
        batch = [
            make_record("event", 7, "created", 10, {"kind": "event"}),
            make_record("contribution", 7, "created", 11, {"kind": "contribution"}),
            make_record("contribution", 7, "deleted", 12),
        ]
        self.upload(make_backend, batch)
        state = self.state(read_target)
        self.assert_holds(state, self.expect(batch))
        assert self.live(state) == {("event", "7")}

    def test_a_large_batch_lands_whole(self, make_backend: MakeBackend, read_target: ReadTarget | None) -> None:
        batch = [make_record("event", number, "created", number, {"n": number}) for number in range(1, 1201)]
        self.upload(make_backend, batch)
        state = self.state(read_target)
        assert self.live(state) == {("event", str(number)) for number in range(1, 1201)}
        self.assert_holds(state, self.expect(batch))

    def test_a_partial_refusal_names_exactly_the_refused_records_and_the_rest_is_durable(
        self, make_backend: MakeBackend, read_target: ReadTarget | None, refused_record: RefusedRecord | None
    ) -> None:
        if refused_record is None:
            pytest.skip("the target refuses no record for good (no refused_record fixture)")
        good = [make_record("event", number, "created", number, {"title": f"e{number}"}) for number in range(1, 6)]
        refused = [refused_record(make_record("event", number, "created", number)) for number in (101, 102)]
        batch = [good[0], refused[0], good[1], good[2], refused[1], good[3], good[4]]
        backend = make_backend()
        backend.open()
        try:
            with pytest.raises(RecordRejected) as caught:
                backend.upload(batch)
        finally:
            backend.close()  # close() after a rejection
        assert sorted((record.type, str(record.id)) for record, _reason in caught.value.rejections) == [
            ("event", "101"),
            ("event", "102"),
        ]
        assert [record for record, _reason in caught.value.rejections] == refused
        assert all(isinstance(reason, str) and reason for _record, reason in caught.value.rejections)
        # the rest is durable: a new backend reads it back (or, unreadable, still works)
        self.upload(make_backend, [make_record("event", 1, "updated", 50, {"title": "after"})])
        state = self.state(read_target)
        assert self.live(state) == {("event", str(number)) for number in range(1, 6)}
        self.assert_holds(state, self.expect(good, [make_record("event", 1, "updated", 50, {"title": "after"})]))

    def test_any_other_failure_is_not_a_rejection_and_the_batch_sent_again_lands(
        self, make_backend: MakeBackend, read_target: ReadTarget | None, broken_target: BrokenTarget | None
    ) -> None:
        if broken_target is None:
            pytest.skip("the target cannot be broken in this suite (no broken_target fixture)")
        earlier = [make_record("event", 1, "created", 10, {"title": "v10"})]
        self.upload(make_backend, earlier)
        batch = [
            make_record("event", 1, "updated", 20, {"title": "v20"}),
            make_record("event", 2, "created", 21, {"title": "two"}),
            make_record("event", 3, "deleted", 22),
        ]
        backend = make_backend()
        backend.open()
        with broken_target():
            try:
                with pytest.raises(Exception) as caught:
                    backend.upload(batch)
            finally:
                backend.close()  # close() after an error, target still down
        assert not isinstance(caught.value, RecordRejected), f"a broken target is no rejection: {caught.value!r}"
        # the runner sends the whole batch again in a later run
        self.upload(make_backend, batch)
        state = self.state(read_target)
        self.assert_holds(state, self.expect(earlier, batch))
        assert self.live(state) == {("event", "1"), ("event", "2")}

    def test_a_backend_opened_while_the_target_is_down_fails_without_rejecting(
        self, make_backend: MakeBackend, broken_target: BrokenTarget | None
    ) -> None:
        if broken_target is None:
            pytest.skip("the target cannot be broken in this suite (no broken_target fixture)")
        with broken_target():
            backend = make_backend()
            try:
                with pytest.raises(Exception) as caught:
                    backend.open()
                    backend.upload([make_record("event", 1, "created", 10, {"title": "v10"})])
            finally:
                backend.close()
        assert not isinstance(caught.value, RecordRejected), f"a broken target is no rejection: {caught.value!r}"

    def test_close_after_an_error_in_the_with_block_closes_cleanly(self, make_backend: MakeBackend) -> None:
        class Interrupted(Exception):
            pass

        with pytest.raises(Interrupted), make_backend() as backend:
            backend.upload([make_record("event", 1, "created", 10, {"title": "v10"})])
            raise Interrupted
        # and a new run works as ever
        self.upload(make_backend, [make_record("event", 1, "updated", 20, {"title": "v20"})])
