"""CLI commands that deliver outside the scheduled runs: ``livesync agent export`` and ``livesync agent dlq``.

The initial export of a new agent and the records its backend rejected (dead
letters); both are subcommands of the ``agent`` group (added in :mod:`livesync.cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Sized

import click

from livesync.cli.app import AppContext, BadInput, Failure, json_option, pass_app
from livesync.errors import LiveSyncError, describe
from livesync.output import echo_json, iso_s, table
from livesync.progress import Progress


@click.command("export")
@click.argument("agent_id", metavar="ID")
@click.option(
    "--source",
    required=True,
    metavar="MODULE:CALLABLE",
    help="Returns the objects: (type, id) or dicts. A livesync.sources entry point, or an import path "
    "inside LIVESYNC_ALLOWED_IMPORTS.",
)
@click.option("--batch-size", type=click.IntRange(1, 100_000), help="Records per upload (default LIVESYNC_BATCH_SIZE).")
@json_option
@pass_app
def export(app: AppContext, agent_id: str, source: str, batch_size: int | None, as_json: bool) -> None:
    """Send every existing object to a new agent's target (initial export).

    For an agent added with --needs-export. MODULE:CALLABLE is imported and called
    with no arguments; it returns an iterable of (type, id) pairs or dicts with type
    and id, each sent as a 'created' record. The agent becomes active only when all
    were accepted; otherwise run the export again. Changes published meanwhile are
    delivered by the runs that follow.
    """
    from livesync.export import export_agent, load_source

    manager = app.existing_manager()
    manager.get_agent(agent_id)
    produce = load_source(source, app.settings.allowed_imports)
    try:
        objects = produce()
    except Exception as exc:
        raise Failure(f"--source {source}: the callable failed: {describe(exc)}") from exc
    total = len(objects) if isinstance(objects, Sized) else None
    progress = Progress(f"exporting to {agent_id}", total, enabled=not as_json and sys.stderr.isatty())
    try:
        result = export_agent(
            manager,
            agent_id,
            objects,
            batch_size=batch_size or app.settings.batch_size,
            lock_ttl=app.settings.lock_ttl,
            progress=progress.update,
        )
    except LiveSyncError:
        raise
    except Exception as exc:
        raise Failure(
            f"export to {agent_id} failed after {progress.count} object(s); run it again: {describe(exc)}"
        ) from exc
    finally:
        progress.close()
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(
            f"exported {result.objects} object(s) to {agent_id}: {result.records} record(s) accepted, "
            f"{result.rejected} rejected, in {result.elapsed:.2f}s"
        )
    if not result.completed:
        raise Failure(
            f"{result.rejected} record(s) were rejected (see 'livesync agent dlq {agent_id}'); "
            f"{agent_id} still needs its export: fix the target and run the export again"
        )
    if not as_json:
        click.echo(f"{agent_id} is active; changes published since it was added follow with its next runs")


@click.command("dlq")
@click.argument("agent_id", metavar="ID")
@click.option("--requeue", is_flag=True, help="Upload the dead letters again; accepted ones leave the list.")
@click.option("--purge", is_flag=True, help="Drop every dead letter (asks first unless --yes).")
@click.option("--yes", is_flag=True, help="Do not ask before --purge.")
@click.option("--limit", type=click.IntRange(min=0), default=100, show_default=True, help="Rows shown (0: all).")
@json_option
@pass_app
def dlq(app: AppContext, agent_id: str, requeue: bool, purge: bool, yes: bool, limit: int, as_json: bool) -> None:
    """List, requeue or purge the records a backend rejected (dead letters).

    --requeue exits 1 when the backend rejects some of them again (they stay listed).
    """
    from livesync import deadletters

    manager = app.existing_manager()
    manager.get_agent(agent_id)
    if requeue and purge:
        raise BadInput("--requeue and --purge exclude each other")
    if requeue:
        try:
            outcome = deadletters.requeue(manager, agent_id, lock_ttl=app.settings.lock_ttl)
        except LiveSyncError:
            raise
        except Exception as exc:
            raise Failure(
                f"requeue of {agent_id}'s dead letters failed; letters not requeued stay on the list: {describe(exc)}"
            ) from exc
        if as_json:
            echo_json(outcome)
        else:
            click.echo(f"requeued {outcome['requeued']} record(s); {outcome['rejected']} rejected again")
        if outcome["rejected"]:
            # scripts must notice: the target still refuses them (they stay on the list)
            raise Failure(
                f"{outcome['rejected']} dead letter(s) of {agent_id} were rejected again and stay on the list; "
                f"see 'livesync agent dlq {agent_id}'"
            )
        return
    if purge:
        count = deadletters.count(manager, agent_id)
        if not yes:
            if not sys.stdin.isatty():
                raise BadInput(f"refusing to purge {count} dead letter(s) of {agent_id} without --yes")
            click.confirm(f"drop {count} dead letter(s) of {agent_id}?", abort=True)
        dropped = deadletters.purge(manager, agent_id)
        if as_json:
            echo_json({"purged": dropped})
        else:
            click.echo(f"purged {dropped} dead letter(s) of {agent_id}")
        return
    letters = deadletters.entries(manager, agent_id)
    shown = letters[:limit] if limit else letters
    if as_json:
        echo_json(shown)
        return
    if not letters:
        click.echo(f"no dead letters for {agent_id}")
        return
    rows = [
        [
            e["partition"],
            e["record"]["seq"],
            e["record"]["type"],
            repr(e["record"]["id"]),
            e["record"]["action"],
            iso_s(e.get("at")),
            str(e["reason"])[:80],
        ]
        for e in shown
    ]
    click.echo(table(rows, ["partition", "seq", "type", "id", "action", "at", "reason"]))
    if len(shown) < len(letters):
        click.echo(f"({len(letters) - len(shown)} more; --limit 0 shows all)", err=True)


COMMANDS = [export, dlq]
