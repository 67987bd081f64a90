"""Redis connections from settings, with unreachable servers reported in one line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis as redis_lib
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from livesync.errors import ConfigurationError, RedisUnavailable
from livesync.urls import mask_url

if TYPE_CHECKING:
    from livesync.config import Settings

CONNECT_TIMEOUT = 5.0


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
            client: Any = RedisCluster.from_url(plain, socket_connect_timeout=CONNECT_TIMEOUT)
        else:
            client = redis_lib.Redis.from_url(plain, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30)
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {mask_url(url)}: {exc}") from exc
    except (redis_lib.ConnectionError, redis_lib.TimeoutError, RedisClusterException) as exc:
        raise RedisUnavailable(f"cannot reach the Redis Cluster at {mask_url(url)}: {_reason(exc)}") from exc
    if check:
        ping(client, url)
    return client


def validate_url(url: str) -> None:
    """Raise :class:`ConfigurationError` naming the bad part when ``url``'s port or database is invalid.

    redis-py reports a bad port as a bare ``ValueError`` and silently connects to
    database 0 when the path is not a number (``redis://host:6379/x``), so a typo would
    write to another database. The message holds the URL with its password masked.
    """
    plain, _is_cluster = cluster_url(url)
    parts = urlsplit(plain)
    # An "@" after what the parser took for the host means a password with an unencoded
    # "/", "?" or "#": the "port" or "path" it found is part of the password, never to be echoed.
    torn = "@" not in parts.netloc and "@" in plain.partition("://")[2]
    problems: list[tuple[str, str, str]] = []  # (part, value, what is wrong)
    if parts.scheme in ("redis", "rediss"):
        # userinfo runs to the last "@" (see livesync.urls); IPv6 hosts are bracketed
        hostport = parts.netloc.rpartition("@")[2]
        port = (hostport.rpartition("]")[2] if hostport.startswith("[") else hostport).partition(":")[2]
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            problems.append(("port", port, "is not a number from 1 to 65535"))
        database = unquote(parts.path).strip("/")
        if database and not _is_database(database):
            problems.append(("database", database, "(the path) is not a number"))
    problems += [
        ("database", database, "(the db parameter) is not a number")
        for database in parse_qs(parts.query).get("db", [])
        if not _is_database(database)
    ]
    if not problems:
        return
    part, value, wrong = problems[0]
    if torn:
        raise ConfigurationError(
            f"invalid Redis URL {mask_url(url)}: the {part} {wrong}; "
            "a password holding '/', '?' or '#' must be percent-encoded"
        )
    raise ConfigurationError(f"invalid Redis URL {mask_url(url)}: {part} {value!r} {wrong}")


def _is_database(text: str) -> bool:
    return text.isascii() and text.isdigit()


def connect_track(settings: Settings, *, check: bool = False) -> Any:
    """The client of the track's Redis (a cluster client with ``LIVESYNC_REDIS_CLUSTER``)."""
    return connect(settings.redis_url, check=check, cluster=settings.cluster)


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
