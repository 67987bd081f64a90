"""The ``opensearch`` backend: each batch as externally versioned bulk requests to an index or alias.

Needs the ``opensearch`` extra (``pip install 'livesync[opensearch]'``, opensearch-py).
The wire format (document ids, bodies, how bulk answers are judged) is in
:mod:`livesync.backends.opensearch_bulk`.
"""

from __future__ import annotations

import logging
import ssl
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from livesync.backends.base import Backend
from livesync.backends.opensearch_bulk import (
    ACCEPTED,
    FAILED,
    FILTER_PATH,
    RESERVED,
    Operation,
    chunks,
    creation_settings,
    describe_error,
    document_id,
    encode,
    generation_index,
    judge,
    rounds,
)
from livesync.errors import BackendError, ConfigurationError, RecordRejected
from livesync.records import Record
from livesync.urls import Scrubber, mask_url

try:
    import opensearchpy
    import urllib3
except ImportError:  # pragma: no cover - the extra is missing: the backend says so when created
    opensearchpy = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

T = TypeVar("T")

BULK_BYTES = 10 * 1024 * 1024
"""Default bytes of one bulk request (OpenSearch advises 5 to 15 MB; its own limit is 100 MB)."""


class OpenSearchBackend(Backend):
    """Writes each batch to an OpenSearch index (or the alias in front of it) with the bulk API.

    A record becomes the document ``"<type>:<id>"``, whose body is the record's document
    (``{}`` without a loader) plus livesync's fields under ``_livesync`` (``type``, ``id``,
    ``action``, ``changes``, ``seq``, ``version``). Every write uses
    ``version_type=external`` with the record's ``version``, so OpenSearch itself drops a
    stale one, and:

    - ``created`` indexes the document; ``updated`` indexes it only where the target holds
      the object live at a lower version (one ``mget`` per batch finds those): an update
      never makes an object live;
    - ``deleted`` deletes the document (OpenSearch remembers the delete's version for
      ``index.gc_deletes``, 60 s by default), or, with ``tombstones=true``, replaces it by
      a tombstone ``{"_livesync": {..., "action": "deleted"}}`` that keeps the version for good;
    - a version conflict (409) is accepted: the target holds a newer state already;
    - an item refused with HTTP 400 (a document the mapping refuses, say) is rejected
      (:class:`~livesync.errors.RecordRejected`, dead-letter list); so is a document that
      cannot be encoded, holds ``_livesync`` itself, has an id over 512 bytes, or is too
      large for the target on its own (HTTP 413);
    - anything else (429, 5xx, a missing index, a read-only index, 401/403, timeouts,
      connection and TLS errors), a refusal naming ``_livesync`` or the write index, or a
      batch of several records every one of them refused: :class:`~livesync.errors.BackendError`,
      nothing counts and the batch is sent again later (safe: versions make it idempotent).

    Generations (:class:`~livesync.backends.base.Generations`, ``livesync agent reindex``):
    when ``index`` is an alias of one index, a reindex fills a new index ``<alias>-r<token>``
    (the live one's mappings and settings) and moves the alias to it in one ``_aliases`` call.
    """

    name = "opensearch"

    class Options(Backend.Options):
        """Options of the ``opensearch`` backend."""

        url: str = Field(description="http:// or https:// URL of the cluster; may hold user:password (masked)")
        index: str = Field(description="the index or alias the agent writes through (an alias allows reindexing)")
        username: str | None = Field(default=None, description="HTTP basic auth user (or in the url)")
        password: SecretStr | None = Field(default=None, description="HTTP basic auth password; never printed")
        verify_certs: bool = Field(default=True, description="verify the server's TLS certificate and host name")
        ca_certs: str | None = Field(default=None, description="PEM file of the CAs to trust (default: the system's)")
        timeout: float = Field(default=10.0, gt=0, description="seconds to connect and to wait for each answer")
        refresh: bool = Field(default=False, description="wait until searches see each batch (refresh=wait_for)")
        tombstones: bool = Field(default=False, description="keep deleted objects as tombstone documents")
        bulk_bytes: int = Field(default=BULK_BYTES, ge=1024, description="bytes of one bulk request at most")

        @field_validator("url")
        @classmethod
        def _check_url(cls, value: str) -> str:
            value = value.strip()
            try:
                parts = urlsplit(value)
                parts.port  # noqa: B018 - raises on a port that is no number
            except ValueError:
                raise ValueError("is not a valid URL (a port that is no number?)") from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL with a host")
            return value

        @field_validator("index")
        @classmethod
        def _check_index(cls, value: str) -> str:
            if not value or value != value.strip() or any(char in value for char in ' "*\\<|,>/?#'):
                raise ValueError("must be an index or alias name (no spaces, commas, wildcards or slashes)")
            return value

        @model_validator(mode="after")
        def _check_credentials(self) -> OpenSearchBackend.Options:
            in_url = "@" in urlsplit(self.url).netloc
            if in_url and (self.username is not None or self.password is not None):
                raise ValueError("give the credentials in the url or as username/password, not both")
            # (a username alone is fine: its password may be a reference this process cannot resolve)
            if self.password is not None and self.username is None:
                raise ValueError("a password needs a username")
            return self

    options: Options

    def __init__(self, agent_id: str, options: Backend.Options) -> None:
        super().__init__(agent_id, options)
        if opensearchpy is None:
            raise ConfigurationError("the opensearch backend needs opensearch-py: pip install 'livesync[opensearch]'")
        self.url = mask_url(self.options.url)
        """The cluster URL as shown in messages and logs (password masked)."""
        password = self.options.password.get_secret_value() if self.options.password is not None else ""
        self._scrub = Scrubber(password, url=self.options.url)
        """``text`` without the password or any credential piece of the URL."""
        self._client: opensearchpy.OpenSearch | None = None
        self.write_index = self.options.index
        """Where uploads go: the ``index`` option, or a new generation's index while a reindex fills it."""

    @classmethod
    def prepare_options(cls, options: Backend.Options, raw: Mapping[str, object]) -> dict[str, object]:
        """Make ``ca_certs`` absolute (workers run elsewhere) and check it is a readable file."""
        assert isinstance(options, cls.Options)
        prepared = dict(raw)
        if options.ca_certs is not None:
            path = Path(options.ca_certs).expanduser().resolve()
            if not path.is_file():
                raise ConfigurationError(f"option 'ca_certs': {path} is not a readable file")
            prepared["ca_certs"] = str(path)
        return prepared

    def open(self) -> None:
        """Create the client (its connections are reused between batches); nothing is sent yet."""
        if self._client is not None:
            return
        arguments: dict[str, Any] = {
            "timeout": self.options.timeout,
            "max_retries": 0,  # the runner retries the batch, with backoff
            "retry_on_timeout": False,
        }
        if self.options.username is not None:
            password = self.options.password.get_secret_value() if self.options.password is not None else ""
            arguments["http_auth"] = (self.options.username, password)
        if urlsplit(self.options.url).scheme == "https":
            arguments["ssl_context"] = self._ssl_context()
        elif self.options.ca_certs is not None or not self.options.verify_certs:
            log.warning("opensearch %s: TLS options are ignored for an http:// URL", self.url)
        try:
            self._client = opensearchpy.OpenSearch(hosts=[self.options.url], **arguments)
        except opensearchpy.ImproperlyConfigured as exc:
            raise ConfigurationError(f"opensearch {self.url}: {self._scrub(str(exc))}") from None

    def _ssl_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.options.ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"option 'ca_certs': cannot load {self.options.ca_certs}: {exc}") from None
        if not self.options.verify_certs:
            log.warning("opensearch %s: TLS certificates are not verified (verify_certs=false)", self.url)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def close(self) -> None:
        """Close the client and its connections."""
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def upload(self, records: Sequence[Record]) -> None:
        """Write the batch; see the class docstring for what each outcome means."""
        client = self._open_client()
        rejections: list[tuple[Record, str]] = []
        sent = 0
        for part in rounds(records):
            operations = self._operations(client, part, rejections)
            sent += len(operations)
            for chunk in chunks(operations, self.options.bulk_bytes):
                rejections += self._bulk(client, chunk)
        if len(rejections) > 1 and len(rejections) == sent:
            # a target refusing every record is misconfigured (mapping, pipeline): dead-lettering
            # the whole backlog would look like a successful run
            raise BackendError(
                f"opensearch {self.url}: refused every record of a batch of {sent} "
                f"({rejections[0][1]}); the target refuses everything, so nothing was dead-lettered"
            )
        if rejections:
            raise RecordRejected(rejections)

    def _operations(
        self, client: opensearchpy.OpenSearch, part: Sequence[Record], rejections: list[tuple[Record, str]]
    ) -> list[Operation]:
        """The bulk operations of one round; records that cannot be one go to ``rejections``."""
        held = self._live_versions(client, [document_id(record) for record in part if record.action == "updated"])
        operations: list[Operation] = []
        for record in part:
            if record.action == "updated":
                version = held.get(document_id(record))
                if version is None or version >= record.version:
                    continue  # absent (an update never creates) or already newer: nothing to change
            try:
                operations.append(encode(record, tombstones=self.options.tombstones))
            except ValueError as exc:
                rejections.append((record, str(exc)))
        return operations

    def _live_versions(self, client: opensearchpy.OpenSearch, ids: Sequence[str]) -> dict[str, int]:
        """``{_id: version}`` of the documents of ``ids`` the target holds live (tombstones are not)."""
        if not ids:
            return {}
        params = {"_source_includes": f"{RESERVED}.action"} if self.options.tombstones else {"_source": "false"}
        try:
            answer = self._call(
                lambda: client.mget(index=self.write_index, body={"ids": list(ids)}, params=params),
                "mget",
                passing=(404,),
            )
        except opensearchpy.TransportError:  # 404: no such index yet, so nothing is live
            return {}
        live: dict[str, int] = {}
        for doc in answer.get("docs", []):
            error = doc.get("error")
            if error is not None:
                if isinstance(error, Mapping) and error.get("type") == "index_not_found_exception":
                    continue
                raise BackendError(
                    f"opensearch {self.url}: mget of {doc.get('_id')!r} failed: {self._scrub(describe_error(error))}"
                )
            if not doc.get("found"):
                continue
            if self.options.tombstones and doc.get("_source", {}).get(RESERVED, {}).get("action") == "deleted":
                continue
            live[str(doc["_id"])] = int(doc["_version"])
        return live

    def _bulk(self, client: opensearchpy.OpenSearch, chunk: list[Operation]) -> list[tuple[Record, str]]:
        """Send one bulk request; return the records refused. Raises BackendError when the target fails."""
        params = {"filter_path": FILTER_PATH}
        if self.options.refresh:
            params["refresh"] = "wait_for"
        body = b"".join(operation.data for operation in chunk)
        try:
            answer = self._call(
                lambda: client.bulk(body=body, index=self.write_index, params=params), "bulk", passing=(413,)
            )
        except opensearchpy.TransportError:  # 413: larger than the target takes in one request
            if len(chunk) == 1:
                return [(chunk[0].record, "HTTP 413: the document is larger than the target takes in one request")]
            # the target takes less than bulk_bytes: halve until it takes each part
            half = len(chunk) // 2
            return self._bulk(client, chunk[:half]) + self._bulk(client, chunk[half:])
        if not answer.get("errors"):
            return []
        items = answer.get("items", [])
        if len(items) != len(chunk):
            raise BackendError(
                f"opensearch {self.url}: the bulk answer has {len(items)} items for {len(chunk)} operations"
            )
        refused: list[tuple[Record, str]] = []
        for operation, item in zip(chunk, items, strict=True):
            outcome, reason = judge(item)
            if outcome == FAILED:
                raise BackendError(
                    f"opensearch {self.url}: bulk item {document_id(operation.record)!r} failed: "
                    f"{self._scrub(reason)}; the batch will be sent again"
                )
            if outcome != ACCEPTED:
                refused.append((operation.record, self._scrub(reason)))
        return refused

    # -- generations (livesync.backends.base.Generations): indices behind the alias -------------

    def live_generation(self) -> str:
        """The one index behind the alias ``index``; a concrete index or an alias of several is refused."""
        return self._alias_target(self._open_client())

    def create_generation(self, token: str) -> str:
        """Create ``<alias>-r<token>`` with the live index's mappings and settings (kept when it exists)."""
        client = self._open_client()
        name = generation_index(self.options.index, token)
        if self._call(lambda: client.indices.exists(index=name), "index check"):
            return name
        live = self._alias_target(client)
        found = self._call(lambda: client.indices.get(index=live), "index read").get(live, {})
        body = {"mappings": found.get("mappings", {}), "settings": creation_settings(found.get("settings", {}))}
        self._call(lambda: client.indices.create(index=name, body=body), "index creation")
        return name

    def write_generation(self, name: str) -> None:
        """Write to the index ``name`` from now on (the alias still points to the live one)."""
        self.write_index = name

    def swap_generation(self, name: str, live: str) -> str:
        """Move the alias from ``live`` to ``name`` in one ``_aliases`` call (atomic for searches and writes)."""
        client, alias = self._open_client(), self.options.index
        current = self._alias_target(client)
        if current == name:
            return live
        actions = [{"remove": {"index": current, "alias": alias}}, {"add": {"index": name, "alias": alias}}]
        answer = self._call(lambda: client.indices.update_aliases(body={"actions": actions}), "alias swap")
        if not answer.get("acknowledged"):  # some node may still send writes through the alias to the old one
            raise BackendError(f"opensearch {self.url}: the alias swap to {name} was not acknowledged in time")
        return current

    def drop_generation(self, name: str) -> None:
        """Delete the index ``name``; the one behind the alias is refused."""
        client = self._open_client()
        if name == self._alias_target(client):
            raise ConfigurationError(f"opensearch {self.url}: {name} is the live index behind {self.options.index}")
        try:
            self._call(lambda: client.indices.delete(index=name), "index deletion", passing=(404,))
        except opensearchpy.TransportError:  # 404: deleted already
            return

    def _alias_target(self, client: opensearchpy.OpenSearch) -> str:
        alias = self.options.index
        try:
            found = self._call(lambda: client.indices.get_alias(name=alias), "alias read", passing=(404,))
        except opensearchpy.TransportError:  # 404: no alias of that name (an index, or nothing)
            found = {}
        if len(found) != 1:
            problem = f"is an alias of {len(found)} indices ({', '.join(sorted(found))})" if found else "is no alias"
            raise ConfigurationError(
                f"opensearch {self.url}: a reindex swaps the alias the agent writes through, and {alias!r} "
                f"{problem}; point the agent's index option at an alias of exactly one index"
            )
        return str(next(iter(found)))

    def _open_client(self) -> opensearchpy.OpenSearch:
        if self._client is None:
            raise RuntimeError(f"{self!r} is not open; use it as a context manager or call open()")
        return self._client

    def _call(self, request: Callable[[], T], what: str, passing: tuple[int, ...] = ()) -> T:
        """Run one client request; a failure becomes a BackendError naming the masked URL.

        An error answer with a status in ``passing`` is raised as it is, for the caller to handle.
        """
        try:
            with warnings.catch_warnings():
                if not self.options.verify_certs:
                    # said once, in open(); urllib3 would warn again on every request
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                return request()
        except opensearchpy.TransportError as exc:
            if exc.status_code in passing:
                raise
            if isinstance(exc, opensearchpy.ConnectionTimeout):
                problem = f"no answer within {self.options.timeout:g}s"
            elif isinstance(exc, opensearchpy.ConnectionError):
                problem = f"cannot connect: {exc.info.__class__.__name__}: {exc.error}"
            else:
                problem = f"HTTP {exc.status_code}: {describe_error(_error_of(exc))}"
            message = f"opensearch {self.url}: {what} failed: {self._scrub(problem)}"
            raise BackendError(message) from exc
        except opensearchpy.OpenSearchException as exc:
            message = f"opensearch {self.url}: {what} failed: {type(exc).__name__}: {self._scrub(str(exc))}"
            raise BackendError(message) from exc

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} agent={self.agent_id!r} url={self.url!r}>"


def _error_of(exc: opensearchpy.TransportError) -> object:
    """The ``error`` object of an OpenSearch error answer, else its text."""
    info = exc.info
    if isinstance(info, Mapping) and "error" in info:
        return info["error"]
    return exc.error
