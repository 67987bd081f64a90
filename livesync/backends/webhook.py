"""The ``webhook`` backend: POSTs each batch as signed JSON to an HTTP(S) endpoint.

The request format, the signature and how a receiver verifies it are described in
:mod:`livesync.signing`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator

from livesync.backends.base import Backend
from livesync.backends.deadline import Deadline, enforce_deadline
from livesync.backends.http import check_url
from livesync.errors import RecordRejected
from livesync.records import Record
from livesync.signing import AGENT_HEADER, WebhookError, redact_url, sign
from livesync.urls import Scrubber

log = logging.getLogger(__name__)

MAX_BACKOFF = 30.0
"""Longest wait between two attempts, in seconds (also caps a server's ``Retry-After``)."""

EXCERPT = 200
"""Characters of a response body kept in rejection reasons and error messages."""

BODY_CAP = 64 * 1024
"""Bytes of a response body read at most; the rest is never read (the connection is closed)."""

DEADLINE_FACTOR = 3
"""The default ``deadline`` of one request, in multiples of ``timeout``."""

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
      When the target refuses every record on its own as well, the target is broken,
      not the records: ``WebhookError`` (nothing counts, nothing is dead-lettered).
    - anything else (a 3xx: redirects are not followed): ``WebhookError`` at once.

    ``timeout`` bounds each network operation (connect, one read, one write);
    ``deadline`` (default 3 x ``timeout``) bounds one request as a whole, so a target
    dripping its answer a byte at a time cannot hold the agent: an attempt past its
    deadline fails like a timeout (and is retried). Of a response body at most 64 KiB are
    read (for the excerpt in messages); the rest is never read.
    """

    name = "webhook"

    class Options(Backend.Options):
        """Options of the ``webhook`` backend."""

        url: str = Field(description="http:// or https:// URL the batches are POSTed to")
        secret: SecretStr = Field(description="shared HMAC-SHA256 key; never printed")
        timeout: float = Field(default=10.0, gt=0, description="seconds to connect, send and wait for each answer")
        max_retries: int = Field(default=5, ge=0, description="retries after 5xx, 408, 425, 429 or a timeout")
        backoff: float = Field(default=0.5, ge=0, description="seconds before the first retry; doubles per retry")
        deadline: float | None = Field(
            default=None, gt=0, description="seconds one request may take in all (default: 3 x timeout)"
        )

        @property
        def request_deadline(self) -> float:
            """Seconds one request (connect, send, answer) may take in all."""
            return self.deadline if self.deadline is not None else DEADLINE_FACTOR * self.timeout

        @field_validator("url")
        @classmethod
        def _check_url(cls, value: str) -> str:
            check_url(value)
            return value.strip()

        @field_validator("secret")
        @classmethod
        def _check_secret(cls, value: SecretStr) -> SecretStr:
            if not value.get_secret_value():
                raise ValueError("must not be empty")
            return value

    options: Options

    def __init__(self, agent_id: str, options: Backend.Options) -> None:
        super().__init__(agent_id, options)
        self.url = redact_url(self.options.url)
        """The target URL as shown in messages and logs (no credentials, no query)."""
        # what no message, log line or rejection reason may hold: the secret, and the URL's
        # credentials, which an error page quoting the request would echo (longest first)
        self._hide = Scrubber(self.options.secret.get_secret_value(), url=self.options.url)
        self._client: httpx.Client | None = None
        self._deadline = Deadline()

    def open(self) -> None:
        """Create the HTTP client (one per backend, connections are reused between batches)."""
        if self._client is None:
            _install_request_log_filter()
            client = httpx.Client(
                timeout=httpx.Timeout(self.options.timeout),
                follow_redirects=False,
                # identity: a compressed body could not be read only in part
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            )
            if not enforce_deadline(client, self._deadline):
                log.warning(
                    "webhook %s: this httpx version hides its network layer; the deadline only bounds response bodies",
                    self.url,
                )
            self._client = client

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
            answer = self._deliver(self._client, [data for _record, data in encoded])
            if not answer.is_success:
                if len(encoded) == 1:
                    rejections.append((encoded[0][0], answer.reason))
                else:
                    rejections += self._isolate(self._client, encoded, answer)
        if rejections:
            raise RecordRejected(rejections)

    def _isolate(
        self, client: httpx.Client, encoded: Sequence[tuple[Record, bytes]], answer: _Answer
    ) -> list[tuple[Record, str]]:
        """Send the records of a refused batch one at a time; return those refused alone too."""
        log.info(
            "webhook %s refused a batch of %d record(s) with HTTP %d; sending them one at a time",
            self.url,
            len(encoded),
            answer.status,
        )
        refused: list[tuple[Record, _Answer]] = []
        for record, data in encoded:
            single = self._deliver(client, [data])
            if not single.is_success:
                refused.append((record, single))
        if len(refused) == len(encoded):
            # A target that refuses every record is broken (wrong schema, version, route):
            # dead-lettering the whole backlog would look like a successful run.
            first = refused[0][1]
            raise self._error(
                f"webhook {self.url}: refused every record of a batch of {len(encoded)}, also one at a time "
                f"({_one_line(first.reason)}); the target refuses everything, so nothing was dead-lettered",
                status=first.status,
                attempts=len(encoded) + 1,
            )
        return [(record, single.reason) for record, single in refused]

    def _deliver(self, client: httpx.Client, records: Sequence[bytes]) -> _Answer:
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
                    "webhook %s: %s; retry %d of %d in %.3gs",
                    self.url,
                    self._scrub(problem),
                    attempt - 1,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)
            headers = {
                "Content-Type": "application/json",
                AGENT_HEADER: self.agent_id,
                **sign(body, secret, int(time.time())),
            }
            retry_after = None
            try:
                answer = self._post(client, body, headers)
            except httpx.TimeoutException as exc:
                status = None
                if self._deadline.passed:
                    problem = f"took longer than its {self.options.request_deadline:g}s deadline ({type(exc).__name__})"
                else:
                    problem = f"timed out after {self.options.timeout:g}s ({type(exc).__name__})"
                continue
            except httpx.RequestError as exc:
                status, problem = None, f"request failed ({type(exc).__name__}: {_one_line(str(exc))})"
                continue
            finally:
                self._deadline.clear()
            status = answer.status
            if answer.is_success or (400 <= status < 500 and status not in RETRIED and status not in TARGET_REFUSED):
                return answer
            problem = f"HTTP {status}" + (f": {_one_line(answer.excerpt)}" if answer.excerpt else "")
            if status in RETRIED or status >= 500:
                retry_after = answer.retry_after
                continue
            hint = " (redirects are not followed; point the url at the final location)" if answer.is_redirect else ""
            if status in TARGET_REFUSED:
                hint = " (the target refuses every request: check the agent's url and secret)"
            raise self._error(f"webhook {self.url}: {problem}{hint}", status=status, attempts=attempt)
        raise self._error(
            f"webhook {self.url}: {problem} after {attempts} attempt(s)",
            status=status,
            attempts=attempts,
        )

    def _post(self, client: httpx.Client, body: bytes, headers: dict[str, str]) -> _Answer:
        """One POST under the deadline, reading at most :data:`BODY_CAP` bytes of the answer."""
        request = client.build_request("POST", self.options.url, content=body, headers=headers)
        self._deadline.start(self.options.request_deadline)
        response = client.send(request, stream=True)
        try:
            answer = _Answer.of(response, _read_capped(response, self._deadline))
            # the excerpt ends up in errors, logs and dead letters (Redis)
            return dataclasses.replace(
                answer, excerpt=self._scrub(answer.excerpt), reason_phrase=self._scrub(answer.reason_phrase)
            )
        finally:
            # An unread rest is not drained: closing the response closes its connection.
            response.close()

    def _delay(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.options.backoff * 2.0 ** (retry - 1), MAX_BACKOFF)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_BACKOFF))
        return delay

    def _error(self, message: str, *, status: int | None, attempts: int) -> WebhookError:
        # Belt and braces: the excerpt is scrubbed already, an httpx message is not.
        return WebhookError(self._scrub(message), url=self.url, status=status, attempts=attempts)

    def _scrub(self, text: str) -> str:
        """``text`` without the raw URL, its credentials or the secret (see :func:`~livesync.urls.url_credentials`)."""
        if self.options.url != self.url:
            text = text.replace(self.options.url, self.url)
        return self._hide(text)


class _RedactRequestLog(logging.Filter):
    """Shows the URL of httpx's ``HTTP Request: POST <url> ...`` log line redacted (it logs it whole at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) > 1 and str(record.msg).startswith("HTTP Request:"):
            record.args = (record.args[0], redact_url(str(record.args[1])), *record.args[2:])
        return True


def _install_request_log_filter() -> None:
    """Put :class:`_RedactRequestLog` on httpx's logger once (``-v`` would log every target URL in clear)."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(existing, _RedactRequestLog) for existing in logger.filters):
        logger.addFilter(_RedactRequestLog())


def _encode(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _body(agent_id: str, records: Sequence[bytes]) -> bytes:
    """``{"agent": ..., "records": [...]}`` from records already encoded one by one."""
    return b'{"agent":' + _encode_str(agent_id) + b',"records":[' + b",".join(records) + b"]}"


def _encode_str(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class _Answer:
    """What the backend keeps of a response: status, an excerpt of the body, Retry-After."""

    status: int
    reason_phrase: str
    excerpt: str
    retry_after: float | None
    is_redirect: bool

    @classmethod
    def of(cls, response: httpx.Response, body: bytes) -> _Answer:
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            excerpt = f"<{encoding}-encoded body>"
        else:
            try:
                text = body.decode(response.charset_encoding or "utf-8", "replace")
            except LookupError:
                text = body.decode("utf-8", "replace")
            excerpt = text[:EXCERPT].strip()
        return cls(
            status=response.status_code,
            reason_phrase=response.reason_phrase,
            excerpt=excerpt,
            retry_after=_retry_after(response),
            is_redirect=response.is_redirect,
        )

    @property
    def is_success(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300

    @property
    def reason(self) -> str:
        """Why a record was refused: ``HTTP <status>: <first 200 characters of the body>``."""
        return f"HTTP {self.status}: {self.excerpt or self.reason_phrase}"


def _read_capped(response: httpx.Response, deadline: Deadline) -> bytes:
    """At most :data:`BODY_CAP` bytes of the (undecoded) body, read before the deadline."""
    if response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        return b""
    kept: list[bytes] = []
    size = 0
    for chunk in response.iter_raw():
        kept.append(chunk[: BODY_CAP - size])
        size += len(chunk)
        if size >= BODY_CAP:
            break
        deadline.check(httpx.ReadTimeout)
    return b"".join(kept)


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
