"""Redis connections from settings, with unreachable servers reported in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis as redis_lib
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from livesync import defaults
from livesync.errors import ConfigurationError, RedisUnavailable
from livesync.urls import mask_url, url_problem

if TYPE_CHECKING:
    from livesync.config import Settings


#: URL schemes that ask for the Redis Cluster client, and the scheme they stand for.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> tuple[str, bool]:
    """``(url for redis-py, whether it names a cluster)``: ``redis+cluster://`` means a cluster."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in CLUSTER_SCHEMES:
        return f"{CLUSTER_SCHEMES[scheme]}://{rest}", True
    return url, False


def connect(url: str, *, check: bool = False, cluster: bool = False) -> Any:
    """A client for ``url`` (bytes responses, as RQ and the track need).

    ``redis+cluster://`` / ``rediss+cluster://`` URLs, or ``cluster=True``, give redis-py's
    cluster client (the track's keys carry hash tags, so every Lua script touches one
    slot). A bad port or database number raises :class:`ConfigurationError` (see
    :func:`validate_url`) before any connection is tried. With ``check``, ping it first
    and raise :class:`RedisUnavailable` naming the masked URL when it does not answer.
    """
    validate_url(url)
    plain, is_cluster = cluster_url(url)
    try:
        if cluster or is_cluster:
            client: Any = RedisCluster.from_url(plain, socket_connect_timeout=defaults.CONNECT_TIMEOUT)
        else:
            client = redis_lib.Redis.from_url(
                plain, socket_connect_timeout=defaults.CONNECT_TIMEOUT, health_check_interval=30
            )
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {mask_url(url)}: {exc}") from exc
    except (redis_lib.ConnectionError, redis_lib.TimeoutError, RedisClusterException) as exc:
        raise RedisUnavailable(f"cannot reach the Redis Cluster at {mask_url(url)}: {_reason(exc)}") from exc
    if check:
        ping(client, url)
    return client


def validate_url(url: str) -> None:
    """Raise :class:`ConfigurationError` naming the bad part when ``url``'s port or database is invalid.

    See :func:`livesync.urls.url_problem`; the message holds the URL with its password masked.
    """
    problem = url_problem(url)
    if problem is not None:
        raise ConfigurationError(f"invalid Redis URL {mask_url(url)}: {problem}")


def connect_track(settings: Settings, *, check: bool = False) -> Any:
    """The client of the track's Redis (a cluster client with ``LIVESYNC_REDIS_CLUSTER``)."""
    return connect(settings.redis_url, check=check, cluster=settings.cluster)


def connect_queue(settings: Settings, *, check: bool = False) -> Any:
    """The client of the RQ queue's Redis: ``LIVESYNC_RQ_URL``, else the track's URL.

    ``LIVESYNC_REDIS_CLUSTER`` does not apply: it names the track's client. With
    ``check``, ping it first (see :func:`connect`).
    """
    return connect(settings.queue_url, check=check)


def ping(client: Any, url: str) -> None:
    """Raise :class:`RedisUnavailable` when ``client`` does not answer."""
    try:
        client.ping()
    except redis_lib.AuthenticationError as exc:
        raise RedisUnavailable(f"Redis at {mask_url(url)} refused the credentials: {_reason(exc)}") from exc
    except (redis_lib.ConnectionError, redis_lib.TimeoutError, OSError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {mask_url(url)}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
