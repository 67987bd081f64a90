"""The Django app ``livesync.integrations.django``: connects the signals of ``settings.LIVESYNC``'s models."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig, apps
from django.core.signals import setting_changed

from livesync.client import Publisher
from livesync.errors import ConfigurationError
from livesync.integrations.django.collector import Collector
from livesync.integrations.django.conf import read_config


class LiveSyncConfig(AppConfig):
    """Builds the collector from ``settings.LIVESYNC`` when Django is ready (again when a test overrides it)."""

    name = "livesync.integrations.django"
    label = "livesync"
    verbose_name = "livesync"
    default_auto_field = "django.db.models.BigAutoField"
    collector: Collector | None = None

    def ready(self) -> None:
        self.configure()
        setting_changed.connect(self._setting_changed, dispatch_uid="livesync-settings")

    def configure(self) -> Collector:
        """(Re)build the collector from the settings and connect its signals."""
        if self.collector is not None:
            self.collector.disconnect()
            self.collector = None
        config = read_config()
        collector = Collector(
            config.mode,
            make_publisher=lambda: Publisher.from_url(config.redis_url, namespace=config.namespace),
            namespace=config.namespace,
        )
        for label, options in config.models.items():
            try:
                model = apps.get_model(label)
            except (LookupError, ValueError) as exc:
                raise ConfigurationError(f"settings.LIVESYNC['MODELS']: no model {label!r} ({exc})") from exc
            options = dict(options)
            if "type" not in options:
                raise ConfigurationError(f"settings.LIVESYNC['MODELS'][{label!r}]: 'type' is required")
            collector.register(model, options.pop("type"), **options)
        collector.connect()
        self.collector = collector
        return collector

    def _setting_changed(self, setting: str, **kwargs: Any) -> None:
        if setting == "LIVESYNC":
            self.configure()
