"""CLI command ``livesync agent reindex``: rebuild an agent's target in a new generation and swap it in.

A subcommand of the ``agent`` group (added in :mod:`livesync.cli`); the procedure is
:mod:`livesync.reindex`.
"""

from __future__ import annotations

import sys

import click

from livesync import defaults
from livesync.cli.app import AppContext, BadInput, Failure, json_option, pass_app
from livesync.errors import LiveSyncError, describe
from livesync.output import echo_json
from livesync.progress import Progress

#: Seconds between progress lines where standard error is no terminal (a log, cron's mail).
PROGRESS_EVERY = 10.0


class PhaseProgress:
    """The reindex's progress callback: one :class:`Progress` per phase (and per catch-up pass)."""

    def __init__(self, agent_id: str, *, terminal: bool, every: float | None) -> None:
        self.agent_id = agent_id
        self.terminal = terminal
        self.every = every
        self.shown: tuple[str, int | None] | None = None
        self.current: Progress | None = None

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if self.current is None or self.shown != (phase, total):
            self.close()
            self.shown = (phase, total)
            label = f"reindex {self.agent_id}: {phase}"
            self.current = Progress(label, total, enabled=self.terminal, every=self.every, start=done)
        self.current.update(done)

    @property
    def count(self) -> int:
        """The count the current phase reached."""
        return self.current.count if self.current is not None else 0

    def close(self) -> None:
        """End the current line."""
        if self.current is not None:
            self.current.close()


@click.command("reindex")
@click.argument("agent_id", metavar="ID")
@click.option(
    "--source",
    metavar="NAME|MODULE:CALLABLE",
    help="Returns every object: (type, id) or dicts, in a stable order (a resumed reindex goes on after the last "
    "object it exported). A livesync.sources entry point, or an import path inside LIVESYNC_ALLOWED_IMPORTS.",
)
@click.option("--drop-old", is_flag=True, help="Drop the old generation after the swap (default: keep it).")
@click.option("--abandon", is_flag=True, help="Stop a reindex in progress for good: drop its new generation.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), help="Records per upload (default LIVESYNC_BATCH_SIZE).")
@click.option(
    "--swap-wait",
    type=click.FloatRange(min=0),
    default=defaults.REINDEX_SWAP_WAIT,
    show_default=True,
    help="Seconds to wait for runs in flight to release the agent's run locks before the swap.",
)
@click.option(
    "--progress-every",
    type=click.FloatRange(min=0),
    default=PROGRESS_EVERY,
    show_default=True,
    help="Seconds between progress lines when standard error is no terminal.",
)
@json_option
@pass_app
def reindex(
    app: AppContext,
    agent_id: str,
    source: str | None,
    drop_old: bool,
    abandon: bool,
    batch_size: int | None,
    swap_wait: float,
    progress_every: float,
    as_json: bool,
) -> None:
    """Rebuild an agent's target in a new generation while it stays live, then swap it in.

    For backends with generations: opensearch (a new index behind the alias the agent
    writes through) and sql (a new table renamed into place in one transaction). Runs
    go on writing the live generation meanwhile; searches see it until the swap. The
    changes published during the reindex follow into the new generation, so none is
    lost. Killed or failed, the reindex continues where it stopped when run again with
    the same --source.
    """
    from livesync.export import load_source
    from livesync.reindex import abandon_reindex, reindex_agent

    manager = app.existing_manager()
    manager.get_agent(agent_id)
    settings = app.settings
    if abandon:
        if source is not None or drop_old:
            raise BadInput("--abandon takes no --source or --drop-old")
        dropped = abandon_reindex(manager, agent_id, lock_ttl=settings.lock_ttl)
        if as_json:
            echo_json({"agent": agent_id, "dropped": dropped})
        else:
            click.echo(f"abandoned the reindex of {agent_id}" + (f"; dropped {dropped}" if dropped else ""))
        return
    if source is None:
        raise BadInput("agent reindex: --source is required (or --abandon)")
    produce = load_source(source, settings.allowed_imports)
    progress = PhaseProgress(
        agent_id, terminal=not as_json and sys.stderr.isatty(), every=None if as_json else progress_every
    )
    try:
        result = reindex_agent(
            manager,
            agent_id,
            produce,
            source_name=source,
            drop_old=drop_old,
            batch_size=batch_size or settings.batch_size,
            window=settings.window,
            lock_ttl=settings.lock_ttl,
            swap_wait=swap_wait,
            progress=progress,
        )
    except LiveSyncError:
        raise
    except Exception as exc:
        raise Failure(
            f"reindex of {agent_id} stopped (its {progress.shown[0] if progress.shown else 'start'} had reached "
            f"{progress.count}); run it again to continue: {describe(exc)}"
        ) from exc
    finally:
        progress.close()
    if as_json:
        echo_json(result.to_dict())
        return
    click.echo(
        f"reindexed {agent_id}{' (resumed)' if result.resumed else ''}: {result.objects} object(s) exported, "
        f"{result.changes} change(s) caught up, {result.rejected} rejected (see 'livesync agent dlq {agent_id}'), "
        f"in {result.elapsed:.2f}s; {result.generation} is live"
    )
    if result.dropped:
        click.echo(f"dropped the old generation {result.retired}")
    else:
        click.echo(f"the old generation is kept as {result.retired}; drop it when nothing reads it (or use --drop-old)")


COMMANDS = [reindex]
