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

from livesync import plugins
from livesync.changes import Change, validate
from livesync.errors import ConfigurationError, UnknownExpander
from livesync.records import ObjectId

ENTRY_POINT_GROUP = "livesync.expanders"

Expander = Callable[[Change], Iterable[tuple[str, ObjectId, Iterable[str]]]]


def available_expanders() -> list[str]:
    """Names of every registered expander."""
    return plugins.available(ENTRY_POINT_GROUP)


def load_expander(name: str, allowed_imports: Iterable[str] = ()) -> Expander:
    """Return the expander registered under ``name``, or at ``module:callable`` inside ``allowed_imports``."""
    expander = plugins.load_plugin(
        ENTRY_POINT_GROUP, name, allowed_imports, kind="expander", shape="module:callable", unknown=UnknownExpander
    )
    if not callable(expander):
        raise ConfigurationError(f"expander {name!r} is not callable")
    return expander  # type: ignore[no-any-return]


def expand(changes: Iterable[Change], expander: Expander) -> Iterator[Change]:
    """Yield every change followed by its expansions, validated like published changes."""
    for change in changes:
        yield change
        for index, (type_, id_, flags) in enumerate(expander(change)):
            type_, id_, mask = validate(type_, id_, flags, f"expansion {index} of seq {change.seq}: ")
            if (type_, id_) != (change.type, change.id):
                yield Change(change.seq, change.ts, type_, id_, mask, change.version)
