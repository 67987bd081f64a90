"""The Django integration: ``"livesync.integrations.django"`` in ``INSTALLED_APPS``, ``settings.LIVESYNC``.

::

    INSTALLED_APPS = [..., "livesync.integrations.django"]
    LIVESYNC = {
        "REDIS_URL": "redis://localhost:6379/0",
        "NAMESPACE": "app",
        "MODE": "outbox",      # or "direct"
        "MODELS": {"events.Event": {"type": "event", "flags": {"title": "title_changed"},
                                    "soft_delete": "is_deleted"}},
    }

``manage.py migrate`` creates the outbox table (``livesync_outbox``, the same as
:func:`livesync.outbox.create_table` makes); ``manage.py livesync_relay`` moves its
committed rows to the track (``--once``: what is committed now). The keys of
``settings.LIVESYNC`` are in :mod:`livesync.integrations.django.conf`, what a save or a
delete gives in :mod:`livesync.integrations.rules`, how changes follow transactions in
:mod:`livesync.integrations.django.collector`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from livesync.integrations.django.collector import Collector


def collector() -> Collector:
    """The app's collector (after Django's setup)."""
    from django.apps import apps

    made: Collector | None = getattr(apps.get_app_config("livesync"), "collector", None)
    if made is None:
        raise RuntimeError("livesync.integrations.django is not ready: is it in INSTALLED_APPS?")
    return made


def register(model: Any, type: str, **options: Any) -> None:
    """Register ``model`` in code instead of ``settings.LIVESYNC['MODELS']`` (options as there).

    Registrations made here are forgotten when the settings change (a test's
    ``override_settings(LIVESYNC=...)``): settings are the durable place.
    """
    collector().register(model, type, **options)


__all__ = ["collector", "register"]
