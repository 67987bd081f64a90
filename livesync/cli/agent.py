"""CLI commands on agents: ``livesync agent add|list|show|remove|pause|resume|run|reset``.

``agent export`` and ``agent dlq`` live in :mod:`livesync.cli.delivery`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import click
import redis as redis_lib
from pydantic import ValidationError

from livesync.backends import option_warnings, redact_options
from livesync.cli.app import AppContext, BadInput, Failure, Interrupted, echo_corrupt, json_option, pass_app
from livesync.errors import LiveSyncError, describe, describe_validation
from livesync.manager import Agent, Start, SyncManager
from livesync.output import age, echo_json, iso_s, table
from livesync.positions import parse_start
from livesync.runner import run_with_settings
from livesync.status import agent_status


def parse_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``KEY=VALUE`` pairs into a dict; a malformed pair is bad input."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = value
    return options


def start_option(text: str, option: str) -> Start:
    """A ``--start``/``--to`` value (see :func:`livesync.positions.parse_start`); bad input names the option."""
    try:
        return parse_start(text)
    except ValueError as exc:
        raise BadInput(f"{option}: {exc}") from exc


@click.group()
def agent() -> None:
    """Manage agents: one per target system, each with its own pointer."""


@agent.command("add")
@click.argument("agent_id", metavar="ID")
@click.option(
    "--backend",
    required=True,
    help="Backend: null, debug, jsonl, webhook, a plugin, or module:Class within LIVESYNC_ALLOWED_IMPORTS.",
)
@click.option(
    "--option",
    "option_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Backend option (repeatable). For secrets give VALUE as @env:NAME or @file:PATH: stored as written, "
    "read where the agent runs.",
)
@click.option("--name", default="", help="Human-readable name.")
@click.option("--description", default="", help="What this agent feeds.")
@click.option("--update-time", type=click.IntRange(min=0), default=60, show_default=True, help="Seconds between runs.")
@click.option(
    "--start",
    default="head",
    show_default=True,
    help="Where the pointer starts: head, tail, SEQ or ISO time.",
)
@click.option("--include-type", "include_types", multiple=True, help="Only sync objects of this type (repeatable).")
@click.option("--exclude-type", "exclude_types", multiple=True, help="Never sync objects of this type (repeatable).")
@click.option("--expander", help="Name of an expander (entry point livesync.expanders).")
@click.option(
    "--loader",
    help="Loads each batch's documents: a livesync.loaders entry point, or module:callable within "
    "LIVESYNC_ALLOWED_IMPORTS. Objects it does not return are uploaded as deleted.",
)
@click.option(
    "--needs-export",
    is_flag=True,
    help="Fence the pointer at the head and refuse runs until 'livesync agent export' has sent every object.",
)
@json_option
@pass_app
def add(
    app: AppContext,
    agent_id: str,
    backend: str,
    option_pairs: tuple[str, ...],
    name: str,
    description: str,
    update_time: int,
    start: str,
    include_types: tuple[str, ...],
    exclude_types: tuple[str, ...],
    expander: str | None,
    loader: str | None,
    needs_export: bool,
    as_json: bool,
) -> None:
    """Register an agent with a backend; its pointer starts at --start.

    \b
    livesync agent add search --backend jsonl --option path=/var/lib/search.jsonl
    \b
    head (default) syncs only changes published from now on; tail syncs everything
    still stored.
    """
    try:
        spec = Agent(
            id=agent_id,
            backend=backend,
            options=parse_options(option_pairs),
            name=name,
            description=description,
            update_time=update_time,
            include_types=list(include_types),
            exclude_types=list(exclude_types),
            expander=expander,
            loader=loader,
            state="needs_export" if needs_export else "active",
        )
    except ValidationError as exc:
        raise BadInput(_validation_message(exc)) from exc
    if needs_export and start != "head":
        raise BadInput("--needs-export starts at the head: the export sends what exists, the track what follows")
    created = app.manager.add_agent(spec, start=start_option(start, "--start"))
    pointers = app.manager.pointers(created.id)
    for warning in option_warnings(created.backend, created.options, app.settings.allowed_imports):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        echo_json({**_public(created, app), "pointers": pointers})
    else:
        click.echo(f"added agent {created.id} ({created.backend}); pointer at {_pointers(pointers)}")


@agent.command("list")
@json_option
@pass_app
def list_agents(app: AppContext, as_json: bool) -> None:
    """List agents with state, pointer and lag."""
    manager = app.existing_manager()
    now = time.time()
    rows = [agent_status(manager, agent, now) for agent in manager.list_agents()]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no agents")
        return
    click.echo(
        table(
            [
                [
                    r["id"],
                    r["backend"],
                    r["state"],
                    _pointers(r["pointers"]),
                    r["lag_changes"],
                    age(r["lag_seconds"]),
                    iso_s(r["last_run_at"]),
                    r["dead_letters"],
                    (r["last_error"] or "")[:60],
                ]
                for r in rows
            ],
            ["id", "backend", "state", "pointer", "lag", "lag age", "last run", "dead", "last error"],
        )
    )
    echo_corrupt(rows)


@agent.command("show")
@click.argument("agent_id", metavar="ID")
@json_option
@pass_app
def show(app: AppContext, agent_id: str, as_json: bool) -> None:
    """Show one agent: settings, pointers, lag, counters, last error."""
    manager = app.existing_manager()
    found = manager.get_agent(agent_id)
    data = {**_public(found, app), **agent_status(manager, found)}
    if as_json:
        echo_json(data)
        return
    for key, value in data.items():
        if key in ("last_run_at", "last_success_at", "created_at"):
            value = iso_s(value)
        elif key == "lag_seconds":
            value = age(value)
        elif key == "pointers":
            value = _pointers(value)
        elif key == "partitions":
            for item in value:
                click.echo(
                    f"{'partition ' + str(item['partition']) + ':':<17} pointer {item['pointer']}, "
                    f"lag {item['lag_changes']} change(s), {age(item['lag_seconds'])}"
                )
            continue
        click.echo(f"{key + ':':<17} {'-' if value in (None, '', [], {}) else value}")


@agent.command("remove")
@click.argument("agent_id", metavar="ID")
@pass_app
def remove(app: AppContext, agent_id: str) -> None:
    """Remove an agent, its pointers and dead letters (the track stays)."""
    app.existing_manager().remove_agent(agent_id)
    click.echo(f"removed agent {agent_id}")


@agent.command("pause")
@click.argument("agent_id", metavar="ID")
@pass_app
def pause(app: AppContext, agent_id: str) -> None:
    """Stop scheduling runs of an agent; its pointer stays where it is."""
    app.existing_manager().set_state(agent_id, "paused")
    click.echo(f"paused agent {agent_id}")


@agent.command("resume")
@click.argument("agent_id", metavar="ID")
@pass_app
def resume(app: AppContext, agent_id: str) -> None:
    """Schedule runs of a paused agent again."""
    manager = app.existing_manager()
    current = manager.get_agent(agent_id)
    if current.state not in ("paused", "active"):
        raise Failure(f"agent {agent_id!r} is in state {current.state}, not paused; see 'livesync agent show'")
    manager.set_state(agent_id, "active")
    click.echo(f"resumed agent {agent_id}")


@agent.command("run")
@click.argument("agent_id", metavar="ID")
@click.option("--partition", type=click.IntRange(min=0), help="Only this partition (default: all).")
@json_option
@pass_app
def run(app: AppContext, agent_id: str, partition: int | None, as_json: bool) -> None:
    """Run an agent now, in this process (it takes the same lock as workers).

    Ctrl-C stops it with exit 130: the pointer stays at the last acknowledged window,
    and the run is not counted as a failure.
    """
    manager = app.existing_manager()
    manager.get_agent(agent_id)
    settings = app.settings
    partitions = [partition] if partition is not None else list(range(manager.partitions))
    results: list[dict[str, Any]] = []
    for number in partitions:
        try:
            result = run_with_settings(manager, agent_id, number, settings)
        except (LiveSyncError, redis_lib.RedisError):
            raise  # one line from the group's handler, with the masked URL for Redis errors
        except KeyboardInterrupt:
            raise Interrupted(_interrupted(manager, agent_id, number)) from None
        except Exception as exc:
            raise Failure(
                f"run of {agent_id} partition {number} failed; its pointer stays at the last window the backend "
                f"accepted: {describe(exc)}"
            ) from exc
        results.append(result.to_dict())
        if not as_json:
            click.echo(
                f"{agent_id} partition {number}: {result.changes} change(s) -> {result.records} record(s)"
                f" ({result.rejected} dead-lettered), pointer {result.pointer_before} -> {result.pointer_after}"
                f" in {result.elapsed:.2f}s"
            )
    if as_json:
        echo_json(results)


def _interrupted(manager: SyncManager, agent_id: str, partition: int) -> str:
    """The line for a run stopped by Ctrl-C: where its pointer stayed (the run recorded no failure)."""
    where = f" in partition {partition}" if manager.partitions > 1 else ""
    try:
        pointer: int | str | None = manager.track(partition).pointer(agent_id)
    except redis_lib.RedisError:
        pointer = "unknown (Redis did not answer)"
    return f"interrupted; pointer at {pointer}{where} (the window in flight was not acknowledged)"


@agent.command("reset")
@click.argument("agent_id", metavar="ID")
@click.option("--to", "to", metavar="head|tail|SEQ|ISO-TIME", help="Where the pointer goes (required).")
@pass_app
def reset(app: AppContext, agent_id: str, to: str | None) -> None:
    """Move an agent's pointer (every partition) to --to; clears a gap state.

    tail resends everything still stored; head skips everything pending. The old
    pointers are printed: once a prune deletes what lies behind the new one, they
    cannot be restored.
    """
    manager = app.existing_manager()
    manager.get_agent(agent_id)
    if to is None:
        # no default: "head" used to be one, and a reset skips changes for good once pruned
        raise BadInput(
            "agent reset: --to is required (head, tail, a seq or an ISO time); "
            "the old pointer cannot be restored after a prune"
        )
    position = start_option(to, "--to")
    # read before the reset: a run finishing in between only makes these lower (a resend), never higher
    before = manager.pointers(agent_id)
    after = manager.reset_agent(agent_id, position)
    for partition, (old, new) in enumerate(zip(before, after, strict=True)):
        click.echo(f"pointer of {agent_id}: partition {partition}: {old} -> {new}")
    click.echo(f"agent {agent_id}: pointer at {_pointers(after)}")


def _public(found: Agent, app: AppContext) -> dict[str, Any]:
    """The agent's fields as printed: secrets in its backend options masked, references as written."""
    return {**found.model_dump(), "options": redact_options(found.backend, found.options, app.settings.allowed_imports)}


def _pointers(pointers: Sequence[int | None]) -> str:
    shown = ["?" if pointer is None else str(pointer) for pointer in pointers]  # None: a corrupt pointer
    return shown[0] if len(shown) == 1 else "[" + ", ".join(shown) + "]"


def _validation_message(exc: ValidationError) -> str:
    # pydantic's message as it is (not tidied): what this command always printed
    return describe_validation(exc.errors(), lambda location: ".".join(location) or "agent", tidy=False)
