"""A jsonl backend that stops once, at a chosen point of a run, until the test lets it go.

The reliability tests use it to crash or stall a real worker at a known point:

- ``before_first``: upload number ``hold_batch`` (default 1) holds before it writes
  anything, so that batch is not delivered;
- ``between``: upload number ``hold_batch + 1`` holds before it writes, so batch
  ``hold_batch`` was delivered and returned to the runner and the next one was not;
- ``after_last``: upload number ``hold_batch`` writes and fsyncs its batch, then holds
  before it returns. With a window of exactly ``hold_batch`` batches (the test picks
  ``LIVESYNC_WINDOW`` and ``LIVESYNC_BATCH_SIZE`` so), the whole window is delivered
  and not acknowledged: from the runner's view the last upload has not returned yet.

Uploads are counted per run (a backend instance lives for one run). Holding writes
``<hold_dir>/held-<pid>`` containing the pid of the process that holds (the RQ work
horse, which runs in its own process group) and polls every 20 ms until
``<hold_dir>/release`` exists; a release file that says ``fail`` makes the held upload
raise :class:`HeldUploadFailed` (a target outage: nothing of the batch counts). Only
one process ever holds per ``hold_dir``: the first one creates ``<hold_dir>/used``
(O_EXCL), so the run that takes over does not hold again. A hold gives up after
``hold_timeout`` seconds (raising), so a forgotten process never blocks forever.

The helpers at the end are the test's side: wait for the hold, release it, and publish a
workload whose windows have a known number of batches.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from reliability.checker import log_published

from livesync import Publisher
from livesync.backends.jsonl import JsonlBackend
from livesync.records import Record

MODIFY = ["data_changed", "title_changed", "moved", "acl_changed", "protection_changed", "location_changed"]

POLL_SECONDS = 0.02


class HoldTimeout(RuntimeError):
    """Nobody released the hold in time."""


class HeldUploadFailed(RuntimeError):
    """The test released the hold with ``fail``: the upload fails as if the target were down."""


class HeldBackend(JsonlBackend):
    """``jsonl`` that holds once per ``hold_dir`` at ``hold_at`` (see the module docstring)."""

    name = "held"

    class Options(JsonlBackend.Options):
        """Options of ``jsonl`` plus where to hold."""

        hold_dir: Path | None = Field(None, description="directory of the marker, release and used files")
        hold_at: Literal["", "before_first", "between", "after_last"] = Field("", description="where to hold")
        hold_batch: int = Field(1, ge=1, description="the upload the hold point refers to (1-based, per run)")
        hold_timeout: float = Field(120.0, gt=0, description="seconds a hold waits for release at most")

    options: Options

    def __init__(self, agent_id: str, options: JsonlBackend.Options) -> None:
        super().__init__(agent_id, options)
        self.uploads = 0

    def upload(self, records: Sequence[Record]) -> None:
        """Upload like ``jsonl``, holding before or after the batch at the chosen point."""
        self.uploads += 1
        hold_at, hold_batch = self.options.hold_at, self.options.hold_batch
        if (hold_at == "before_first" and self.uploads == hold_batch) or (
            hold_at == "between" and self.uploads == hold_batch + 1
        ):
            self._hold()
        super().upload(records)
        if hold_at == "after_last" and self.uploads == hold_batch:
            self._hold()

    def _hold(self) -> None:
        hold_dir = self.options.hold_dir
        if hold_dir is None:
            return
        hold_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(hold_dir / "used", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # someone held already: this is the run that takes over
        marker = hold_dir / f"held-{os.getpid()}"
        partial = hold_dir / f".held-{os.getpid()}.tmp"
        partial.write_text(str(os.getpid()))
        partial.rename(marker)  # a reader never sees an empty marker
        release = hold_dir / "release"
        deadline = time.monotonic() + self.options.hold_timeout
        while not release.exists():
            if time.monotonic() > deadline:
                raise HoldTimeout(f"nobody created {release} within {self.options.hold_timeout}s")
            time.sleep(POLL_SECONDS)
        if release.read_text().strip() == "fail":
            raise HeldUploadFailed(f"the test released the hold in {hold_dir} with 'fail'")


# -- the test's side of the hold ------------------------------------------------------


def wait_held(hold_dir: Path, timeout: float) -> int:
    """Wait (at most ``timeout`` s) until a process holds in ``hold_dir``; return its pid."""
    deadline = time.monotonic() + timeout
    while True:
        markers = sorted(hold_dir.glob("held-*")) if hold_dir.exists() else []
        if markers:
            return int(markers[0].read_text())
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for a run to hold in {hold_dir}")
        time.sleep(POLL_SECONDS)


def release(hold_dir: Path, *, fail: bool = False) -> None:
    """Let the process holding in ``hold_dir`` go on (``fail``: its held upload raises)."""
    hold_dir.mkdir(parents=True, exist_ok=True)
    partial = hold_dir / ".release.tmp"
    partial.write_text("fail" if fail else "")
    partial.rename(hold_dir / "release")


def publish_rounds(publisher: Publisher, log: Path, *, objects: int, rounds: int, seed: int = 7) -> int:
    """Publish ``rounds`` rounds of one change per object (shuffled), log them; return the head.

    One round is one ``emit_many`` call of exactly ``objects`` changes, so with
    ``LIVESYNC_WINDOW = objects`` every window is one round and reduces to exactly
    ``objects`` records (one change per object never cancels out): with a batch size
    that divides it, the test knows how many batches each window has. Rounds after the
    first mix modifications with deletes, unpublishes and re-appearances, so targets
    see every action.
    """
    rng = random.Random(seed)
    live = [False] * objects
    head = 0
    for round_number in range(rounds):
        order = list(range(objects))
        rng.shuffle(order)
        items: list[tuple[str, Any, list[str]]] = []
        for number in order:
            type_, id_ = ("event", number) if number % 2 else ("contribution", f"c-{number}")
            if round_number == 0:
                flags = ["created"] + (["title_changed"] if number % 3 == 0 else [])
            elif live[number] and rng.random() < 0.2:
                flags = [rng.choice(["deleted", "unpublished"])]
            elif not live[number]:
                flags = [rng.choice(["undeleted", "published", "created"])]
            else:
                flags = rng.sample(MODIFY, rng.randint(1, 2))
            if "created" in flags or "undeleted" in flags or "published" in flags:
                live[number] = True
            elif "deleted" in flags or "unpublished" in flags:
                live[number] = False
            items.append((type_, id_, flags))
        seqs = publisher.emit_many(items)
        assert seqs == list(range(head + 1, head + 1 + objects)), "rounds must get consecutive seqs"
        log_published(log, [(0, seq) for seq in seqs], items)
        head = seqs[-1]
    return head
