"""Reindex sources for the CLI's tests: the keys of :data:`support.loaders.SOURCE`, in a stable order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from support import loaders

#: ``crashing`` raises before yielding this many-th object (1-based); tests set it.
CRASH_AT = 11


def objects() -> list[tuple[str, Any]]:
    """Every object of the database, sorted (a list: the CLI knows the total, so shows percent and ETA)."""
    return sorted(loaders.SOURCE, key=lambda item: (item[0], str(item[1])))


def _crashing() -> Iterator[tuple[str, Any]]:
    for index, item in enumerate(objects(), 1):
        if index == CRASH_AT:
            raise ConnectionError("the application database went away")
        yield item


def crashing() -> Iterator[tuple[str, Any]]:
    """The same objects, but the database goes away before the ``CRASH_AT``-th."""
    return _crashing()
