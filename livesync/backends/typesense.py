"""The ``typesense`` backend: upserts documents into a Typesense collection, guarding stale writes by version.

Typesense has no external versioning and no conditional write, so the version rule of
:class:`~livesync.backends.base.Backend` is kept by reading first: each batch reads the
stored versions of its objects (one multi-search per 1,000 ids), applies the batch to
them in memory, and writes only what the rule lets through. Deletes leave a tombstone
(id and version) in a second, livesync-owned collection, ``<collection>__livesync_tombstones``,
so searches on the collection never see deleted objects while a late stale create still
cannot bring one back. What this leaves open is written out in :class:`TypesenseBackend`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from pydantic import Field, SecretStr, field_validator

from livesync.backends.base import Backend
from livesync.backends.http import check_url
from livesync.backends.typesense_api import TypesenseApi
from livesync.errors import RecordRejected
from livesync.records import Record
from livesync.urls import redact_url

log = logging.getLogger(__name__)

TYPE_FIELD = "livesync_type"
ID_FIELD = "livesync_id"
VERSION_FIELD = "livesync_version"
RESERVED = (TYPE_FIELD, ID_FIELD, VERSION_FIELD)
"""Fields livesync writes into every document (flat: Typesense indexes top-level fields by name)."""

TOMBSTONES_SUFFIX = "__livesync_tombstones"
"""Appended to ``collection`` for the collection holding the tombstones of deleted objects."""

READ_CHUNK = 250
"""Ids per search when reading versions: Typesense's largest page."""

SEARCHES_PER_REQUEST = 8
"""Searches per multi-search request (Typesense's default limit is 50)."""

GUARDED_DELETES = 16
"""``(id && version)`` clauses per delete filter: Typesense 0.24 parses at most 100 filter tokens."""

EXCERPT = 200
"""Characters of a Typesense error message kept in rejection reasons and errors."""

#: Per-document import codes that say the document, not the server, is at fault.
RECORD_FAULTS = frozenset({400, 404, 409, 422})

_T = TypeVar("_T")


class Held(NamedTuple):
    """What the target holds for one object: the highest version applied and whether it is live."""

    version: int
    live: bool


class TypesenseBackend(Backend):
    """Writes each object as one Typesense document, ``id`` = ``"<type>:<id>"``.

    The document is ``record.document`` (``{}`` for an agent without a loader) with its
    own ``id`` key replaced, plus three flat fields: ``livesync_type``, ``livesync_id``
    (the object's id as a string) and ``livesync_version`` (int64). A document holding one
    of these itself is refused (dead-letter list). Objects whose ids differ only in type
    (``42`` and ``"42"``) share one document.

    Per batch: read the stored versions of its objects (collection and tombstones), apply
    the records in order by the version rule, then write (1) the tombstones of objects the
    batch deletes, (2) one ``import`` with ``action=upsert`` of the objects it leaves live,
    (3) deletes of the deleted objects' documents, each guarded by a filter
    ``livesync_version:<version`` so a newer document is never removed. Stale records and
    ``updated`` records for objects the target does not hold (never created, or deleted)
    change nothing, whether they carry a document or not: only ``created`` makes an object
    live. A tombstone keeps its version for good, also after the object is created again
    (it is lower than the live version then, and harmless).

    An interrupted delete (tombstone written, document not yet deleted) leaves a document
    not above its tombstone: it counts as deleted, and the next batch touching the object
    (the resend of the same batch, at the latest) deletes it.

    What remains possible, Typesense having no conditional write: two writers on one object
    at the same moment (each reads, then writes) can let the older write land last. One
    runner per (agent, partition) and objects partitioned by (type, id) make this rare:
    only an expander's records cross partitions, and a stalled runner that lost its lock
    may still finish an upload in flight. Deletes never remove a newer document (guarded).

    - A document Typesense refuses (400/404/409/422: a field type against the schema, a
      missing required field): :class:`~livesync.errors.RecordRejected` for its record, and
      for the records of the same object before it in the batch (nothing of that object
      was written); when it refuses every document of a batch of several, the schema is
      wrong, not the records: :class:`~livesync.errors.BackendError`, nothing dead-lettered.
    - Unreachable server, timeouts, 5xx (after ``max_retries`` retries), 401/403, a missing
      collection: :class:`~livesync.errors.BackendError`, nothing counts.
    """

    name = "typesense"

    class Options(Backend.Options):
        """Options of the ``typesense`` backend."""

        url: str = Field(description="http:// or https:// URL of the Typesense server (a node or a load balancer)")
        api_key: SecretStr = Field(description="API key for documents of both collections; never printed")
        collection: str = Field(description="collection (or alias) the documents go to")
        timeout: float = Field(default=10.0, gt=0, description="seconds to connect and to wait for each answer")
        max_retries: int = Field(default=2, ge=0, description="retries of a request after a timeout, 5xx or no answer")
        create: bool = Field(
            default=False, description="create the collection (auto schema, livesync's fields) when it is missing"
        )

        @field_validator("url")
        @classmethod
        def _check_url(cls, value: str) -> str:
            value = value.strip()
            parsed = check_url(value)
            if parsed.userinfo:
                raise ValueError("must not hold credentials: Typesense takes the key in option 'api_key'")
            if parsed.query or parsed.fragment:
                raise ValueError("must not have a query or fragment")
            return value

        @field_validator("api_key")
        @classmethod
        def _check_key(cls, value: SecretStr) -> SecretStr:
            if not value.get_secret_value():
                raise ValueError("must not be empty")
            return value

        @field_validator("collection")
        @classmethod
        def _check_collection(cls, value: str) -> str:
            if not value or not all(char.isalnum() or char in "_-." for char in value):
                raise ValueError("must be letters, digits, '_', '-' or '.'")
            return value

    options: Options

    def __init__(self, agent_id: str, options: Backend.Options) -> None:
        super().__init__(agent_id, options)
        self.url = redact_url(self.options.url)
        """The server URL as shown in messages and logs."""
        self.collection = self.options.collection
        self.tombstones = self.collection + TOMBSTONES_SUFFIX
        """The collection holding the tombstones of deleted objects (id, version)."""
        self._api: TypesenseApi | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} agent={self.agent_id!r} {self.url} {self.collection!r}>"

    # -- open / close --------------------------------------------------------------------------

    def open(self) -> None:
        """Connect; check the collection (or create it) and the tombstones' collection (created when missing)."""
        if self._api is not None:
            return
        self._api = TypesenseApi(
            self.options.url,
            self.options.api_key.get_secret_value(),
            shown=self.url,
            timeout=self.options.timeout,
            max_retries=self.options.max_retries,
        )
        try:
            self._check_collection(self._api)
            if self._api.collection(self.tombstones) is None:
                self._create(self._api, {"name": self.tombstones, "fields": [_version_field()]})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the connections."""
        if self._api is not None:
            api, self._api = self._api, None
            api.close()

    def _check_collection(self, api: TypesenseApi) -> None:
        schema = api.collection(self.collection)
        if schema is None:
            if not self.options.create:
                raise api.error(
                    f"collection {self.collection!r} does not exist; create it with a field "
                    f"{{'name': '{VERSION_FIELD}', 'type': 'int64'}} or add --option create=true"
                )
            self._create(api, _auto_schema(self.collection))
            return
        fields = {field.get("name"): field for field in schema.get("fields", [])}
        version = fields.get(VERSION_FIELD)
        if version is None or version.get("type") != "int64" or version.get("index") is False:
            raise api.error(
                f"collection {self.collection!r} needs an indexed field {{'name': '{VERSION_FIELD}', 'type': 'int64'}} "
                "in its schema (livesync filters on it so that a delete never removes a newer document)"
            )

    def _create(self, api: TypesenseApi, schema: dict[str, Any]) -> None:
        log.info("typesense %s: creating collection %r", self.url, schema["name"])
        api.create_collection(schema)

    # -- upload ----------------------------------------------------------------------------------

    def upload(self, records: Sequence[Record]) -> None:
        """Read the stored versions, apply the batch by the version rule, write what it changes."""
        if self._api is None:
            raise RuntimeError(f"{self!r} is not open; use it as a context manager or call open()")
        api = self._api
        rejections: list[tuple[Record, str]] = []
        lines: dict[int, str] = {}  # id(record) -> its document as one JSON line
        valid: list[Record] = []
        for record in records:
            try:
                if record.action != "deleted":
                    lines[id(record)] = _encode(record)
            except (TypeError, ValueError) as exc:
                rejections.append((record, str(exc)))
                continue
            valid.append(record)
        keys = {_key(record) for record in valid}
        documents, tombstones = self._versions(api, keys)
        start = {key: held for key in keys if (held := _held(documents.get(key), tombstones.get(key))) is not None}
        final, applied = _apply(valid, start)

        buried = [(key, held.version) for key, held in final.items() if not held.live]
        if buried:
            by_key = {key: applied[key][-1] for key, _version in buried}
            graves = [_encode_tombstone(by_key[key], version) for key, version in buried]
            refused = self._import(api, self.tombstones, graves)
            if refused:
                raise api.error(f"refused tombstones in {self.tombstones!r}: {next(iter(refused.values()))}")
        live = [key for key, held in final.items() if held.live]
        unwritten: set[str] = set()
        if live:
            refused = self._import(api, self.collection, [lines[id(applied[key][-1])] for key in live])
            if refused and len(refused) == len(live) > 1:
                reason = next(iter(refused.values()))
                raise api.error(
                    f"refused every document of a batch of {len(live)} ({reason}); the collection's schema "
                    "refuses everything, so nothing was dead-lettered"
                )
            for index, reason in refused.items():
                unwritten.add(live[index])
                *earlier, last = applied[live[index]]
                rejections.append((last, reason))
                superseded = f"not written: a later record of this object in the batch was refused ({reason})"
                rejections += [(record, superseded) for record in earlier]
        # a document not above its tombstone is deleted: the batch's deletes, and leftovers of interrupted ones
        bounds = {key: held.version for key, held in final.items() if not held.live and key in documents}
        for key, version in documents.items():
            tombstone = tombstones.get(key)
            if (key not in final or key in unwritten) and tombstone is not None and version <= tombstone:
                bounds[key] = tombstone + 1
        if bounds:
            self._delete(api, bounds)
        if rejections:
            raise RecordRejected(rejections)

    def _versions(self, api: TypesenseApi, keys: Collection[str]) -> tuple[dict[str, int], dict[str, int]]:
        """``({id: livesync_version}, {id: tombstone version})`` among ``keys``: one multi-search for both."""
        found: dict[str, dict[str, int]] = {self.collection: {}, self.tombstones: {}}
        quotable = sorted(key for key in keys if "`" not in key)
        searches: list[dict[str, Any]] = [
            {
                "collection": collection,
                "q": "*",
                "filter_by": "id:[" + ",".join(f"`{key}`" for key in chunk) + "]",
                "include_fields": f"id,{VERSION_FIELD}",
                "per_page": len(chunk),
            }
            for chunk in _chunks(quotable, READ_CHUNK)
            for collection in found
        ]
        for group in _chunks(searches, SEARCHES_PER_REQUEST):
            for search, result in zip(group, api.multi_search(list(group)), strict=True):
                collection = str(search["collection"])
                if "error" in result:
                    raise api.error(f"refused a search in {collection!r}: {_excerpt(result['error'])}")
                for hit in result.get("hits", []):
                    found[collection][hit["document"]["id"]] = _version_of(hit["document"])
        # a backtick cannot be quoted in a filter: such ids are read one by one
        for key in sorted(set(keys) - set(quotable)):
            for collection, versions in found.items():
                document = api.document(collection, key)
                if document is not None:
                    versions[key] = _version_of(document)
        return found[self.collection], found[self.tombstones]

    def _import(self, api: TypesenseApi, collection: str, lines: list[str]) -> dict[int, str]:
        """Upsert JSON ``lines`` into ``collection``; ``{index: reason}`` of the documents refused for good."""
        refused: dict[int, str] = {}
        for index, result in enumerate(api.import_upsert(collection, lines)):
            if result.get("success") is True:
                continue
            code = result.get("code", 400)  # servers before 0.23 give no code: only documents' faults
            reason = f"Typesense {code}: {_excerpt(result.get('error', 'refused'))}"
            if code not in RECORD_FAULTS:
                raise api.error(f"failed a document of an import ({reason})")
            refused[index] = reason
        return refused

    def _delete(self, api: TypesenseApi, bounds: Mapping[str, int]) -> None:
        """Delete the documents of ``bounds`` whose version is below their bound (the others are newer)."""
        quotable = sorted(key for key in bounds if "`" not in key)
        for chunk in _chunks(quotable, GUARDED_DELETES):
            guard = " || ".join(f"(id:`{key}` && {VERSION_FIELD}:<{bounds[key]})" for key in chunk)
            api.delete_where(self.collection, guard)
        # a backtick cannot be quoted in a filter: deleted by id, unguarded (their version was read just before)
        for key in sorted(set(bounds) - set(quotable)):
            api.delete(self.collection, key)


def _key(record: Record) -> str:
    return f"{record.type}:{record.id}"


def _held(document: int | None, tombstone: int | None) -> Held | None:
    """The object's state from its document's and its tombstone's versions (either may be missing)."""
    if document is not None and (tombstone is None or document > tombstone):
        return Held(document, True)
    if tombstone is not None:
        return Held(tombstone, False)
    return None


def _apply(records: Sequence[Record], start: Mapping[str, Held]) -> tuple[dict[str, Held], dict[str, list[Record]]]:
    """Apply ``records`` in order to ``start`` by the version rule.

    Returns the new state of each object the batch changes and, per object, the records
    that changed it (the last one decides what is written).
    """
    state = dict(start)
    applied: dict[str, list[Record]] = {}
    for record in records:
        key = _key(record)
        held = state.get(key)
        if record.action == "updated" and (held is None or not held.live):
            continue  # only `created` makes an object live
        if held is not None and record.version <= held.version:
            continue  # stale
        state[key] = Held(record.version, record.action != "deleted")
        applied.setdefault(key, []).append(record)
    return {key: state[key] for key in applied}, applied


def _encode(record: Record) -> str:
    """The record's Typesense document as one JSON line; ``ValueError`` saying why it cannot be one."""
    body = dict(record.document or {})
    clash = [field for field in RESERVED if field in body]
    if clash:
        raise ValueError(f"document holds {', '.join(clash)}: livesync reserves these fields in Typesense")
    body["id"] = _key(record)
    body.update({TYPE_FIELD: record.type, ID_FIELD: str(record.id), VERSION_FIELD: record.version})
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"cannot encode the document as JSON: {exc}") from None


def _encode_tombstone(record: Record, version: int) -> str:
    tombstone = {"id": _key(record), TYPE_FIELD: record.type, ID_FIELD: str(record.id), VERSION_FIELD: version}
    return json.dumps(tombstone, ensure_ascii=False, separators=(",", ":"))


def _version_of(document: Mapping[str, Any]) -> int:
    value = document.get(VERSION_FIELD)
    return value if isinstance(value, int) else 0  # written by someone else: any record is newer


def _version_field() -> dict[str, Any]:
    return {"name": VERSION_FIELD, "type": "int64"}


def _auto_schema(name: str) -> dict[str, Any]:
    """The schema of a collection created with ``create=true``: every field typed by its first value."""
    return {
        "name": name,
        "enable_nested_fields": True,
        "fields": [
            {"name": ".*", "type": "auto"},
            _version_field(),
            {"name": TYPE_FIELD, "type": "string", "facet": True},
            {"name": ID_FIELD, "type": "string"},
        ],
    }


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _excerpt(text: object) -> str:
    return " ".join(str(text).split())[:EXCERPT]
