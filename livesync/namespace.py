"""Namespace metadata: granularity and partitions, fixed when the namespace is created.

Imported by the publisher client: standard library and redis only.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

from livesync.errors import ConfigurationError
from livesync.keys import NAMESPACE_PATTERN, NamespaceKeys

SCHEMA_VERSION = 1
DEFAULT_GRANULARITY = 60
DEFAULT_PARTITIONS = 1


@dataclass(frozen=True, slots=True)
class Meta:
    """What a namespace fixes at creation."""

    granularity: int
    partitions: int
    schema: int
    created_at: float


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid name, else raise ``ConfigurationError``."""
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ConfigurationError(f"namespace: {namespace!r} is not valid (1-64 of letters, digits, '_', '.', '-')")
    return namespace


def read_meta(redis: Any, keys: NamespaceKeys) -> Meta | None:
    """Return the namespace's metadata, or ``None`` when it was never created."""
    raw = redis.hgetall(keys.meta)
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return Meta(
        granularity=int(fields["granularity"]),
        partitions=int(fields["partitions"]),
        schema=int(fields.get("schema", SCHEMA_VERSION)),
        created_at=float(fields.get("created_at", 0)),
    )


def ensure_meta(
    redis: Any, keys: NamespaceKeys, *, partitions: int | None = None, granularity: int | None = None
) -> Meta:
    """Return the namespace's metadata, creating it with the given values if needed.

    Values given explicitly must match what the namespace already holds: P and the
    granularity are fixed for the life of a namespace.
    """
    if partitions is not None and not 1 <= partitions <= 1024:
        raise ConfigurationError(f"partitions: must be between 1 and 1024, got {partitions}")
    if granularity is not None and not 1 <= granularity <= 86400:
        raise ConfigurationError(f"granularity: must be between 1 and 86400 seconds, got {granularity}")
    meta = read_meta(redis, keys)
    if meta is None:
        pipe = redis.pipeline(transaction=False)
        pipe.hsetnx(keys.meta, "granularity", granularity or DEFAULT_GRANULARITY)
        pipe.hsetnx(keys.meta, "partitions", partitions or DEFAULT_PARTITIONS)
        pipe.hsetnx(keys.meta, "schema", SCHEMA_VERSION)
        pipe.hsetnx(keys.meta, "created_at", f"{time.time():.3f}")
        pipe.execute()
        meta = read_meta(redis, keys)
        assert meta is not None
    if partitions is not None and partitions != meta.partitions:
        raise ConfigurationError(
            f"partitions: namespace {keys.namespace!r} has {meta.partitions} partition(s), not {partitions}; "
            "the number of partitions is fixed when a namespace is created"
        )
    if granularity is not None and granularity != meta.granularity:
        raise ConfigurationError(
            f"granularity: namespace {keys.namespace!r} uses {meta.granularity} s buckets, "
            f"not {granularity}; "
            "the granularity is fixed when a namespace is created"
        )
    if meta.schema > SCHEMA_VERSION:
        raise ConfigurationError(
            f"namespace {keys.namespace!r} has schema {meta.schema}; this livesync knows {SCHEMA_VERSION}"
        )
    return meta


def partition_of(type_: str, id_: int | str, partitions: int) -> int:
    """Return the partition of an object: ``crc32(type + ":" + id) % P``."""
    if partitions == 1:
        return 0
    return zlib.crc32(f"{type_}:{id_}".encode()) % partitions


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
