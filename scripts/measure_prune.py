#!/usr/bin/env python3
"""Measure how long prune, status and destroy hold Redis with many buckets.

Starts a PRIVATE redis-server (temporary directory, free loopback port, no
persistence), writes N one-change buckets (granularity 1) in the documented layout
through ``livesync.keys``, and reads the server's SLOWLOG (``slowlog-log-slower-than``
50 µs: every command slower than that is logged with its duration) to find the longest
single command of each step, and INFO commandstats for the number of script calls.
Round trips are counted on the client side (one socket send each).

    scripts/measure_prune.py [--buckets 200000] [--chunk 500]

"before" is the old behaviour, every candidate bucket in ONE prune script call
(``Track.prune(chunk=N)`` with N = all buckets: the same ZRANGE and EVALSHA the
old code sent) and one DEL of every bucket key for destroy; "after" is the chunked
prune and the paged listing. Nothing here runs against a shared Redis.

Figures of one run (redis-server 7.0.15, 2 CPU cores shared with other work, 200,000
buckets): prune before, one script call of 5,156 ms (redis-py's default 5 s socket
timeout even re-sends it); after, 400 calls of at most 42 ms (7 ms on average).
Status's memory figure: 401 round trips, longest command 8 ms (before: one round trip
per bucket, 200,002). Destroy: longest command 222 ms before (one DEL), 5 ms after.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.connection

from livesync.changes import FLAG_BITS
from livesync.codec import encode_body
from livesync.keys import PartitionKeys, namespace_keys
from livesync.track import Track

CREATED = FLAG_BITS["created"]


@contextmanager
def private_redis() -> Iterator[redis.Redis]:
    """A redis-server of our own on a free port, stopped afterwards."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not on PATH")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="livesync-measure-") as directory:
        process = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory, "--save", "",
             "--appendonly", "no", "--slowlog-max-len", "100000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # no socket timeout: redis-py's default (5 s, then a retry) would re-send the old 6 s prune call
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=None)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield client
        finally:
            client.close()
            process.terminate()
            process.wait(timeout=15)


def fill(client: redis.Redis, keys: PartitionKeys, count: int) -> None:
    """``count`` one-change buckets, seqs 1..count, and the head."""
    first_bucket = int(time.time()) - count
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        seq, bucket = index + 1, first_bucket + index
        member = f"{seq}:{bucket * 1000}:".encode() + encode_body([("event", index, CREATED)])
        pipe.zadd(keys.bucket(bucket), {member: seq})
        pipe.zadd(keys.buckets, {str(bucket): seq})
        if len(pipe) >= 10_000:
            pipe.execute()
    pipe.set(keys.seq, count)
    pipe.execute()


#: The large-bucket case: few buckets holding many members each.
LARGE_BUCKETS = 50
LARGE_MEMBERS = 20_000


def fill_large(client: redis.Redis, keys: PartitionKeys, count: int, members: int) -> None:
    """``count`` buckets of ``members`` one-change members each, and the head."""
    first_bucket = int(time.time()) - count
    pipe = client.pipeline(transaction=False)
    for index in range(count):
        bucket = first_bucket + index
        first = index * members + 1
        for offset in range(members):
            seq = first + offset
            member = f"{seq}:{bucket * 1000}:".encode() + encode_body([("event", seq, CREATED)])
            pipe.zadd(keys.bucket(bucket), {member: seq})
            if len(pipe) >= 10_000:
                pipe.execute()
        pipe.zadd(keys.buckets, {str(bucket): first})
    pipe.set(keys.seq, count * members)
    pipe.execute()


class RoundTrips:
    """Counts socket sends (one per command, one per pipeline) while installed."""

    def __init__(self) -> None:
        self.count = 0
        self._original = redis.connection.AbstractConnection.send_packed_command

    @contextmanager
    def counting(self) -> Iterator[RoundTrips]:
        original = self._original

        def send(connection: Any, command: Any, check_health: bool = True) -> Any:
            self.count += 1
            return original(connection, command, check_health)

        redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
        try:
            yield self
        finally:
            redis.connection.AbstractConnection.send_packed_command = original  # type: ignore[method-assign]


#: Commands of this script's own bookkeeping, left out of the figures.
_OWN = {"SLOWLOG", "CONFIG", "INFO"}


@contextmanager
def slowlog(client: redis.Redis, threshold_us: int) -> Iterator[dict[str, Any]]:
    """Log every command slower than ``threshold_us`` while the block runs; fill in the longest.

    Redis 7 logs the commands a script calls as well; a threshold of a few dozen
    microseconds keeps those (each a few microseconds) from flooding the log while
    every script call that matters is logged. Script calls and their total time
    come from INFO commandstats, which counts every call.
    """
    figures: dict[str, Any] = {}
    before = _evalsha_stats(client)
    client.config_set("slowlog-log-slower-than", threshold_us)
    client.slowlog_reset()
    trips = RoundTrips()
    started = time.perf_counter()
    with trips.counting():
        yield figures
    figures["wall_ms"] = round((time.perf_counter() - started) * 1000, 1)
    client.config_set("slowlog-log-slower-than", -1)
    entries = [entry for entry in client.slowlog_get(100_000) if _name(entry) not in _OWN]
    figures["round_trips"] = trips.count
    if entries:
        longest = max(entries, key=lambda entry: entry["duration"])
        figures["longest_ms"] = round(longest["duration"] / 1000, 2)
        figures["longest_command"] = _name(longest)
    else:
        figures["longest_ms"] = f"< {threshold_us / 1000}"
    calls, usec = (now - then for now, then in zip(_evalsha_stats(client), before, strict=True))
    if calls:
        figures["script_calls"] = calls
        figures["script_ms_total"] = round(usec / 1000, 1)
        scripts = [entry["duration"] for entry in entries if _name(entry) == "EVALSHA"]
        figures["longest_script_ms"] = round(max(scripts) / 1000, 2) if scripts else f"< {threshold_us / 1000}"


def _evalsha_stats(client: redis.Redis) -> tuple[int, int]:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


def _name(entry: dict[str, Any]) -> str:
    command = entry["command"]
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return text.split(" ", 1)[0].upper()


def measure(buckets: int, chunk: int, threshold_us: int = 50) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    with private_redis() as client:
        keys = namespace_keys("measure").partition(0)
        track = Track(client, keys, 1)

        fill(client, keys, buckets)
        track.add_pointer("a", buckets)
        with slowlog(client, threshold_us) as figures:
            figures["deleted"] = track.prune(chunk=buckets)
        results[f"prune before (one call of {buckets} buckets)"] = figures

        fill(client, keys, buckets)
        with slowlog(client, threshold_us) as figures:
            figures["deleted"] = track.prune(chunk=chunk)
        results[f"prune after (chunks of {chunk})"] = figures

        fill(client, keys, buckets)
        with slowlog(client, threshold_us) as figures:
            figures["memory_bytes"] = track.memory_usage()
        results["status memory_usage after (pipelined pages)"] = figures
        with slowlog(client, threshold_us) as figures:
            figures["buckets"] = len(track.buckets())
        results["bucket listing after (pages)"] = figures

        with slowlog(client, threshold_us) as figures:
            doomed = [keys.bucket(bucket) for bucket, _first in track.buckets()]
            figures["deleted"] = int(client.delete(*doomed))
        results["destroy before (one DEL of every bucket key)"] = figures

        fill(client, keys, buckets)
        with slowlog(client, threshold_us) as figures:
            figures["deleted"] = track.destroy()
        results["destroy after (UNLINK per page)"] = figures

        # few but large buckets: the script UNLINKs, so a call does not grow with bucket size
        large = namespace_keys("measure-large").partition(0)
        fill_large(client, large, LARGE_BUCKETS, LARGE_MEMBERS)
        large_track = Track(client, large, 1)
        large_track.add_pointer("a", LARGE_BUCKETS * LARGE_MEMBERS)
        with slowlog(client, threshold_us) as figures:
            figures["deleted"] = large_track.prune(chunk=chunk)
        results[f"prune after, {LARGE_BUCKETS} buckets of {LARGE_MEMBERS} members"] = figures
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buckets", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--threshold-us", type=int, default=50, help="slowlog-log-slower-than while measuring")
    args = parser.parse_args()
    print(f"redis-server {redis_version()}, {args.buckets} buckets of one change each (granularity 1)")
    for step, figures in measure(args.buckets, args.chunk, args.threshold_us).items():
        print(f"{step}:")
        print("   " + ", ".join(f"{name} {value}" for name, value in figures.items()))


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return out.split("v=", 1)[1].split()[0] if "v=" in out else "?"


if __name__ == "__main__":
    main()
