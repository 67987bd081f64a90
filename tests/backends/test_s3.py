"""The ``s3`` backend against a real S3 API: moto's server mode on loopback (tests/support/s3_server.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from support.s3_server import REGION, S3Server, s3_server

from livesync.backends import create_backend, load_backend, parse_options, redact_options, reference_options
from livesync.backends.base import Backend
from livesync.backends.s3 import S3Backend, make_client, read_records
from livesync.errors import BackendError, ConfigurationError, RecordRejected
from livesync.records import Record
from livesync.testing import BackendContract, TargetState, apply_version_rule, make_record

PREFIX = "archive/livesync"
AGENT = "contract"
State = dict[tuple[str, str], TargetState]


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = s3_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(s3: S3Server) -> Iterator[str]:
    name = s3.new_bucket()
    yield name
    s3.drop_buckets()


def options(s3: S3Server, bucket: str, **extra: Any) -> S3Backend.Options:
    fields: dict[str, Any] = {
        "bucket": bucket,
        "prefix": PREFIX,
        "endpoint_url": s3.url,
        "region": REGION,
        "access_key_id": s3.key_id,
        "secret_access_key": s3.secret,
        "timeout": 5,
        "max_retries": 0,
        **extra,
    }
    return S3Backend.Options(**{key: value for key, value in fields.items() if value is not None})


def objects(s3: S3Server, bucket: str) -> dict[str, bytes]:
    client = s3.client()
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {item["Key"]: client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}


class TestS3Contract(BackendContract):
    # the archive cannot tell when each object arrived: its readers replay in version order
    replay_order = "version"

    @pytest.fixture
    def make_backend(self, s3: S3Server, bucket: str) -> Callable[[], Backend]:
        return lambda: S3Backend(AGENT, options(s3, bucket))

    @pytest.fixture
    def read_target(self, s3: S3Server, bucket: str) -> Callable[[], State]:
        return lambda: apply_version_rule({}, list(read_records(s3.client(), bucket, PREFIX, AGENT)))

    @pytest.fixture
    def refused_record(self) -> Callable[[Record], Record]:
        return lambda record: record._replace(document={"score": float("nan")})  # NaN is no JSON

    @pytest.fixture
    def broken_target(self, s3: S3Server) -> Callable[[], AbstractContextManager[object]] | None:
        return s3.stopped if s3.can_stop else None


def test_a_batch_is_one_ndjson_object_keyed_by_its_versions_and_digest(s3: S3Server, bucket: str) -> None:
    batch = [
        make_record("event", 42, "created", 7, {"title": "Zürich"}),
        make_record("contribution", "c-7", "deleted", 9),
        make_record("event", 43, "updated", 8),
    ]
    with S3Backend(AGENT, options(s3, bucket)) as backend:
        backend.upload(batch)
    stored = objects(s3, bucket)
    assert len(stored) == 1
    [(key, body)] = stored.items()
    low, high = min(r.version for r in batch), max(r.version for r in batch)
    assert key.startswith(f"{PREFIX}/{AGENT}/{low:020d}-{high:020d}-")
    assert key.endswith(".ndjson")
    assert [json.loads(line) for line in body.decode("utf-8").splitlines()] == [r.to_dict() for r in batch]
    assert "document" not in json.loads(body.splitlines()[1])
    head = s3.client().head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "application/x-ndjson"


def test_a_resend_of_the_same_batch_finds_its_object_and_writes_no_other(s3: S3Server, bucket: str) -> None:
    batch = [make_record("event", 1, "created", 10, {"b": 2, "a": 1})]
    with S3Backend(AGENT, options(s3, bucket)) as backend:
        backend.upload(batch)
        first = objects(s3, bucket)
        backend.upload(batch)  # the conditional put answers 412: accepted
    # a later run reloads the document: same content, its keys in another order
    with S3Backend(AGENT, options(s3, bucket)) as backend:
        backend.upload([batch[0]._replace(document={"a": 1, "b": 2})])
    assert objects(s3, bucket) == first


def test_a_different_batch_over_the_same_versions_gets_an_object_of_its_own(s3: S3Server, bucket: str) -> None:
    record = make_record("event", 1, "created", 10, {"title": "first load"})
    with S3Backend(AGENT, options(s3, bucket)) as backend:
        backend.upload([record])
        backend.upload([record._replace(document={"title": "loaded again"})])
    assert len(objects(s3, bucket)) == 2


def test_an_existing_object_is_never_overwritten(s3: S3Server, bucket: str) -> None:
    batch = [make_record("event", 1, "created", 10, {"title": "archived"})]
    with S3Backend(AGENT, options(s3, bucket)) as backend:
        backend.upload(batch)
        [key] = objects(s3, bucket)
        s3.client().put_object(Bucket=bucket, Key=key, Body=b"tampered\n")
        backend.upload(batch)  # 412: there already, never written over
    assert objects(s3, bucket) == {key: b"tampered\n"}


def test_without_a_prefix_objects_go_under_the_agent_id(s3: S3Server, bucket: str) -> None:
    with S3Backend("agent-7", options(s3, bucket, prefix="")) as backend:
        backend.upload([make_record("event", 1, "created", 10)])
    [key] = objects(s3, bucket)
    assert key.startswith("agent-7/")
    assert [r.id for r in read_records(s3.client(), bucket, "", "agent-7")] == [1]


def test_agents_sharing_a_bucket_and_prefix_read_only_their_own_records(s3: S3Server, bucket: str) -> None:
    for agent, number in (("one", 1), ("one-more", 2)):
        with S3Backend(agent, options(s3, bucket)) as backend:
            backend.upload([make_record("event", number, "created", number)])
    assert [r.id for r in read_records(s3.client(), bucket, PREFIX, "one")] == [1]


def test_a_batch_of_only_unencodable_records_is_refused_and_writes_nothing(s3: S3Server, bucket: str) -> None:
    bad = [make_record("event", n, "created", n, {"tags": {"a-set"}}) for n in (1, 2)]
    with S3Backend(AGENT, options(s3, bucket)) as backend, pytest.raises(RecordRejected) as caught:
        backend.upload(bad)
    assert [record for record, _reason in caught.value.rejections] == bad
    assert all("cannot encode as JSON" in reason for _record, reason in caught.value.rejections)
    assert objects(s3, bucket) == {}


def test_a_missing_bucket_fails_the_batch_naming_the_bucket_and_what_to_do(s3: S3Server) -> None:
    with S3Backend(AGENT, options(s3, "no-such-bucket-here")) as backend, pytest.raises(BackendError) as caught:
        backend.upload([make_record("event", 1, "created", 10)])
    message = str(caught.value)
    assert "s3://no-such-bucket-here/archive/livesync/contract/" in message
    assert "NoSuchBucket" in message and "create the bucket" in message
    assert s3.secret not in message or s3.secret == "testing"


def test_an_unreachable_endpoint_fails_the_batch_with_a_backend_error(s3: S3Server, bucket: str) -> None:
    if not s3.can_stop:
        pytest.skip("the configured S3 endpoint (LIVESYNC_TEST_S3_URL) cannot be stopped by the tests")
    backend = S3Backend(AGENT, options(s3, bucket))
    backend.open()
    with s3.stopped(), pytest.raises(BackendError) as caught:
        backend.upload([make_record("event", 1, "created", 10)])
    backend.close()
    assert not isinstance(caught.value, RecordRejected)
    assert s3.url in str(caught.value)


def test_without_credentials_options_boto3s_default_chain_is_used(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    chain = options(s3, bucket, access_key_id=None, secret_access_key=None)
    assert chain.access_key_id is None
    with S3Backend(AGENT, chain) as backend:
        backend.upload([make_record("event", 1, "created", 10)])
    assert len(objects(s3, bucket)) == 1


def test_credentials_may_be_secret_references_resolved_where_the_agent_runs(s3: S3Server, bucket: str) -> None:
    raw = {
        "bucket": bucket,
        "endpoint_url": s3.url,
        "region": REGION,
        "access_key_id": "@env:S3_KEY_ID",
        "secret_access_key": "@env:S3_SECRET",
    }
    backend = create_backend("s3", AGENT, raw, environ={"S3_KEY_ID": s3.key_id, "S3_SECRET": s3.secret})
    with backend:
        backend.upload([make_record("event", 1, "created", 10)])
    assert [key.split("/")[0] for key in objects(s3, bucket)] == [AGENT]


def test_the_backend_is_registered_and_its_secrets_are_references_and_redacted() -> None:
    assert load_backend("s3") is S3Backend
    assert {"access_key_id", "secret_access_key", "endpoint_url"} <= reference_options(S3Backend)
    shown = redact_options("s3", {"bucket": "bkt", "access_key_id": "AKIA123", "secret_access_key": "shh"})
    assert shown == {"bucket": "bkt", "access_key_id": "***", "secret_access_key": "***"}
    held = S3Backend.Options(bucket="bkt", access_key_id="AKIA123", secret_access_key="shh")
    assert "shh" not in repr(held) and "AKIA123" not in repr(held)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"bucket": "bkt", "access_key_id": "k"}, "give access_key_id and secret_access_key together"),
        ({"bucket": "no/slash"}, "option 'bucket': must be an S3 bucket name"),
        ({"bucket": "bkt", "endpoint_url": "minio:9000"}, "option 'endpoint_url': must be an http:// or https:// URL"),
        ({"bucket": "bkt", "prefix": "a//b"}, "option 'prefix': must not hold empty"),
        ({"bucket": "bkt", "timeout": "0"}, "option 'timeout'"),
        ({"bucket": "bkt", "acl": "public-read"}, "unknown option for backend s3"),
    ],
)
def test_bad_options_are_refused_naming_the_option(raw: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem.replace("(", r"\(").replace("/", "/")):
        parse_options(S3Backend, raw)


def test_the_prefix_loses_slashes_at_either_end() -> None:
    held = parse_options(S3Backend, {"bucket": "bkt", "prefix": "/exports/livesync/"})
    assert isinstance(held, S3Backend.Options)
    assert S3Backend("a", held).folder == "exports/livesync/a/"


def test_make_client_uses_the_options_endpoint_region_and_timeouts(s3: S3Server, bucket: str) -> None:
    client = make_client(options(s3, bucket, timeout=3.5))
    try:
        assert client.meta.endpoint_url == s3.url
        assert client.meta.region_name == REGION
        assert client.meta.config.read_timeout == 3.5 and client.meta.config.connect_timeout == 3.5
    finally:
        client.close()
