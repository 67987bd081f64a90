"""The stored member format of :mod:`livesync.codec`: header, body, round trip, corruption."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from livesync.changes import FLAG_BITS, Change
from livesync.codec import MAX_RUN, decode_member, encode_body, member_header, split_runs
from livesync.errors import DecodeError
from livesync.keys import namespace_keys
from livesync.namespace import ensure_meta
from livesync.records import ObjectId
from livesync.track import Track

KEY = "livesync:{t:0}:b:100"
CREATED = FLAG_BITS["created"]
MOVED = FLAG_BITS["moved"]
TITLE = FLAG_BITS["title_changed"]


def member(seq: int, version: int, body: bytes) -> bytes:
    """A stored member as the publish script writes it: ``<first seq>:<first version>:<body>``."""
    return f"{seq}:{version}:".encode() + body


def test_member_header_returns_first_seq_first_version_and_body_offset() -> None:
    # Given a member with seq 17 and version (server microseconds) 1700000000123456
    raw = member(17, 1_700_000_000_123_456, b"BODY")
    # When its header is parsed
    seq, version, offset = member_header(raw)
    # Then it names the seq, the version and where the body starts
    assert (seq, version) == (17, 1_700_000_000_123_456)
    assert raw[offset:] == b"BODY"


def test_decode_member_round_trips_encode_body() -> None:
    # Given three changes packed into one member starting at seq 5
    triples: list[tuple[str, ObjectId, int]] = [
        ("event", 42, CREATED | TITLE),
        ("contribution", "c-7", MOVED),
        ("event", 43, TITLE),
    ]
    raw = member(5, 1_700_000_000_000_999, encode_body(triples))
    # When it is decoded
    changes = decode_member(KEY, raw, 5.0)
    # Then each change gets first seq + its index, first version + its index, the member's
    # ts (its first version in milliseconds) and its own fields
    assert changes == [
        Change(5, 1_700_000_000_000, "event", 42, CREATED | TITLE, 1_700_000_000_000_999),
        Change(6, 1_700_000_000_000, "contribution", "c-7", MOVED, 1_700_000_000_001_000),
        Change(7, 1_700_000_000_000, "event", 43, TITLE, 1_700_000_000_001_001),
    ]


@pytest.mark.parametrize("object_id", [0, 42, 2**63 - 1, "42", "c-7", "é" * 256])
def test_decode_member_keeps_the_type_of_the_id(object_id: ObjectId) -> None:
    # Given a change whose id is an int or a string (42 and "42" are different objects)
    raw = member(1, 1_700_000_000_000_000, encode_body([("event", object_id, CREATED)]))
    # When it is decoded
    [change] = decode_member(KEY, raw, 1.0)
    # Then the id comes back with the same value and the same type
    assert change.id == object_id
    assert type(change.id) is type(object_id)


def test_iter_runs_splits_a_batch_into_runs_of_at_most_max_run() -> None:
    # Given a batch of 2 * MAX_RUN + 1 changes
    items: list[tuple[str, ObjectId, int]] = [("event", i, CREATED) for i in range(2 * MAX_RUN + 1)]
    # When it is split into runs
    runs = list(split_runs(items))
    # Then the runs hold at most MAX_RUN changes each and keep every change in order
    assert [len(run) for run in runs] == [MAX_RUN, MAX_RUN, 1]
    assert [item for run in runs for item in run] == items


CORRUPT = {
    "no header": (b"garbage", 9),
    "header not numbers": (b"x:y:" + encode_body([("event", 1, CREATED)]), 9),
    "body not msgpack": (member(9, 1, b"\xc1"), 9),
    "body truncated": (member(9, 1, encode_body([("event", 1, CREATED)])[:-1]), 9),
    "body not a list": (member(9, 1, msgpack.packb({"type": "event"})), 9),
    "body empty list": (member(9, 1, msgpack.packb([])), 9),
    "body wrong length": (member(9, 1, msgpack.packb(["event", 1])), 9),
    "flags zero": (member(9, 1, msgpack.packb(["event", 1, 0])), 9),
    "flags unknown bit": (member(9, 1, msgpack.packb(["event", 1, 1 << 20])), 9),
    "flags not int": (member(9, 1, msgpack.packb(["event", 1, "created"])), 9),
    "type not str": (member(9, 1, msgpack.packb([5, 1, CREATED])), 9),
    "id float": (member(9, 1, msgpack.packb(["event", 1.5, CREATED])), 9),
    "id bool": (member(9, 1, msgpack.packb(["event", True, CREATED])), 9),
    "second change corrupt": (member(9, 1, msgpack.packb(["event", 1, CREATED, "event", 2, 0])), 10),
    "type not a valid name": (member(9, 1, msgpack.packb(["Event", 1, CREATED])), 9),
    "id negative": (member(9, 1, msgpack.packb(["event", -1, CREATED])), 9),
    "id empty string": (member(9, 1, msgpack.packb(["event", "", CREATED])), 9),
    "id too long": (member(9, 1, msgpack.packb(["event", "x" * 257, CREATED])), 9),
    "id control character": (member(9, 1, msgpack.packb(["event", "a\x00b", CREATED])), 9),
    "flags appear and disappear": (member(9, 1, msgpack.packb(["event", 1, CREATED | 2])), 9),
}


@pytest.mark.parametrize(("raw", "seq"), list(CORRUPT.values()), ids=list(CORRUPT))
def test_decode_member_rejects_corrupt_member_naming_key_and_seq(raw: bytes, seq: int) -> None:
    # Given a corrupt member stored at score 9
    # When it is decoded
    with pytest.raises(DecodeError) as excinfo:
        decode_member(KEY, raw, 9.0)
    # Then the error names the key and the seq of the bad change, and keeps the raw bytes
    assert excinfo.value.key == KEY
    assert excinfo.value.seq == seq
    assert excinfo.value.raw == raw
    assert KEY in str(excinfo.value)
    assert f"at seq {seq}:" in str(excinfo.value)


def test_decode_member_rejects_header_seq_that_does_not_match_its_score() -> None:
    # Given a well-formed member whose header says seq 3 but is stored at score 4
    raw = member(3, 1, encode_body([("event", 1, CREATED)]))
    # When it is decoded
    with pytest.raises(DecodeError) as excinfo:
        decode_member(KEY, raw, 4.0)
    # Then the error names the key and the score's seq
    assert excinfo.value.seq == 4
    assert KEY in str(excinfo.value)


def test_published_member_decodes_with_the_server_header(any_redis: Any, namespace: str) -> None:
    # Given a run of two changes stored by the publish script
    keys = namespace_keys(namespace).partition(0)
    track = Track(any_redis, keys, 60, ensure_meta(any_redis, namespace_keys(namespace)).epoch)

    def server_us() -> int:
        seconds, micros = any_redis.time()
        return int(seconds) * 1_000_000 + int(micros)

    before = server_us()
    first = track.publish([(2, encode_body([("event", 42, CREATED), ("event", "42", MOVED)]))])
    after = server_us()
    # When the raw member is read back and decoded
    [bucket] = [bucket for bucket, _first in track.buckets()]
    [(raw, score)] = any_redis.zrange(keys.bucket(bucket), 0, -1, withscores=True)
    changes = decode_member(keys.bucket(bucket), raw, score)
    # Then the header carries the seq the script returned and the server's time as the version,
    # ids keep their type
    header_seq, version, _offset = member_header(raw)
    assert header_seq == first
    assert before <= version <= after
    ts = version // 1000
    assert changes == [
        Change(first, ts, "event", 42, CREATED, version),
        Change(first + 1, ts, "event", "42", MOVED, version + 1),
    ]
