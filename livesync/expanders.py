"""Expanders: application knowledge that turns one change into more at read time.

An expander is a callable ``(change) -> iterable of (type, id, flags)`` registered in
the ``livesync.expanders`` entry point group; e.g. "category 5 moved" may expand to
"event 1 moved, event 2 moved". Expanded changes keep the seq, time and version of the
change they came from: acks are unaffected, and a target that keeps the highest version
per object orders an expanded record with the object's own records, which may come from
another partition (DESIGN.md, "Versions and epochs"). The original change is kept
unless the expander returns it too.

An expander answers from the application's current state (as a database query does):
it should not expand to objects that no longer exist. An expanded ``updated`` record
never creates an object at a target (the rule for backends in
:mod:`livesync.backends.base`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from importlib import metadata

from livesync.changes import Change, ObjectId, validate
from livesync.errors import ConfigurationError, UnknownExpander

ENTRY_POINT_GROUP = "livesync.expanders"

Expander = Callable[[Change], Iterable[tuple[str, ObjectId, Iterable[str]]]]


def available_expanders() -> list[str]:
    """Names of every registered expander."""
    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def load_expander(name: str) -> Expander:
    """Return the expander registered under ``name``."""
    matches = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not matches:
        available = ", ".join(available_expanders()) or "none"
        raise UnknownExpander(f"unknown expander {name!r} (available: {available})")
    try:
        expander = matches[0].load()
    except Exception as exc:
        raise ConfigurationError(f"expander {name!r} cannot be loaded: {exc}") from exc
    if not callable(expander):
        raise ConfigurationError(f"expander {name!r} ({matches[0].value}) is not callable")
    return expander  # type: ignore[no-any-return]


def expand(changes: Iterable[Change], expander: Expander) -> Iterator[Change]:
    """Yield every change followed by its expansions, validated like published changes."""
    for change in changes:
        yield change
        for index, (type_, id_, flags) in enumerate(expander(change)):
            type_, id_, mask = validate(type_, id_, flags, f"expansion {index} of seq {change.seq}: ")
            if (type_, id_) != (change.type, change.id):
                yield Change(change.seq, change.ts, type_, id_, mask, change.version)
