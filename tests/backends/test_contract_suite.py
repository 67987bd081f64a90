"""The contract suite itself: it passes a backend that keeps the rule and fails ones that break it.

Each case writes a third-party style test module (a backend and a ``BackendContract``
subclass) and runs pytest on it, as a backend package's own test run would.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

MODULE = """
from contextlib import contextmanager

import subprocess
import sys

import pytest

from livesync.backends.base import Backend
from livesync.errors import RecordRejected
from livesync.testing import BackendContract, TargetState, apply_version_rule

STORE = {}
DOWN = []


class MemoryBackend(Backend):
    name = "memory"

    def upload(self, records):
        if DOWN:
            raise ConnectionError("target down")
        refused = [(record, "refused") for record in records if (record.document or {}).get("bad")]
        keep = [record for record in records if not (record.document or {}).get("bad")]
        %(apply)s
        if refused:
            raise RecordRejected(refused)


class TestMemoryContract(BackendContract):
    @pytest.fixture
    def make_backend(self):
        STORE.clear()
        return lambda: MemoryBackend("contract", Backend.Options())

    @pytest.fixture
    def read_target(self):
        return lambda: dict(STORE)

    @pytest.fixture
    def refused_record(self):
        return lambda record: record._replace(document={"bad": True})

    @pytest.fixture
    def broken_target(self):
        @contextmanager
        def down():
            DOWN.append(True)
            try:
                yield
            finally:
                DOWN.clear()

        return down
"""

KEEPS_THE_RULE = "apply_version_rule(STORE, keep)"
OVERWRITES = """for record in keep:
            STORE[(record.type, str(record.id))] = TargetState(
                record.version, record.action != "deleted", record.document
            )"""
REJECTS_THE_WHOLE_BATCH = """apply_version_rule(STORE, keep)
        if refused:
            raise RecordRejected([(record, "refused") for record in records])"""
UPDATE_CREATES = """for record in keep:
            if record.action == "updated":
                record = record._replace(action="created")
            apply_version_rule(STORE, [record])"""


def run(pytester: pytest.Pytester, apply: str) -> pytest.RunResult:
    pytester.makepyfile(test_memory=MODULE % {"apply": apply})
    return pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider", "-W", "error")


def failed(result: pytest.RunResult) -> set[str]:
    return {report.nodeid.split("::")[-1].split("[")[0] for report in result.reprec.getreports() if report.failed}  # type: ignore[attr-defined]


def test_a_backend_keeping_the_version_rule_passes_every_contract_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, KEEPS_THE_RULE)
    outcomes = result.parseoutcomes()
    assert set(outcomes) == {"passed"}, outcomes  # nothing failed, nothing skipped
    assert outcomes["passed"] > 20


def test_the_base_class_is_not_collected_as_a_test_class(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_base="from livesync.testing import BackendContract as TestContract\n")
    result = pytester.runpytest_inprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes()


def test_a_backend_that_ignores_versions_fails_the_stale_write_tests(pytester: pytest.Pytester) -> None:
    result = run(pytester, OVERWRITES)
    assert failed(result) == {
        "test_a_stale_update_never_overwrites_a_newer_state",
        "test_a_stale_delete_never_removes_a_newer_state",
        "test_a_stale_create_never_overwrites_a_newer_update",
        "test_a_delete_keeps_its_version_so_a_late_stale_create_cannot_resurrect",
        "test_versions_decide_never_seqs",
        "test_an_update_for_an_absent_object_changes_nothing",
        "test_an_update_for_a_deleted_object_neither_revives_it_nor_moves_its_version",
    }


def test_a_backend_rejecting_more_than_it_refused_fails_the_partial_refusal_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, REJECTS_THE_WHOLE_BATCH)
    assert failed(result) == {"test_a_partial_refusal_names_exactly_the_refused_records_and_the_rest_is_durable"}


def test_a_backend_creating_on_update_fails_the_absent_object_tests(pytester: pytest.Pytester) -> None:
    result = run(pytester, UPDATE_CREATES)
    assert failed(result) == {
        "test_an_update_for_an_absent_object_changes_nothing",
        "test_an_update_for_a_deleted_object_neither_revives_it_nor_moves_its_version",
    }


def test_livesync_and_its_backends_never_import_the_suite_or_pytest() -> None:
    code = (
        "import sys, livesync, livesync.cli, livesync.runner, livesync.backends.webhook, livesync.backends.jsonl; "
        "print(sorted(name for name in sys.modules if name == 'pytest' or name.startswith('livesync.testing')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
