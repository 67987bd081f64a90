"""What the targets hold, read back the way their own users would read them, and what they should hold.

Both are ``{(type, id): document}`` of the live objects, ``id`` as text (a target
stores ids as text): the ``sql`` mirror's rows that are not tombstones, the search
index's documents without livesync's own ``_livesync`` field, and the application
database as each agent's loader makes its documents now.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from examples.events_app.models import Category, Event

Key = tuple[str, str]
Contents = dict[Key, dict[str, Any]]
MIRROR_TABLE = "livesync_mirror"


def expected(engine: Engine, loader: Callable[[Sequence[tuple[str, int | str]]], Mapping[Any, Any]]) -> Contents:
    """The application database as ``loader`` shows it: every object it returns a document for."""
    with Session(engine) as session:
        keys: list[tuple[str, int | str]] = [("category", id_) for id_ in session.scalars(select(Category.id))]
        keys += [("event", id_) for id_ in session.scalars(select(Event.id))]
    documents = loader(keys)
    return {(type_, str(id_)): dict(document) for (type_, id_), document in documents.items() if document is not None}


class Mirror:
    """The ``sql`` mirror: one row per object (``deleted`` rows are tombstones), written by the ``mirror`` agent."""

    def __init__(self, url: str, table: str = MIRROR_TABLE) -> None:
        self.url = url
        self.table = table
        self.engine = create_engine(url)

    def read(self) -> tuple[Contents, set[Key]]:
        """The live objects with their documents, and the keys of the tombstones (nothing before the first run)."""
        live: Contents = {}
        tombstones: set[Key] = set()
        with self.engine.connect() as connection:
            if not self.engine.dialect.has_table(connection, self.table):
                return live, tombstones
            rows = connection.execute(text(f"SELECT type, id, document, deleted FROM {self.table}"))
            for type_, id_, document, deleted in rows:
                if deleted:
                    tombstones.add((type_, id_))
                else:
                    live[type_, id_] = json.loads(document) if isinstance(document, str) else document
        return live, tombstones

    def close(self) -> None:
        self.engine.dispose()


class SearchIndex:
    """The OpenSearch index (through its alias) the ``search`` agent writes: one document ``"<type>:<id>"`` each."""

    def __init__(self, url: str, alias: str) -> None:
        from opensearchpy import OpenSearch

        self.url = url
        self.alias = alias
        self.client = OpenSearch(hosts=[url], timeout=10, max_retries=0)

    def create(self) -> None:
        """Create the index ``<alias>-1`` behind the alias (the operator's part; an alias lets a reindex swap it)."""
        self.client.indices.create(index=f"{self.alias}-1", body={"aliases": {self.alias: {}}})

    def read(self) -> Contents:
        """Every document (refreshed first), without ``_livesync``."""
        self.client.indices.refresh(index=self.alias)
        answer = self.client.search(index=self.alias, body={"query": {"match_all": {}}, "size": 10_000})
        contents: Contents = {}
        for hit in answer["hits"]["hits"]:
            type_, _, id_ = hit["_id"].partition(":")
            contents[type_, id_] = {key: value for key, value in hit["_source"].items() if key != "_livesync"}
        return contents

    def close(self) -> None:
        self.client.close()
