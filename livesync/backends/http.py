"""What the HTTP backends (``webhook``, ``typesense``) share: checking a target URL."""

from __future__ import annotations

import httpx

__all__ = ["check_url"]


def check_url(value: str) -> httpx.URL:
    """``value`` (stripped) parsed as an http(s) URL with a host; ``ValueError`` saying what is wrong."""
    try:
        parsed = httpx.URL(value.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValueError("is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an http:// or https:// URL with a host")
    return parsed
