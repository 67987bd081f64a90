"""The publisher: the tiny client applications use to emit changes.

Importing it pulls in redis and msgpack only. Every change is validated before
Redis is touched; a batch is then stored by one Lua call per partition, all or
nothing, with seqs and time handed out by the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis as redis_lib
from redis.exceptions import ClusterDownError, TryAgainError

from livesync import defaults
from livesync.changes import APPEAR, DISAPPEAR, Item, Triple, validate
from livesync.codec import MAX_RUN, encode_body, split_runs
from livesync.connection import connect
from livesync.errors import EpochChanged, InvalidChange, NamespaceDamaged, PartitionEpochMismatch, RedisUnavailable
from livesync.keys import namespace_keys
from livesync.namespace import Meta, check_namespace, ensure_meta, partition_epoch_problem, partition_of
from livesync.records import ObjectId
from livesync.redis_policy import check_eviction
from livesync.track import Track
from livesync.urls import mask_url

#: Errors that mean "Redis cannot take the publish right now" (a cluster failing over too).
_UNAVAILABLE = (redis_lib.ConnectionError, redis_lib.TimeoutError, ClusterDownError, TryAgainError)


def _busy(exc: BaseException) -> bool:
    """``BUSY``: Redis is running another client's script and refused the call unexecuted."""
    # redis-py has no class for BUSY; BUSYGROUP (a stream's group exists) is another error
    return isinstance(exc, redis_lib.ResponseError) and str(exc).startswith("BUSY ")


def _transient(exc: BaseException) -> bool:
    """Whether a publish that failed with ``exc`` may be retried: Redis unreachable, failing over or busy."""
    return isinstance(exc, _UNAVAILABLE) or _busy(exc)


#: Most changes one ``emit_many`` call takes (it is one atomic write per partition).
MAX_BATCH = 100_000


class Publisher:
    """Publishes changes to a namespace's track.

    >>> pub = Publisher.from_url("redis://localhost:6379/0", namespace="demo")
    >>> pub.emit("event", 42, "created", "title_changed")  # doctest: +SKIP
    """

    def __init__(
        self,
        redis: Any,
        namespace: str = defaults.NAMESPACE,
        *,
        partitions: int | None = None,
        granularity: int | None = None,
        url: str | None = None,
        retries: int = defaults.PUBLISH_RETRIES,
        retry_backoff: float = defaults.PUBLISH_RETRY_BACKOFF,
        wait_replicas: int = 0,
        wait_timeout: float = defaults.WAIT_TIMEOUT,
        allow_eviction: bool = False,
    ) -> None:
        if retries < 0 or retry_backoff < 0 or wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("retries, retry_backoff and wait_replicas must not be negative, wait_timeout positive")
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.redis = redis
        self.namespace = check_namespace(namespace)
        self.keys = namespace_keys(namespace)
        self.url = url
        self._wanted = (partitions, granularity)
        self._meta: Meta | None = None
        self._tracks: list[Track] = []
        self.allow_eviction = allow_eviction
        self._policy_checked = False
        try:
            self._check_eviction()
        except redis_lib.RedisError as exc:
            if not _transient(exc):
                raise
            # Redis is down or busy now: the first publish checks (and reports the outage itself)

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str = defaults.NAMESPACE,
        *,
        partitions: int | None = None,
        granularity: int | None = None,
        retries: int = defaults.PUBLISH_RETRIES,
        retry_backoff: float = defaults.PUBLISH_RETRY_BACKOFF,
        wait_replicas: int = 0,
        wait_timeout: float = defaults.WAIT_TIMEOUT,
        allow_eviction: bool = False,
    ) -> Publisher:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``, or
        ``redis+cluster://`` for a Redis Cluster).

        ``retries`` (default 0) retries a publish that failed to reach Redis that many
        times, waiting ``retry_backoff * 2**n`` seconds; see :meth:`_call`.
        ``wait_replicas`` makes every publish wait (Redis ``WAIT``, up to
        ``wait_timeout`` seconds) until that many replicas have it, so an acknowledged
        publish survives a failover; fewer raise :class:`ReplicationError`.

        A Redis whose ``maxmemory-policy`` may evict keys is refused with
        :class:`EvictingRedis` (one ``INFO`` at creation, none per emit) unless
        ``allow_eviction`` is true: then one warning is logged. Eviction deletes meta,
        heads and pointers silently, losing changes.
        """
        # connect's timeouts and health check; no ping: an unreachable Redis is checked at first use
        client = connect(url)
        try:
            return cls(
                client,
                namespace,
                partitions=partitions,
                granularity=granularity,
                url=url,
                retries=retries,
                retry_backoff=retry_backoff,
                wait_replicas=wait_replicas,
                wait_timeout=wait_timeout,
                allow_eviction=allow_eviction,
            )
        except BaseException:
            client.close()  # refused (an evicting Redis): the pool is ours, not the caller's
            raise

    # -- public API -----------------------------------------------------------------

    def emit(self, type: str, id: ObjectId, *changes: str) -> int:
        """Publish one change of object ``(type, id)``; return its seq."""
        triple = validate(type, id, changes)
        meta = self.meta
        track = self._track(partition_of(triple[0], triple[1], meta.partitions))
        try:
            seq: int = self._call(
                track.publish,
                ((1, encode_body((triple,))),),
                wait_replicas=self.wait_replicas,
                wait_timeout=self.wait_timeout,
            )
        except PartitionEpochMismatch as exc:
            self._refresh(meta, exc)  # nothing was written: publish again with the new meta
            return self._publish([triple], retry=False)[0]
        return seq

    def emit_many(self, items: Iterable[Item]) -> list[int]:
        """Publish a batch of changes; return their seqs in input order.

        Items are ``(type, id, [flags])`` tuples or ``{"type", "id", "changes"}`` dicts.
        Every item is validated first: one invalid item raises :class:`InvalidChange`
        naming its index and field, and nothing of the batch is written.
        """
        return self._publish(validate_items(items))

    def emit_validated(self, triples: Sequence[Triple]) -> list[int]:
        """Publish ``(type, id, flag mask)`` triples from :func:`validate_item`; return seqs.

        For callers that validated a large input up front (``livesync publish --file``)
        and must not pay for validation twice.
        """
        if len(triples) > MAX_BATCH:
            raise InvalidChange("items", f"at most {MAX_BATCH} changes per call; split the batch")
        return self._publish(list(triples))

    @contextmanager
    def collect(self) -> Iterator[Unit]:
        """A unit of work: flags are merged per object and published once on clean exit.

        An exception inside the block discards everything emitted in it.
        """
        unit = Unit()
        yield unit
        if unit.changes:
            unit.seqs = self._publish(unit.changes)

    @property
    def meta(self) -> Meta:
        """The namespace's granularity, partitions and epoch (created on first use).

        Cached: the publish script checks the epoch on every call, so a destroyed or
        re-created namespace is noticed at the next publish (see :meth:`_refresh`).
        """
        if self._meta is None:
            if not self._policy_checked:
                self._call(self._check_eviction)
            self._meta = self._read_meta()
        return self._meta

    def close(self) -> None:
        """Close the connection pool."""
        self.redis.close()

    # -- internals --------------------------------------------------------------------

    def _check_eviction(self) -> None:
        check_eviction(
            self.redis,
            allow=self.allow_eviction,
            url=self.url,
            hint="Publisher(..., allow_eviction=True)",
        )
        self._policy_checked = True

    def _read_meta(self, min_epoch: int = 0) -> Meta:
        partitions, granularity = self._wanted
        meta: Meta = self._call(
            ensure_meta, self.redis, self.keys, partitions=partitions, granularity=granularity, min_epoch=min_epoch
        )
        return meta

    def _track(self, partition: int) -> Track:
        if not self._tracks:
            meta = self.meta
            self._tracks = [
                Track(self.redis, self.keys.partition(p), meta.granularity, meta.epoch, partitions=meta.partitions)
                for p in range(meta.partitions)
            ]
        return self._tracks[partition]

    def _refresh(self, stale: Meta, mismatch: PartitionEpochMismatch) -> Meta:
        """Re-read the meta after the publish script refused ``stale``'s epoch.

        A namespace re-created by someone else is simply followed (new epoch, new
        partitioning); one entirely gone is created again, with a greater epoch. A meta
        missing while other keys exist raises :class:`NamespaceDamaged`; an unchanged
        meta whose partition lost or changed its epoch raises it too.
        """
        self._meta = None
        self._tracks = []
        meta = self._read_meta(min_epoch=stale.epoch)
        if meta.epoch == stale.epoch:
            problem = self._call(partition_epoch_problem, self.redis, self.keys, meta, mismatch.partition)
            if problem is not None:
                raise NamespaceDamaged(
                    f"namespace {self.namespace!r}: {problem}; repair it with "
                    f"'livesync init --repair --partitions {meta.partitions}'"
                )
        self._meta = meta
        return meta

    def _publish(self, triples: list[Triple], *, retry: bool = True) -> list[int]:
        """Publish ``triples``, one atomic call per partition.

        When the first call meets another epoch (nothing of this batch written yet), the
        meta is re-read and the whole batch published again with the new partitioning,
        once; a later call raises :class:`EpochChanged` saying what was stored.
        """
        if not triples:
            return []
        meta = self.meta
        by_partition: dict[int, list[int]] = {}
        for index, (type_, id_, _flags) in enumerate(triples):
            by_partition.setdefault(partition_of(type_, id_, meta.partitions), []).append(index)
        seqs = [0] * len(triples)
        stored: list[str] = []
        pending = list(by_partition)
        for partition, indexes in by_partition.items():
            items = [triples[i] for i in indexes]
            runs = [(len(run), encode_body(run)) for run in split_runs(items, MAX_RUN)]
            try:
                first = self._call(
                    self._track(partition).publish,
                    runs,
                    wait_replicas=self.wait_replicas,
                    wait_timeout=self.wait_timeout,
                )
            except PartitionEpochMismatch as exc:
                if stored or not retry:
                    self._meta = None  # the next call reads the meta again
                    self._tracks = []
                    missing = ", ".join(f"partition {p} ({len(by_partition[p])} change(s))" for p in pending)
                    raise EpochChanged(
                        f"namespace {self.namespace!r} changed under this publisher during a publish ({exc}): "
                        f"stored: {', '.join(stored) or 'nothing'}; not stored: {missing}; publish those again"
                    ) from exc
                self._refresh(meta, exc)
                return self._publish(triples, retry=False)
            stored.append(f"partition {partition} (seqs {first}..{first + len(indexes) - 1})")
            pending.remove(partition)
            for offset, index in enumerate(indexes):
                seqs[index] = first + offset
        return seqs

    def _call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        """Call Redis; a connection failure raises :class:`RedisUnavailable` naming the masked URL.

        With ``retries``, a failed call is tried again after a backoff, at most that many
        times; so is a call refused with ``BUSY`` (another client's script is running;
        Redis executed nothing of the call). A batch is never half written (one Lua call
        per partition), but when only the reply was lost a retry stores the batch twice:
        at-least-once, which the reduction absorbs (applying a change twice gives the
        same live set).
        """
        for attempt in range(self.retries + 1):
            try:
                return func(*args, **kwargs)
            except redis_lib.RedisError as exc:
                if not _transient(exc):
                    raise
                if attempt >= self.retries:
                    where = mask_url(self.url) if self.url else "Redis"
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    if _busy(exc):
                        raise RedisUnavailable(
                            f"{where} was busy running another client's script{tries}; nothing was published: {exc}"
                        ) from exc
                    raise RedisUnavailable(f"cannot reach {where}{tries}: {exc}") from exc
                time.sleep(self.retry_backoff * 2**attempt)
        raise AssertionError("unreachable")


class Unit:
    """Changes collected by :meth:`Publisher.collect`, merged per object."""

    def __init__(self) -> None:
        self.changes: list[Triple] = []
        self.seqs: list[int] = []
        self._open: dict[tuple[str, ObjectId], int] = {}

    def emit(self, type: str, id: ObjectId, *changes: str) -> None:
        """Add flags to object ``(type, id)``; validated now, published on exit.

        Flags merge into the object's pending change, except when they would make it
        both appear and disappear: then a second change keeps the order.
        """
        type_, id_, mask = validate(type, id, changes)
        key = (type_, id_)  # 42 and "42" are different keys, as they are different objects
        index = self._open.get(key)
        if index is not None:
            merged = self.changes[index][2] | mask
            if not (merged & APPEAR and merged & DISAPPEAR):
                self.changes[index] = (type_, id_, merged)
                return
        self._open[key] = len(self.changes)
        self.changes.append((type_, id_, mask))


def validate_items(items: Iterable[Item]) -> list[Triple]:
    """Validate a batch of items; field names carry the item's index."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise InvalidChange("items", "must be a list of changes")
    triples: list[Triple] = []
    for index, item in enumerate(items):
        if len(triples) >= MAX_BATCH:
            raise InvalidChange("items", f"at most {MAX_BATCH} changes per call; split the batch")
        triples.append(validate_item(item, f"item {index}: "))
    return triples


def validate_item(item: object, where: str = "") -> Triple:
    """Validate one ``(type, id, [flags])`` tuple or ``{"type", "id", "changes"}`` dict.

    ``where`` prefixes the field names in errors (``"item 3: "``, ``"line 7: "``).
    """
    if isinstance(item, Mapping):
        unknown = sorted(str(key) for key in item if key not in ("type", "id", "changes"))
        if unknown:
            raise InvalidChange(f"{where}{unknown[0][:80]}", "unknown field (expected type, id, changes)")
        for required in ("type", "id", "changes"):
            if required not in item:
                raise InvalidChange(f"{where}{required}", "field required")
        return validate(item["type"], item["id"], item["changes"], where)
    if isinstance(item, tuple | list) and len(item) == 3:
        return validate(item[0], item[1], item[2], where)
    raise InvalidChange(
        where.rstrip(": ") or "item", "must be (type, id, [changes]) or an object with type, id, changes"
    )


__all__ = ["MAX_BATCH", "Publisher", "Unit", "validate_item", "validate_items"]
