"""``livesync agent reindex``: the command, and what the procedure guarantees whatever the target.

Run on the ``sql`` backend over SQLite (a real database in the test's directory, no
server); the scenarios every backend with generations passes, on each real target, are
in ``tests/backends/test_reindex_*.py`` (:mod:`support.reindex_scenarios`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, inspect, select
from support import loaders, reindex_sources
from support.reindex_scenarios import AGENT, Crash, Source, document

from livesync import deadletters
from livesync.backends.sql_mirror import mirror_table
from livesync.cli import main
from livesync.client import Publisher
from livesync.errors import AgentBusy, AgentNotRunnable, ConfigurationError
from livesync.keys import reindex_pointer
from livesync.lock import RunLock
from livesync.manager import Agent, SyncManager
from livesync.progress import Progress
from livesync.reindex import abandon_reindex, reindex_agent
from livesync.reindex_state import load_state
from livesync.runner import run_agent

Invoke = Callable[..., Result]
TABLE = "mirror"
SOURCE = "support.reindex_sources:objects"


@pytest.fixture
def database(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mirror.db'}"


def rows(database: str, name: str = TABLE) -> dict[str, Any]:
    engine = create_engine(database)
    try:
        with engine.connect() as connection:
            found = connection.execute(select(mirror_table(name))).all()
    finally:
        engine.dispose()
    return {f"{row.type}:{row.id}": row.document for row in found if not row.deleted}


def tables(database: str) -> set[str]:
    engine = create_engine(database)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def importing_manager(real_redis: redis.Redis, namespace: str) -> SyncManager:
    """A manager whose plugins may come from ``support`` (the test loaders and sources)."""
    return SyncManager(real_redis, namespace, allowed_imports=("support",))


@pytest.fixture
def synced(importing_manager: SyncManager, publisher: Publisher, database: str) -> Iterator[SyncManager]:
    """Agent ``search`` (sql on SQLite, loader ``support.loaders:load``) holding twenty events in shape 1."""
    loaders.SOURCE.clear()
    loaders.CALLS.clear()
    options = {"url": database, "table": TABLE, "create": "true"}
    importing_manager.add_agent(Agent(id=AGENT, backend="sql", options=options, loader="support.loaders:load"))
    for number in range(1, 21):
        loaders.SOURCE[("event", number)] = document(number, 1)
        publisher.emit("event", number, "created")
    run_agent(importing_manager, AGENT)
    for number in range(1, 21):
        loaders.SOURCE[("event", number)] = document(number, 2)
    yield importing_manager
    loaders.SOURCE.clear()
    loaders.CALLS.clear()
    reindex_sources.CRASH_AT = 11


@pytest.fixture
def importing_cli(cli_environment: dict[str, str]) -> Invoke:
    """``livesync ARGS`` in-process, with ``LIVESYNC_ALLOWED_IMPORTS=support``."""
    runner = CliRunner()
    env = {**cli_environment, "LIVESYNC_ALLOWED_IMPORTS": "support"}
    return lambda *args: runner.invoke(main, list(args), env=env)


def expected() -> dict[str, Any]:
    return {f"{type_}:{id_}": doc for (type_, id_), doc in loaders.SOURCE.items()}


# -- the command ---------------------------------------------------------------------------------


def test_the_command_reindexes_and_names_the_new_and_the_kept_generation(
    synced: SyncManager, importing_cli: Invoke, database: str
) -> None:
    result = importing_cli("agent", "reindex", AGENT, "--source", SOURCE)

    assert result.exit_code == 0, result.output
    assert "reindexed search: 20 object(s) exported, 0 change(s) caught up, 0 rejected" in result.stdout
    kept = result.stdout.split("the old generation is kept as ")[1].split(";")[0]
    assert kept in tables(database)
    assert rows(database) == expected()


def test_json_prints_the_result_and_no_progress(synced: SyncManager, importing_cli: Invoke) -> None:
    result = importing_cli("agent", "reindex", AGENT, "--source", SOURCE, "--json", "--progress-every", "0")

    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["objects"], data["dropped"], data["resumed"]) == (20, False, False)
    assert result.stderr == ""


def test_progress_goes_to_stderr_as_whole_lines_when_it_is_no_terminal(
    synced: SyncManager, importing_cli: Invoke
) -> None:
    # Given stderr is no terminal (CliRunner's) and a line per update (--progress-every 0)
    result = importing_cli("agent", "reindex", AGENT, "--source", SOURCE, "--batch-size", "5", "--progress-every", "0")

    # Then each export batch wrote one plain line with count, percent, rate and ETA; nothing redraws
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    export = [line for line in lines if line.startswith("reindex search: export: ")]
    assert [line.split(": ")[2].split(" ")[0] for line in export] == ["0/20", "5/20", "10/20", "15/20", "20/20"]
    assert all("/s, ETA " in line for line in export)
    assert "\r" not in result.stderr


def test_the_default_progress_interval_writes_the_first_line_only_in_a_short_reindex(
    synced: SyncManager, importing_cli: Invoke
) -> None:
    result = importing_cli("agent", "reindex", AGENT, "--source", SOURCE, "--batch-size", "5")

    assert result.exit_code == 0, result.output
    assert [line.split(":")[1] for line in result.stderr.splitlines()] == [" export", " catch-up"]


def test_progress_writes_one_line_per_interval_where_there_is_no_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    now = [100.0]
    progress = Progress("reindex s: export", 100, enabled=False, every=10, start=20, clock=lambda: now[0])

    for moment, count in ((100, 20), (104, 30), (109, 40), (111, 50), (115, 60), (121, 70), (130, 80)):
        now[0] = moment
        progress.update(count)

    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[2].split(" ")[0] for line in lines] == ["20/100", "50/100", "70/100"]
    assert lines[1] == "reindex s: export: 50/100 (50%), 3/s, ETA 18.3s"  # 30 done in 11 s here, 50 to go


def test_a_backend_without_generations_is_refused_naming_it(
    importing_manager: SyncManager, importing_cli: Invoke, tmp_path: Path
) -> None:
    importing_manager.add_agent(Agent(id=AGENT, backend="jsonl", options={"path": str(tmp_path / "out.jsonl")}))

    result = importing_cli("agent", "reindex", AGENT, "--source", SOURCE)

    assert result.exit_code == 2
    assert "backend 'jsonl', which has no generations" in result.stderr
    assert load_state(importing_manager, AGENT) is None
    assert importing_manager.track(0).pointers() == {AGENT: 0}


def test_an_agent_that_needs_its_export_is_refused(importing_manager: SyncManager, database: str) -> None:
    options = {"url": database, "table": TABLE, "create": "true"}
    importing_manager.add_agent(Agent(id=AGENT, backend="sql", options=options, state="needs_export"))

    with pytest.raises(AgentNotRunnable, match="livesync agent export"):
        reindex_agent(importing_manager, AGENT, Source(), source_name="s")


def test_a_reindex_in_progress_continues_only_with_its_own_source(synced: SyncManager, importing_cli: Invoke) -> None:
    reindex_sources.CRASH_AT = 3
    assert importing_cli("agent", "reindex", AGENT, "--source", "support.reindex_sources:crashing").exit_code == 1

    result = importing_cli("agent", "reindex", AGENT, "--source", SOURCE)

    assert result.exit_code == 2
    assert "in progress from --source 'support.reindex_sources:crashing'" in result.stderr


def test_a_failing_source_stops_the_command_saying_it_continues_when_run_again(
    synced: SyncManager, importing_cli: Invoke, database: str
) -> None:
    crashing = "support.reindex_sources:crashing"
    failed = importing_cli("agent", "reindex", AGENT, "--source", crashing, "--batch-size", "4")
    assert failed.exit_code == 1
    assert "run it again to continue" in failed.stderr and "database went away" in failed.stderr

    reindex_sources.CRASH_AT = 0  # the database is back
    result = importing_cli("agent", "reindex", AGENT, "--source", crashing, "--batch-size", "4", "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["resumed"] is True
    assert rows(database) == expected()


def test_abandon_drops_the_new_generation_the_state_and_the_pointers(
    synced: SyncManager, importing_cli: Invoke, database: str
) -> None:
    reindex_sources.CRASH_AT = 6
    assert importing_cli("agent", "reindex", AGENT, "--source", "support.reindex_sources:crashing").exit_code == 1
    state = load_state(synced, AGENT)
    assert state is not None and state.generation in tables(database)

    result = importing_cli("agent", "reindex", AGENT, "--abandon")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"abandoned the reindex of {AGENT}; dropped {state.generation}\n"
    assert tables(database) == {TABLE}
    assert load_state(synced, AGENT) is None
    assert set(synced.track(0).pointers()) == {AGENT}


# -- what the procedure guarantees ---------------------------------------------------------------


def test_the_reindex_pointer_holds_the_track_against_prune_and_agent_listings_ignore_it(
    synced: SyncManager, publisher: Publisher, importing_cli: Invoke
) -> None:
    seen: dict[str, Any] = {}

    def meanwhile() -> None:
        # changes published and delivered by the live agent: only the reindex still needs them
        seen["start"] = synced.track(0).pointer(reindex_pointer(AGENT))
        loaders.SOURCE[("event", 2)] = document(2, 2, "two again")
        publisher.emit("event", 2, "title_changed")
        run_agent(synced, AGENT)
        synced.maintain()
        seen["first"] = synced.track(0).first_seq()
        seen["agents"] = [agent["id"] for agent in json.loads(importing_cli("agent", "list", "--json").stdout)]

    reindex_agent(synced, AGENT, Source({5: meanwhile}), source_name="s")

    assert seen["start"] == 20 and seen["first"] is not None and seen["first"] <= 21
    assert seen["agents"] == [AGENT]
    # once swapped, the pointer is gone and prune frees what only it held
    assert set(synced.track(0).pointers()) == {AGENT}
    synced.maintain()
    assert synced.track(0).first_seq() is None


def test_the_swap_waits_for_a_run_in_flight_and_a_reindex_run_again_then_swaps(
    synced: SyncManager, database: str
) -> None:
    # Given a run holding the agent's lock for longer than the reindex waits
    with RunLock(synced.track(0), AGENT, ttl=30), pytest.raises(AgentBusy, match="the swap could not begin"):
        reindex_agent(synced, AGENT, Source(), source_name="s", swap_wait=0)
    state = load_state(synced, AGENT)
    assert state is not None and state.phase == "catchup"
    assert rows(database) == {f"event:{n}": document(n, 1) for n in range(1, 21)}  # readers: the old table

    # When the run ended and the reindex is run again, it swaps without exporting again
    loaders.CALLS.clear()
    result = reindex_agent(synced, AGENT, Source(), source_name="s")

    assert result.resumed and loaders.CALLS == []
    assert rows(database) == expected()


def test_a_resumed_export_whose_last_object_is_gone_exports_everything_again(
    synced: SyncManager, publisher: Publisher, database: str
) -> None:
    def crash() -> None:
        raise Crash("database went away")

    with pytest.raises(Crash):
        reindex_agent(synced, AGENT, Source({11: crash}), source_name="s", batch_size=4)
    del loaders.SOURCE[("event", 8)]  # the last object exported: the source no longer yields it
    publisher.emit("event", 8, "deleted")
    loaders.CALLS.clear()

    result = reindex_agent(synced, AGENT, Source(), source_name="s", batch_size=4)

    exported = [key for call in loaders.CALLS for key in call]
    assert ("event", 1) in exported and result.objects == 19
    assert rows(database) == expected()


def test_refused_records_go_to_the_agents_dead_letters_and_the_rest_is_swapped_in(
    synced: SyncManager, database: str
) -> None:
    synced.update_agent(AGENT, options={"url": database, "table": TABLE, "max_document_bytes": "100"})
    loaders.SOURCE[("event", 5)] = {"title": "x" * 200}  # larger than the mirror takes

    result = reindex_agent(synced, AGENT, Source(), source_name="s")

    assert result.rejected == 1
    letters = deadletters.entries(synced, AGENT)
    assert [(letter["record"]["id"], letter["partition"]) for letter in letters] == [(5, 0)]
    assert set(rows(database)) == {f"event:{n}" for n in range(1, 21) if n != 5}


def test_objects_of_types_the_agent_leaves_out_are_not_exported(
    importing_manager: SyncManager, publisher: Publisher, database: str
) -> None:
    options = {"url": database, "table": TABLE, "create": "true"}
    importing_manager.add_agent(Agent(id=AGENT, backend="sql", options=options, exclude_types=["contribution"]))

    reindex_agent(importing_manager, AGENT, lambda: [("event", 1), ("contribution", "c-1")], source_name="s")

    assert rows(database) == {"event:1": {}}  # no loader: an empty document


def test_removing_the_agent_removes_its_reindex_state_and_pointers(
    synced: SyncManager, real_redis: redis.Redis
) -> None:
    with pytest.raises(Crash):
        reindex_agent(synced, AGENT, Source({3: lambda: (_ for _ in ()).throw(Crash())}), source_name="s")
    assert load_state(synced, AGENT) is not None

    synced.remove_agent(AGENT)

    assert load_state(synced, AGENT) is None
    assert synced.track(0).pointers() == {}


def test_abandoning_without_a_reindex_in_progress_drops_nothing(synced: SyncManager) -> None:
    assert abandon_reindex(synced, AGENT) is None


def test_a_second_reindex_of_the_same_agent_is_refused_while_one_runs(synced: SyncManager) -> None:
    failures: list[BaseException] = []

    def meanwhile() -> None:
        try:
            reindex_agent(synced, AGENT, Source(), source_name="s")
        except AgentBusy as exc:
            failures.append(exc)

    reindex_agent(synced, AGENT, Source({2: meanwhile}), source_name="s")

    assert len(failures) == 1 and "is running already" in str(failures[0])


def test_a_source_other_than_the_one_in_progress_is_a_configuration_error(synced: SyncManager) -> None:
    with pytest.raises(Crash):
        reindex_agent(synced, AGENT, Source({3: lambda: (_ for _ in ()).throw(Crash())}), source_name="first")

    with pytest.raises(ConfigurationError, match="from --source 'first'"):
        reindex_agent(synced, AGENT, Source(), source_name="second")


def test_what_the_agent_delivered_after_the_last_catch_up_pass_is_caught_up_under_its_locks(
    synced: SyncManager, publisher: Publisher, database: str
) -> None:
    # Given a change the live agent delivers to the old generation after the catch-up pass read the heads
    fired: list[int] = []

    def progress(phase: str, done: int, total: int | None) -> None:
        if phase == "catch-up" and not fired:
            fired.append(done)
            loaders.SOURCE[("event", 9)] = document(9, 2, "nine, delivered late")
            publisher.emit("event", 9, "title_changed")
            run_agent(synced, AGENT)

    # When the agent is reindexed
    result = reindex_agent(synced, AGENT, Source(), source_name="s", progress=progress)

    # Then the swap caught the new generation up to the agent's pointer before swapping it in
    assert result.changes == 1
    assert rows(database)["event:9"] == document(9, 2, "nine, delivered late")
    assert rows(database, result.retired)["event:9"] == document(9, 2, "nine, delivered late")


def test_destroying_the_agents_destroys_their_reindex_state(synced: SyncManager, real_redis: redis.Redis) -> None:
    with pytest.raises(Crash):
        reindex_agent(synced, AGENT, Source({3: lambda: (_ for _ in ()).throw(Crash())}), source_name="s")

    synced.destroy(agents_only=True)

    assert not real_redis.exists(synced.keys.reindex(AGENT))
