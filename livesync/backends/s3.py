"""The ``s3`` backend: an archive of every batch, one NDJSON object each, in an S3 bucket.

Needs the ``s3`` extra (``pip install 'livesync[s3]'``: boto3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from livesync.backends.base import Backend
from livesync.errors import BackendError, ConfigurationError, RecordRejected
from livesync.records import Record
from livesync.urls import redact_url

log = logging.getLogger(__name__)

SUFFIX = ".ndjson"
CONTENT_TYPE = "application/x-ndjson"
VERSION_DIGITS = 20
"""Versions in keys are zero-padded to this width, so keys sort as their versions do."""
DIGEST_CHARS = 16
"""Hex characters of the body's SHA-256 in a key (64 bits): two different batches never share a key."""
#: S3 bucket names, legacy ones included (upper case, underscores, up to 255 characters); S3 checks the rest.
BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{1,254}$")


class S3Backend(Backend):
    """Writes each batch as one new object, never overwriting one: an append-only archive.

    The object holds one ``record.to_dict()`` per line (UTF-8 JSON, keys sorted; a
    record's ``document`` only when it has one) under the key::

        <prefix>/<agent>/<partition>/<lowest version>-<highest version>-<digest>.ndjson

    ``partition`` is the run's partition, or ``all`` for exports and dead-letter requeues
    (records of every partition); versions zero-padded to 20 digits (keys sort by version) and ``digest`` the first 16
    hex characters of the body's SHA-256. The same batch sent again (a retry, a run
    after a crash) has the same body, hence the same key; it is written with a
    conditional put (``If-None-Match: *``), so a resend never overwrites or duplicates
    an object: S3's 412 *PreconditionFailed* says the batch is there already and counts
    as accepted (the key holds the digest, so an object under it holds this very batch).
    A batch that differs at all (a re-read window folded differently, a document loaded
    again) gets a key of its own, and its records are in the archive twice: harmless,
    see below. Seqs are not in the key: they repeat across partitions and after Redis
    loses data, versions and the digest do not.

    Stale writes: the archive keeps everything it was sent. Readers rebuild the current
    state by replaying every record of the agent's objects (:func:`read_records`) in
    version order under the rule of :class:`~livesync.backends.base.Backend` (per object
    the highest version wins, a delete's too; an ``updated`` for an object that is not
    live changes nothing). Version order is the source's order: a record that reached
    the archive late (from another partition, or resent) lands where it belongs.

    Outcomes: a record that cannot be encoded as JSON is refused
    (:class:`~livesync.errors.RecordRejected`) and the rest of the batch written; any
    other failure (the endpoint unreachable, a timeout, access denied, no such bucket,
    no credentials) raises :class:`~livesync.errors.BackendError`: nothing counts and the
    batch is sent again. botocore retries throttling, 5xx answers and connection errors
    ``max_retries`` times first.

    Credentials: ``access_key_id`` and ``secret_access_key`` (secret references) or, when
    both are left out, boto3's default chain (environment, shared files, instance role).
    The bucket must exist; the writer needs ``s3:PutObject`` on ``<prefix>/<agent>/*``.
    """

    name = "s3"

    class Options(Backend.Options):
        """Options of the ``s3`` backend."""

        bucket: str = Field(description="the bucket the batches are written to; it must exist")
        prefix: str = Field(default="", description="key prefix before <agent>/ (slashes at either end are dropped)")
        endpoint_url: str | None = Field(
            default=None, description="an S3-compatible endpoint (MinIO, Ceph, R2...); default: AWS for region"
        )
        region: str | None = Field(default=None, description="the bucket's region; default: boto3's configuration")
        access_key_id: SecretStr | None = Field(default=None, description="access key id; default: boto3's chain")
        secret_access_key: SecretStr | None = Field(default=None, description="secret access key; never printed")
        timeout: float = Field(default=10.0, gt=0, description="seconds to connect and to wait for each answer")
        max_retries: int = Field(default=2, ge=0, description="retries of throttling, 5xx and connection errors")

        @field_validator("bucket")
        @classmethod
        def _check_bucket(cls, value: str) -> str:
            if not BUCKET_NAME.match(value):
                raise ValueError("must be an S3 bucket name (letters, digits, dots, hyphens, underscores)")
            return value

        @field_validator("prefix")
        @classmethod
        def _check_prefix(cls, value: str) -> str:
            value = value.strip("/")
            if any(part in ("", ".", "..") for part in value.split("/")) and value:
                raise ValueError("must not hold empty, '.' or '..' segments")
            return value

        @field_validator("endpoint_url")
        @classmethod
        def _check_endpoint(cls, value: str | None) -> str | None:
            if value is not None and not re.match(r"^https?://[^/?#]+", value.strip()):
                raise ValueError("must be an http:// or https:// URL with a host")
            return None if value is None else value.strip()

        @model_validator(mode="after")
        def _credentials_in_pairs(self) -> S3Backend.Options:
            if (self.access_key_id is None) != (self.secret_access_key is None):
                raise ValueError("give access_key_id and secret_access_key together, or neither (boto3's chain)")
            return self

    options: Options

    def __init__(self, agent_id: str, options: Backend.Options) -> None:
        super().__init__(agent_id, options)
        self.folder = agent_folder(self.options.prefix, agent_id)
        """The key prefix of this agent's objects, ending in ``/``."""
        endpoint = redact_url(self.options.endpoint_url) if self.options.endpoint_url else "AWS"
        self.target = f"s3://{self.options.bucket}/{self.folder} ({endpoint})"
        """The bucket and folder as shown in messages (the endpoint redacted)."""
        self._client: Any = None

    def open(self) -> None:
        """Create the S3 client (one per backend, connections are reused between batches)."""
        if self._client is None:
            self._client = make_client(self.options)

    def close(self) -> None:
        """Close the client's connections."""
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def upload(self, records: Sequence[Record]) -> None:
        """Write the batch as one object (a conditional put); refuse records that cannot be encoded."""
        if self._client is None:
            raise RuntimeError(f"{self!r} is not open; use it as a context manager or call open()")
        written: list[Record] = []
        lines: list[bytes] = []
        rejections: list[tuple[Record, str]] = []
        for record in records:
            try:
                lines.append(encode(record))
            except (TypeError, ValueError) as exc:
                rejections.append((record, f"cannot encode as JSON: {exc}"))
            else:
                written.append(record)
        if written:
            body = b"".join(lines)
            self._put(batch_key(partition_folder(self.folder, self.partition), written, body), body)
        if rejections:
            raise RecordRejected(rejections)

    def _put(self, key: str, body: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.put_object(
                Bucket=self.options.bucket, Key=key, Body=body, ContentType=CONTENT_TYPE, IfNoneMatch="*"
            )
        except ClientError as exc:
            code, message, status = _client_error(exc)
            if code == "PreconditionFailed" or status == 412:
                # the key holds the body's digest: what is there is this batch, written before
                log.debug("s3 %s: %s is there already (a resend); accepted", self.target, key)
                return
            raise BackendError(
                f"s3 {self.target}: writing {key} failed: {code or status}: {message}{_hint(code)}"
            ) from exc
        except BotoCoreError as exc:
            raise BackendError(f"s3 {self.target}: writing {key} failed: {type(exc).__name__}: {exc}") from exc


def make_client(options: S3Backend.Options) -> Any:
    """A boto3 S3 client for ``options``: their endpoint, region, credentials, timeouts and retries."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigurationError("the s3 backend needs boto3: pip install 'livesync[s3]'") from exc
    config = Config(
        connect_timeout=options.timeout,
        read_timeout=options.timeout,
        retries={"total_max_attempts": options.max_retries + 1, "mode": "standard"},
        user_agent_extra="livesync",
    )
    credentials: dict[str, str] = {}
    if options.access_key_id is not None and options.secret_access_key is not None:
        credentials = {
            "aws_access_key_id": options.access_key_id.get_secret_value(),
            "aws_secret_access_key": options.secret_access_key.get_secret_value(),
        }
    # a session of its own: boto3's default session is shared and not thread-safe
    session = boto3.session.Session(region_name=options.region, **credentials)
    return session.client("s3", endpoint_url=options.endpoint_url, config=config)


def agent_folder(prefix: str, agent_id: str) -> str:
    """The key prefix of an agent's objects: ``<prefix>/<agent>/`` (``<agent>/`` without a prefix)."""
    return f"{prefix.strip('/')}/{agent_id}/" if prefix.strip("/") else f"{agent_id}/"


def partition_folder(folder: str, partition: int | None) -> str:
    """``<folder><partition>/``, ``<folder>all/`` for records of every partition (exports, requeues)."""
    return f"{folder}{'all' if partition is None else partition}/"


def batch_key(folder: str, records: Sequence[Record], body: bytes) -> str:
    """The key of a batch: its lowest and highest version and its body's digest, under ``folder``."""
    versions = [record.version for record in records]
    digest = hashlib.sha256(body).hexdigest()[:DIGEST_CHARS]
    return f"{folder}{min(versions):0{VERSION_DIGITS}d}-{max(versions):0{VERSION_DIGITS}d}-{digest}{SUFFIX}"


def encode(record: Record) -> bytes:
    """One NDJSON line: the record's dict, keys sorted (so a resend has the same bytes and key)."""
    text = json.dumps(record.to_dict(), separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True)
    return text.encode("utf-8") + b"\n"


def read_records(client: Any, bucket: str, prefix: str, agent_id: str) -> Iterator[Record]:
    """Every record archived for ``agent_id``, sorted by version: what a reader replays.

    Apply them in this order under the version rule of
    :class:`~livesync.backends.base.Backend` to get the current state of every object
    (:func:`livesync.testing.apply_version_rule` is that rule). ``client`` is a boto3 S3
    client (:func:`make_client`). Reads the whole archive of the agent into memory.
    """
    records: list[Record] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=agent_folder(prefix, agent_id)):
        for item in page.get("Contents", []):
            if not item["Key"].endswith(SUFFIX):
                continue
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            records.extend(Record.from_dict(json.loads(line)) for line in body.decode("utf-8").splitlines() if line)
    return iter(sorted(records, key=lambda record: record.version))


def _client_error(exc: Any) -> tuple[str, str, int | None]:
    """The error code, message and HTTP status of a botocore ``ClientError``."""
    response = exc.response if isinstance(getattr(exc, "response", None), dict) else {}
    error = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code", "")), " ".join(str(error.get("Message", "")).split()), status


def _hint(code: str) -> str:
    if code == "NoSuchBucket":
        return " (create the bucket; livesync never does)"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return " (check the agent's credentials and that they may s3:PutObject under its folder)"
    return ""
