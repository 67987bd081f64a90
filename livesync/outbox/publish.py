"""The relay's publish: outbox rows onto the track, each row's mark in the same Lua call.

:class:`RelayTrack` is a :class:`~livesync.track.Track` whose publish runs ``relay.lua``
(``publish.lua``'s body plus the marks, see that file) instead of ``publish.lua``: the
track's own publish loop (bucket guess, epoch and lost-head errors) is reused as it is,
only the script call differs. :class:`RelayPublisher` is a
:class:`~livesync.client.Publisher` (meta, partitioning, epoch refresh, eviction check,
Redis retries) that publishes rows through those tracks.

A row's mark is ``<epoch>:<row id>:<created_us>``: the id alone could repeat (two
databases relaying into one namespace, a table re-created), the epoch keeps marks of an
earlier creation of the namespace from matching its rows in a new one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.commands.core import Script
from redis.exceptions import ResponseError

from livesync import defaults
from livesync.changes import Triple
from livesync.client import Publisher
from livesync.codec import MAX_RUN, encode_body, split_runs
from livesync.errors import PartitionEpochMismatch
from livesync.namespace import partition_of
from livesync.track import Track

#: relay.lua's reply when some rows of the call were relayed before (1-based positions).
_RELAYED = re.compile(r"LIVESYNC_RELAYED ([\d ]+)")


class OutboxRow(NamedTuple):
    """One outbox row as the relay moves it: its id, creation time and validated change."""

    id: int
    created_us: int
    change: Triple


@dataclass
class Relayed:
    """What one :meth:`RelayPublisher.relay` call did."""

    #: rows published now, and rows found marked (published by a relay that died before its delete)
    published: int = 0
    already: int = 0
    #: partition -> the marks of every row of the call (to forget once the rows' delete committed)
    marks: dict[int, list[str]] | None = None


class RelayTrack(Track):
    """A partition's track whose :meth:`relay` publishes outbox rows with their marks in one call."""

    _relay_argv: tuple[list[str], list[str], int] | None = None

    def relay(
        self, runs: Sequence[tuple[int, bytes]], marks: list[str], ttl_ms: int, remove: Sequence[str] = ()
    ) -> int:
        """Publish ``runs`` (one mark per change, in order) with their marks; return the first seq.

        On success the marks ``remove`` (of rows whose delete committed) are removed in the
        same call. Raises :class:`ResponseError` ``LIVESYNC_RELAYED ...`` (nothing written,
        nothing removed) when some marks exist already; see :func:`relayed_positions`.
        """
        self._relay_argv = (marks, list(remove), ttl_ms)
        try:
            return self.publish(runs)
        finally:
            self._relay_argv = None

    def _evalsha(self, script: Script, *keys_then_args: Any, numkeys: int = 3) -> Any:
        # Track.publish calls publish.lua through here: during relay(), relay.lua instead,
        # its key and arguments appended at the ends (where relay.lua takes them off)
        if self._relay_argv is None or script is not self.scripts.publish:
            return super()._evalsha(script, *keys_then_args, numkeys=numkeys)
        marks, remove, ttl_ms = self._relay_argv
        keys, args = keys_then_args[:numkeys], keys_then_args[numkeys:]
        joined, removed = " ".join(marks), " ".join(remove)
        return super()._evalsha(
            self.scripts.relay, *keys, self.keys.relayed, *args, joined, removed, ttl_ms, numkeys=numkeys + 1
        )

    def forget(self, marks: list[str]) -> None:
        """Remove marks whose rows are deleted (committed): they can never be read again."""
        for start in range(0, len(marks), 1000):
            self.redis.zrem(self.keys.relayed, *marks[start : start + 1000])


def relayed_positions(exc: ResponseError) -> list[int] | None:
    """The 0-based positions of the marks relay.lua found stored, or ``None`` for another error."""
    match = _RELAYED.search(str(exc))
    return None if match is None else [int(item) - 1 for item in match.group(1).split()]


class RelayPublisher(Publisher):
    """A publisher that moves outbox rows to the track, exactly once (see :mod:`livesync.outbox.relay`)."""

    mark_ttl: int = defaults.RELAY_MARK_TTL
    #: partition -> marks of rows whose delete committed, not removed yet (the next relay.lua call removes them)
    _committed: dict[int, list[str]] | None = None

    def _track(self, partition: int) -> RelayTrack:
        if not self._tracks:
            meta = self.meta
            self._tracks = [
                RelayTrack(self.redis, self.keys.partition(p), meta.granularity, meta.epoch, partitions=meta.partitions)
                for p in range(meta.partitions)
            ]
        track = self._tracks[partition]
        assert isinstance(track, RelayTrack)
        return track

    def relay(self, rows: Sequence[OutboxRow]) -> Relayed:
        """Publish ``rows`` (in id order) that no relay published yet, marking each; one call per partition.

        After a call returns, every row is on the track exactly once: published now, or
        found marked. A namespace re-created under the relay (another epoch) gets the
        whole batch again, marked with the new epoch.
        """
        meta = self.meta
        for attempt in range(2):
            try:
                return self._relay(rows)
            except PartitionEpochMismatch as exc:
                if attempt:
                    raise
                self._refresh(meta, exc)
        raise AssertionError("unreachable")

    def _relay(self, rows: Sequence[OutboxRow]) -> Relayed:
        meta = self.meta
        by_partition: dict[int, list[OutboxRow]] = {}
        for row in rows:
            by_partition.setdefault(partition_of(row.change[0], row.change[1], meta.partitions), []).append(row)
        result = Relayed(marks={})
        assert result.marks is not None
        for partition, members in by_partition.items():
            marks = [f"{meta.epoch}:{row.id}:{row.created_us}" for row in members]
            result.marks[partition] = marks
            remove = (self._committed or {}).get(partition, [])
            published = self._relay_partition(self._track(partition), [row.change for row in members], marks, remove)
            if remove and self._committed is not None:
                del self._committed[partition]  # the call removed them
            result.published += published
            result.already += len(members) - published
        return result

    def _relay_partition(self, track: RelayTrack, changes: list[Triple], marks: list[str], remove: list[str]) -> int:
        """Publish the changes whose marks are not stored yet, removing ``remove``; return how many were published."""
        pending = list(range(len(changes)))
        while pending:
            runs = [(len(run), encode_body(run)) for run in split_runs([changes[i] for i in pending], MAX_RUN)]
            try:
                self._call(track.relay, runs, [marks[i] for i in pending], self.mark_ttl * 1000, remove)
            except ResponseError as exc:
                seen = relayed_positions(exc)
                if seen is None:
                    raise
                done = {pending[i] for i in seen}
                pending = [i for i in pending if i not in done]
                continue
            return len(pending)
        return 0

    def committed(self, relayed: Relayed) -> None:
        """Note that the delete of ``relayed``'s rows committed: their marks go with the next relay.lua calls.

        Marks noted before that no call of this batch took (their partition had no rows in
        it) are removed now, with ``ZREM``.
        """
        left, self._committed = self._committed, dict(relayed.marks or {})
        self._remove(left)

    def flush(self) -> None:
        """Remove every mark noted by :meth:`committed` and not removed yet (an idle or stopping relay)."""
        left, self._committed = self._committed, None
        self._remove(left)

    def _remove(self, marks: dict[int, list[str]] | None) -> None:
        partitions = self.meta.partitions
        for partition, members in (marks or {}).items():
            if partition < partitions:  # else the namespace changed under the relay: those marks expire
                self._call(self._track(partition).forget, members)
