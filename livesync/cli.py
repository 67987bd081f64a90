"""The ``livesync`` command line.

Exit codes: 0 success, 2 bad usage or bad input, 1 any other failure, 130 Ctrl-C
(any command). Settings come
from ``LIVESYNC_*`` and the global flags; passwords in URLs are never printed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

import click
import redis as redis_lib

from livesync.config import Settings, load_settings
from livesync.connection import connect_track
from livesync.errors import (
    AgentExists,
    AgentNotFound,
    ConfigurationError,
    InvalidChange,
    LiveSyncError,
    describe,
)
from livesync.manager import SyncManager
from livesync.urls import mask_url

F = TypeVar("F", bound=Callable[..., Any])

#: Errors that mean "bad usage or bad input": exit 2.
BAD_INPUT = (InvalidChange, ConfigurationError, AgentNotFound, AgentExists)


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
    extra: dict[str, Any] = field(default_factory=dict)

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


class LiveSyncGroup(click.Group):
    """Turns livesync errors into one-line messages with the contract's exit codes.

    The subcommands live in ``cli_*`` modules that import this one; they are added on
    first use rather than at import, so importing any of them first works too.
    """

    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            from livesync import cli_agent, cli_bench, cli_ops, cli_serve, cli_track

            for module in (cli_track, cli_ops, cli_serve, cli_bench):
                for command in module.COMMANDS:
                    self.add_command(command)
            self.add_command(cli_agent.agent)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._load()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BAD_INPUT as exc:
            raise BadInput(str(exc)) from exc
        except LiveSyncError as exc:
            raise Failure(str(exc)) from exc
        except (redis_lib.ConnectionError, redis_lib.TimeoutError) as exc:
            app = ctx.find_object(AppContext)
            url = mask_url(app.settings.redis_url) if app and app._settings else "Redis"
            raise Failure(f"lost the connection to {url}: {exc}") from exc
        except redis_lib.RedisError as exc:
            raise Failure(f"Redis error: {exc}") from exc
        except KeyboardInterrupt:
            # click's own handling says "Aborted!" and exits 1; the contract says 130, one line
            # (``agent run`` raises its own Interrupted, saying where the pointer stayed)
            raise Interrupted("interrupted (Ctrl-C)") from None


def json_option(func: F) -> F:
    """Add ``--json`` (machine-readable output) to a command."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def fail(message: str) -> NoReturn:
    """Stop with a one-line failure (exit 1)."""
    raise Failure(message)


@click.group(cls=LiveSyncGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--redis-url",
    envvar="LIVESYNC_REDIS_URL",
    show_envvar=True,
    help="Redis holding the track (default redis://localhost:6379/0).",
)
@click.option("--namespace", "-n", envvar="LIVESYNC_NAMESPACE", show_envvar=True, help="Namespace of track and agents.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.version_option(package_name="livesync")
@click.pass_context
def main(ctx: click.Context, redis_url: str | None, namespace: str | None, verbose: int) -> None:
    """livesync: publish object changes once, keep many target systems in step.

    Applications publish change events to a track in Redis; each agent (one per
    target: search index, archive, mirror) has a pointer into it; RQ workers reduce
    each agent's pending changes to one record per object and upload them through the
    agent's backend. Settings come from LIVESYNC_* environment variables.

    \b
    Exit codes: 0 success, 2 bad usage or bad input, 1 other failures, 130 Ctrl-C.
    """
    level = logging.WARNING - 10 * verbose
    handler = logging.StreamHandler()
    formatter = logging.Formatter if verbose else OneLineFormatter
    handler.setFormatter(formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=max(level, logging.DEBUG), handlers=[handler])
    overrides: dict[str, Any] = {}
    if redis_url:
        overrides["redis_url"] = redis_url
    if namespace:
        overrides["namespace"] = namespace
    ctx.obj = AppContext(overrides)


def run() -> None:
    """Entry point for ``python -m livesync``."""
    main(prog_name="livesync")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())  # type: ignore[func-returns-value]
