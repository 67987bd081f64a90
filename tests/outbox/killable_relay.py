"""A relay process that stops at a checkpoint of its first batch, to be SIGKILLed there.

    python tests/outbox/killable_relay.py DB_URL TABLE POINT

(namespace and Redis from ``LIVESYNC_NAMESPACE`` / ``LIVESYNC_REDIS_URL``) runs one
batch of the real relay; at checkpoint ``POINT`` it prints ``at POINT`` and sleeps until
killed, holding whatever the batch holds there (locks, an open transaction).
"""

from __future__ import annotations

import sys
import time

from livesync.config import load_settings
from livesync.connection import connect_track
from livesync.outbox.relay import open_relay


def main(url: str, table: str, point: str) -> None:
    settings = load_settings()

    def checkpoint(reached: str) -> None:
        if reached == point:
            print(f"at {point}", flush=True)
            time.sleep(600)

    relay = open_relay(settings, connect_track(settings), url=url, table=table, checkpoint=checkpoint)
    relay.batch()
    print("batch ended without reaching the point", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
