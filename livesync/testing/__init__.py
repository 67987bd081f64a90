"""The backend contract as a reusable pytest suite, for livesync's backends and third-party ones.

Every backend must honour the three outcomes of :meth:`Backend.upload
<livesync.backends.base.Backend.upload>` and the version rule of
:class:`~livesync.backends.base.Backend`. :class:`BackendContract` checks both against a
real target: subclass it in a test module and give it the fixtures that reach your target::

    import pytest
    from livesync.testing import BackendContract, TargetState

    class TestSearchContract(BackendContract):
        @pytest.fixture
        def make_backend(self, search_server):      # a new backend on a target empty at each test's start
            return lambda: SearchBackend("contract", SearchBackend.Options(url=search_server.url))

        @pytest.fixture
        def read_target(self, search_server):       # (type, str(id)) -> TargetState; or None: unreadable
            def read():
                return {(doc["type"], doc["id"]): TargetState(doc["version"], not doc["deleted"], doc["body"])
                        for doc in search_server.all_documents()}
            return read

        @pytest.fixture
        def refused_record(self):                   # optional: a record the target refuses for good
            return lambda record: record._replace(document={"title": ["not", "a", "string"]})

        @pytest.fixture
        def broken_target(self, search_server):     # optional: while inside, uploads fail as a whole
            return search_server.stopped            # a context manager

Tests that need ``read_target`` skip when it returns ``None`` (a target that cannot be read
back, like ``null``); those that need ``refused_record`` or ``broken_target`` skip when the
subclass does not provide them. ``read_target`` reports what the target holds *now*: live
objects, and deleted ones as tombstones (``live=False``) where the target keeps them (a
target may also leave a deleted object out). A target that stores no document for records
without one may report ``None`` or ``{}``; set :attr:`BackendContract.stores_documents` to
``False`` when the target keeps no documents at all.

The package imports pytest, so livesync itself never imports it: only test suites do.
"""

from __future__ import annotations

from livesync.testing.contract import BackendContract
from livesync.testing.target import BASE_VERSION, TargetState, apply_version_rule, make_record

__all__ = ["BASE_VERSION", "BackendContract", "TargetState", "apply_version_rule", "make_record"]
