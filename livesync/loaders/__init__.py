"""Loaders: from "which object changed" to the object's current document.

An agent may name a **loader** (``livesync agent add ... --loader NAME``): an entry point
of the ``livesync.loaders`` group, or ``module:callable`` inside
``LIVESYNC_ALLOWED_IMPORTS``. A loader is a callable that receives the ``(type, id)`` of
every ``created``/``updated`` record of one batch and returns a mapping
``(type, id) -> dict`` for the objects that exist (and that the agent may see), loading
them in one query per batch, not one per object::

    def load_events(keys):
        ids = [id_ for type_, id_ in keys if type_ == "event"]
        rows = db.execute(select(Event).where(Event.id.in_(ids))).scalars()
        return {("event", row.id): {"title": row.title} for row in rows}

Keys are matched exactly, the id with its type (``42`` is not ``"42"``). An object
missing from the mapping, or mapped to ``None``, no longer exists (or is no longer
visible to this agent): its record is uploaded as ``deleted``, so it leaves the target.
A record whose object the loader returns is uploaded as ``created`` with that document,
``updated`` ones too: the document is the object's whole current state, so a target
applies it whether or not it holds the object (one that just became visible to this
agent, or that the target missed) — versions still drop it where the target is newer.
A loader that raises, or returns something that is not such a mapping, fails the batch
like a backend error (:class:`~livesync.errors.LoaderError`): nothing of it counts and it
is sent again. ``deleted`` records are not loaded; backends get ``record.document``
(``None`` for deletes). :mod:`livesync.loaders.sqlalchemy` is a ready loader for
SQLAlchemy models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from livesync import plugins
from livesync.errors import ConfigurationError, LoaderError, UnknownLoader, describe
from livesync.records import ObjectId, Record

__all__ = ["ENTRY_POINT_GROUP", "Loader", "NamedLoader", "available_loaders", "load_documents", "load_loader"]

ENTRY_POINT_GROUP = "livesync.loaders"

Key = tuple[str, ObjectId]
Loader = Callable[[Sequence[Key]], Mapping[Key, Mapping[str, Any] | None]]


def available_loaders() -> list[str]:
    """Names of every registered loader."""
    return plugins.available(ENTRY_POINT_GROUP)


@dataclass(frozen=True)
class NamedLoader:
    """A loader with the name an agent gave it (for messages)."""

    name: str
    load: Loader


def load_loader(name: str, allowed_imports: Iterable[str] = ()) -> NamedLoader:
    """Return the loader registered under ``name``, or at ``module:callable`` inside ``allowed_imports``."""
    loader = plugins.load_plugin(
        ENTRY_POINT_GROUP, name, allowed_imports, kind="loader", shape="module:callable", unknown=UnknownLoader
    )
    if not callable(loader):
        raise ConfigurationError(f"loader {name!r} is not callable")
    return NamedLoader(name, loader)


def load_documents(records: Sequence[Record], loader: NamedLoader) -> list[Record]:
    """``records`` with their documents: one ``loader`` call for the batch's created/updated records.

    A record whose object the loader does not return becomes ``deleted`` (no document), one
    it returns ``created`` with the document (see the module docstring); ``deleted`` records
    pass unchanged. Raises :class:`LoaderError` naming the loader when
    it fails or returns a value that is not a mapping of dicts.
    """
    name = loader.name
    keys = [(record.type, record.id) for record in records if record.action != "deleted"]
    if not keys:
        return list(records)
    try:
        found = loader.load(keys)
    except Exception as exc:
        raise LoaderError(f"loader {name!r} failed on a batch of {len(keys)} objects: {describe(exc)}") from exc
    if not isinstance(found, Mapping):
        raise LoaderError(f"loader {name!r} returned {type(found).__name__}, not a mapping of (type, id) to a document")
    loaded: list[Record] = []
    for record in records:
        if record.action == "deleted":
            loaded.append(record)
            continue
        document = found.get((record.type, record.id))
        if document is None:
            loaded.append(record._replace(action="deleted", document=None))
        elif isinstance(document, Mapping):
            loaded.append(record._replace(action="created", document=dict(document)))
        else:
            raise LoaderError(
                f"loader {name!r} returned {type(document).__name__} for ({record.type!r}, {record.id!r}), "
                "not a dict (or None for an object that is gone)"
            )
    return loaded
