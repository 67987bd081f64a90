"""The ``webhook`` backend: POSTs each batch as signed JSON to an HTTP(S) endpoint.

The request format, the signature and how a receiver verifies it are described in
:mod:`livesync.webhook`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator

from livesync.backends.base import Backend
from livesync.errors import RecordRejected
from livesync.records import Record
from livesync.webhook import AGENT_HEADER, WebhookError, redact_url, sign

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
"""Longest wait between two attempts, in seconds (also caps a server's ``Retry-After``)."""

EXCERPT = 200
"""Characters of a response body kept in rejection reasons and error messages."""

USER_AGENT = "livesync-webhook"
#: Answers retried with backoff (besides 5xx): the target is busy, not the record bad.
RETRIED = frozenset({408, 425, 429})
#: Answers that refuse the target as a whole (wrong url, secret or method): fail the batch.
TARGET_REFUSED = frozenset({401, 403, 404, 405, 407, 410})


class WebhookBackend(Backend):
    """POSTs every batch as ``{"agent", "records": [...]}``, signed with HMAC-SHA256.

    - 2xx: the batch is accepted.
    - 5xx, 408, 425, 429, timeouts, connection errors: retried up to ``max_retries`` times, waiting
      ``min(backoff * 2**retry, 30)`` seconds (at least ``Retry-After`` when the server
      sends one, up to 30); then :class:`~livesync.webhook.WebhookError`: nothing of the
      batch counts, the run fails and the pointer stays.
    - 401, 403, 404, 405, 407, 410: the target as a whole refuses (wrong url or secret), not
      a record: :class:`~livesync.webhook.WebhookError` at once, nothing counts, so a
      misconfigured agent never dead-letters its whole backlog.
    - another 4xx: the records of the batch are sent one at a time (each signed the same
      way); those a single POST refuses with a 4xx are rejected with
      ``HTTP <status>: <body excerpt>`` (dead-letter list), the others were accepted.
      Retryable answers in this phase are retried as above and finally fail the batch.
    - anything else (a 3xx: redirects are not followed): ``WebhookError`` at once.
    """

    name = "webhook"

    class Options(Backend.Options):
        """Options of the ``webhook`` backend."""

        url: str = Field(description="http:// or https:// URL the batches are POSTed to")
        secret: SecretStr = Field(description="shared HMAC-SHA256 key; never printed")
        timeout: float = Field(default=10.0, gt=0, description="seconds to connect, send and wait for each answer")
        max_retries: int = Field(default=5, ge=0, description="retries after 5xx, 408, 425, 429 or a timeout")
        backoff: float = Field(default=0.5, ge=0, description="seconds before the first retry; doubles per retry")

        @field_validator("url")
        @classmethod
        def _check_url(cls, value: str) -> str:
            value = value.strip()
            try:
                parsed = httpx.URL(value)
            except (httpx.InvalidURL, TypeError, ValueError):
                raise ValueError("is not a valid URL") from None
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError("must be an http:// or https:// URL with a host")
            return value

        @field_validator("secret")
        @classmethod
        def _check_secret(cls, value: SecretStr) -> SecretStr:
            if not value.get_secret_value():
                raise ValueError("must not be empty")
            return value

        def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
            # The URL may carry credentials or a token in its query: show it redacted.
            for key, value in super().__repr_args__():
                yield key, (redact_url(value) if key == "url" and isinstance(value, str) else value)

    options: Options

    def __init__(self, agent_id: str, options: Backend.Options) -> None:
        super().__init__(agent_id, options)
        self.url = redact_url(self.options.url)
        """The target URL as shown in messages and logs (no credentials, no query)."""
        self._client: httpx.Client | None = None

    def open(self) -> None:
        """Create the HTTP client (one per backend, connections are reused between batches)."""
        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.options.timeout),
                follow_redirects=False,
                headers={"User-Agent": USER_AGENT},
            )

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def upload(self, records: Sequence[Record]) -> None:
        """POST the batch; on a 4xx find the records the target refuses by sending them one at a time."""
        if self._client is None:
            raise RuntimeError(f"{self!r} is not open; use it as a context manager or call open()")
        encoded: list[tuple[Record, bytes]] = []
        rejections: list[tuple[Record, str]] = []
        for record in records:
            try:
                encoded.append((record, _encode(record.to_dict())))
            except (TypeError, ValueError) as exc:
                rejections.append((record, f"cannot encode as JSON: {exc}"))
        if encoded:
            response = self._deliver(self._client, [data for _record, data in encoded])
            if not response.is_success:
                if len(encoded) == 1:
                    rejections.append((encoded[0][0], _reason(response)))
                else:
                    log.info(
                        "webhook %s refused a batch of %d record(s) with HTTP %d; sending them one at a time",
                        self.url,
                        len(encoded),
                        response.status_code,
                    )
                    for record, data in encoded:
                        single = self._deliver(self._client, [data])
                        if not single.is_success:
                            rejections.append((record, _reason(single)))
        if rejections:
            raise RecordRejected(rejections)

    def _deliver(self, client: httpx.Client, records: Sequence[bytes]) -> httpx.Response:
        """POST ``records`` (encoded) until the answer is 2xx or a final 4xx; raise WebhookError otherwise."""
        attempts = self.options.max_retries + 1
        secret = self.options.secret.get_secret_value()
        problem = ""
        status: int | None = None
        retry_after: float | None = None
        body = _body(self.agent_id, records)
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                delay = self._delay(attempt - 1, retry_after)
                log.warning(
                    "webhook %s: %s; retry %d of %d in %.3gs", self.url, problem, attempt - 1, attempts - 1, delay
                )
                time.sleep(delay)
            headers = {
                "Content-Type": "application/json",
                AGENT_HEADER: self.agent_id,
                **sign(body, secret, int(time.time())),
            }
            retry_after = None
            try:
                response = client.post(self.options.url, content=body, headers=headers)
            except httpx.TimeoutException as exc:
                status, problem = None, f"timed out after {self.options.timeout:g}s ({type(exc).__name__})"
                continue
            except httpx.RequestError as exc:
                status, problem = None, f"request failed ({type(exc).__name__}: {_one_line(str(exc))})"
                continue
            status = response.status_code
            if response.is_success or (400 <= status < 500 and status not in RETRIED and status not in TARGET_REFUSED):
                return response
            problem = f"HTTP {status}" + (f": {_one_line(excerpt)}" if (excerpt := _excerpt(response)) else "")
            if status in RETRIED or status >= 500:
                retry_after = _retry_after(response)
                continue
            hint = " (redirects are not followed; point the url at the final location)" if response.is_redirect else ""
            if status in TARGET_REFUSED:
                hint = " (the target refuses every request: check the agent's url and secret)"
            raise self._error(f"webhook {self.url}: {problem}{hint}", status=status, attempts=attempt)
        raise self._error(
            f"webhook {self.url}: {problem} after {attempts} attempt(s)",
            status=status,
            attempts=attempts,
        )

    def _delay(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.options.backoff * 2.0 ** (retry - 1), MAX_BACKOFF)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF))
        return delay

    def _error(self, message: str, *, status: int | None, attempts: int) -> WebhookError:
        secret = self.options.secret.get_secret_value()
        # Belt and braces: no part of the message should hold the secret or the raw URL.
        message = message.replace(secret, "***")
        if self.options.url != self.url:
            message = message.replace(self.options.url, self.url)
        return WebhookError(message, url=self.url, status=status, attempts=attempts)


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _body(agent_id: str, records: Sequence[bytes]) -> bytes:
    """``{"agent": ..., "records": [...]}`` from records already encoded one by one."""
    return b'{"agent":' + _encode_str(agent_id) + b',"records":[' + b",".join(records) + b"]}"


def _encode_str(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


def _excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = response.content.decode("utf-8", "replace")
    return text[:EXCERPT].strip()


def _reason(response: httpx.Response) -> str:
    """Why a record was refused: ``HTTP <status>: <first 200 characters of the body>``."""
    return f"HTTP {response.status_code}: {_excerpt(response) or response.reason_phrase}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked to wait (``Retry-After``: seconds or an HTTP date), if any."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())
