"""The job function of benchmark figure 4a: one RQ job per change.

A tiny module (msgpack and the standard library only) that an RQ worker imports by
name, ``benchmarks.peer_job.handle_change``. It does the work a hand-rolled "one
job per event" pipeline does for a change: decode it and hand it to an uploader (here:
append it to a list).
"""

from __future__ import annotations

import msgpack

#: The name RQ jobs of figure 4a call.
JOB_NAME = "benchmarks.peer_job.handle_change"

#: What the jobs of this process "uploaded": ``(seq, ts, type, id, flags)`` per change.
RECEIVED: list[tuple[int, int, str, int | str, int]] = []


def handle_change(member_hex: str) -> None:
    """Decode one msgpack-encoded change ``[seq, ts, type, id, flags]`` and keep it.

    The change travels hex-encoded because the jobs use RQ's JSON serializer.
    """
    seq, ts, type_, id_, flags = msgpack.unpackb(bytes.fromhex(member_hex), raw=False)
    RECEIVED.append((seq, ts, type_, id_, flags))
