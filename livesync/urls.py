"""URLs: masking passwords and tokens before anything is printed or logged.

Two redactors for two kinds of URL: :func:`mask_url` for Redis URLs (the password goes,
the rest stays readable), :func:`redact_url` for target URLs in backend options
(webhooks), where the query and long path segments are credentials as often as not.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

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


# A path segment this long holding a digit is taken for a token (Slack's
# /services/T0/B0/<token>, Discord's /webhooks/<id>/<token>, a UUID): hidden.
_PATH_TOKEN = re.compile(r"(?=[^/]*[0-9])[A-Za-z0-9_\-.~%+=]{16,}")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>.*)$", re.DOTALL)


def redact_url(url: str) -> str:
    """``url`` fit for messages, logs and ``agent show``: no credentials, no query values, no path tokens.

    The userinfo becomes ``***@``, the query ``?***`` (``?code=``, ``?sig=``,
    ``?token=`` and their kin carry the credential of many webhook targets), the
    fragment is dropped, and every path segment that looks like a token (16 or more
    URL characters with a digit) becomes ``***``. Userinfo runs to the last ``@``
    (passwords often hold unencoded ``/`` or ``?``), so when in doubt more is hidden.
    """
    match = _SCHEME.match(url)
    scheme, rest = (match["scheme"], match["rest"]) if match else ("", url)
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    rest, _, _fragment = rest.partition("#")
    rest, has_query, _query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if slash:
        path = "/".join(MASK if _PATH_TOKEN.fullmatch(segment) else segment for segment in path.split("/"))
    return f"{scheme}{authority}{slash}{path}{'?***' if has_query else ''}"


#: Pieces of a URL shorter than this are not scrubbed from messages: they would match anywhere.
MIN_PIECE = 4


def url_credentials(url: str) -> list[str]:
    """The pieces of ``url`` that :func:`redact_url` hides, longest first, to scrub from other text.

    A target's error page often quotes the request (``Cannot POST /services/<token>?code=...``):
    messages built from it must lose the user info, the query (whole, and each value), the
    fragment and every path token, as written and percent-decoded. Pieces shorter than
    :data:`MIN_PIECE` characters are left: hiding them would garble every message.
    """
    match = _SCHEME.match(url)
    rest = match["rest"] if match else url
    pieces: set[str] = set()
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        pieces.update([userinfo, *re.split(r"[:/?#]", userinfo)])
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    pieces.update([fragment, query])
    for pair in query.split("&"):
        pieces.add(pair.partition("=")[2])
    pieces.update(segment for segment in rest.partition("/")[2].split("/") if _PATH_TOKEN.fullmatch(segment))
    pieces.update([unquote(piece) for piece in pieces])
    return sorted((piece for piece in pieces if len(piece) >= MIN_PIECE), key=len, reverse=True)


def url_problem(url: str) -> str | None:
    """What is wrong with the port or database number of a Redis URL, or ``None``.

    redis-py reports a bad port as a bare ``ValueError`` and silently connects to
    database 0 when the path is not a number (``redis://host:6379/x``), so a typo would
    write to another database. The answer never holds a piece of the password.

    A URL with an "@" after what a URL parser takes for the host is always a problem:
    its password holds an unencoded "/", "?" or "#", so redis-py would take a piece of
    the password for the host, port or database (and connect there). The answer then
    says so and echoes nothing of the URL: where the password ends is not knowable.
    """
    scheme, sep, rest = url.partition("://")
    plain = f"{scheme.replace('+cluster', '')}{sep}{rest}"
    parts = urlsplit(plain)
    # userinfo ends at the first "/", "?" or "#" for the parser; an "@" past it (outside
    # the value of a password-like query parameter) means the password was torn there
    after_host = _QUERY_SECRET.sub(rf"\g<1>{MASK}", rest[len(parts.netloc) :])
    if "@" in after_host and (parts.netloc or parts.scheme in ("redis", "rediss")):
        return "the password holds '/', '?' or '#' unencoded (an '@' follows them); it must be percent-encoded"
    problems: list[tuple[str, str, str]] = []  # (part, value, what is wrong)
    if parts.scheme in ("redis", "rediss"):
        # IPv6 hosts are bracketed
        hostport = parts.netloc.rpartition("@")[2]
        port = (hostport.rpartition("]")[2] if hostport.startswith("[") else hostport).partition(":")[2]
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            problems.append(("port", port, "is not a number from 1 to 65535"))
        database = unquote(parts.path).strip("/")
        if database and not _is_database(database):
            problems.append(("database", database, "(the path) is not a number"))
    problems += [
        ("database", database, "(the db parameter) is not a number")
        for database in parse_qs(parts.query).get("db", [])
        if not _is_database(database)
    ]
    if not problems:
        return None
    part, value, wrong = problems[0]
    return f"{part} {value!r} {wrong}"


def _is_database(text: str) -> bool:
    return text.isascii() and text.isdigit()


class Scrubber:
    """Hides secrets in text: each of ``secrets`` and every credential piece of ``url`` becomes ``***``.

    For messages built from a target's answers (which may quote the request): longest
    pieces first, so a secret containing another is hidden whole.
    """

    def __init__(self, *secrets: str | None, url: str | None = None) -> None:
        pieces = {secret for secret in secrets if secret}
        if url:
            pieces.update(url_credentials(url))
        self.pieces = sorted(pieces, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for piece in self.pieces:
            text = text.replace(piece, MASK)
        return text
