"""Webhook signing: what the ``webhook`` backend sends and how a receiver checks it.

The ``webhook`` backend (:mod:`livesync.backends.webhook`) POSTs each batch of records
as one JSON object::

    POST <url>
    Content-Type: application/json
    X-Livesync-Agent: <agent id>
    X-Livesync-Timestamp: <unix seconds, an integer>
    X-Livesync-Signature: sha256=<hex>

    {"agent": "<agent id>",
     "records": [{"type": ..., "id": ..., "action": ..., "changes": [...], "seq": ..., "version": ...}, ...]}

The signature is an HMAC-SHA256, keyed with the shared secret (UTF-8), over the
timestamp, a dot and the raw request body, exactly as received::

    signed = f"{timestamp}.".encode() + body
    signature = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()

A receiver must compute the HMAC over the raw body bytes (not a re-serialised JSON
document), compare it in constant time, and refuse timestamps too far from its own
clock, which bounds how long a captured request can be replayed. :func:`verify` does
all of that::

    from livesync.signing import SignatureError, verify

    try:
        verify(request.get_data(), request.headers, secret="s3cret")
    except SignatureError as exc:
        abort(401, str(exc))

Every attempt is signed afresh, so a retried request carries a new timestamp. Delivery
is at-least-once: the same record may arrive again (in a retried batch or a later run);
keep, per object (``type``, ``id``), the record with the highest ``version`` (never compare
``seq``: seqs repeat after Redis loses data, versions only grow).

Answers the backend understands: any 2xx accepts the batch; 5xx, 429, timeouts and
connection errors are retried with exponential backoff; any other 4xx makes the backend
resend the batch's records one at a time, and the records a single POST still refuses
with a 4xx go to the agent's dead-letter list with ``HTTP <status>: <body excerpt>`` —
unless the target refuses every one of them: then the target is broken, not the
records, and the batch fails (nothing is dead-lettered, the run fails and is retried).
Redirects are not followed. A request that takes longer than the agent's ``deadline``
in all (default three times ``timeout``) counts as timed out, however steadily the
target trickles its answer; of an answer's body at most 64 KiB are read.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping

from livesync.errors import SignatureError, WebhookError
from livesync.urls import redact_url  # the one redactor of target URLs; re-exported here

__all__ = [
    "AGENT_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_PREFIX",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "WebhookError",
    "redact_url",
    "sign",
    "verify",
]

SIGNATURE_HEADER = "X-Livesync-Signature"
TIMESTAMP_HEADER = "X-Livesync-Timestamp"
AGENT_HEADER = "X-Livesync-Agent"
SIGNATURE_PREFIX = "sha256="
DEFAULT_MAX_AGE = 300.0

_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def signature(body: bytes, secret: str, timestamp: int) -> str:
    """The ``sha256=<hex>`` value of the signature header for ``body`` sent at ``timestamp``."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def sign(body: bytes, secret: str, timestamp: int) -> dict[str, str]:
    """Return the signature and timestamp headers for ``body`` sent at ``timestamp`` (unix seconds)."""
    return {
        TIMESTAMP_HEADER: str(int(timestamp)),
        SIGNATURE_HEADER: signature(body, secret, int(timestamp)),
    }


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secret: str,
    max_age: float = DEFAULT_MAX_AGE,
    now: float | None = None,
) -> None:
    """Check that ``body`` with ``headers`` was signed with ``secret`` less than ``max_age`` seconds ago.

    ``body`` is the raw request body; ``headers`` any mapping of the request headers
    (looked up case-insensitively). Raises :class:`SignatureError` when a header is
    missing or malformed, the HMAC does not match (compared in constant time), or the
    timestamp is more than ``max_age`` seconds away from ``now`` (default: the current
    time), in the past (a stale or replayed request) or in the future.
    """
    lowered = {str(key).lower(): value for key, value in headers.items()}
    raw_signature = lowered.get(SIGNATURE_HEADER.lower())
    raw_timestamp = lowered.get(TIMESTAMP_HEADER.lower())
    if raw_signature is None:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if raw_timestamp is None:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    raw_signature, raw_timestamp = str(raw_signature).strip(), str(raw_timestamp).strip()
    given = raw_signature.removeprefix(SIGNATURE_PREFIX)
    if not raw_signature.startswith(SIGNATURE_PREFIX) or not _HEX_DIGEST.fullmatch(given):
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header (expected {SIGNATURE_PREFIX}<64 hex digits>)")
    if not _TIMESTAMP.fullmatch(raw_timestamp):
        raise SignatureError(f"malformed {TIMESTAMP_HEADER} header (expected unix seconds)")
    timestamp = int(raw_timestamp)
    expected = signature(body, secret, timestamp).removeprefix(SIGNATURE_PREFIX)
    if not hmac.compare_digest(expected, given.lower()):
        raise SignatureError("signature does not match the body and timestamp")
    current = time.time() if now is None else now
    if current - timestamp > max_age:
        raise SignatureError(f"timestamp is {current - timestamp:.0f}s old (more than {max_age:g}s): stale or replayed")
    if timestamp - current > max_age:
        raise SignatureError(f"timestamp is {timestamp - current:.0f}s in the future (more than {max_age:g}s)")
