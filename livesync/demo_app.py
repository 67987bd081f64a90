"""The application database of ``livesync demo``: a small SQLAlchemy model in SQLite, and the loader reading it.

The demo's workload (:mod:`livesync.workload`) changes these rows before it publishes
the changes, as an application commits before it publishes: ``created`` inserts a row
(or revives a soft-deleted one), ``deleted``/``undeleted`` set ``is_deleted``,
``published``/``unpublished`` set an event's ``published``, ``moved`` gives a new
parent, the other flags change the column they name. The ``mirror`` agent loads its
documents from here through :class:`~livesync.loaders.sqlalchemy.SQLAlchemyLoader`
(the mapped columns as they are, deleted and unpublished objects hidden, so they leave
the mirror), and :meth:`Application.check_mirror` compares the ``sql`` mirror it wrote
with the rows as they are now.

The loader is registered as the entry point ``demo`` of ``livesync.loaders``
(:func:`load`); it serves the :class:`Application` the demo opened in this process
(:func:`serving`), which works because the demo runs its jobs in-process (an agent
given ``--loader demo`` elsewhere fails its batches, saying so). The mirror is written
in the demo's temporary folder and copied to ``--mirror`` at the end
(:func:`keep_mirror`), which may hold a new file or an earlier demo's mirror only
(:func:`check_mirror_path`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, String, and_, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from livesync.changes import ChangeTuple
from livesync.errors import ConfigurationError
from livesync.loaders.sqlalchemy import SQLAlchemyLoader
from livesync.records import ObjectId

__all__ = ["MIRROR_TABLE", "Application", "MirrorCheck", "check_mirror_path", "keep_mirror", "load", "serving"]

#: The table of the demo's mirror: a file holding this table alone is the mirror of an earlier demo, replaced.
MIRROR_TABLE = "livesync_demo_mirror"

_PROBLEMS_KEPT = 5

Key = tuple[str, ObjectId]


class Base(DeclarativeBase):
    """The demo's models."""


class _Object:
    """Columns every object has; ``moved`` sets the attribute named by ``parent``."""

    parent = "parent_id"
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(200), default="")
    location: Mapped[str] = mapped_column(String(50), default="")
    protection: Mapped[str] = mapped_column(String(20), default="inheriting")
    acl: Mapped[str] = mapped_column(String(50), default="")
    is_deleted: Mapped[bool] = mapped_column(default=False)


class Category(_Object, Base):
    """A category of events, in a parent category."""

    __tablename__ = "categories"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int] = mapped_column(default=0)


class Event(_Object, Base):
    """An event in a category; an unpublished one is not shown."""

    __tablename__ = "events"
    parent = "category_id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    category_id: Mapped[int] = mapped_column(default=0)
    published: Mapped[bool] = mapped_column(default=True)


class Contribution(_Object, Base):
    """A contribution to an event (string ids: ``c-7``)."""

    __tablename__ = "contributions"
    parent = "event_id"
    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    event_id: Mapped[int] = mapped_column(default=0)


class SubContribution(_Object, Base):
    """A part of a contribution."""

    __tablename__ = "subcontributions"
    parent = "contribution_id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    contribution_id: Mapped[str] = mapped_column(String(20), default="")


class Attachment(_Object, Base):
    """A file attached to an event."""

    __tablename__ = "attachments"
    parent = "event_id"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    event_id: Mapped[int] = mapped_column(default=0)


#: The workload's types (:data:`livesync.workload.TYPES`) and their models.
MODELS: dict[str, type[Any]] = {
    "event": Event,
    "contribution": Contribution,
    "subcontribution": SubContribution,
    "attachment": Attachment,
    "category": Category,
}
#: What the mirror may show: objects not deleted, events only while published.
VISIBLE: dict[str, ColumnElement[bool]] = {
    **{name: model.is_deleted.is_(False) for name, model in MODELS.items()},
    "event": and_(Event.is_deleted.is_(False), Event.published.is_(True)),
}


@dataclass
class MirrorCheck:
    """The ``sql`` mirror compared with the application database: counts, and the first problems found."""

    live: int = 0
    """Objects the database shows, present in the mirror with the document the database has now."""
    tombstones: int = 0
    """Objects deleted (or unpublished) in the database that the mirror keeps as tombstones."""
    never_synced: int = 0
    """Objects gone from the database before they reached the mirror: no row, rightly."""
    problems: list[str] = field(default_factory=list)
    """The first problems (missing, stale, not deleted, unknown), at most five."""
    problem_count: int = 0

    def problem(self, text: str) -> None:
        """Count a problem, keeping its description among the first ones."""
        self.problem_count += 1
        if len(self.problems) < _PROBLEMS_KEPT:
            self.problems.append(text)


class Application:
    """The demo's application database: a SQLite file at ``path``, with its tables created."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.engine = create_engine(f"sqlite:///{path}")
        Base.metadata.create_all(self.engine)
        self.loader = SQLAlchemyLoader(self.engine, MODELS, visible=VISIBLE)
        """The mirror agent's loader: every mapped column, hidden objects left out."""
        self.mirror_table = MIRROR_TABLE
        """The table the mirror agent writes (:meth:`check_mirror` reads)."""

    def close(self) -> None:
        """Close the database's connections."""
        self.engine.dispose()

    def apply(self, items: Sequence[ChangeTuple], first: int) -> None:
        """Make the changes ``items`` (numbered from ``first``) to the rows, in one transaction."""
        with Session(self.engine) as session, session.begin():
            rows = self._rows(session, items)
            for number, (type_, id_, flags) in enumerate(items, first):
                row = rows.get((type_, id_))
                if "created" in flags:
                    if row is None:
                        row = rows[type_, id_] = MODELS[type_](id=id_)
                        session.add(row)
                    _create(row, type_, id_)
                if row is None:
                    raise ValueError(f"change {number} {flags} of ({type_!r}, {id_!r}): no such object in the database")
                for flag in flags:
                    _change(row, flag, number)

    def _rows(self, session: Session, items: Sequence[ChangeTuple]) -> dict[Key, Any]:
        """The existing rows of the objects of ``items``: one ``IN`` query per type."""
        wanted: dict[str, set[ObjectId]] = {}
        for type_, id_, _ in items:
            wanted.setdefault(type_, set()).add(id_)
        rows: dict[Key, Any] = {}
        for type_, ids in wanted.items():
            model = MODELS[type_]
            rows.update(((type_, row.id), row) for row in session.scalars(select(model).where(model.id.in_(ids))))
        return rows

    def keys(self) -> list[Key]:
        """Every object the database holds, deleted or not."""
        with Session(self.engine) as session:
            return [(type_, id_) for type_, model in MODELS.items() for id_ in session.scalars(select(model.id)).all()]

    def documents(self) -> dict[Key, dict[str, Any] | None]:
        """The document of every object the database shows now, as the mirror agent's loader makes it."""
        return self.loader(self.keys())

    def check_mirror(self, mirror: Path) -> MirrorCheck:
        """Compare the mirror in the SQLite file ``mirror`` with the database as it is now.

        Every object the database shows must be a live row holding the document the
        loader makes of it now; every other object a tombstone or, when it was gone before
        it reached the mirror, no row; no row may name an object the database lacks.
        """
        keys = self.keys()
        documents = self.loader(keys)
        with contextlib.closing(sqlite3.connect(f"{mirror.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            rows = {
                (type_, id_): (json.loads(document) if document is not None else None, bool(deleted))
                for type_, id_, document, deleted in connection.execute(
                    f"SELECT type, id, document, deleted FROM {MIRROR_TABLE}"
                )
            }
        check = MirrorCheck()
        for type_, id_ in keys:
            row = rows.pop((type_, str(id_)), None)
            expected = documents.get((type_, id_))
            if expected is not None:
                if row is None or row[1]:
                    state = "absent from" if row is None else "a tombstone in"
                    check.problem(f"{type_} {id_} is shown by the database, but {state} the mirror")
                elif row[0] != expected:
                    check.problem(f"{type_} {id_}: the mirror has {row[0]}, the database {expected}")
                else:
                    check.live += 1
            elif row is None:
                check.never_synced += 1
            elif row[1]:
                check.tombstones += 1
            else:
                check.problem(f"{type_} {id_} is deleted or hidden in the database, but live in the mirror")
        for type_, id_ in sorted(rows):
            check.problem(f"{type_} {id_} is in the mirror, but the database never had it")
        return check


def _create(row: Any, type_: str, id_: ObjectId) -> None:
    """A new object (or one created again over its soft-deleted row, in the same place): its first state."""
    row.title = f"{type_.capitalize()} {id_}"
    row.description = row.location = row.acl = ""
    row.protection = "inheriting"
    row.is_deleted = False
    if isinstance(row, Event):
        row.published = True


def _change(row: Any, flag: str, number: int) -> None:
    """Change ``row`` as the flag says; ``number`` (the change's position) makes new values."""
    if flag in ("deleted", "undeleted"):
        row.is_deleted = flag == "deleted"
    elif flag in ("published", "unpublished"):
        row.published = flag == "published"
    elif flag == "moved":
        setattr(row, row.parent, f"c-{number % 97}" if row.parent == "contribution_id" else number % 97)
    elif flag == "title_changed":
        row.title = f"{row.title.split(' (')[0]} (change {number})"
    elif flag == "data_changed":
        row.description = f"described by change {number}"
    elif flag == "location_changed":
        row.location = f"room {number % 40}"
    elif flag == "protection_changed":
        row.protection = "public" if row.protection != "public" else "protected"
    elif flag == "acl_changed":
        row.acl = f"group-{number % 13}"


def check_mirror_path(mirror: Path, output: Path | None) -> None:
    """Refuse a ``--mirror`` that would overwrite anything but an earlier demo's mirror, or be unwritable."""
    if output is not None and output.resolve() == mirror.resolve():
        raise ConfigurationError(f"--mirror {mirror}: the same file as --output; give two paths")
    if not mirror.parent.resolve().is_dir():
        raise ConfigurationError(f"--mirror {mirror}: the folder {mirror.parent} does not exist")
    if not mirror.exists() and not mirror.is_symlink():
        return
    tables: list[str] = []
    if mirror.is_file():
        with (
            contextlib.suppress(sqlite3.Error),
            contextlib.closing(sqlite3.connect(f"{mirror.resolve().as_uri()}?mode=ro", uri=True)) as connection,
        ):
            tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    if tables != [MIRROR_TABLE]:
        raise ConfigurationError(
            f"--mirror {mirror}: the file exists and is not the mirror of an earlier demo; give a path for a new file"
        )


def keep_mirror(written: Path, mirror: Path) -> None:
    """Put the mirror the demo wrote at ``mirror`` in one step, replacing an earlier demo's."""
    partial = mirror.with_name(f".{mirror.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        shutil.copyfile(written, partial)
        os.replace(partial, mirror)
    finally:
        partial.unlink(missing_ok=True)


_serving: Application | None = None


@contextlib.contextmanager
def serving(application: Application) -> Iterator[Application]:
    """Let :func:`load` (the ``demo`` loader) read ``application`` while inside."""
    global _serving
    if _serving is not None:
        raise ConfigurationError("another demo application database is being served in this process")
    _serving = application
    try:
        yield application
    finally:
        _serving = None


def load(keys: Sequence[Key]) -> Mapping[Key, Mapping[str, Any] | None]:
    """The ``demo`` loader: the documents of ``keys`` from the application database of the running demo."""
    if _serving is None:
        raise ConfigurationError(
            "the 'demo' loader reads the application database of a `livesync demo` running in this process; "
            "there is none"
        )
    return _serving.loader(keys)
