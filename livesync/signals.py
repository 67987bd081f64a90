"""Serving until told to stop: SIGINT and SIGTERM end ``livesync metrics`` and ``livesync dashboard`` cleanly."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)


@contextmanager
def stop_on_signals(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """An event that SIGINT and SIGTERM set while the block runs (in the main thread; elsewhere only ``stop``).

    The previous handlers are restored on exit, so a server stops cleanly instead of
    dying with a traceback, and a test can run it in a thread with its own ``stop``.
    """
    event = stop if stop is not None else threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def wait_until(event: threading.Event) -> None:
    """Block until ``event`` is set; timed waits let signal handlers run promptly."""
    while not event.wait(1.0):
        pass
