"""Redis URLs: masking passwords before anything is printed or logged."""

from __future__ import annotations

import re

MASK = "***"
# Userinfo runs to the last "@": generated passwords often hold "/", "?" or "#"
# unencoded, which a URL parser would take for the start of the path.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>.*)@(?P<rest>[^@]*)$", re.DOTALL)
_QUERY_SECRET = re.compile(r"([?&](?:[^=&#]*(?:passw|secret|token|key|auth)[^=&#]*)=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return ``url`` with every password in it replaced by ``***``.

    Query parameters whose name speaks of a password, secret, token, key or auth are
    masked too.

    A lone userinfo (``redis://secret@host``) is masked too: some clients read it as
    the password. When in doubt, more is masked rather than less.
    """
    match = _USERINFO.match(url)
    if match:
        user, has_password, _password = match["userinfo"].partition(":")
        userinfo = f"{user}:{MASK}" if has_password else MASK
        url = f"{match['scheme']}{userinfo}@{match['rest']}"
    return _QUERY_SECRET.sub(rf"\g<1>{MASK}", url)
