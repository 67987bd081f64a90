"""CLI command ``relay``: move committed outbox rows to the track (``livesync.outbox``)."""

from __future__ import annotations

import click

from livesync.cli.app import AppContext, json_option, pass_app
from livesync.output import echo_json
from livesync.signals import stop_on_signals
from livesync.urls import mask_url


@click.command()
@click.option("--db", "url", metavar="URL", help="SQLAlchemy URL of the outbox's database [LIVESYNC_OUTBOX_URL].")
@click.option("--table", help="Outbox table name [LIVESYNC_OUTBOX_TABLE, default livesync_outbox].")
@click.option("--create-table", is_flag=True, help="Create the table (and its index) first if it is missing.")
@click.option("--once", is_flag=True, help="Relay what is committed now, then exit.")
@click.option("--batch", type=click.IntRange(1, 5000), help="Rows per batch [LIVESYNC_RELAY_BATCH, default 500].")
@json_option
@pass_app
def relay(
    app: AppContext,
    url: str | None,
    table: str | None,
    create_table: bool,
    once: bool,
    batch: int | None,
    as_json: bool,
) -> None:
    """Publish the namespace's committed outbox rows to the track, in id order, and delete them.

    Exactly once: each batch's changes and the rows' marks land in Redis in one atomic
    call, so a relay killed at any point neither loses nor repeats a change. Run as many
    as you like on PostgreSQL or MySQL/MariaDB (they share the rows with FOR UPDATE SKIP
    LOCKED and keep each object's changes in order); SQLite relays take turns. Without
    --once it runs until SIGTERM or Ctrl+C, which let the batch in progress finish. It
    reports the outbox's lag (rows, oldest age) to Redis for 'livesync status' and
    'livesync metrics'.
    """
    from livesync.outbox.relay import open_relay

    settings = app.settings
    worker = open_relay(settings, app.redis, url=url, table=table, batch=batch, create=create_table)
    where = f"{mask_url(worker.url)} table {worker.table_name} to namespace {settings.namespace}"
    if once:
        summary = worker.drain()
    else:
        with stop_on_signals() as stop:
            # said once the handlers are in place: from this line on, SIGTERM is a warm stop
            click.echo(f"relay: {where} ({mask_url(settings.redis_url)}); SIGTERM or Ctrl+C stops it", err=True)
            summary = worker.serve(stop, settings.relay_poll)
    if as_json:
        echo_json(summary.to_dict())
    else:
        already = f" ({summary.already} published before, now deleted)" if summary.already else ""
        click.echo(f"relayed {summary.published} change(s) in {summary.batches} batch(es){already}")


COMMANDS = [relay]
