"""The track: one partition's time-bucketed log of changes and its pointers.

The successor of Indico's ``MultiPointerTrack``. Changes are stored once, in buckets
(``server time // granularity``), scored by seq; every agent has a pointer, the last
seq it acknowledged. The reads (head, ends, changes by seq, time or bucket) are in
:mod:`livesync.reader`, publishing with ``WAIT`` in :mod:`livesync.replication`.

Imported by the publisher client: standard library, redis and msgpack only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from redis.commands.core import Script
from redis.exceptions import NoScriptError, ResponseError

from livesync import defaults
from livesync.changes import Change
from livesync.codec import text
from livesync.errors import (
    AgentCorrupt,
    HeadLost,
    LiveSyncError,
    LockLost,
    PartitionEpochMismatch,
    ReplicationError,
)
from livesync.keys import PartitionKeys
from livesync.lua import scripts_for
from livesync.reader import TrackReader
from livesync.replication import publish_waiting

#: Buckets one prune script call deletes at most: the default of ``LIVESYNC_PRUNE_CHUNK``.
PRUNE_CHUNK = defaults.PRUNE_CHUNK
#: The publish script's error reply when the partition's epoch is not the expected one
#: (searched, not matched: a pipeline prefixes the command it came from).
_EPOCH_ERROR = re.compile(r"LIVESYNC_EPOCH (\d+|none)")
#: The publish script's error reply when the partition lost its head but not its clock or pointers.
_HEAD_ERROR = re.compile(r"LIVESYNC_HEAD_LOST (clock|pointer (\d+))")


class Track(TrackReader):
    """One partition of a namespace's track.

    ``epoch`` is the namespace epoch the caller read from the meta; :meth:`publish`
    writes only while the partition holds that epoch (0: unknown, publishing refused).
    ``partitions``, the namespace's number of partitions, only goes into messages.
    """

    def __init__(
        self, redis: Any, keys: PartitionKeys, granularity: int, epoch: int = 0, *, partitions: int | None = None
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.granularity = granularity
        self.epoch = epoch
        self.partitions = partitions
        self.scripts = scripts_for(redis)
        self._bucket_guess: int | None = None
        # publish's keys as bytes, built once: encoding them is a visible share of a single emit
        self._publish_keys = (keys.seq.encode(), keys.buckets.encode())
        self._epoch_keys = (keys.epoch.encode(), keys.clock.encode(), keys.pointers.encode())
        self._bucket_key: tuple[int, bytes] = (-1, b"")

    @property
    def partition(self) -> int:
        """The partition number of this track."""
        return self.keys.partition

    # -- writing -------------------------------------------------------------------

    def publish(
        self, runs: Sequence[tuple[int, bytes]], *, wait_replicas: int = 0, wait_timeout: float = defaults.WAIT_TIMEOUT
    ) -> int:
        """Store packed runs ``(count, body)`` in one atomic call; return the first seq.

        The runs get consecutive seqs and versions from the first one on. With
        ``wait_replicas``, the publish is followed by ``WAIT`` on the same connection, and
        :class:`ReplicationError` is raised when fewer replicas than asked acknowledged
        it within ``wait_timeout`` seconds (it is stored on the primary all the same).
        Raises :class:`PartitionEpochMismatch`, having written nothing, when the
        partition does not hold this track's epoch.
        """
        if not runs:
            raise ValueError("nothing to publish")
        argv: list[Any] = [self.granularity, 0, self.epoch]
        for count, body in runs:
            argv += (count, body)
        bucket = self._bucket_guess
        if bucket is None:
            bucket = int(time.time()) // self.granularity
        for _ in range(3):
            argv[1] = bucket
            if self._bucket_key[0] != bucket:
                self._bucket_key = (bucket, self.keys.bucket(bucket).encode())
            keys_and_args = (*self._publish_keys, self._bucket_key[1], *self._epoch_keys, *argv)
            try:
                if wait_replicas:
                    result, acked = publish_waiting(
                        self.redis, self.scripts.publish, self.keys.seq, keys_and_args, wait_replicas, wait_timeout
                    )
                else:
                    result, acked = int(self._evalsha(self.scripts.publish, *keys_and_args, numkeys=6)), 0
            except ResponseError as exc:
                lost = _HEAD_ERROR.search(str(exc))
                if lost is not None:
                    raise self._head_lost(lost.group(2)) from exc
                match = _EPOCH_ERROR.search(str(exc))
                if match is None:
                    raise
                found = match.group(1)
                actual = None if found == "none" else int(found)
                raise PartitionEpochMismatch(self.keys.epoch, self.partition, self.epoch, actual) from exc
            if result > 0:
                self._bucket_guess = bucket
                if acked < wait_replicas:
                    raise ReplicationError(
                        f"publish of seq {result}.. to {self.keys.seq} reached {acked} of {wait_replicas} "
                        f"replica(s) within {wait_timeout:g}s; it is stored on the primary but a failover may lose it"
                    )
                return result
            bucket = -result - 1
        raise LiveSyncError(f"publish to {self.keys.seq} could not settle on a bucket")

    def _head_lost(self, pointer: str | None) -> HeadLost:
        """The error of a publish refused because the partition lost its head (nothing written)."""
        kept = "its clock" if pointer is None else f"agents' pointers (up to seq {pointer})"
        count = "P" if self.partitions is None else str(self.partitions)
        return HeadLost(
            f"partition {self.partition} of namespace {self.keys.namespace!r} lost its head ({self.keys.seq}) while "
            f"{kept} remain (Redis lost, evicted or rolled back data): seqs from 1 again would land below what "
            f"agents read; nothing was written; restore it with 'livesync init --repair --partitions {count}'"
        )

    def _evalsha(self, script: Script, *keys_then_args: Any, numkeys: int = 3) -> Any:
        """EVALSHA with the script's cached sha, loading it once when the server lacks it.

        Cheaper than ``Script.__call__`` on the single-emit hot path.
        """
        try:
            return self.redis.evalsha(script.sha, numkeys, *keys_then_args)
        except NoScriptError:
            self.redis.script_load(script.script)
            return self.redis.evalsha(script.sha, numkeys, *keys_then_args)

    # -- pointers ------------------------------------------------------------------

    def add_pointer(self, agent_id: str, seq: int) -> None:
        """Create an agent's pointer at ``seq`` (``addPointer``); the agent reads seqs > ``seq``.

        Drops any acknowledged version left for this id: a new pointer has none.
        """
        self._write_pointer(agent_id, seq)

    def remove_pointer(self, agent_id: str) -> None:
        """Drop an agent's pointer, its acknowledged version and its lock (``removePointer``)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hdel(self.keys.pointers, agent_id)
        pipe.hdel(self.keys.acked, agent_id)
        pipe.delete(self.keys.lock(agent_id))
        pipe.execute()

    def move_pointer(self, agent_id: str, seq: int) -> None:
        """Set an agent's pointer unconditionally (``movePointer``; operators' resets).

        An operator's pointer has no acknowledged version: the field is dropped, and the
        run's check for seqs handed out again skips it until the next ack.
        """
        self._write_pointer(agent_id, seq)

    def _write_pointer(self, agent_id: str, seq: int) -> None:
        # one transaction (one hash slot): a pointer never pairs with another seq's version
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.pointers, agent_id, seq)
        pipe.hdel(self.keys.acked, agent_id)
        pipe.execute()

    def acked_version(self, agent_id: str) -> int | None:
        """Version of the change at the agent's pointer as its last ack saw it, or ``None``.

        ``None`` when the pointer was set by anyone but a run's ack (added, reset, moved).
        """
        raw = self.redis.hget(self.keys.acked, agent_id)
        return None if raw is None else _int_or_none(raw)

    def position(self, agent_id: str) -> tuple[int | None, int | None]:
        """The agent's pointer and acknowledged version, in one round trip.

        The pointer raises :class:`AgentCorrupt` like :meth:`pointer`; an acknowledged
        version that is not an integer counts as none (nothing to check against).
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.pointers, agent_id)
        pipe.hget(self.keys.acked, agent_id)
        raw_pointer, raw_version = pipe.execute()
        return self._decode_pointer(agent_id, raw_pointer), None if raw_version is None else _int_or_none(raw_version)

    def pointer(self, agent_id: str) -> int | None:
        """An agent's pointer, or ``None`` when it has none; :class:`AgentCorrupt` when it is not an integer."""
        return self._decode_pointer(agent_id, self.redis.hget(self.keys.pointers, agent_id))

    def _decode_pointer(self, agent_id: str, raw: bytes | None) -> int | None:
        if raw is None:
            return None
        try:
            return int(raw)
        except ValueError:
            raise AgentCorrupt(
                f"corrupt pointer of agent {agent_id!r} in {self.keys.pointers}: {bytes(raw)[:40]!r} is not an integer"
            ) from None

    def pointers(self) -> dict[str, int]:
        """Every agent's pointer; one that is not an integer counts as 0, so a prune keeps what it has not read."""
        return {text(k): _int_or_zero(v) for k, v in self.redis.hgetall(self.keys.pointers).items()}

    def acknowledge(
        self,
        agent_id: str,
        token: str,
        seq: int | None,
        dead_letters: Sequence[str] = (),
        *,
        drop_letters: int = 0,
        version: int | None = None,
        letters_for: str | None = None,
    ) -> None:
        """Move the pointer to ``seq`` and append ``dead_letters``, while holding the run lock ``token``.

        One atomic, fenced call: both happen, or neither (:class:`LockLost`; ``ValueError``
        for a seq beyond the head).
        ``seq=None`` leaves the pointer where it is and writes dead letters only;
        ``drop_letters`` first drops that many from the head of the list (a requeue
        dropping what it read). ``dead_letters`` are encoded entries
        (``livesync.deadletters.encode``). ``version`` is the version of the change at
        ``seq``, stored with the pointer (``keys.acked``) so the next run can tell that
        change from another one handed the same seq after a rewind; without it the
        stored version is dropped and that check is skipped. ``letters_for`` names the agent
        whose dead-letter list gets them when that is not ``agent_id`` (a reindex acks its own
        pointer and files what the new generation refused under its agent).
        """
        dlq = self.keys.dlq(letters_for or agent_id)
        keys = [self.keys.lock(agent_id), self.keys.pointers, self.keys.seq, dlq, self.keys.acked]
        args = [token, agent_id, "" if seq is None else seq, drop_letters, "" if version is None else version]
        args += dead_letters
        result = int(self.scripts.ack(keys=keys, args=args))
        if result == 0:
            unchanged = f"pointer of {agent_id!r} not moved to {seq}" if seq is not None else "no dead letters written"
            raise LockLost(f"lock {self.keys.lock(agent_id)} is no longer held by this runner; {unchanged}")
        if result == -1:
            raise LockLost(f"agent {agent_id!r} has no pointer in {self.keys.pointers} any more (removed?)")
        if result == -2:
            raise LockLost(f"pointer of {agent_id!r} is already past {seq}; it was moved by someone else")
        if result == -3:
            raise ValueError(f"cannot acknowledge seq {seq} of {agent_id!r}: it is beyond the head {self.head()}")

    def pending(self, agent_id: str, till: int | None = None) -> Iterator[Change]:
        """Changes after the agent's pointer up to ``till`` (``pointerIterItems``)."""
        pointer = self.pointer(agent_id)
        if pointer is None:
            return iter(())
        return self.iter_changes(pointer, till if till is not None else self.head())

    # -- pruning and destruction ----------------------------------------------------

    def prune(self, retention: int | None = None, *, chunk: int = PRUNE_CHUNK) -> int:
        """Delete buckets every pointer is past, and with ``retention`` (seconds) buckets
        older than that whether read or not; return how many buckets were deleted.

        Without any pointer nothing counts as read; only retention deletes then. Each
        script call deletes at most ``chunk`` buckets (``LIVESYNC_PRUNE_CHUNK``): one
        call over every candidate held Redis for seconds at 200,000 buckets, and every
        other client got ``BUSY`` meanwhile. Calls go oldest first and stop at the first
        bucket that must stay, so a prune interrupted between calls leaves a consistent
        track (a shorter prefix deleted) and the next prune goes on.
        """
        if chunk < 1:
            raise ValueError("chunk must be positive")
        pointers = self.pointers()
        lowest = min(pointers.values()) if pointers else None
        if lowest is not None and max(pointers.values()) > self.head():
            lowest = None  # a rewound head: the script counts nothing as read (see prune.lua)
        expired_before = None
        if retention:
            # a local estimate to choose candidates; the script decides by server time
            expired_before = (int(time.time()) - retention) // self.granularity + 1
        fixed = [
            self.keys.buckets,
            self.keys.pointers,
            self.keys.seq,
            self.keys.pruned,
            self.keys.acked,
            self.keys.bucket_prefix,
        ]
        deleted = 0
        while True:
            # the oldest buckets left: what earlier calls deleted is no longer in the index
            page = self.redis.zrange(self.keys.buckets, 0, chunk - 1, withscores=True)
            candidates = []
            for member, score in page:
                bucket, first = int(member), int(score)
                if (lowest is not None and first <= lowest) or (expired_before is not None and bucket < expired_before):
                    candidates.append(bucket)
                else:
                    break
            if not candidates:
                return deleted
            keys = fixed + [self.keys.bucket(bucket) for bucket in candidates]
            done, _highest = self.scripts.prune(keys=keys, args=[self.granularity, retention or 0, *candidates])
            deleted += int(done)
            if int(done) < len(candidates) or len(candidates) < chunk:
                return deleted  # the script or the page reached a bucket that stays

    def pruned_upto(self) -> int:
        """The highest seq ever deleted; a pointer below it lost unread changes (a gap)."""
        return int(self.redis.get(self.keys.pruned) or 0)

    def forget_pruned_beyond_head(self) -> bool:
        """After a rewind (head lost or rolled back), lower the pruned mark below what is stored.

        Seqs beyond the head will be handed out again: they were not pruned, and a
        mark above the head would report a gap for every pointer reset below it. When
        the head was set back and then overtaken, the seqs handed out again are stored
        above the mark's new place: prune deletes a prefix, so the mark always stays
        below the lowest stored seq. Returns whether the mark was lowered.
        """
        head = self.head()
        first = self.first_seq()
        mark = head if first is None else min(head, first - 1)
        if self.pruned_upto() <= mark:
            return False
        self.redis.set(self.keys.pruned, mark)
        return True

    def destroy(self, *, track: bool = True, pointers: bool = True) -> int:
        """Delete this partition's changes and/or pointers; return keys deleted.

        Deleting the changes but keeping the pointers keeps the head as well, so the
        seqs published afterwards are beyond every pointer.
        """
        doomed: list[str] = []
        if track and not pointers:
            # what the kept pointers have not read is gone on purpose, not lost: no gap
            self.redis.set(self.keys.pruned, 0)
        deleted = 0
        if track:
            # the bucket keys go a page per command (one DEL of 200,000 keys blocks Redis);
            # the index goes last, so a destroy interrupted here can simply be run again
            for page in self.bucket_pages():
                deleted += int(self.redis.unlink(*(self.keys.bucket(bucket) for bucket, _first in page)))
            doomed.append(self.keys.buckets)
            if pointers:
                # with pointers kept, the head, clock and epoch stay too: seqs are never handed out twice
                doomed += [self.keys.seq, self.keys.pruned, self.keys.clock, self.keys.epoch]
        if pointers:
            doomed += [self.keys.pointers, self.keys.acked]
            doomed += [text(k) for k in self.redis.scan_iter(match=self.keys.lock("*"), count=500)]
            doomed += [text(k) for k in self.redis.scan_iter(match=self.keys.dlq("*"), count=500)]
        if not doomed:
            return deleted
        # UNLINK: the index of 200,000 buckets takes ~100 ms to free on the main thread
        return deleted + int(self.redis.unlink(*doomed))

    def memory_usage(self) -> int:
        """Bytes Redis reports for this partition's track keys (MEMORY USAGE).

        A round trip per page of buckets (pipelined), not one per bucket.
        """
        total = 0
        keys = [self.keys.seq, self.keys.buckets]
        for page in self.bucket_pages():
            keys += [self.keys.bucket(bucket) for bucket, _first in page]
            total += self._memory_of(keys)
            keys = []
        if keys:
            total += self._memory_of(keys)
        return total

    def _memory_of(self, keys: list[str]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.memory_usage(key, samples=0)
        return sum(int(size or 0) for size in pipe.execute())


def _int_or_none(value: bytes) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _int_or_zero(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        return 0
