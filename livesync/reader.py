"""Reading a partition's track: head, ends, and its changes by seq, time or bucket.

The read side of :class:`~livesync.track.Track` (which derives from
:class:`TrackReader`). Reading never loads more than a page of members at once, so a
backlog of millions streams through in bounded memory.

Imported by the publisher client: standard library, redis and msgpack only.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any

from livesync.changes import Change
from livesync.codec import decode_member
from livesync.keys import PartitionKeys

#: Changes fetched per round trip while reading (members hold one or many changes).
READ_TARGET = 2000
_MAX_PAGE = 4096
#: Buckets listed (and sized, by status and metrics) per round trip.
BUCKET_PAGE = 1000


class TrackReader:
    """The reads of one partition's track; :class:`~livesync.track.Track` adds writes and pointers."""

    redis: Any
    keys: PartitionKeys
    #: Bucket width in seconds.
    granularity: int

    # -- head, size, ends ----------------------------------------------------------

    def head(self) -> int:
        """The last seq handed out (0 before the first publish)."""
        return int(self.redis.get(self.keys.seq) or 0)

    def clock(self) -> int:
        """The last version handed out (0 before the first publish); every later change gets a greater one."""
        return int(self.redis.get(self.keys.clock) or 0)

    def clock_and_head(self) -> tuple[int, int]:
        """:meth:`clock` and :meth:`head` read at one moment (one ``MGET``: no publish lands between them)."""
        clock, head = self.redis.mget(self.keys.clock, self.keys.seq)
        return int(clock or 0), int(head or 0)

    def buckets(self) -> list[tuple[int, int]]:
        """Every stored bucket as ``(bucket id, first seq)``, oldest first (read in pages)."""
        return [bucket for page in self.bucket_pages() for bucket in page]

    def bucket_pages(self, page: int = BUCKET_PAGE) -> Iterator[list[tuple[int, int]]]:
        """The stored buckets as ``(bucket id, first seq)``, oldest first, ``page`` per round trip.

        One reply of 200,000 buckets would hold Redis (and this process's memory) for
        that long; pages keep every command short. Paging is by first seq, which
        is unique per bucket, so buckets pruned meanwhile do not shift the pages.
        """
        low: str | int = "-inf"
        while True:
            raw = self.redis.zrangebyscore(self.keys.buckets, low, "+inf", start=0, num=page, withscores=True)
            if raw:
                yield [(int(member), int(score)) for member, score in raw]
            if len(raw) < page:
                return
            low = f"({int(raw[-1][1])}"

    def first_seq(self) -> int | None:
        """The lowest seq still stored, or ``None`` when the track is empty."""
        raw = self.redis.zrange(self.keys.buckets, 0, 0, withscores=True)
        if not raw:
            return None
        bucket = int(raw[0][0])
        first = self.redis.zrange(self.keys.bucket(bucket), 0, 0, withscores=True)
        if not first:
            return int(raw[0][1])
        return int(first[0][1])

    def size(self) -> int:
        """How many changes are stored (seqs are consecutive, pruning drops whole buckets)."""
        first = self.first_seq()
        if first is None:
            return 0
        return max(0, self.head() - first + 1)

    def oldest(self) -> Change | None:
        """The oldest stored change (``oldestTS`` of the original)."""
        return next(self.iter_changes(after=0), None)

    def newest(self) -> Change | None:
        """The newest stored change (``mostRecentTS`` of the original)."""
        raw = self.redis.zrevrange(self.keys.buckets, 0, 0)
        if not raw:
            return None
        key = self.keys.bucket(int(raw[0]))
        members = self.redis.zrevrange(key, 0, 0, withscores=True)
        if not members:
            return None
        member, score = members[0]
        return decode_member(key, member, score)[-1]

    def change_at(self, seq: int) -> Change | None:
        """The stored change with this seq, or ``None`` when it is not stored."""
        return next((c for c in self.iter_changes(after=seq - 1, till=seq)), None)

    def version_at(self, seq: int) -> int | None:
        """The version of the stored change with this seq, or ``None`` when it is not stored.

        Two small reads (the bucket holding ``seq``, then the one member holding it),
        cheaper than :meth:`change_at`: what a run pays to compare the change at its
        pointer with the version it acknowledged.
        """
        start = self.redis.zrevrangebyscore(self.keys.buckets, seq, "-inf", start=0, num=1, withscores=True)
        if not start:
            return None
        key = self.keys.bucket(int(start[0][0]))
        members = self.redis.zrevrangebyscore(key, seq, "-inf", start=0, num=1, withscores=True)
        if not members:
            return None
        member, score = members[0]
        for change in decode_member(key, member, score):
            if change.seq == seq:
                return change.version
        return None

    # -- reading -------------------------------------------------------------------

    def iter_changes(self, after: int = 0, till: int | None = None) -> Iterator[Change]:
        """Yield stored changes with ``after < seq <= till`` in seq order (``iterate``).

        ``till`` defaults to no bound. Memory stays bounded: members are fetched a page
        at a time. A corrupt member raises :class:`DecodeError` with key and seq.
        """
        return chain.from_iterable(self.iter_members(after, till))

    def iter_members(self, after: int = 0, till: int | None = None) -> Iterator[list[Change]]:
        """Like :meth:`iter_changes`, one list per stored member (cheaper for bulk reads)."""
        if till is not None and till <= after:
            return
        start = self.redis.zrevrangebyscore(self.keys.buckets, after + 1, "-inf", start=0, num=1, withscores=True)
        low_score = int(start[0][1]) if start else 0
        high = "+inf" if till is None else till
        first_bucket = True
        for bucket in self._buckets_from(low_score):
            key = self.keys.bucket(bucket)
            low: str | int = "-inf"
            if first_bucket:
                first_bucket = False
                straddle = self.redis.zrevrangebyscore(key, after + 1, "-inf", start=0, num=1, withscores=True)
                if straddle:
                    low = int(straddle[0][1])
            page = 64
            while True:
                members = self.redis.zrangebyscore(key, low, high, start=0, num=page, withscores=True)
                if not members:
                    break
                count = 0
                for member, score in members:
                    changes = decode_member(key, member, score)
                    count += len(changes)
                    if changes[0].seq <= after:  # the member straddling the pointer
                        changes = changes[after - changes[0].seq + 1 :]
                    if till is not None and changes and changes[-1].seq > till:
                        changes = changes[: till - changes[0].seq + 1]
                        if changes:
                            yield changes
                        return
                    if changes:
                        yield changes
                if len(members) < page:
                    break
                low = f"({int(members[-1][1])}"
                page = max(1, min(_MAX_PAGE, READ_TARGET * len(members) // max(count, 1)))

    def _buckets_from(self, low_score: int) -> Iterator[int]:
        """Bucket ids whose first seq is >= ``low_score``, oldest first, fetched in pages."""
        low: str | int = low_score
        while True:
            raw = self.redis.zrangebyscore(self.keys.buckets, low, "+inf", start=0, num=256, withscores=True)
            for member, _score in raw:
                yield int(member)
            if len(raw) < 256:
                return
            low = f"({int(raw[-1][1])}"

    def iter_windows(self, after: int, till: int, window: int) -> Iterator[list[Change]]:
        """Yield the changes of ``]after, till]`` in lists of at most ``window`` changes."""
        batch: list[Change] = []
        for run in self.iter_members(after, till):
            while run:
                room = window - len(batch)
                batch += run[:room]
                run = run[room:]
                if len(batch) >= window:
                    yield batch
                    batch = []
        if batch:
            yield batch

    def iter_time(self, since_ms: int | None = None, until_ms: int | None = None) -> Iterator[Change]:
        """Yield changes with server time in ``]since_ms, until_ms]``."""
        after = 0
        if since_ms is not None:
            since_bucket = since_ms // 1000 // self.granularity
            candidates = [first for bucket, first in self.buckets() if bucket >= since_bucket]
            if not candidates:
                return
            after = candidates[0] - 1
        until_bucket = None if until_ms is None else until_ms // 1000 // self.granularity
        for change in self.iter_changes(after):
            if until_bucket is not None and change.ts // 1000 // self.granularity > until_bucket:
                return
            if since_ms is not None and change.ts <= since_ms:
                continue
            if until_ms is not None and change.ts > until_ms:
                continue
            yield change

    def iter_buckets(self, after_bucket: int | None, till_bucket: int | None) -> Iterator[Change]:
        """Yield the changes of buckets with ``after_bucket < id <= till_bucket``."""
        buckets = self.buckets()
        for index, (bucket, first) in enumerate(buckets):
            if after_bucket is not None and bucket <= after_bucket:
                continue
            if till_bucket is not None and bucket > till_bucket:
                return
            last = buckets[index + 1][1] - 1 if index + 1 < len(buckets) else None
            yield from self.iter_changes(after=first - 1, till=last)

    def values(self) -> Iterator[Change]:
        """Every stored change, oldest first (``values``)."""
        return self.iter_changes(0)

    def seq_at_time(self, ts_ms: int) -> int:
        """The highest stored seq published at or before ``ts_ms``.

        When everything stored is newer, the seq just before the oldest stored change.
        """
        target = ts_ms // 1000 // self.granularity
        buckets = self.buckets()
        if not buckets:
            return self.head()
        earlier = [(bucket, first) for bucket, first in buckets if bucket <= target]
        if not earlier:
            return buckets[0][1] - 1
        bucket, first = earlier[-1]
        best = first - 1
        for change in self.iter_buckets(bucket - 1, bucket):
            if change.ts > ts_ms:
                break
            best = change.seq
        return best
