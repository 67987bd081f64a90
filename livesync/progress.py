"""Progress of a long command (``livesync agent export``, ``agent reindex``): count, rate, percent and ETA.

On a terminal one line is redrawn in place; elsewhere (a log, a pipe, cron's mail) a
whole line is written at most once per ``every`` seconds, so the output stays readable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import click

from livesync.output import age


class Progress:
    """A progress display: count, rate, and percent and ETA when the total is known.

    ``enabled`` draws one line in place (a terminal). Otherwise, with ``every`` given, a
    plain line is written for the first update and then at most once per ``every``
    seconds (0: every update). ``start`` is the count already done before (a resumed
    job): the rate counts only what this process did. Lines go to standard error.
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        enabled: bool,
        every: float | None = None,
        start: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.enabled = enabled
        self.every = every
        self.start = start
        self.count = start
        self.clock = clock
        self.started = clock()
        self._written: float | None = None  # when the last plain line was written

    def update(self, count: int) -> None:
        """Show ``count`` objects done."""
        self.count = count
        if self.enabled:
            click.echo(f"\r{self.line()}\x1b[K", nl=False, err=True)
            return
        if self.every is None:
            return
        now = self.clock()
        if self._written is None or now - self._written >= self.every:
            self._written = now
            click.echo(self.line(), err=True)

    def line(self) -> str:
        """What the display says now."""
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = (self.count - self.start) / elapsed
        line = f"{self.label}: {self.count:,}"
        if self.total:
            eta = (self.total - self.count) / rate if rate else 0.0
            line += f"/{self.total:,} ({100 * self.count / self.total:.0f}%), {rate:,.0f}/s, ETA {age(eta)}"
        else:
            line += f" objects, {rate:,.0f}/s"
        return line

    def close(self) -> None:
        """End the progress line."""
        if self.enabled:
            click.echo("", err=True)
