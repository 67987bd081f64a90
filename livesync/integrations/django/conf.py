"""``settings.LIVESYNC``: the Django app's configuration, read and checked in one place.

::

    LIVESYNC = {
        "REDIS_URL": "redis://localhost:6379/0",   # direct mode's publisher, and the relay's
        "NAMESPACE": "app",
        "MODE": "direct",                          # or "outbox"
        "MODELS": {
            "events.Event": {"type": "event", "flags": {"title": "title_changed"},
                             "soft_delete": "is_deleted", "published": "is_public",
                             "m2m": {"tags": "data_changed"}},
            "events.Category": {"type": "category", "cascade": {"event_set": None}},
        },
        "DATABASE": "default",                     # the relay's database alias (its outbox table)
        "OUTBOX_URL": None,                        # the relay's SQLAlchemy URL; default: from DATABASES
    }
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.conf import settings as django_settings

from livesync import defaults
from livesync.errors import ConfigurationError
from livesync.keys import check_namespace_name

_KNOWN = {"REDIS_URL", "NAMESPACE", "MODE", "MODELS", "DATABASE", "OUTBOX_URL"}
#: SQLAlchemy drivers of Django's database vendors (livesync[sql] installs them).
_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}


@dataclass(frozen=True)
class Config:
    """What ``settings.LIVESYNC`` says, defaults filled in."""

    redis_url: str = defaults.REDIS_URL
    namespace: str = defaults.NAMESPACE
    mode: str = "direct"
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    database: str = "default"
    outbox_url: str | None = None


def read_config() -> Config:
    """Read ``settings.LIVESYNC`` (absent: every default); :class:`ConfigurationError` names a bad key."""
    raw = getattr(django_settings, "LIVESYNC", None) or {}
    if not isinstance(raw, dict):
        raise ConfigurationError("settings.LIVESYNC must be a dict")
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ConfigurationError(f"settings.LIVESYNC: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KNOWN))})")
    config = Config(
        redis_url=raw.get("REDIS_URL", defaults.REDIS_URL),
        namespace=check_namespace_name(raw.get("NAMESPACE", defaults.NAMESPACE)),
        mode=raw.get("MODE", "direct"),
        models=dict(raw.get("MODELS", {})),
        database=raw.get("DATABASE", "default"),
        outbox_url=raw.get("OUTBOX_URL"),
    )
    if config.mode not in ("direct", "outbox"):
        raise ConfigurationError(f"settings.LIVESYNC['MODE'] must be 'direct' or 'outbox', got {config.mode!r}")
    return config


def sqlalchemy_url(alias: str) -> str:
    """The SQLAlchemy URL of Django's database ``alias`` (for the relay, which reads with SQLAlchemy)."""
    from django.db import connections
    from sqlalchemy.engine import URL

    connection = connections[alias]
    database = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{database['NAME']}"
    driver = _DRIVERS.get(connection.vendor)
    if driver is None:
        raise ConfigurationError(
            f"database {alias!r} ({connection.vendor}): set settings.LIVESYNC['OUTBOX_URL'] to its SQLAlchemy URL"
        )
    query = {}
    options = database.get("OPTIONS", {}).get("options")
    if connection.vendor == "postgresql" and options:
        query["options"] = options  # e.g. "-c search_path=...": the relay must see the same table
    return URL.create(
        driver,
        username=database.get("USER") or None,
        password=database.get("PASSWORD") or None,
        host=database.get("HOST") or None,
        port=int(database["PORT"]) if database.get("PORT") else None,
        database=database.get("NAME") or None,
        query=query,
    ).render_as_string(hide_password=False)
