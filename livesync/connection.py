"""Redis connections from settings, with unreachable servers reported in one line."""

from __future__ import annotations

from typing import Any

import redis as redis_lib

from livesync.errors import RedisUnavailable
from livesync.urls import mask_url

CONNECT_TIMEOUT = 5.0


def connect(url: str, *, check: bool = False) -> Any:
    """A client for ``url`` (bytes responses, as RQ and the track need).

    With ``check``, ping it first and raise :class:`RedisUnavailable` naming the
    masked URL when it does not answer.
    """
    try:
        client = redis_lib.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, health_check_interval=30)
    except ValueError as exc:
        raise RedisUnavailable(f"invalid Redis URL {mask_url(url)}: {exc}") from exc
    if check:
        ping(client, url)
    return client


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
