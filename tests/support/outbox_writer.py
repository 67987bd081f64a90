"""A writer process of the outbox fault suite: random transactions through the SQLAlchemy integration, each logged.

    python -m support.outbox_writer CONFIG.json

``CONFIG.json`` (written by the test) names the database, the table prefix, the mode
(``outbox``: ``LiveSync("outbox", ...)``; ``direct``: ``LiveSync(publisher=...)``), the
namespace, the seed, the run number, how many transactions to commit, the log file
and, optionally, a transaction to pause in right after its commit (``pause_at``).

The writer runs ``count`` transactions on two registered models (``item``, integer ids;
``note``, string ids), one ORM session each. A transaction creates, updates (``title`` ->
``title_changed``, ``body`` -> ``data_changed``, ``place`` -> ``location_changed``) and
deletes objects, flushing after every operation so that each one is a flush of its own;
some transactions open savepoints, released or rolled back; some roll back whole.
Rolled-back parts (a transaction or a savepoint) also set ``secret`` (``acl_changed``),
which nothing that commits ever sets, and create objects whose ids nothing that commits
ever uses: a leak of a rolled-back part shows on the track as such. Within a
transaction an object is never both created and deleted (its changes merge into one).

Every transaction also inserts its number into ``<prefix>_txlog`` (not a registered
model): after the run, that table says which transactions committed, whatever the
writer managed to log before it was killed. The log (JSON lines, each one ``write`` on
an ``O_APPEND`` descriptor, so a line is whole or absent after a SIGKILL):

- ``{"tx", "event": "intent", "rollback", "changes", "dropped", "savepoints"}`` just
  before the commit (or rollback): ``changes`` are the ``[type, id, flags]`` the
  transaction commits, one per object (what the integration merges them to),
  ``dropped`` those of its rolled-back savepoints (all of them for a rollback),
  ``savepoints`` ``[released, rolled back]``;
- ``{"tx", "event": "committed"}`` from an ``after_commit`` listener registered before
  the integration's, so after the database committed and before direct mode publishes
  (``pause_at`` stops there, in the first transaction numbered from it that commits: the
  test SIGKILLs the writer in direct mode's at-most-once window);
- ``{"tx", "event": "published"}`` (direct) or ``"returned"`` (outbox) once ``commit()``
  returned: direct mode's publish, in the integration's ``after_commit``, is done;
- ``{"tx", "event": "rolled_back"}`` after a rollback, ``{"event": "done"}`` at the end.

Transactions are numbered ``run * RUN_SPAN + i``; runs of the writer follow each other
(the test starts the next one after the last one died), so within one object commit
order is transaction order (row locks order an object's writers anyway). A new run
reads the live objects from the database.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Engine, String, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from livesync.client import Publisher
from livesync.integrations.sqlalchemy import LiveSync

#: Transaction numbers and new ids of one run: ``run * RUN_SPAN + counter``.
RUN_SPAN = 100_000
#: Updated attributes and the flag each gives; ``secret`` only in rolled-back parts.
FIELDS = {"title": "title_changed", "body": "data_changed", "place": "location_changed"}
POISON = ("secret", "acl_changed")
KINDS = ("item", "note")
#: Live objects the writer keeps around (creates are likelier below it).
POPULATION = 16

Key = tuple[str, Any]


class Models:
    """The writer's tables, named after ``prefix``: items, notes and the log of committed transactions."""

    def __init__(self, prefix: str) -> None:
        class Base(DeclarativeBase):
            pass

        class Item(Base):
            __tablename__ = f"{prefix}_item"
            id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
            title: Mapped[str] = mapped_column(String(40))
            body: Mapped[str] = mapped_column(String(40))
            place: Mapped[str] = mapped_column(String(40))
            secret: Mapped[str] = mapped_column(String(40))

        class Note(Base):
            __tablename__ = f"{prefix}_note"
            id: Mapped[str] = mapped_column(String(40), primary_key=True)
            title: Mapped[str] = mapped_column(String(40))
            body: Mapped[str] = mapped_column(String(40))
            place: Mapped[str] = mapped_column(String(40))
            secret: Mapped[str] = mapped_column(String(40))

        class TxLog(Base):
            __tablename__ = f"{prefix}_txlog"
            tx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)

        self.Base, self.TxLog = Base, TxLog
        self.kinds: dict[str, type[Any]] = {"item": Item, "note": Note}

    def committed(self, engine: Engine) -> set[int]:
        """The numbers of the transactions that committed."""
        with engine.connect() as connection:
            return set(connection.execute(select(self.TxLog.tx)).scalars())


def register(sync: LiveSync, models: Models) -> None:
    """The registrations of the writer's models."""
    for kind, model in models.kinds.items():
        sync.register(model, kind, flags={**FIELDS, POISON[0]: POISON[1]})


@dataclass
class Level:
    """What one transaction or savepoint changed so far, and the objects it sees."""

    live: dict[str, set[Any]]
    created: set[Key] = field(default_factory=set)
    deleted: set[Key] = field(default_factory=set)
    changes: dict[Key, set[str]] = field(default_factory=dict)

    def child(self) -> Level:
        return Level({kind: set(ids) for kind, ids in self.live.items()}, set(self.created), set(self.deleted))

    def add(self, key: Key, flag: str) -> None:
        self.changes.setdefault(key, set()).add(flag)

    def release(self, child: Level) -> None:
        """A released savepoint: its changes and objects are this level's now."""
        self.live, self.created, self.deleted = child.live, child.created, child.deleted
        for key, flags in child.changes.items():
            self.changes.setdefault(key, set()).update(flags)


def entries(changes: dict[Key, set[str]]) -> list[list[Any]]:
    return [[kind, id_, sorted(flags)] for (kind, id_), flags in changes.items()]


class Writer:
    """Runs the configured transactions; see the module docstring."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.run = int(config["run"])
        self.rng = random.Random(f"{config['seed']}:{self.run}")
        self.models = Models(config["prefix"])
        self.engine = create_engine(
            config["url"], connect_args={"application_name": config["application_name"], "connect_timeout": 5}
        )
        self.sessions = sessionmaker(self.engine)
        if config["mode"] == "outbox":
            self.sync = LiveSync("outbox", namespace=config["namespace"], table=config["outbox_table"])
        else:
            self.sync = LiveSync(publisher=Publisher.from_url(config["redis_url"], namespace=config["namespace"]))
        register(self.sync, self.models)
        self.log_fd = os.open(config["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.committing: int | None = None
        self.pause_at = config.get("pause_at")
        event.listen(self.sessions, "after_commit", self._after_commit)  # before the integration's: runs first
        self.sync.attach(self.sessions)
        self.live = self._load_live()
        self.counter = 0

    def _load_live(self) -> dict[str, set[Any]]:
        with self.engine.connect() as connection:
            return {
                kind: set(connection.execute(select(model.id)).scalars()) for kind, model in self.models.kinds.items()
            }

    def log(self, **entry: Any) -> None:
        os.write(self.log_fd, (json.dumps(entry) + "\n").encode())

    def _after_commit(self, session: Session) -> None:
        if self.committing is None:  # a savepoint released
            return
        tx, self.committing = self.committing, None
        self.log(tx=tx, event="committed")
        if self.pause_at is not None and tx >= self.pause_at:
            print(f"paused at {tx}", flush=True)
            time.sleep(600)  # until SIGKILLed: the integration's publish (after this hook) never runs

    # -- one transaction --------------------------------------------------------------

    def transaction(self, tx: int) -> None:
        rollback = self.rng.random() < 0.15
        top = Level({kind: set(ids) for kind, ids in self.live.items()})
        dropped: dict[Key, set[str]] = {}
        savepoints = [0, 0]
        with self.sessions() as session:
            session.add(self.models.TxLog(tx=tx))
            for _ in range(self.rng.randint(1, 4)):
                if self.rng.random() < 0.3:
                    savepoint = session.begin_nested()
                    undo = self.rng.random() < 0.5
                    level = top.child()
                    for _ in range(self.rng.randint(1, 3)):
                        self.operation(session, level, poison=undo or rollback)
                    if undo:
                        savepoint.rollback()
                        savepoints[1] += 1
                        for key, flags in level.changes.items():
                            dropped.setdefault(key, set()).update(flags)
                    else:
                        savepoint.commit()
                        savepoints[0] += 1
                        top.release(level)
                else:
                    self.operation(session, top, poison=rollback)
            if rollback:
                for key, flags in top.changes.items():
                    dropped.setdefault(key, set()).update(flags)
                self.log(
                    tx=tx, event="intent", rollback=True, changes=[], dropped=entries(dropped), savepoints=savepoints
                )
                session.rollback()
                self.log(tx=tx, event="rolled_back")
                return
            self.log(
                tx=tx, event="intent", rollback=False, changes=entries(top.changes), dropped=entries(dropped),
                savepoints=savepoints,
            )  # fmt: skip
            self.committing = tx
            session.commit()
            self.committing = None
        self.log(tx=tx, event="published" if self.config["mode"] == "direct" else "returned")
        self.live = top.live

    def operation(self, session: Session, level: Level, *, poison: bool) -> None:
        """One create, update or delete at ``level``, flushed; ``poison`` for parts that roll back."""
        kind = self.rng.choice(KINDS)
        model = self.models.kinds[kind]
        present = sorted(level.live[kind], key=str)
        roll = self.rng.random()
        if not present or roll < (0.35 if len(present) < POPULATION else 0.1):
            id_ = self.new_id(kind)
            session.add(model(id=id_, **{name: self.value() for name in (*FIELDS, POISON[0])}))
            session.flush()
            level.live[kind].add(id_)
            level.created.add((kind, id_))
            level.add((kind, id_), "created")
            return
        id_ = self.rng.choice(present)
        key = (kind, id_)
        obj = session.get(model, id_)
        assert obj is not None, key
        deletable = key not in level.created
        if deletable and roll > 0.9:
            session.delete(obj)
            session.flush()
            level.live[kind].discard(id_)
            level.deleted.add(key)
            level.add(key, "deleted")
            return
        name, flag = POISON if poison and roll > 0.6 else self.rng.choice(list(FIELDS.items()))
        setattr(obj, name, self.value())
        session.flush()
        level.add(key, flag)

    def new_id(self, kind: str) -> Any:
        self.counter += 1
        number = self.run * RUN_SPAN + self.counter
        return number if kind == "item" else f"n{number}"

    def value(self) -> str:
        self.counter += 1
        return f"{self.run}-{self.counter}"

    def main(self) -> None:
        first = self.run * RUN_SPAN
        for tx in range(first, first + int(self.config["count"])):
            self.transaction(tx)
        self.log(event="done", run=self.run)
        print("done", flush=True)


if __name__ == "__main__":
    Writer(json.loads(Path(sys.argv[1]).read_text())).main()
