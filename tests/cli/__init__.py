"""The ``livesync`` command line: publish, list, destroy, init, agents, status, tick, worker.

Every test drives ``livesync.cli.main`` through click's ``CliRunner`` against the real
test Redis, in the test's own namespace and RQ queue (``LIVESYNC_QUEUE``), and checks
exit codes (0 success, 2 bad usage or bad input, 1 other failures) and output; data is
read back through ``--json``. A few tests start real processes to prove that
``python -m livesync`` and the ``livesync`` console script work.
"""
