"""Test loaders: an in-memory "application database" that records how it was asked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: (type, id) -> document: what the loaders below find. Tests fill and clear it.
SOURCE: dict[tuple[str, Any], dict[str, Any]] = {}
#: every call's keys, in order
CALLS: list[list[tuple[str, Any]]] = []


def load(keys: Sequence[tuple[str, Any]]) -> Mapping[tuple[str, Any], dict[str, Any] | None]:
    """Return the documents of ``SOURCE`` for ``keys`` (absent ones left out)."""
    CALLS.append(list(keys))
    return {key: SOURCE[key] for key in keys if key in SOURCE}


def broken(keys: Sequence[tuple[str, Any]]) -> Mapping[tuple[str, Any], dict[str, Any] | None]:
    """A loader whose database is down."""
    raise ConnectionError("database at db.internal:5432 is down")


NOT_CALLABLE = {"a": 1}
