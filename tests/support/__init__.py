"""Helpers the tests share: private servers, processes, test backends, waiting, the publisher harness.

Fixtures live in ``tests/conftest.py`` (and the suites' own conftests); what is here is
plain code the tests and those fixtures import (``tests/`` is on ``sys.path``, see
pytest's rootdir conftest insertion and the processes' ``PYTHONPATH``).
"""
