"""The documents the agents upload, read from the application's database by livesync's SQLAlchemy loader.

An event's document carries its category's name (one join: one query per batch, not
one per event); a category's is its columns. Private events are not returned, so a
record of one is uploaded as ``deleted``: a target never shows a private event, even
when a batch is loaded between an event turning private and its ``unpublished`` change.

Both agents name :func:`documents` as their ``module:callable`` loader
(``LIVESYNC_ALLOWED_IMPORTS=examples.events_app.loaders``); it runs in the workers,
which find the database at ``EVENTS_APP_DATABASE_URL``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, select

from examples.events_app.models import Category, Event, make_engine
from livesync.loaders.sqlalchemy import SQLAlchemyLoader

#: Where the workers' loaders find the application's database.
DATABASE_VARIABLE = "EVENTS_APP_DATABASE_URL"

Key = tuple[str, int | str]
Documents = Mapping[Key, Mapping[str, Any] | None]

EVENT_DOCUMENT = select(
    Event.id,
    Event.title,
    Event.description,
    Event.starts_at,
    Event.category_id,
    Category.name.label("category"),
).join(Event.category)
# Any: SQLAlchemy 2.1 types a select by its columns, which the loader's Select[Any] does not cover
TYPES: dict[str, Any] = {"category": Category, "event": EVENT_DOCUMENT}


def loader(engine: Engine) -> SQLAlchemyLoader:
    """Categories and public events, with the documents the targets hold."""
    return SQLAlchemyLoader(engine, TYPES, visible={"event": Event.is_public.is_(True)})


@functools.cache
def _loader() -> SQLAlchemyLoader:
    url = os.environ.get(DATABASE_VARIABLE)
    if not url:
        raise RuntimeError(f"{DATABASE_VARIABLE} is not set: the loader does not know the application's database")
    return loader(make_engine(url))


def documents(keys: Sequence[Key]) -> Documents:
    """The agents' loader (``--loader examples.events_app.loaders:documents``)."""
    return _loader()(keys)
