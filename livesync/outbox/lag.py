"""The outbox's lag as the relays report it: rows waiting, age of the oldest, when reported.

A relay counts its namespace's rows (``count(*)``, ``min(created_us)``) every few seconds
and writes them to ``livesync:{ns}:outbox`` (:attr:`~livesync.keys.NamespaceKeys.outbox`);
``livesync status`` and ``livesync metrics`` read that hash, so neither needs the
application's database (nor SQLAlchemy). The oldest row's age is computed at reading
time from its creation time, so it keeps growing while no relay runs; the report's own
age says how long ago a relay last looked. Ages compare the writer's clock (``created_us``)
with the reader's: they are off by the clock skew between those hosts.

Standard library and redis only (status and metrics import it).
"""

from __future__ import annotations

import time
from typing import Any

from livesync.codec import text
from livesync.keys import NamespaceKeys

#: seconds a report outlives the last relay that wrote it (then status shows no outbox)
REPORT_TTL = 7 * 86400


def write_report(redis: Any, keys: NamespaceKeys, rows: int, oldest_us: int | None, *, relay: str) -> None:
    """Store a relay's count of the outbox: ``rows`` waiting, the oldest created at ``oldest_us``."""
    pipe = redis.pipeline(transaction=True)
    pipe.hset(
        keys.outbox,
        mapping={
            "rows": rows,
            "oldest_us": oldest_us if rows and oldest_us is not None else 0,
            "at_us": time.time_ns() // 1000,
            "relay": relay,
        },
    )
    pipe.expire(keys.outbox, REPORT_TTL)
    pipe.execute()


def outbox_status(redis: Any, keys: NamespaceKeys, now: float | None = None) -> dict[str, Any] | None:
    """The last report as JSON-ready data, or ``None`` when no relay reported (or it is unreadable).

    ``rows``; ``oldest_age_seconds`` (0 with no rows); ``reported_at`` (Unix time);
    ``report_age_seconds``; ``relay`` (``host:pid`` of the reporting relay).
    """
    now = time.time() if now is None else now
    raw = redis.hgetall(keys.outbox)
    try:
        fields = {text(key): text(value) for key, value in raw.items()}
        rows, oldest_us, at_us = int(fields["rows"]), int(fields["oldest_us"]), int(fields["at_us"])
    except (KeyError, ValueError):
        return None
    return {
        "rows": rows,
        "oldest_age_seconds": round(max(0.0, now - oldest_us / 1e6), 3) if rows and oldest_us else 0.0,
        "reported_at": at_us / 1e6,
        "report_age_seconds": round(max(0.0, now - at_us / 1e6), 3),
        "relay": fields.get("relay"),
    }
