"""``manage.py livesync_relay``: move the outbox's committed rows to the track (``livesync relay`` for Django)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from livesync.errors import LiveSyncError


class Command(BaseCommand):
    help = (
        "Publish the committed rows of the livesync_outbox table to the track, in id order, and delete them; "
        "exactly once (see 'livesync relay --help'). Runs until SIGTERM/Ctrl+C, or with --once drains and exits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="relay what is committed now, then exit")
        parser.add_argument("--database", help="the Django database alias of the outbox (default LIVESYNC['DATABASE'])")
        parser.add_argument("--batch", type=int, help="rows per batch (1-5000, default 500)")

    def handle(self, *args: Any, **options: Any) -> None:
        from livesync.connection import connect
        from livesync.integrations.django.conf import read_config, sqlalchemy_url
        from livesync.integrations.django.models import OutboxRow
        from livesync.signals import stop_on_signals

        try:
            from livesync.config import Settings
            from livesync.outbox.relay import open_relay
        except ImportError as exc:
            raise CommandError(f"the relay needs SQLAlchemy: pip install 'livesync[django,sql]' ({exc})") from exc
        config = read_config()
        url = config.outbox_url or sqlalchemy_url(options["database"] or config.database)
        settings = Settings(
            redis_url=config.redis_url,
            namespace=config.namespace,
            outbox_url=url,
            outbox_table=OutboxRow._meta.db_table,
        )
        redis = connect(settings.redis_url)
        try:
            relay = open_relay(settings, redis, batch=options["batch"])
            try:
                if options["once"]:
                    summary = relay.drain()
                else:
                    with stop_on_signals() as stop:
                        summary = relay.serve(stop, settings.relay_poll)
            finally:
                relay.engine.dispose()
        except LiveSyncError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            redis.close()
        self.stdout.write(f"relayed {summary.published} change(s) in {summary.batches} batch(es)")
