"""CLI commands that serve HTTP: ``metrics`` (Prometheus) and ``dashboard`` (rq-dashboard).

Both bind 127.0.0.1 by default, print their URL (Redis URLs masked) and run until
SIGINT or SIGTERM. Neither needs Redis to answer at start: they report what they can
and recover when it comes back.
"""

from __future__ import annotations

import click

from livesync import dashboard as dashboard_server
from livesync import defaults
from livesync import metrics as metrics_server
from livesync.cli.app import AppContext, BadInput, Failure, pass_app
from livesync.connection import connect, ping
from livesync.errors import ConfigurationError, DashboardUnavailable, RedisUnavailable


@click.command(short_help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option(
    "--host",
    default=defaults.METRICS_HOST,
    show_default=True,
    help="Address to listen on. A non-loopback address (0.0.0.0, a LAN IP) exposes the metrics, "
    "agent ids included, to everyone who can reach it; there is no authentication.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=defaults.METRICS_PORT,
    show_default=True,
    help="Port to listen on (0: any free port, printed at start).",
)
@pass_app
def metrics(app: AppContext, host: str, port: int) -> None:
    """Serve Prometheus metrics of the namespace at http://HOST:PORT/metrics.

    Every scrape reads Redis afresh (the same figures as 'livesync status'): head,
    stored changes and memory per partition; pointer, lag in changes and seconds,
    state, dead letters and run counters per agent; jobs and workers of the RQ queue.
    When Redis does not answer, or the namespace does not exist, the scrape still
    succeeds with livesync_up 0 and the reason is logged. Runs until SIGINT or SIGTERM.

    \b
    Example scrape config:
      - job_name: livesync
        static_configs: [{targets: ["127.0.0.1:9468"]}]
    """
    settings = app.settings
    _warn_if_unreachable(settings.redis_url, "metrics report livesync_up 0 until it answers")
    try:
        metrics_server.serve(settings, host, port, announce=click.echo)
    except OSError as exc:
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


@click.command(short_help="Serve rq-dashboard for the RQ queue at http://HOST:PORT/.")
@click.option(
    "--host",
    default=defaults.DASHBOARD_HOST,
    show_default=True,
    help="Address to listen on. A non-loopback address (0.0.0.0, a LAN IP) exposes the dashboard, which "
    "shows job arguments and can delete and requeue jobs, to everyone who can reach it: set credentials first.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=defaults.DASHBOARD_PORT,
    show_default=True,
    help="Port to listen on (0: any free port, printed at start).",
)
@pass_app
def dashboard(app: AppContext, host: str, port: int) -> None:
    """Serve rq-dashboard for livesync's RQ queue at http://HOST:PORT/.

    Queued, running, scheduled and failed runs (with their tracebacks) and the
    workers, read with RQ's JSON serializer from the queue's Redis (LIVESYNC_RQ_URL,
    else the track's; every queue of that Redis shows, livesync's is LIVESYNC_QUEUE).
    Needs the dashboard extra: pip install 'livesync[dashboard]'. Runs until SIGINT
    or SIGTERM.

    \b
    HTTP basic auth credentials come from the environment only, never from the
    command line (where other users of the host could read them):
      LIVESYNC_DASHBOARD_USERNAME and LIVESYNC_DASHBOARD_PASSWORD
      (else rq-dashboard's RQ_DASHBOARD_USERNAME and RQ_DASHBOARD_PASSWORD).
    Without them the dashboard is open to anyone who can reach it.
    """
    settings = app.settings
    try:
        credentials = dashboard_server.credentials_from_settings(settings)
    except ConfigurationError as exc:
        raise BadInput(str(exc)) from exc
    try:
        dashboard_server.check_available()
    except DashboardUnavailable as exc:
        raise Failure(str(exc)) from exc
    _warn_if_unreachable(settings.queue_url, "the dashboard shows a connection error until it answers")
    try:
        dashboard_server.serve(settings, host, port, credentials=credentials, announce=click.echo)
    except OSError as exc:
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _warn_if_unreachable(url: str, consequence: str) -> None:
    """Warn (and go on) when Redis does not answer at start: servers outlive Redis restarts."""
    try:
        ping(connect(url), url)
    except RedisUnavailable as exc:
        click.echo(f"warning: {exc}; {consequence}", err=True)


COMMANDS = [metrics, dashboard]
