"""The relay: committed outbox rows to the track, in id order, in batches, exactly once.

One batch is one database transaction:

1. claim the namespace's first ``batch`` rows by id, ``FOR UPDATE SKIP LOCKED`` (on
   PostgreSQL and MySQL/MariaDB; SQLite relays take turns with ``BEGIN IMMEDIATE``);
2. keep one object's changes in order: a claimed row waits (stays in the table) while
   an older row of its object is in the table outside this batch — claimed by another
   relay, or committed after this batch was claimed;
3. publish the rest with :meth:`RelayPublisher.relay`: per partition one ``relay.lua``
   call adds the changes to the track *and* each row's mark, atomically, and skips rows
   whose mark is there already;
4. delete the published rows and commit; then their marks may go: the next batch's
   ``relay.lua`` call of each partition removes them (no round trip of its own), and
   those no call took — a partition without rows in the next batch, an idle or stopping
   relay — go with a ``ZREM`` after that batch.

Exactly once. A row in the table is either unpublished or published *and* marked
(step 3 writes both or neither); it is deleted only after that (4), and its mark goes
only after the delete committed. So a relay killed anywhere leaves each row unpublished
(a later batch publishes it) or marked (a later batch finds the mark, publishes nothing
and deletes the row): nothing is lost, nothing is sent twice. Removing a mark late is
safe, removing it early is not: a relay hands a batch's marks on for removal only after
that batch's commit *returned* (a failed or unknown commit hands nothing on; those marks
expire), and the calls that remove them come later, so a mark is removed only once its
row's delete committed — its row can never be claimed again, no later check needs it. A
relay killed before the removal leaves the marks to the TTL, as a failed ``ZREM`` did.
Marks are per row, not a
high-water mark, because neither order holds for ids: a sequence hands out id 5 to a
transaction that commits after id 6 was relayed, and two relays holding disjoint id
ranges of one partition publish in either order. The guarantee holds while Redis keeps
what it acknowledged and while a relay follows a killed one within the mark TTL
(``LIVESYNC_RELAY_MARK_TTL``, 7 days).

Order. Rows of one object go to one partition; within a call they go in id order. A row
is published only when no older row of its object is still in the table outside its
batch (step 2), and rows leave the table only after they are published: so every older
row of the object that had committed was published before it. A row that commits
after a newer row of its object was relayed follows that row (it came later).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis as redis_lib
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from livesync import defaults
from livesync.config import Settings
from livesync.errors import ConfigurationError, LiveSyncError, describe
from livesync.outbox.lag import write_report
from livesync.outbox.publish import OutboxRow, Relayed, RelayPublisher
from livesync.outbox.table import (
    TABLE,
    RelayStatements,
    claimed_changes,
    create_table,
    database_error,
    outbox_table,
    relay_engine,
)

log = logging.getLogger(__name__)

#: Points of a batch a ``checkpoint`` is called at: rows claimed, published, deleted, committed.
CHECKPOINTS = ("claimed", "published", "deleted", "committed")
#: An object as the outbox table stores it: (type, object_id text, integer_id).
_Key = tuple[str, str, bool]
#: Longest wait between two attempts of a relay that meets a failing database or Redis.
BACKOFF_MAX = 30.0


@dataclass
class Batch:
    """What one batch did: rows claimed, published now, found published already, left waiting."""

    claimed: int = 0
    published: int = 0
    already: int = 0
    waiting: int = 0

    @property
    def moved(self) -> int:
        """Rows that left the outbox."""
        return self.published + self.already


@dataclass
class Summary:
    """What a relay did until it stopped."""

    batches: int = 0
    published: int = 0
    already: int = 0

    def add(self, batch: Batch) -> None:
        self.batches += 1
        self.published += batch.published
        self.already += batch.already

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the relay job's result, ``livesync relay --json``)."""
        return asdict(self)


class Relay:
    """Moves one namespace's committed outbox rows from ``engine``'s table to the track.

    ``checkpoint`` (tests, instrumentation) is called with each name of
    :data:`CHECKPOINTS` as a batch passes it. ``url`` only goes into messages (masked).
    """

    def __init__(
        self,
        engine: Engine,
        publisher: RelayPublisher,
        *,
        table: str = TABLE,
        batch: int = defaults.RELAY_BATCH,
        report_interval: float = defaults.RELAY_REPORT_INTERVAL,
        checkpoint: Callable[[str], None] | None = None,
        url: str | None = None,
    ) -> None:
        if not 1 <= batch <= 5000:
            raise ValueError("batch must be between 1 and 5000")
        self.engine = engine
        self.publisher = publisher
        self.namespace = publisher.namespace
        self.table_name = table
        self.table = outbox_table(table)
        self.batch_size = batch
        self.report_interval = report_interval
        self.checkpoint = checkpoint
        self.url = url or engine.url.render_as_string()
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self._reported = 0.0
        self._sql: RelayStatements | None = None

    # -- one batch ------------------------------------------------------------------

    def batch(self) -> Batch:
        """Relay one batch (see the module docstring); :class:`OutboxError` for a failed database."""
        sql = self._statements()
        relayed: Relayed | None = None
        try:
            with self.engine.connect() as connection:
                with connection.begin():
                    rows, keys = self._claim(connection, sql)
                    if rows:
                        self._pass("claimed")
                        ready, waiting = self._in_order(connection, sql, rows, keys)
                        relayed = self.publisher.relay(ready) if ready else Relayed()
                        self._pass("published")
                        if ready:
                            sql.delete(connection, [row.id for row in ready])
                        self._pass("deleted")
                if relayed is not None:
                    self._pass("committed")
        except SQLAlchemyError as exc:
            raise database_error(self.url, exc) from exc
        self._forget(relayed)
        if relayed is None:
            return Batch()
        return Batch(len(rows), relayed.published, relayed.already, len(waiting))

    def _forget(self, relayed: Relayed | None) -> None:
        """After a commit: hand the batch's marks on to the next calls; with nothing relayed, remove what is left."""
        try:
            if relayed is None:
                self.publisher.flush()
            else:
                self.publisher.committed(relayed)
        except (LiveSyncError, redis_lib.RedisError) as exc:
            # the rows are deleted: their marks can never match again, they expire with the TTL
            log.warning("relay: could not remove the marks of a relayed batch (they expire): %s", describe(exc))

    def _statements(self) -> RelayStatements:
        if self._sql is None:
            self._sql = RelayStatements(self.engine.dialect, self.table_name, self.namespace, self.batch_size)
        return self._sql

    def _claim(self, connection: Connection, sql: RelayStatements) -> tuple[list[OutboxRow], list[_Key]]:
        """The first rows of the namespace by id that no other relay holds, locked and validated; up to a bad row.

        Each row is validated here, once; with it comes its object's key as the table
        stores it (for :meth:`_in_order`).
        """
        claimed = sql.claim.run(connection).fetchall()
        changes, error = claimed_changes(claimed, self.table_name)
        if error is not None and not changes:
            raise error  # else relay what comes before it; the next batch stops at it
        rows = [OutboxRow(int(row[0]), int(row[5]), change) for row, change in zip(claimed, changes, strict=False)]
        keys = [(row[1], row[2], bool(row[3])) for row in claimed[: len(changes)]]
        return rows, keys

    def _in_order(
        self, connection: Connection, sql: RelayStatements, rows: list[OutboxRow], keys: list[_Key]
    ) -> tuple[list[OutboxRow], list[OutboxRow]]:
        """Split claimed rows into those that may go now and those behind an older row outside the batch."""
        top = rows[-1].id
        if sql.count.run(connection, top=top).scalar_one() == len(rows):  # no row outside the batch below its top
            return rows, []
        claimed = {row.id for row in rows}
        oldest: dict[_Key, int] = {}
        for other_id, type_, object_id, integer_id in sql.others.run(connection, top=top):
            if other_id not in claimed:
                key = (type_, object_id, bool(integer_id))
                oldest[key] = min(other_id, oldest.get(key, other_id))
        ready: list[OutboxRow] = []
        waiting: list[OutboxRow] = []
        for row, key in zip(rows, keys, strict=True):
            first = oldest.get(key)
            if first is not None and first < row.id:
                waiting.append(row)
            else:
                ready.append(row)
        return ready, waiting

    def _pass(self, point: str) -> None:
        if self.checkpoint is not None:
            self.checkpoint(point)

    # -- lag ------------------------------------------------------------------------

    def report(self) -> tuple[int, int | None]:
        """Count the namespace's rows and store the count for status and metrics; return (rows, oldest_us).

        Creates the namespace when it does not exist yet, as a publisher's first publish
        would: status and metrics show existing namespaces only.
        """
        t = self.table
        try:
            with self.engine.connect() as connection:
                rows, oldest = connection.execute(
                    select(func.count(), func.min(t.c.created_us)).where(t.c.namespace == self.namespace)
                ).one()
        except SQLAlchemyError as exc:
            raise database_error(self.url, exc) from exc
        self.publisher.meta  # noqa: B018 - reading the meta creates a missing namespace
        write_report(self.publisher.redis, self.publisher.keys, int(rows), oldest, relay=self.name)
        self._reported = time.monotonic()
        return int(rows), None if oldest is None else int(oldest)

    def _report_due(self) -> None:
        if time.monotonic() - self._reported >= self.report_interval:
            self.report()

    # -- loops ----------------------------------------------------------------------

    def drain(self, stop: threading.Event | None = None) -> Summary:
        """Relay batches until one moves nothing (what is committed and not held by other relays), then report."""
        summary = Summary()
        while stop is None or not stop.is_set():
            batch = self.batch()
            if not batch.moved:
                break
            summary.add(batch)
            self._report_due()
        self._forget(None)
        self.report()
        return summary

    def serve(self, stop: threading.Event, poll: float = defaults.RELAY_POLL) -> Summary:
        """Relay until ``stop`` is set (warm: the batch in progress finishes), waiting ``poll`` s when idle.

        A failing database or Redis is logged once per problem and tried again after a
        wait that doubles up to :data:`BACKOFF_MAX`.
        """
        summary = Summary()
        problem: str | None = None
        wait = poll
        while not stop.is_set():
            try:
                batch = self.batch()
                if batch.moved:
                    summary.add(batch)
                self._report_due()
            except (LiveSyncError, redis_lib.RedisError, SQLAlchemyError) as exc:
                message = describe(exc)
                log.log(logging.WARNING if message != problem else logging.DEBUG, "relay: %s; trying again", message)
                problem, wait = message, min(BACKOFF_MAX, wait * 2) if problem else poll
                stop.wait(wait)
                continue
            if problem is not None:
                log.warning("relay: working again")
                problem, wait = None, poll
            if not batch.moved:
                stop.wait(poll)
        self._forget(None)
        try:
            self.report()  # the count as the relay leaves it
        except (LiveSyncError, redis_lib.RedisError) as exc:
            log.warning("relay: could not report the outbox's lag: %s", describe(exc))
        return summary


def open_relay(
    settings: Settings,
    redis: Any,
    *,
    url: str | None = None,
    table: str | None = None,
    batch: int | None = None,
    create: bool = False,
    checkpoint: Callable[[str], None] | None = None,
) -> Relay:
    """The relay of ``settings.namespace`` on the database at ``url`` (default ``settings.outbox_url``).

    The explicit arguments override the settings (the CLI's flags); ``create`` creates
    the table first when it is missing. Raises :class:`ConfigurationError` without a URL.
    """
    url = url or settings.outbox_url
    if not url:
        raise ConfigurationError("no outbox database: pass --db URL or set LIVESYNC_OUTBOX_URL")
    table = table or settings.outbox_table
    engine = relay_engine(url)
    if create:
        try:
            create_table(engine, table)
        except SQLAlchemyError as exc:
            raise database_error(url, exc) from exc
    # a relay may be the namespace's first user: it creates it with the P and granularity set, as a publish does
    wanted = {
        name: getattr(settings, name) for name in ("partitions", "granularity") if name in settings.model_fields_set
    }
    publisher = RelayPublisher(
        redis, settings.namespace, url=settings.redis_url, allow_eviction=settings.allow_eviction, **wanted
    )
    publisher.mark_ttl = settings.relay_mark_ttl
    return Relay(engine, publisher, table=table, batch=batch or settings.relay_batch, checkpoint=checkpoint, url=url)
