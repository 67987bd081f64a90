"""The ``livesync`` command line: the group, its global options, and its error contract.

Exit codes: 0 success, 2 bad usage or bad input, 1 any other failure, 130 Ctrl-C
(any command). Settings come from ``LIVESYNC_*`` and the global flags; passwords in
URLs are never printed. The commands live in one module per group (``agent``,
``delivery`` (agent export and dlq), ``track``, ``ops``, ``serve``, ``bench``, ``relay``), which
share only :mod:`livesync.cli.app`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
import redis as redis_lib

from livesync.cli import agent, bench, delivery, ops, relay, serve, track
from livesync.cli.app import (
    AppContext,
    BadInput,
    Failure,
    Interrupted,
    OneLineFormatter,
    json_option,
    pass_app,
)
from livesync.errors import (
    AgentExists,
    AgentNotFound,
    ConfigurationError,
    InvalidChange,
    LiveSyncError,
)
from livesync.urls import mask_url

__all__ = [
    "BAD_INPUT",
    "AppContext",
    "BadInput",
    "Failure",
    "Interrupted",
    "LiveSyncGroup",
    "OneLineFormatter",
    "json_option",
    "main",
    "pass_app",
    "run",
]

#: Errors that mean "bad usage or bad input": exit 2.
BAD_INPUT = (InvalidChange, ConfigurationError, AgentNotFound, AgentExists)


class LiveSyncGroup(click.Group):
    """Turns livesync errors into one-line messages with the contract's exit codes."""

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


for _module in (track, ops, serve, bench, relay):
    for _command in _module.COMMANDS:
        main.add_command(_command)
for _command in delivery.COMMANDS:
    agent.agent.add_command(_command)
main.add_command(agent.agent)


def run() -> None:
    """Entry point for ``python -m livesync``."""
    main(prog_name="livesync")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())  # type: ignore[func-returns-value]
