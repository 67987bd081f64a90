"""Redis's eviction policy: livesync needs ``maxmemory-policy noeviction``.

With ``maxmemory`` set and an evicting policy (``allkeys-*``, or ``volatile-*``: the
run locks have TTLs), Redis deletes keys to make room without telling anyone: a lost
meta, head or pointer loses or re-sends changes silently. Workers, the scheduler,
``livesync tick``, ``livesync status`` and publishers therefore read the policy once
(one ``INFO memory`` per Redis node: it works where ``CONFIG`` is disabled, as on
managed services) and refuse an evicting Redis unless the operator explicitly allowed
it (``LIVESYNC_ALLOW_EVICTION``, ``Publisher(allow_eviction=True)``). :func:`redis_full`
reads the same ``INFO memory`` to tell whether Redis is at ``maxmemory``.

Imported by the publisher client: standard library and redis only.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from livesync.errors import EvictingRedis
from livesync.urls import mask_url

if TYPE_CHECKING:
    from livesync.config import Settings

log = logging.getLogger(__name__)

#: The only policy under which Redis never deletes a key on its own.
SAFE_POLICY = "noeviction"

#: How operators override the check, named in the refusal.
SETTING_HINT = "LIVESYNC_ALLOW_EVICTION=1"


@dataclass(frozen=True)
class NodePolicy:
    """What one Redis node reports: its address, ``maxmemory-policy`` and ``maxmemory``.

    ``policy`` is ``None`` when the server does not report it (fakeredis, the embedded
    fallback, which never evicts).
    """

    node: str
    policy: str | None
    maxmemory: int | None

    @property
    def evicting(self) -> bool:
        """Whether this node may delete keys on its own (a known policy other than noeviction)."""
        return self.policy is not None and self.policy != SAFE_POLICY


@dataclass(frozen=True)
class RedisPolicy:
    """The eviction policy of a Redis, per node (one node, or every master of a cluster)."""

    nodes: tuple[NodePolicy, ...]

    @property
    def evicting(self) -> bool:
        """Whether any node may delete livesync's keys."""
        return any(node.evicting for node in self.nodes)

    @property
    def policy(self) -> str | None:
        """The policy to show: the first evicting one, else the first known one (``None``: unknown)."""
        for node in self.nodes:
            if node.evicting:
                return node.policy
        return next((node.policy for node in self.nodes if node.policy is not None), None)

    def to_dict(self, *, allowed: bool = False) -> dict[str, Any]:
        """JSON-ready form for ``livesync status``; ``allowed``: the operator accepts eviction."""
        return {
            "maxmemory_policy": self.policy,
            "evicting": self.evicting,
            "eviction_allowed": allowed,
            "nodes": [{"node": n.node, "maxmemory_policy": n.policy, "maxmemory": n.maxmemory} for n in self.nodes],
        }

    def message(self, where: str, hint: str = SETTING_HINT) -> str:
        """The one-line refusal naming the setting, or ``""`` when nothing evicts."""
        bad = [node for node in self.nodes if node.evicting]
        if not bad:
            return ""
        if len(self.nodes) > 1:
            more = f" and {len(bad) - 1} more node(s)" if len(bad) > 1 else ""
            where = f"{where} (node {bad[0].node}{more})"
        return (
            f"Redis at {where} has maxmemory-policy {bad[0].policy}: it may evict livesync's keys and lose "
            f"changes silently; set maxmemory-policy {SAFE_POLICY} (or {hint} to run anyway, at your own risk)"
        )


# Verdicts per client object: a process checks each client once, however often it is asked.
_CACHE: weakref.WeakKeyDictionary[Any, tuple[RedisPolicy, bool]] = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def read_policy(redis: Any, *, refresh: bool = False) -> RedisPolicy:
    """The eviction policy of ``redis``: one ``INFO memory`` per node, cached per client.

    ``refresh`` reads it again (metrics scrapes: an operator may change the policy
    while livesync runs). Connection errors propagate.
    """
    if not refresh:
        with _CACHE_LOCK:
            cached = _CACHE.get(redis)
        if cached is not None:
            return cached[0]
    if isinstance(redis, RedisCluster):
        # every master holds some partitions; replicas follow their master's data
        primaries = redis.get_primaries()  # type: ignore[no-untyped-call]
        nodes = tuple(_node_policy(node.name, redis.info("memory", target_nodes=node)) for node in primaries)
    else:
        nodes = (_read_node(redis),)
    policy = RedisPolicy(nodes)
    with _CACHE_LOCK:
        warned = _CACHE.get(redis, (policy, False))[1]
        _CACHE[redis] = (policy, warned)
    return policy


def check_eviction(redis: Any, *, allow: bool = False, url: str | None = None, hint: str = SETTING_HINT) -> RedisPolicy:
    """Refuse a Redis that may evict livesync's keys; return its policy.

    Raises :class:`EvictingRedis` naming ``url`` (masked), the policy and the setting
    that overrides the check. With ``allow`` it logs one warning per client instead.
    The policy is read once per client (:func:`read_policy`).
    """
    policy = read_policy(redis)
    if not policy.evicting:
        return policy
    message = policy.message(mask_url(url) if url else describe_client(redis), hint)
    if not allow:
        raise EvictingRedis(message)
    with _CACHE_LOCK:
        warned = _CACHE.get(redis, (policy, False))[1]
        _CACHE[redis] = (policy, True)
    if not warned:
        log.warning("%s; running anyway because eviction is explicitly allowed", message)
    return policy


def check_settings(redis: Any, settings: Settings) -> RedisPolicy:
    """:func:`check_eviction` of the track's Redis with ``settings.allow_eviction`` and its URL."""
    return check_eviction(redis, allow=settings.allow_eviction, url=settings.redis_url)


def redis_full(redis: Any) -> bool:
    """Whether ``redis`` is at ``maxmemory``: it then refuses every plain write that needs memory.

    Computed as Redis does before such a write: ``used_memory`` without what it does not
    count (replication and AOF buffers) against ``maxmemory``. ``INFO`` works at maxmemory;
    a server without ``INFO memory`` (fakeredis) or without a limit is never full.
    """
    try:
        info = redis.info("memory")
    except ResponseError:
        return False
    maxmemory = int(info.get("maxmemory") or 0)
    if maxmemory <= 0:
        return False
    used = int(info.get("used_memory") or 0) - int(info.get("mem_not_counted_for_evict") or 0)
    return used >= maxmemory


def describe_client(redis: Any) -> str:
    """``host:port/db`` (or the socket path) of a plain client, for messages without a URL."""
    kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {}) or {}
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    if "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return "Redis"


def _read_node(redis: Any) -> NodePolicy:
    try:
        info = redis.info("memory")
    except ResponseError as exc:
        # a server without INFO memory (fakeredis, the embedded fallback) cannot tell: unknown
        log.debug("cannot read maxmemory-policy of %s: %s", describe_client(redis), exc)
        info = {}
    return _node_policy(describe_client(redis).removeprefix("redis://"), info)


def _node_policy(node: str, info: dict[str, Any]) -> NodePolicy:
    policy = info.get("maxmemory_policy")
    maxmemory = info.get("maxmemory")
    return NodePolicy(
        node=node,
        policy=policy.decode() if isinstance(policy, bytes) else (str(policy) if policy is not None else None),
        maxmemory=int(maxmemory) if maxmemory is not None else None,
    )
