"""The application behind the real-target reliability tests: its database, its publishers and its loader.

Real applications commit a change to their database, then publish it; a run loads the
documents of each batch from that database. The tests do the same, as separate
processes:

- the database is a SQLite file (WAL, so the publishers write while the workers' runs
  read) with two models, ``Event`` (integer ids) and ``Contribution`` (string ids). A
  row counts the changes committed to its object (``changes``) and says whether the
  object is ``live`` (deleted and unpublished objects keep their row, hidden);
- ``python -m support.source_app publish ...`` is one publisher process: it owns the
  objects of its number (so its own record of their states keeps every object's stream
  valid), and per call commits the rows of the objects it changes, then publishes the
  changes with one ``emit_many``. Publishing is exactly once, through Redis restarts: a
  call is about one partition only (one Lua call: all or nothing), and a call that
  raised is looked up on the track once Redis answers again (the process owns its
  objects, so a change of one of them after the last seq it logged is that call's) and
  published again only when it did not land. Every published change is logged with its
  partition and seq (``checker.log_published``);
- ``support.source_app:load`` is the agents' loader: livesync's own
  :class:`~livesync.loaders.sqlalchemy.SQLAlchemyLoader` on the file named by
  ``RELTEST_SOURCE_DB``, with a visibility predicate hiding objects that are not live
  (their records reach targets as deletes). A process given ``RELTEST_HOLD_FILE`` holds
  its loads while that file exists (:func:`hold`): a test stops a reindex at a known step;
- ``support.source_app:objects`` is a reindex's source: every live object, in a stable
  order (type, then id).

A document is the row's columns (``id``, ``live``, ``changes``, ``title``), so a target
holding ``changes == n`` for an object holds its state after its n-th change: the
document proves freshness on its own, whatever versions say.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
from reliability.checker import log_published
from sqlalchemy import Boolean, Engine, Integer, String, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from livesync import Publisher
from livesync.loaders.sqlalchemy import SQLAlchemyLoader
from livesync.manager import SyncManager
from livesync.namespace import partition_of
from support.publisher import next_change

#: The environment variable naming the database file, for the loader in the workers.
DB_VARIABLE = "RELTEST_SOURCE_DB"
#: Longest a publisher waits for Redis to answer again after a failed call.
OUTAGE_SECONDS = 30.0
#: A process given this variable holds its loads while the file it names exists (see :func:`hold`).
HOLD_VARIABLE = "RELTEST_HOLD_FILE"
#: ... from its load call of this number on (1-based; default 1).
HOLD_AT_VARIABLE = "RELTEST_HOLD_AT"
#: Longest a load is held.
HOLD_SECONDS = 120.0

Key = tuple[str, Any]
Item = tuple[str, Any, list[str]]


class Base(DeclarativeBase):
    """The application's models."""


class Event(Base):
    """An event: integer ids."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    live: Mapped[bool] = mapped_column(Boolean)
    changes: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(100))


class Contribution(Base):
    """A contribution: string ids."""

    __tablename__ = "contributions"
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    live: Mapped[bool] = mapped_column(Boolean)
    changes: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(100))


MODELS: dict[str, type[Event] | type[Contribution]] = {"event": Event, "contribution": Contribution}


def engine_of(path: Path | str) -> Engine:
    """An engine on the database file: WAL, and writers wait up to 30 s for each other."""
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def create_database(path: Path) -> None:
    """Create the (empty) database file."""
    engine = engine_of(path)
    Base.metadata.create_all(engine)
    engine.dispose()


def object_keys(number: int, objects: int) -> list[Key]:
    """The objects publisher ``number`` owns: events and contributions, alternately."""
    return [
        ("event", number * 1_000_000 + index) if index % 2 else ("contribution", f"c{number}-{index}")
        for index in range(objects)
    ]


def documents(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """What the loader returns now for every live object, keyed ``(type, str(id))`` as targets key them."""
    engine = engine_of(path)
    try:
        keys: list[Key] = []
        with Session(engine) as session:
            for type_, model in MODELS.items():
                keys += [(type_, id_) for id_ in session.scalars(select(model.id))]
        found = make_loader(engine)(keys)
    finally:
        engine.dispose()
    return {(type_, str(id_)): dict(document) for (type_, id_), document in found.items() if document is not None}


# -- the loader (runs in the workers) ---------------------------------------------------


def make_loader(engine: Engine) -> SQLAlchemyLoader:
    """livesync's SQLAlchemy loader on the application's models; objects that are not live are hidden."""
    return SQLAlchemyLoader(engine, MODELS, visible={type_: model.live.is_(True) for type_, model in MODELS.items()})


def live_objects(path: Path | str) -> list[Key]:
    """Every live object of the database, in a stable order: type, then id."""
    engine = engine_of(path)
    try:
        with Session(engine) as session:
            return [
                (type_, id_)
                for type_, model in sorted(MODELS.items())
                for id_ in session.scalars(select(model.id).where(model.live.is_(True)).order_by(model.id))
            ]
    finally:
        engine.dispose()


def objects() -> list[Key]:
    """A reindex's source: every live object of ``$RELTEST_SOURCE_DB``, in a stable order (a list: its total shows)."""
    return live_objects(os.environ[DB_VARIABLE])


def held_marker(hold_file: Path | str) -> Path:
    """The file a process creates once it holds its loads on ``hold_file``."""
    return Path(f"{hold_file}.held")


_loads = [0]


def hold() -> None:
    """With ``$RELTEST_HOLD_FILE``: from load call ``$RELTEST_HOLD_AT`` on, wait while that file exists.

    Waiting, the process creates :func:`held_marker` (the test knows it stopped there),
    and gives up after :data:`HOLD_SECONDS` with an error (the load fails).
    """
    _loads[0] += 1
    hold_file = os.environ.get(HOLD_VARIABLE)
    if not hold_file or _loads[0] < int(os.environ.get(HOLD_AT_VARIABLE, "1")) or not Path(hold_file).exists():
        return
    held_marker(hold_file).touch()
    deadline = time.monotonic() + HOLD_SECONDS
    while Path(hold_file).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"load {_loads[0]} held by {hold_file} for {HOLD_SECONDS}s")
        time.sleep(0.02)  # the test removes the file; nothing announces it


_loaders: dict[int, SQLAlchemyLoader] = {}


def load(keys: Sequence[Key]) -> Mapping[Key, dict[str, Any] | None]:
    """The agents' loader: the documents of ``keys`` in ``$RELTEST_SOURCE_DB``.

    One engine per process: a work horse forked from a worker must not share its parent's
    SQLite connections.
    """
    hold()
    loader = _loaders.get(os.getpid())
    if loader is None:
        loader = _loaders[os.getpid()] = make_loader(engine_of(os.environ[DB_VARIABLE]))
    return loader(keys)


# -- the publisher process ----------------------------------------------------------------


class SourcePublisher:
    """One publisher process: commit, then publish exactly once, then log."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.number)
        self.engine = engine_of(args.db)
        self.publisher = Publisher.from_url(args.url, args.namespace, retries=0)
        self.partitions = self.publisher.meta.partitions
        self.manager = SyncManager(redis.Redis.from_url(args.url, socket_timeout=5), args.namespace)
        self.log = Path(args.log)
        self.log.touch()
        self.objects = object_keys(args.number, args.objects)
        self.states: dict[Key, str] = {}
        self.last_seq = [0] * self.partitions  # the last seq this process logged, per partition
        self.published = 0
        self.calls = 0
        self.failed_calls = 0
        self.looked_up = 0  # failed calls found on the track: they had landed

    def loop(self) -> None:
        start = time.monotonic()
        stop = Path(self.args.stop_file) if self.args.stop_file else None
        while (elapsed := time.monotonic() - start) < self.args.seconds and not (stop and stop.exists()):
            ahead = self.published - elapsed * self.args.rate
            if ahead > 0:
                time.sleep(min(ahead / self.args.rate, self.args.seconds - elapsed))
                continue
            self.call()

    def call(self) -> None:
        """Change a few objects of one partition: commit their rows, then publish."""
        partition = self.rng.randrange(self.partitions)
        mine = [key for key in self.objects if partition_of(key[0], key[1], self.partitions) == partition]
        picked = list(dict.fromkeys(self.rng.choice(mine) for _ in range(self.rng.randint(1, 12))))
        items: list[Item] = []
        for key in picked:
            flags, self.states[key] = next_change(self.states.get(key, "absent"), self.rng)
            items.append((key[0], key[1], flags))
        self.commit(items)
        seqs = self.publish(partition, items)
        log_published(self.log, [(partition, seq) for seq in seqs], items)
        self.last_seq[partition] = max(self.last_seq[partition], *seqs)
        self.published += len(seqs)
        self.calls += 1

    def commit(self, items: Sequence[Item]) -> None:
        """One transaction: each object's row gets its new state and one more change."""
        with Session(self.engine) as session, session.begin():
            for type_, id_, _flags in items:
                model = MODELS[type_]
                row = session.get(model, id_)
                if row is None:
                    row = model(id=id_, live=False, changes=0, title="")
                    session.add(row)
                row.changes += 1
                row.live = self.states[(type_, id_)] == "live"
                row.title = f"{type_} {id_} after change {row.changes}"

    def publish(self, partition: int, items: Sequence[Item]) -> list[int]:
        """Publish ``items`` (all of ``partition``) exactly once; return their seqs."""
        deadline = time.monotonic() + OUTAGE_SECONDS
        while True:
            try:
                return self.publisher.emit_many(items)
            except (ConnectionError, redis.RedisError) as exc:  # RedisUnavailable is a ConnectionError
                self.failed_calls += 1
                error = exc
            while True:  # wait for Redis, then see whether the call landed before it failed
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Redis did not come back within {OUTAGE_SECONDS}s") from error
                try:
                    landed = self.landed(partition, items)
                    break
                except redis.RedisError:
                    time.sleep(0.05)
            if landed is not None:
                self.looked_up += 1
                return landed

    def landed(self, partition: int, items: Sequence[Item]) -> list[int] | None:
        """The seqs of ``items`` if a failed call stored them, else ``None``."""
        wanted = {(type_, id_) for type_, id_, _flags in items}
        found = [
            change.seq
            for change in self.manager.track(partition).iter_changes(self.last_seq[partition])
            if (change.type, change.id) in wanted
        ]
        if not found:
            return None
        assert len(found) == len(items), f"a call stored in part: {found} for {items}"
        return found

    def summary(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "calls": self.calls,
            "failed_calls": self.failed_calls,
            "landed_before_failing": self.looked_up,
        }


def publisher_argv(
    url: str,
    namespace: str,
    db: Path,
    log: Path,
    *,
    number: int,
    seconds: float,
    rate: float,
    objects: int,
    stop_file: Path | None = None,
) -> list[str]:
    """argv of one publisher process (it publishes for ``seconds``, or until ``stop_file`` exists)."""
    argv = [
        sys.executable, "-m", "support.source_app", "publish", "--url", url, "--namespace", namespace,
        "--db", str(db), "--log", str(log), "--number", str(number), "--seconds", str(seconds),
        "--rate", str(rate), "--objects", str(objects),
    ]  # fmt: skip
    return argv + (["--stop-file", str(stop_file)] if stop_file is not None else [])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="support.source_app publish", description=__doc__.split("\n\n")[0])
    for name in ("--url", "--namespace", "--db", "--log"):
        parser.add_argument(name, required=True)
    for name in ("--number", "--objects"):
        parser.add_argument(name, type=int, required=True)
    for name in ("--seconds", "--rate"):
        parser.add_argument(name, type=float, required=True)
    parser.add_argument("--stop-file", help="stop publishing (before --seconds) once this file exists")
    run = SourcePublisher(parser.parse_args(argv))
    try:
        run.loop()
    finally:
        print(json.dumps(run.summary()), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["publish"]:
        sys.exit("usage: python -m support.source_app publish --url URL --namespace NS --db PATH --log PATH ...")
    sys.exit(main(sys.argv[2:]))
