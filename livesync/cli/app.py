"""What every command module shares: the context, the errors with their exit codes, output options.

Command modules import this module (and library modules) only: never each other, never
the group in ``livesync.cli``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from livesync.config import Settings, load_settings
from livesync.connection import connect_track
from livesync.errors import ConfigurationError, describe
from livesync.manager import SyncManager
from livesync.urls import mask_url

F = TypeVar("F", bound=Callable[..., Any])


class OneLineFormatter(logging.Formatter):
    """Log lines without tracebacks, the exception named instead (the CLI's default; ``-v`` shows them)."""

    def formatException(self, ei: Any) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({describe(record.exc_info[1])})"
        return text


class BadInput(click.ClickException):
    """Bad usage or bad input: exit 2."""

    exit_code = 2


class Failure(click.ClickException):
    """Any other failure: exit 1."""

    exit_code = 1


class Interrupted(click.ClickException):
    """Stopped by Ctrl-C: exit 130 (128 + SIGINT, what shells report), the message as is."""

    exit_code = 130

    def show(self, file: Any = None) -> None:
        click.echo(self.format_message(), err=True)


@dataclass
class AppContext:
    """What every command receives: settings and lazily opened connections."""

    overrides: dict[str, Any]
    _settings: Settings | None = None
    _redis: Any = None
    _manager: SyncManager | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(**self.overrides)
            except ConfigurationError as exc:
                # one line naming each variable, never its value (a URL holds a password)
                raise BadInput(f"invalid settings: {exc}") from None
        return self._settings

    @property
    def redis(self) -> Any:
        if self._redis is None:
            self._redis = connect_track(self.settings, check=True)
        return self._redis

    @property
    def manager(self) -> SyncManager:
        if self._manager is None:
            self._manager = SyncManager(
                self.redis, self.settings.namespace, allowed_imports=self.settings.allowed_imports
            )
        return self._manager

    def existing_manager(self) -> SyncManager:
        """The manager of a namespace that must exist already (reads never create one)."""
        manager = self.manager
        if not manager.exists():
            raise BadInput(
                f"namespace {self.settings.namespace!r} does not exist at {mask_url(self.settings.redis_url)} "
                "(publish a change, add an agent or run 'livesync init' first)"
            )
        return manager


pass_app = click.make_pass_decorator(AppContext)


def json_option(func: F) -> F:
    """Add ``--json`` (machine-readable output) to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def echo_corrupt(agents: list[dict[str, Any]]) -> None:
    """One line per corrupt agent below a table, in full: the table cuts the key off."""
    for agent in agents:
        if agent["state"] == "corrupt":
            click.echo(f"agent {agent['id']} is corrupt (never run; fix or remove it): {agent['last_error']}")
