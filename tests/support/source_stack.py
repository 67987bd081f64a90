"""The stack the real-target reliability tests run: the source application's publishers and livesync's processes.

One namespace of ``partitions`` partitions, a paused witness agent (its pointer stays at 0,
so the track keeps every change's version), the agent under test on its target with the
source application's loader, a fleet of workers and a scheduler kept up, and publisher
processes of the source application publishing until told to stop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from support.fleet import Fleet
from support.processes import Proc, Processes
from support.servers import RedisServer
from support.source_app import DB_VARIABLE, create_database, publisher_argv

WITNESS = "witness"
LOADER = "support.source_app:load"


@dataclass
class Launched:
    """What :func:`launch` started."""

    fleet: Fleet
    publishers: list[Proc]
    logs: list[Path]
    database: Path
    stop_file: Path


@dataclass(frozen=True)
class Workload:
    """How the stack is run: partitions, publishers and their pace, the environment of every process."""

    partitions: int
    publishers: int
    objects: int  # per publisher
    rate: int  # changes/s per publisher
    seconds: float  # publishers stop by themselves after this long at most
    env: dict[str, str]


def run_ok(processes: Processes, *args: str) -> None:
    """``livesync ARGS`` as a process; it must succeed."""
    done = processes.run(*args)
    assert done.returncode == 0, f"livesync {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def launch(
    redis_server: RedisServer,
    processes: Processes,
    namespace: str,
    tmp_path: Path,
    agent: str,
    agent_args: list[str],
    workload: Workload,
    workers: int,
) -> Launched:
    """The namespace, the witness, ``agent`` (continuous, with the loader), the fleet; then the publishers start."""
    database = tmp_path / "source.db"
    create_database(database)
    processes.env.update({"LIVESYNC_REDIS_URL": redis_server.url, DB_VARIABLE: str(database), **workload.env})
    run_ok(processes, "init", "--partitions", str(workload.partitions))
    run_ok(processes, "agent", "add", WITNESS, "--backend", "null", "--start", "tail")
    run_ok(processes, "agent", "pause", WITNESS)
    run_ok(processes, "agent", "add", agent, *agent_args, "--loader", LOADER, "--update-time", "0",
           "--start", "tail")  # fmt: skip
    fleet = Fleet(processes, workers, redis_server.client())
    fleet.keep_up()
    logs = [tmp_path / f"published-{number}.jsonl" for number in range(workload.publishers)]
    stop_file = tmp_path / "stop-publishing"
    publishers = []
    for number, log in enumerate(logs):
        argv = publisher_argv(
            redis_server.url, namespace, database, log, number=number + 1, seconds=workload.seconds,
            rate=workload.rate, objects=workload.objects, stop_file=stop_file,
        )  # fmt: skip
        publishers.append(processes.start(f"publisher-{number}", argv))
    return Launched(fleet, publishers, logs, database, stop_file)
