"""A wall-clock deadline for whole HTTP requests, enforced in httpx's network layer.

httpx's timeouts bound each read and write, not a request: a target sending one byte
per ``timeout`` would hold a request for ever, and httpx has no total timeout. This
module wraps httpcore's network backend so that every socket operation ends by the
deadline of the request in flight (used by the ``webhook`` backend).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

WRITE_CHUNK = 64 * 1024
"""Bytes sent per socket write, so a target reading slowly meets the deadline too."""


class Deadline:
    """The wall-clock end of the request in flight, checked before every network operation.

    httpx's timeouts bound each read and write, not a request: a target sending one
    byte per ``timeout`` would hold a request for ever. httpx has no total timeout, so
    the client's network layer (:class:`DeadlineBackend`) asks this object for the time
    left before each socket operation.
    """

    def __init__(self) -> None:
        self.until: float | None = None

    def start(self, seconds: float) -> None:
        """Begin a request that may take ``seconds`` in all."""
        self.until = time.monotonic() + seconds

    def clear(self) -> None:
        """No request in flight: no limit."""
        self.until = None

    @property
    def passed(self) -> bool:
        """Whether the request in flight is past its deadline."""
        return self.until is not None and time.monotonic() >= self.until

    def check(self, error: type[Exception]) -> None:
        """Raise ``error`` when the deadline has passed."""
        if self.passed:
            raise error("the request's deadline passed")

    def limit(self, timeout: float | None, error: type[Exception]) -> float | None:
        """The timeout for the next operation: ``timeout``, or less when the deadline is nearer."""
        if self.until is None:
            return timeout
        remaining = self.until - time.monotonic()
        if remaining <= 0:
            raise error("the request's deadline passed")
        return remaining if timeout is None else min(timeout, remaining)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.limit(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # in chunks: one write of a large body to a slow reader could outlast the deadline
        view = memoryview(buffer)
        while view:
            self._stream.write(bytes(view[:WRITE_CHUNK]), self._deadline.limit(timeout, httpcore.WriteTimeout))
            view = view[WRITE_CHUNK:]

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        limit = self._deadline.limit(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, limit), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, with connections that end by the deadline."""

    def __init__(self, backend: httpcore.NetworkBackend, deadline: Deadline) -> None:
        self._backend = backend
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        limit = self._deadline.limit(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, limit, local_address, socket_options)
        return DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        limit = self._deadline.limit(timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._backend.connect_unix_socket(path, limit, socket_options), self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def enforce_deadline(client: httpx.Client, deadline: Deadline) -> bool:
    """Put :class:`DeadlineBackend` under every connection pool of ``client``.

    httpx does not expose its transports' httpcore pools; they keep their network
    backend in ``_network_backend`` (httpx 0.23 to 0.28, httpcore 1.x). Returns whether
    every pool (the direct one and those for proxies) could be wrapped.
    """
    transports = [client._transport, *client._mounts.values()]
    complete = True
    for transport in transports:
        if transport is None:
            continue
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if not isinstance(backend, httpcore.NetworkBackend):
            complete = False
            continue
        if not isinstance(backend, DeadlineBackend):
            pool._network_backend = DeadlineBackend(backend, deadline)  # type: ignore[union-attr]
    return complete
