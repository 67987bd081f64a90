"""The few calls of Typesense's HTTP API the ``typesense`` backend makes, over httpx.

Not the ``typesense`` client library: its 2.x builds deprecated members (and warns) on
every collection it is handed, puts document ids into URL paths unquoted, and its 1.x
raises ``requests`` errors instead; httpx is a dependency already, and it lets the
backend bound every request with a wall-clock deadline (:mod:`livesync.backends.deadline`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from livesync.backends.deadline import Deadline, enforce_deadline
from livesync.errors import BackendError

log = logging.getLogger(__name__)

KEY_HEADER = "X-TYPESENSE-API-KEY"
USER_AGENT = "livesync-typesense"
DEADLINE_FACTOR = 3
"""One request (connect, send, answer) may take this many ``timeout``\\ s in all."""
MAX_BACKOFF = 5.0
"""Longest wait between two attempts, in seconds."""
EXCERPT = 200
"""Characters of an answer kept in messages."""
#: Answers retried (besides 5xx): the server is busy, not the request wrong.
RETRIED = frozenset({408, 429})


class TypesenseApi:
    """One server's HTTP API: each call returns the decoded answer, ``None`` for a 404 where asked.

    Every request carries the key in its header and is retried ``max_retries`` times after
    a timeout, a connection error, a 5xx, 408 or 429 (every call the backend makes is
    idempotent: upserts, reads and guarded deletes), waiting ``backoff * 2**retry`` seconds
    (at most 5). Any other failure, and the last retry's, raise
    :class:`~livesync.errors.BackendError` naming ``shown`` (the masked URL) and what was
    being done; the key never appears in a message.
    """

    def __init__(self, url: str, api_key: str, *, shown: str, timeout: float, max_retries: int, backoff: float = 0.5):
        self.shown = shown
        self._key = api_key
        self._timeout = timeout
        self._attempts = max_retries + 1
        self._backoff = backoff
        self._deadline = Deadline()
        self._client = httpx.Client(
            base_url=url.rstrip("/"),
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={KEY_HEADER: api_key, "User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )
        if not enforce_deadline(self._client, self._deadline):
            log.warning("typesense %s: this httpx version hides its network layer; requests have no deadline", shown)

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def error(self, message: str) -> BackendError:
        """A :class:`BackendError` about this server, the key scrubbed from ``message``."""
        return BackendError(f"typesense {self.shown}: {message}".replace(self._key, "***"))

    # -- the calls ---------------------------------------------------------------------------------

    def collection(self, name: str) -> dict[str, Any] | None:
        """The collection's schema, ``None`` when it does not exist."""
        found = self._json(
            "GET", f"/collections/{quote(name, safe='')}", what=f"read collection {name!r}", missing=True
        )
        return _object(found, self.error, f"read collection {name!r}")

    def create_collection(self, schema: Mapping[str, Any]) -> None:
        """Create a collection; one created meanwhile by another runner (409) is fine."""
        what = f"create collection {schema['name']!r}"
        self._send("POST", "/collections", what=what, content=_dumps(schema), tolerate=frozenset({409}))

    def multi_search(self, searches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The results of ``searches``, one per search, in order."""
        answer = self._json("POST", "/multi_search", what="read versions", content=_dumps({"searches": searches}))
        results = (answer or {}).get("results")
        if not isinstance(results, list) or len(results) != len(searches):
            raise self.error(f"answered a multi-search of {len(searches)} with {_excerpt(answer)}")
        return results

    def document(self, collection: str, document_id: str) -> dict[str, Any] | None:
        """One document, ``None`` when absent."""
        path = f"/collections/{quote(collection, safe='')}/documents/{quote(document_id, safe='')}"
        what = f"read {document_id!r} in {collection!r}"
        return _object(self._json("GET", path, what=what, missing=True), self.error, what)

    def import_upsert(self, collection: str, lines: list[str]) -> list[dict[str, Any]]:
        """Import JSON ``lines`` with ``action=upsert``; one result per line, in order."""
        path = f"/collections/{quote(collection, safe='')}/documents/import"
        what = f"import {len(lines)} document(s) into {collection!r}"
        response = self._send(
            "POST", path, what=what, params={"action": "upsert"}, content="\n".join(lines), content_type="text/plain"
        )
        results = []
        for line in response.text.splitlines():
            if not line.strip():
                continue
            try:
                results.append(json.loads(line))
            except json.JSONDecodeError:
                raise self.error(f"answered an import with {_excerpt(line)!r}") from None
        if len(results) != len(lines):
            raise self.error(f"answered {len(results)} result(s) for {len(lines)} document(s) imported")
        return results

    def delete_where(self, collection: str, filter_by: str) -> None:
        """Delete the documents matching ``filter_by``."""
        path = f"/collections/{quote(collection, safe='')}/documents"
        self._send("DELETE", path, what=f"delete in {collection!r}", params={"filter_by": filter_by})

    def delete(self, collection: str, document_id: str) -> None:
        """Delete one document; an absent one is fine."""
        path = f"/collections/{quote(collection, safe='')}/documents/{quote(document_id, safe='')}"
        self._send("DELETE", path, what=f"delete {document_id!r} in {collection!r}", tolerate=frozenset({404}))

    # -- the transport -----------------------------------------------------------------------------

    def _json(self, method: str, path: str, *, what: str, content: str | None = None, missing: bool = False) -> Any:
        response = self._send(method, path, what=what, content=content, tolerate=frozenset({404} if missing else ()))
        if response.status_code == 404:
            return None
        try:
            return response.json()
        except ValueError:
            raise self.error(f"could not {what}: the answer is no JSON: {_excerpt(response.text)!r}") from None

    def _send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        content: str | None = None,
        content_type: str = "application/json",
        tolerate: frozenset[int] = frozenset(),
    ) -> httpx.Response:
        """The response to one request (2xx or a ``tolerate``\\ d status), after retries; else BackendError."""
        problem = ""
        for attempt in range(1, self._attempts + 1):
            if attempt > 1:
                delay = min(self._backoff * 2 ** (attempt - 2), MAX_BACKOFF)
                retry = attempt - 1
                log.warning(
                    "typesense %s: %s; retry %d of %d in %.3gs", self.shown, problem, retry, self._attempts - 1, delay
                )
                time.sleep(delay)
            self._deadline.start(DEADLINE_FACTOR * self._timeout)
            try:
                response = self._client.request(
                    method,
                    path,
                    params=params,
                    content=content.encode("utf-8") if content is not None else None,
                    headers={"Content-Type": content_type} if content is not None else None,
                )
            except httpx.TransportError as exc:  # connect, read, write, timeouts, protocol
                problem = f"could not {what}: {type(exc).__name__}: {_excerpt(exc) or 'no answer'}"
                continue
            finally:
                self._deadline.clear()
            if response.is_success or response.status_code in tolerate:
                return response
            problem = f"could not {what}: HTTP {response.status_code}: {_message(response)}"
            if response.status_code >= 500 or response.status_code in RETRIED:
                continue
            raise self.error(problem)  # 4xx: the request is wrong (key, filter, schema); retrying changes nothing
        raise self.error(f"{problem} (after {self._attempts} attempt(s))")


def _object(answer: Any, error: Callable[[str], BackendError], what: str) -> dict[str, Any] | None:
    """``answer`` when it is a JSON object (or ``None``: absent); else an error."""
    if answer is None or isinstance(answer, dict):
        return answer
    raise error(f"could not {what}: the answer is no JSON object: {_excerpt(answer)!r}")


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _message(response: httpx.Response) -> str:
    """Typesense's ``{"message": ...}``, or the start of the body."""
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return _excerpt(message if isinstance(message, str) else response.text) or response.reason_phrase


def _excerpt(text: object) -> str:
    return " ".join(str(text).split())[:EXCERPT]
