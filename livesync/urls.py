"""Redis URLs: masking passwords before anything is printed or logged."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str) -> str:
    """Return ``url`` with every password in it replaced by ``***``.

    A lone userinfo (``redis://secret@host``) is masked too: some clients read it as
    the password.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user, has_password, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostinfo}" if has_password else f"{MASK}@{hostinfo}"
    query = "&".join(
        f"password={MASK}" if item.startswith("password=") else item for item in parts.query.split("&")
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    rebuilt = urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if not netloc and url.startswith(f"{parts.scheme}:///"):
        rebuilt = rebuilt.replace(f"{parts.scheme}:", f"{parts.scheme}://", 1)
    return rebuilt
