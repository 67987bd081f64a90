"""livesync.publish_file: JSON lines validated all before any is published, spans per partition."""

from __future__ import annotations

import io

import pytest
import redis

from livesync.client import Publisher
from livesync.errors import InvalidChange
from livesync.publish_file import MAX_LINE_BYTES, publish_triples, read_change_lines


def test_read_change_lines_returns_one_triple_per_line_skipping_blank_ones() -> None:
    stream = io.BytesIO(
        b'{"type": "event", "id": 1, "changes": ["created"]}\n'
        b"\n"
        b'{"type": "event", "id": "c-2", "changes": ["deleted"]}\n'
    )
    triples = read_change_lines(stream)
    assert [(t[0], t[1]) for t in triples] == [("event", 1), ("event", "c-2")]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"[1]\n", "line 2: must be a JSON object"),
        (b"{bad\n", "line 2: invalid JSON"),
        (b"\xff\n", "line 2: not valid UTF-8"),
        (b"x" * (MAX_LINE_BYTES + 1), f"line 2: longer than {MAX_LINE_BYTES} bytes"),
        (b'{"type": "event", "id": 1, "changes": ["bogus"]}\n', "line 2: changes[0]: unknown flag 'bogus'"),
    ],
)
def test_read_change_lines_raises_invalid_change_naming_the_bad_line(content: bytes, reason: str) -> None:
    good = b'{"type": "event", "id": 1, "changes": ["created"]}\n'
    with pytest.raises(InvalidChange) as caught:
        read_change_lines(io.BytesIO(good + content))
    assert str(caught.value).startswith(reason)


def test_publish_triples_returns_the_first_and_last_seq_of_each_partition(
    real_redis: redis.Redis, namespace: str
) -> None:
    publisher = Publisher(real_redis, namespace, partitions=2)
    triples = read_change_lines(
        io.BytesIO(b"".join(b'{"type": "event", "id": %d, "changes": ["created"]}\n' % n for n in range(20)))
    )
    spans = publish_triples(publisher, triples)
    assert sorted(spans) == list(spans)
    assert set(spans) == {0, 1}
    heads = {p: int(real_redis.get(publisher.keys.partition(p).seq) or 0) for p in spans}
    assert all(low == 1 and high == heads[p] for p, (low, high) in spans.items())
    assert sum(high for _low, high in spans.values()) == 20
