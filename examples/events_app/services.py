"""The livesync processes the example runs beside the application, each logging to a file, all stopped at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType

#: Seconds a service has to stop after SIGTERM (the warm shutdown) before it is killed.
STOP_GRACE = 15.0
#: Variables that would send a service elsewhere than the example's Redis and queue.
_DROPPED = ("LIVESYNC_RQ_URL", "LIVESYNC_REDIS_CLUSTER")


class Services:
    """``livesync <command>`` processes started in ``root`` with ``environment`` added, logs in ``folder``."""

    def __init__(self, root: Path, folder: Path, environment: dict[str, str]) -> None:
        self.root = root
        self.folder = folder
        inherited = {key: value for key, value in os.environ.items() if key not in _DROPPED}
        path = os.pathsep.join(filter(None, [str(root), inherited.get("PYTHONPATH")]))
        self.environment = {**inherited, **environment, "PYTHONPATH": path}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        """Start ``livesync ARGS`` as ``name`` (its own session: Ctrl+C reaches the example, which stops it)."""
        log = self.log(name).open("ab")
        with log:  # the child keeps its own copy
            self.running[name] = subprocess.Popen(
                [sys.executable, "-m", "livesync", *args],
                cwd=self.root,
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        print(f"started livesync {' '.join(args)} (pid {self.running[name].pid}, log {self.log(name)})")

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"

    def dead(self) -> str | None:
        """Names a service that exited, with its status; ``None`` while all run."""
        for name, process in self.running.items():
            status = process.poll()
            if status is not None:
                return f"livesync {name} exited with status {status}; see {self.log(name)}"
        return None

    def show_logs(self, lines: int = 15) -> None:
        """Print the last lines of every service's log (to stderr)."""
        for name in self.running:
            text = self.log(name).read_text(errors="replace").splitlines()[-lines:]
            print(f"--- {self.log(name)} (last {len(text)} lines)", file=sys.stderr)
            for line in text:
                print(f"    {line}", file=sys.stderr)

    def stop(self) -> None:
        """SIGTERM every service (a warm shutdown), wait, and kill those still running after the grace period."""
        for process in self.running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.running.values():
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> Services:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
