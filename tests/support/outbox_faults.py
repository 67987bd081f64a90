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

    def start_relay(self, name: str, batch: int = 7) -> Proc:
        """``livesync relay`` on the test's outbox, polling every 50 ms."""
        args = ("relay", "--db", self.url, "--table", self.outbox)
        return self.processes.livesync(name, *args, env=self.relay_env(batch))

    def kill_relay_at(self, point: str, name: str, batch: int = 25) -> int:
        """Run a relay that stops at ``point`` of its first batch and SIGKILL it there; return the attempts.

        A batch that found no row (other relays took them all) ends without reaching the
        point: then another one is started, until one gets there.
        """
        for attempt in range(1, 21):
            wait_for(lambda: self.outbox_rows() > 0, WAIT, "rows in the outbox")
            if self._relay_reaches(point, f"{name}-{attempt}", batch):
                return attempt
        raise AssertionError(f"no relay reached {point} in 20 attempts")

    def _relay_reaches(self, point: str, name: str, batch: int) -> bool:
        """One killable relay: SIGKILLed at ``point`` (True), or its batch found no row (False)."""
        argv = [sys.executable, KILLABLE_RELAY, self.url, self.outbox, point]
        relay = self.processes.start(name, argv, env=self.relay_env(batch))
        reached = f"at {point}"
        wait_for(lambda: reached in relay.output() or not relay.alive(), WAIT, reached, explain=relay.output)
        if reached not in relay.output():
            assert relay.wait(5) == 0 and "without reaching" in relay.output(), relay.output()
            return False
        relay.signal(signal.SIGKILL)
        assert relay.wait(10) == -signal.SIGKILL
        return True
