"""Redis URLs: masking passwords before anything is printed or logged."""

from __future__ import annotations

import re

MASK = "***"
# Userinfo runs to the last "@": generated passwords often hold "/", "?" or "#"
# unencoded, which a URL parser would take for the start of the path.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>.*)@(?P<rest>[^@]*)$", re.DOTALL)
_QUERY_SECRET = re.compile(r"([?&](?:[^=&#]*(?:passw|secret|token|key|auth)[^=&#]*)=)[^&#]*", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return ``url`` with every password in it replaced by ``***``.

    Query parameters whose name speaks of a password, secret, token, key or auth are
    masked first (their values may hold "@"), then the userinfo. A lone userinfo
    (``redis://secret@host``) is masked too: some clients read it as the password.
    When in doubt, more is masked rather than less.
    """
    url = _QUERY_SECRET.sub(rf"\g<1>{MASK}", url)
    match = _USERINFO.match(url)
    if match:
        user, has_password, _password = match["userinfo"].partition(":")
        userinfo = f"{user}:{MASK}" if has_password else MASK
        url = f"{match['scheme']}{userinfo}@{match['rest']}"
    return url


def split_password(url: str) -> tuple[str, str | None]:
    """``(url without its password, the password)``, for clients that print the URL they get.

    The password comes from the userinfo (``redis://user:pw@host``) or from a
    ``password=`` query parameter; the user name stays in the URL.
    """
    query = _QUERY_PASSWORD.search(url)
    if query is not None:
        rest = url[: query.start()] + (url[query.start()] if url[query.start()] == "?" else "") + url[query.end() :]
        return rest.replace("?&", "?").rstrip("?"), query.group(1)
    match = _USERINFO.match(url)
    if match is None:
        return url, None
    user, has_password, password = match["userinfo"].partition(":")
    if not has_password:
        return url, None
    prefix = f"{user}@" if user else ""
    return f"{match['scheme']}{prefix}{match['rest']}", password
