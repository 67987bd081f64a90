"""livesync.connection.connect_queue: the one place that decides how to reach the queue's Redis."""

from __future__ import annotations

import pytest

from livesync.config import load_settings
from livesync.connection import connect_queue
from livesync.errors import RedisUnavailable


def test_connect_queue_uses_the_rq_url_when_set(redis_url: str) -> None:
    # the track's Redis does not answer, the queue's does: only the queue's is reached
    settings = load_settings(redis_url="redis://127.0.0.1:1/0", rq_url=redis_url)
    assert connect_queue(settings, check=True).ping()
    with pytest.raises(RedisUnavailable, match=r"127\.0\.0\.1:1/"):
        connect_queue(load_settings(redis_url=redis_url, rq_url="redis://127.0.0.1:1/0"), check=True)


def test_connect_queue_falls_back_to_the_track_url(redis_url: str) -> None:
    settings = load_settings(redis_url=redis_url)
    assert connect_queue(settings, check=True).ping()


def test_connect_queue_with_check_names_the_masked_url_when_nothing_answers() -> None:
    settings = load_settings(redis_url="redis://:hunter2@127.0.0.1:1/0")
    with pytest.raises(RedisUnavailable, match=r"redis://:\*\*\*@127.0.0.1:1/0") as caught:
        connect_queue(settings, check=True)
    assert "hunter2" not in str(caught.value)
