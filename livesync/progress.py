"""A one-line progress display on a terminal (``livesync agent export``)."""

from __future__ import annotations

import time

import click

from livesync.output import age


class Progress:
    """A one-line progress display on a terminal: count, rate, and percent and ETA when the total is known."""

    def __init__(self, label: str, total: int | None, *, enabled: bool) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.count = 0
        self.started = time.monotonic()

    def update(self, count: int) -> None:
        """Show ``count`` objects done."""
        self.count = count
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = count / elapsed
        line = f"{self.label}: {count:,}"
        if self.total:
            eta = (self.total - count) / rate if rate else 0.0
            line += f"/{self.total:,} ({100 * count / self.total:.0f}%), {rate:,.0f}/s, ETA {age(eta)}"
        else:
            line += f" objects, {rate:,.0f}/s"
        click.echo(f"\r{line}\x1b[K", nl=False, err=True)

    def close(self) -> None:
        """End the progress line."""
        if self.enabled:
            click.echo("", err=True)
