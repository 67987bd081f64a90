"""CLI commands on the track: ``init``, ``publish``, ``list``, ``destroy``."""

from __future__ import annotations

from typing import IO, Any

import click

from livesync.changes import Change
from livesync.cli.app import AppContext, BadInput, json_option, pass_app
from livesync.client import Publisher, validate_item
from livesync.errors import NamespaceDamaged
from livesync.namespace import ensure_meta
from livesync.output import echo_json, iso_ms, table
from livesync.positions import Bound, parse_bound
from livesync.publish_file import publish_triples, read_change_lines
from livesync.query import list_changes as query_changes
from livesync.redis_policy import check_settings
from livesync.repair import repair_meta
from livesync.urls import mask_url


def namespace_options(app: AppContext) -> dict[str, int]:
    """Partitions and granularity, only where the user set them (else the namespace decides)."""
    settings = app.settings
    return {
        name: getattr(settings, name) for name in ("partitions", "granularity") if name in settings.model_fields_set
    }


@click.command()
@click.option("--partitions", type=click.IntRange(1, 1024), help="Partitions of a new namespace (fixed after).")
@click.option("--granularity", type=click.IntRange(1, 86400), help="Bucket width in seconds (fixed after).")
@click.option(
    "--repair",
    is_flag=True,
    help="Restore a damaged namespace (meta or a partition's head lost, other keys kept); needs --partitions.",
)
@json_option
@pass_app
def init(app: AppContext, partitions: int | None, granularity: int | None, repair: bool, as_json: bool) -> None:
    """Create the namespace (or check it) with its partitions and granularity.

    Both are fixed when a namespace is created; asking for other values later is
    refused. Publishing or adding an agent creates the namespace too, with
    LIVESYNC_PARTITIONS / LIVESYNC_GRANULARITY or the defaults (1 partition, 60 s).

    With --repair, a namespace whose meta is missing while its agents or partitions
    remain gets its meta back: with the epoch its partitions hold when they agree (so
    agents and publishers go on), else with a new epoch written to every partition.
    A P other than the namespace's (fewer than hold keys, more than hold an epoch) is
    refused. A partition that lost its head gets it back above every pointer and
    stored change, so publishing goes on.
    """
    wanted = namespace_options(app)
    if partitions is not None:
        wanted["partitions"] = partitions
    if granularity is not None:
        wanted["granularity"] = granularity
    notes: list[str] = []
    repaired = False
    if repair:
        if "partitions" not in wanted:
            raise BadInput("init --repair needs --partitions P: the number of partitions the namespace had")
        outcome = repair_meta(app.redis, app.manager.keys, **wanted)
        meta, repaired, notes = outcome.meta, outcome.repaired, outcome.notes
    else:
        meta = ensure_meta(app.redis, app.manager.keys, **wanted)
    data: dict[str, Any] = {
        "namespace": app.settings.namespace,
        "partitions": meta.partitions,
        "granularity": meta.granularity,
        "epoch": meta.epoch,
    }
    if repair:
        data.update(repaired=repaired, notes=notes)
    if as_json:
        echo_json(data)
        return
    click.echo(f"namespace {data['namespace']}: {meta.partitions} partition(s), {meta.granularity} s buckets")
    for note in notes:
        click.echo(f"repaired: {note}")
    if repair and not repaired:
        click.echo("nothing to repair")


def parse_id(text: str, string_id: bool) -> int | str:
    """An ID argument: canonical non-negative integers become ints unless ``--string-id``."""
    if not string_id and text.isascii() and text.isdigit() and text == str(int(text)):
        return int(text)
    return text


@click.command()
@click.argument("type_", metavar="TYPE", required=False)
@click.argument("object_id", metavar="ID", required=False)
@click.argument("changes", metavar="CHANGE...", nargs=-1)
@click.option(
    "--file",
    "source",
    type=click.File("rb"),
    help='JSON lines {"type": ..., "id": ..., "changes": [...]} from PATH, or - for standard input.',
)
@click.option("--string-id", is_flag=True, help="Keep ID a string even when it is all digits.")
@json_option
@pass_app
def publish(
    app: AppContext,
    type_: str | None,
    object_id: str | None,
    changes: tuple[str, ...],
    source: IO[bytes] | None,
    string_id: bool,
    as_json: bool,
) -> None:
    """Publish changes: one from the arguments, or many from --file.

    \b
    livesync publish event 42 created title_changed
    livesync publish --file changes.jsonl
    \b
    Every line of a file is validated before anything is published: one bad line
    publishes nothing and names its line number. ID becomes an integer when it is
    one (42), a string otherwise (c-7); --string-id keeps "42" a string.
    """
    if source is not None:
        if type_ is not None:
            raise BadInput("give either TYPE ID CHANGE... or --file, not both")
        triples = read_change_lines(source)
    else:
        if type_ is None or object_id is None or not changes:
            raise click.UsageError("need TYPE ID CHANGE... (or --file PATH)")
        triples = [validate_item((type_, parse_id(object_id, string_id), list(changes)))]
    check_settings(app.redis, app.settings)  # refused with the setting's name, not the Python keyword's
    publisher = Publisher(
        app.redis,
        app.settings.namespace,
        url=app.settings.redis_url,
        allow_eviction=app.settings.allow_eviction,
        **namespace_options(app),
    )
    spans = publish_triples(publisher, triples)
    partitions = publisher.meta.partitions
    data = {
        "published": len(triples),
        "partitions": {str(p): {"first_seq": lo, "last_seq": hi} for p, (lo, hi) in spans.items()},
    }
    if as_json:
        echo_json(data)
        return
    where = ", ".join(
        f"seq {lo}" + (f"..{hi}" if hi != lo else "") + (f" (partition {p})" if partitions > 1 else "")
        for p, (lo, hi) in spans.items()
    )
    click.echo(f"published {len(triples)} change(s): {where or 'nothing'}")


def bound_option(text: str | None, option: str) -> Bound | None:
    """A ``list`` bound (see :func:`livesync.positions.parse_bound`); bad input names the option."""
    if text is None:
        return None
    try:
        return parse_bound(text)
    except ValueError as exc:
        raise BadInput(f"{option}: {exc}") from exc


@click.command(name="list")
@click.option("--from", "from_", metavar="T", help="Lower bound, excluded: bucket id, seq:N or ISO time.")
@click.option("--to", metavar="T", help="Upper bound, included: bucket id, seq:N or ISO time.")
@click.option("--agent", "agent_id", metavar="ID", help="Only what this agent has not acknowledged yet.")
@click.option("--limit", type=click.IntRange(min=0), default=1000, show_default=True, help="0: no limit.")
@json_option
@pass_app
def list_changes(
    app: AppContext, from_: str | None, to: str | None, agent_id: str | None, limit: int, as_json: bool
) -> None:
    """List stored changes in the interval ]--from, --to].

    As in the original indico_livesync list, the lower bound is excluded and the
    upper included. Bounds are bucket ids (server time // granularity), seq:N, or ISO
    times; with several partitions, seq bounds apply in each partition. With
    --agent, only that agent's pending changes, after its object filter.
    """
    manager = app.existing_manager()
    low, high = bound_option(from_, "--from"), bound_option(to, "--to")
    agent = manager.get_agent(agent_id) if agent_id else None
    rows, more = query_changes(manager, low, high, agent=agent, limit=limit)
    if more:
        click.echo(f"(stopped at --limit {limit})", err=True)
    if as_json:
        echo_json([_change_dict(partition, change, manager.granularity) for partition, change in rows])
        return
    headers = ["seq", "partition", "time", "bucket", "type", "id", "changes"]
    body: list[list[Any]] = [
        [
            c.seq,
            p,
            iso_ms(c.ts),
            c.ts // 1000 // manager.granularity,
            c.type,
            repr(c.id),
            ",".join(c.flag_names),
        ]
        for p, c in rows
    ]
    click.echo(table(body, headers) if body else "no changes")


def _change_dict(partition: int, change: Change, granularity: int) -> dict[str, Any]:
    return {
        "seq": change.seq,
        "partition": partition,
        "ts": change.ts,
        "time": iso_ms(change.ts),
        "bucket": change.ts // 1000 // granularity,
        "type": change.type,
        "id": change.id,
        "changes": list(change.flag_names),
        "version": change.version,
    }


@click.command()
@click.option("--agents-only", is_flag=True, help="Delete the agents and their pointers, keep the track.")
@click.option("--track-only", is_flag=True, help="Delete the stored changes, keep agents and pointers.")
@click.option("--yes", is_flag=True, help="Confirm: without it nothing is deleted.")
@pass_app
def destroy(app: AppContext, agents_only: bool, track_only: bool, yes: bool) -> None:
    """Delete the namespace's track and/or agents (the original's reset).

    Refuses without --yes. With --track-only the head is kept, so seqs are never
    handed out twice and the agents' pointers stay valid.
    """
    if agents_only and track_only:
        raise BadInput("--agents-only and --track-only exclude each other")
    what = "agents" if agents_only else "track" if track_only else "track and agents"
    if not yes:
        raise BadInput(f"refusing to delete the {what} of namespace {app.settings.namespace!r} without --yes")
    try:
        exists = app.manager.exists()
    except NamespaceDamaged:
        exists = True  # a damaged namespace (meta lost, other keys left) is deleted all the same
    if not exists:
        # exit 0: what destroy asks for (no such namespace) holds; the line shows a mistyped name
        click.echo(
            f"namespace {app.settings.namespace!r} does not exist at {mask_url(app.settings.redis_url)}; "
            "nothing deleted"
        )
        return
    deleted = app.manager.destroy(agents_only=agents_only, track_only=track_only)
    click.echo(f"deleted the {what} of namespace {app.settings.namespace!r} ({deleted} key(s))")


COMMANDS = [init, publish, list_changes, destroy]
