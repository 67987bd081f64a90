"""Passwords in Redis URLs are masked before anything prints them (:func:`livesync.urls.mask_url`)."""

from __future__ import annotations

import pytest

from livesync.urls import mask_url

MASKED = {
    "password only": ("redis://:hunter2@localhost:6379/0", "redis://:***@localhost:6379/0"),
    "user and password": ("redis://alice:hunter2@localhost:6379/0", "redis://alice:***@localhost:6379/0"),
    "no port or db": ("redis://alice:hunter2@localhost", "redis://alice:***@localhost"),
    "tls": ("rediss://alice:hunter2@redis.example:6380/1", "rediss://alice:***@redis.example:6380/1"),
    "percent-encoded password": ("redis://:hun%40ter2@localhost/0", "redis://:***@localhost/0"),
    "password with @": ("redis://:hun@ter2@localhost/0", "redis://:***@localhost/0"),
    "unix socket password": (
        "unix:///run/redis.sock?password=hunter2",
        "unix:///run/redis.sock?password=***",
    ),
    "unix socket password after db": (
        "unix:///run/redis.sock?db=2&password=hunter2",
        "unix:///run/redis.sock?db=2&password=***",
    ),
    "unix socket with userinfo": (
        "unix://alice:hunter2@/run/redis.sock?db=0",
        "unix://alice:***@/run/redis.sock?db=0",
    ),
    "password in query of redis url": (
        "redis://localhost:6379/0?password=hunter2",
        "redis://localhost:6379/0?password=***",
    ),
}


@pytest.mark.parametrize(("url", "expected"), list(MASKED.values()), ids=list(MASKED))
def test_mask_url_masks_the_password(url: str, expected: str) -> None:
    # Given a Redis URL carrying a password
    # When it is masked
    masked = mask_url(url)
    # Then the password is replaced by *** and the rest of the URL is kept
    assert masked == expected
    assert "hunter2" not in masked
    assert "ter2" not in masked


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://localhost",
        "rediss://redis.example:6380/1",
        "unix:///run/redis.sock",
        "unix:///run/redis.sock?db=1",
        "redis://localhost:6379/0?socket_timeout=5",
    ],
)
def test_mask_url_leaves_url_without_password_unchanged(url: str) -> None:
    # Given a Redis URL without any password
    # When it is masked
    masked = mask_url(url)
    # Then it comes back unchanged
    assert masked == url


def test_mask_url_masks_lone_userinfo_that_clients_may_read_as_password() -> None:
    # Given a URL whose userinfo has no colon (some clients take it as the password)
    url = "redis://hunter2@localhost:6379/0"
    # When it is masked
    masked = mask_url(url)
    # Then the userinfo is masked too
    assert masked == "redis://***@localhost:6379/0"


def test_mask_url_of_unparsable_url_hides_the_password() -> None:
    # Given a URL a URL parser cannot parse, with a password in it
    url = "redis://:hunter2@[::1/0"
    # When it is masked
    masked = mask_url(url)
    # Then the password is not shown
    assert "hunter2" not in masked
    assert masked == "redis://:***@[::1/0"


@pytest.mark.parametrize("password", ["hun/ter2", "hun?ter2", "hun#ter2"])
def test_mask_url_masks_password_with_unencoded_delimiters(password: str) -> None:
    # Given a URL whose password holds a URL delimiter that was not percent-encoded
    url = f"redis://:{password}@localhost:6379/0"
    # When it is masked
    masked = mask_url(url)
    # Then no part of the password is shown
    assert "hun" not in masked
    assert "ter2" not in masked


@pytest.mark.parametrize("name", ["token", "api_key", "secret", "auth", "Password"])
def test_mask_url_masks_query_parameters_named_like_secrets(name: str) -> None:
    # Given a URL carrying a credential in its query, next to a harmless parameter
    url = f"https://example.org/hook?{name}=hunter2&page=3"
    # When it is masked
    masked = mask_url(url)
    # Then the credential is hidden and the rest is kept
    assert masked == f"https://example.org/hook?{name}=***&page=3"
