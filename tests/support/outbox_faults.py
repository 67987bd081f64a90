"""The outbox fault suite's moving parts: writer runs on PostgreSQL, relays killed at a checkpoint, read-backs.

:class:`FaultRig` owns one test's tables (the writer's models and an outbox table, with
names of their own, dropped afterwards), starts writer processes
(:mod:`support.outbox_writer`) and relays, and reads back what they did. Every wait is
on a condition, bounded.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text

from livesync.outbox import create_table, outbox_table
from support.outbox_writer import Models
from support.processes import TESTS_DIR, Proc, Processes
from support.sql_databases import admin_engine, drop_table, unique_table
from support.waiting import wait_for

#: The outbox tests' relay that stops at a checkpoint of its first batch (reused, not copied).
KILLABLE_RELAY = str(TESTS_DIR / "outbox" / "killable_relay.py")
#: Bound of each wait of the suite.
WAIT = 30.0


@dataclass
class FaultRig:
    """One test's database tables, writer runs and relays (see the module docstring)."""

    tmp_path: Path
    processes: Processes
    url: str
    namespace: str
    mode: str
    seed: int
    redis_url: str = ""
    prefix: str = field(default_factory=unique_table)
    runs: int = 0

    def __post_init__(self) -> None:
        self.outbox = f"{self.prefix}_outbox"
        self.log = self.tmp_path / "writer.jsonl"
        self.models = Models(self.prefix)
        self.engine: Engine = admin_engine(self.url)
        self.models.Base.metadata.create_all(self.engine)
        create_table(self.engine, self.outbox)

    def close(self) -> None:
        """Drop the test's tables."""
        self.models.Base.metadata.drop_all(self.engine)
        drop_table(self.engine, self.outbox)
        self.engine.dispose()

    # -- writers --------------------------------------------------------------------

    def start_writer(self, count: int, pause_at: int | None = None) -> Proc:
        """Start the next writer run: ``count`` transactions (see :mod:`support.outbox_writer`)."""
        run = self.runs
        self.runs += 1
        config = {
            "url": self.url, "prefix": self.prefix, "mode": self.mode, "namespace": self.namespace,
            "outbox_table": self.outbox, "redis_url": self.redis_url, "seed": self.seed, "run": run,
            "count": count, "log": str(self.log), "pause_at": pause_at, "application_name": self._app(run),
        }  # fmt: skip
        path = self.tmp_path / f"writer{run}.json"
        path.write_text(json.dumps(config))
        return self.processes.start(f"writer{run}", [sys.executable, "-m", "support.outbox_writer", str(path)])

    def _app(self, run: int) -> str:
        return f"{self.prefix}-w{run}"

    def kill_writer(self, writer: Proc) -> None:
        """SIGKILL a writer run, and wait until the database let its connections go (its transaction ended)."""
        writer.signal(signal.SIGKILL)
        writer.wait(10)
        run = int(writer.name.removeprefix("writer"))
        wait_for(lambda: self._backends(self._app(run)) == 0, WAIT, f"the backends of writer run {run} to end")

    def _backends(self, application_name: str) -> int:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
        with self.engine.connect() as connection:
            return int(connection.execute(query, {"name": application_name}).scalar_one())

    def logged(self) -> list[dict[str, Any]]:
        """The writer log's lines so far."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]

    def wait_logged(self, count: int, writer: Proc) -> None:
        """Wait until the log holds ``count`` lines (the writer must stay alive meanwhile)."""
        wait_for(
            lambda: len(self.logged()) >= count or not writer.alive(), WAIT, f"{count} lines of the writer's log",
            explain=writer.output,
        )  # fmt: skip
        assert writer.alive() or writer.wait(1) == 0, writer.output()

    def wait_paused(self, writer: Proc) -> int:
        """Wait until a writer run paused after a commit (``pause_at``); return that transaction."""
        wait_for(lambda: "paused at" in writer.output() or not writer.alive(), WAIT, f"{writer.name} to pause",
                 explain=writer.output)  # fmt: skip
        assert writer.alive(), writer.output()
        return int(writer.output().split("paused at ")[1].split()[0])

    def wait_done(self, writer: Proc) -> None:
        """Wait until a writer run committed all its transactions and exited."""
        wait_for(lambda: not writer.alive(), WAIT * 2, f"{writer.name} to finish", explain=writer.output)
        assert writer.wait(1) == 0, writer.output()

    def committed(self) -> set[int]:
        """The transactions the database committed (its word, whatever the writers logged)."""
        return self.models.committed(self.engine)

    # -- the outbox -----------------------------------------------------------------

    def outbox_rows(self) -> int:
        """Rows waiting in the test's outbox."""
        table = outbox_table(self.outbox)
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(table)).scalar_one())

    def relay_env(self, batch: int) -> dict[str, str]:
        """A relay's settings: batches of ``batch`` rows, polling every 50 ms."""
        return {"LIVESYNC_RELAY_BATCH": str(batch), "LIVESYNC_RELAY_POLL": "0.05"}

    def start_relays(self, *names: str, batch: int = 7) -> list[Proc]:
        """``livesync relay`` processes on the test's outbox, polling every 50 ms; returned once they serve.

        A relay says so as it installs its SIGTERM handler: a SIGTERM from then on is a warm stop.
        """
        args = ("relay", "--db", self.url, "--table", self.outbox)
        relays = [self.processes.livesync(name, *args, env=self.relay_env(batch)) for name in names]
        for relay in relays:
            self._wait_serving(relay)
        return relays

    def _wait_serving(self, relay: Proc) -> None:
        serving = "SIGTERM or Ctrl+C stops it"
        wait_for(lambda: serving in relay.output() or not relay.alive(), WAIT, f"{relay.name} to serve",
                 explain=relay.output)  # fmt: skip
        assert relay.alive(), relay.output()

    def kill_relays_at(self, points: list[str], name: str, batch: int = 25) -> dict[str, int]:
        """Relays stopped at each of ``points`` of their first batch at once, then SIGKILLed; the attempts of each.

        A batch that found no row (other relays took them all) ends without reaching its
        point: then another one is started, until one holds each point.
        """
        attempts = dict.fromkeys(points, 0)
        running: dict[str, Proc] = {}
        held: dict[str, Proc] = {}
        while len(held) < len(points):
            for point in points:
                if point not in held and point not in running:
                    assert attempts[point] < 20, f"no relay reached {point} in 20 attempts"
                    wait_for(lambda: self.outbox_rows() > 0, WAIT, "rows in the outbox")
                    attempts[point] += 1
                    argv = [sys.executable, KILLABLE_RELAY, self.url, self.outbox, point]
                    running[point] = self.processes.start(f"{name}-{point}-{attempts[point]}", argv,
                                                          env=self.relay_env(batch))  # fmt: skip
            wait_for(lambda: any(_reached(point, relay) or not relay.alive() for point, relay in running.items()),
                     WAIT, f"relays to reach {sorted(running)}")  # fmt: skip
            for point, relay in list(running.items()):
                if _reached(point, relay):
                    held[point] = running.pop(point)
                elif not relay.alive():
                    assert relay.wait(5) == 0 and "without reaching" in relay.output(), relay.output()
                    del running[point]
        for relay in held.values():
            relay.signal(signal.SIGKILL)
        for relay in held.values():
            assert relay.wait(10) == -signal.SIGKILL, relay.output()
        return attempts


def _reached(point: str, relay: Proc) -> bool:
    return f"at {point}" in relay.output()
