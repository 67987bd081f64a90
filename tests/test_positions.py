"""livesync.positions: the one parser of pointer positions and listing bounds written by people."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from livesync.positions import parse_bound, parse_start, parse_time


def test_parse_time_reads_naive_times_as_utc_and_accepts_z() -> None:
    assert parse_time("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time("2026-01-02T03:04:05Z") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("head", "head"), ("tail", "tail"), ("7", 7), ("2026-01-02T00:00:00", datetime(2026, 1, 2, tzinfo=UTC))],
)
def test_parse_start_reads_head_tail_seqs_and_times(text: str, expected: object) -> None:
    assert parse_start(text) == expected


@pytest.mark.parametrize("text", ["seq:3", "٣", "soon"])
def test_parse_start_refuses_anything_else_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not head, tail, a seq or an ISO time") as caught:
        parse_start(text)
    assert repr(text) in str(caught.value)


def test_parse_bound_reads_seqs_buckets_and_times_in_ms() -> None:
    assert parse_bound("seq:12") == ("seq", 12)
    assert parse_bound("3") == ("bucket", 3)
    assert parse_bound("1970-01-01T00:00:01.5Z") == ("time", 1500)


@pytest.mark.parametrize(
    ("text", "message"),
    [("seq:x", "is not seq:N"), ("head", "is not a bucket id, seq:N or an ISO time"), ("٣", "is not a bucket id")],
)
def test_parse_bound_refuses_anything_else_naming_the_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bound(text)
