"""The publisher processes of the reliability and cluster suites: valid change streams, logged.

Two modes of one program (``tests`` on ``PYTHONPATH``, as the suites' processes have it):

    python -m support.publisher shared --url URL --namespace NS --log PATH \\
        --seed N --seconds S --rate R --objects K [--partitions P] [--retries N]
    python -m support.publisher owned --url URL --namespace NS --log PATH \\
        --number N --seconds S --rate R --objects K [--wait-replicas N] [--retries N] ...

``shared`` (the reliability suite) coordinates through a plain Redis client, as below;
``owned`` (the cluster suite, whose URL a plain client cannot use) gives every process
objects of its own and tolerates failed calls (see ``owned_main``). Both log every
published change with its partition and seq (``checker.log_published``).

The ``shared`` mode:

It publishes for ``S`` seconds at about ``R`` changes/s over the objects ``object_ids(K)``
(the same objects in every process started with the same ``K``), mixing ``emit`` (one
change), ``emit_many`` (batches of 10-200 changes) and ``collect()`` units (a few objects,
several flags each, merged and split by the unit), with creates, updates, moves, deletes,
undeletes, publish and unpublish. Every published change is appended to ``--log`` with
its partition and seq (``checker.log_published``) once the call returned, so a process
killed at any point leaves a log of exactly the calls that completed (the call in flight
is unknown to it).

Why the processes coordinate: the reduction relies on a *valid* stream per object (an
appear only while the object is not live, a disappear or a modification only while it
is live). Two processes that each keep a valid stream of their own do not make a valid
merged stream: "created" from one and "created", "deleted" from the other, read in two
windows, leave the target holding an object the replay deleted. So every call claims
the objects it is about to change in Redis (``SET NX`` per object, a token of this
process), reads their shared state, derives valid flags from it, publishes, stores the
new state and releases the claims. The claim spans the publish, so seq order is the
order in which the states were decided. Objects another process holds at that moment
are left out of the call (counted as ``contended``); every object is still changed by
every process over the run. The claims and states live next to the track in the same
Redis under ``reltest:{NS}:`` (not livesync's keys).

Prints one JSON line at the end: published changes, calls per kind, contended claims.
Exit codes: 0 done, 1 an error (the traceback says which).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from reliability.checker import log_published

from livesync import Publisher
from livesync.changes import flag_names
from livesync.namespace import partition_of
from livesync.workload import MODIFICATIONS, object_ids

TYPES = ("event", "contribution", "category", "attachment")

ObjectKey = tuple[str, Any]
Item = tuple[str, Any, list[str]]

#: A claim outlives any single call by far; it is released as soon as the call returned.
CLAIM_MS = 30_000
KINDS = ("emit", "emit_many", "collect")
KIND_WEIGHTS = (5, 2, 3)

#: KEYS: claim keys; ARGV[1]: this process's token. Deletes the claims this process holds.
RELEASE = """
local released = 0
for _, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[1] then
        redis.call('DEL', key)
        released = released + 1
    end
end
return released
"""


def next_change(state: str, rng: random.Random) -> tuple[list[str], str]:
    """Flags of one valid change of an object in ``state``, and the object's state after it.

    States: ``absent`` (never created), ``live``, ``deleted``, ``unpublished``.
    """
    extra = [rng.choice(MODIFICATIONS)] if rng.random() < 0.3 else []
    if state == "absent":
        return ["created", *extra], "live"
    if state == "deleted":
        return [rng.choice(("undeleted", "undeleted", "created")), *extra], "live"
    if state == "unpublished":
        return ["published", *extra], "live"
    roll = rng.random()
    if roll < 0.08:
        return ["deleted", *extra], "deleted"
    if roll < 0.13:
        return ["unpublished"], "unpublished"
    if roll < 0.3:
        return sorted({"moved", *extra}), "live"
    return sorted(set(rng.sample(MODIFICATIONS, rng.choice((1, 1, 2))))), "live"


class SharedObjects:
    """The objects' lifecycle states, shared by every publisher process through Redis."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.prefix = f"reltest:{namespace}:"
        self.states_key = f"{self.prefix}states"
        self.token = uuid.uuid4().hex
        self.release_script = client.register_script(RELEASE)

    def field(self, key: ObjectKey) -> str:
        return json.dumps(list(key))

    def claim_key(self, key: ObjectKey) -> str:
        return f"{self.prefix}claim:{self.field(key)}"

    def claim(self, keys: Sequence[ObjectKey]) -> dict[ObjectKey, str]:
        """Claim what it can of ``keys``; return the claimed objects with their states."""
        wanted = list(dict.fromkeys(keys))
        pipe = self.client.pipeline(transaction=False)
        for key in wanted:
            pipe.set(self.claim_key(key), self.token, nx=True, px=CLAIM_MS)
        claimed = [key for key, ok in zip(wanted, pipe.execute(), strict=True) if ok]
        if not claimed:
            return {}
        raw = self.client.hmget(self.states_key, [self.field(key) for key in claimed])
        return {key: (value.decode() if value else "absent") for key, value in zip(claimed, raw, strict=True)}

    def release(self, states: dict[ObjectKey, str]) -> None:
        """Store the objects' new states, then release their claims."""
        if not states:
            return
        self.client.hset(self.states_key, mapping={self.field(key): state for key, state in states.items()})
        self.release_script(keys=[self.claim_key(key) for key in states], args=[self.token])


class Run:
    """One publisher process: the loop, the counters and the log."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.pub = Publisher.from_url(
            args.url, namespace=args.namespace, partitions=args.partitions, retries=args.retries
        )
        self.partitions = self.pub.meta.partitions
        self.objects = SharedObjects(redis.Redis.from_url(args.url), args.namespace)
        self.pool: list[ObjectKey] = object_ids(args.objects)
        self.log = Path(args.log)
        self.log.touch()
        self.published = 0
        self.calls = dict.fromkeys(KINDS, 0)
        self.contended = 0
        self.touched: set[ObjectKey] = set()

    def loop(self) -> None:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < self.args.seconds:
            ahead = self.published - elapsed * self.args.rate
            if ahead > 0:
                time.sleep(min(ahead / self.args.rate, self.args.seconds - elapsed))
                continue
            kind = self.rng.choices(KINDS, KIND_WEIGHTS)[0]
            if kind == "emit":
                self.emit()
            elif kind == "emit_many":
                self.emit_many()
            else:
                self.collect()

    def pick(self, count: int) -> list[ObjectKey]:
        return [self.pool[self.rng.randrange(len(self.pool))] for _ in range(count)]

    def emit(self) -> None:
        states = self.claim(self.pick(1))
        if not states:
            return
        (key,) = states
        with self.released(states):
            flags, states[key] = next_change(states[key], self.rng)
            seq = self.pub.emit(key[0], key[1], *flags)
            self.record("emit", [seq], [(key[0], key[1], flags)])

    def emit_many(self) -> None:
        wanted = self.pick(self.rng.randint(10, 200))  # repeats: some objects change several times
        states = self.claim(wanted)
        if not states:
            return
        with self.released(states):
            items: list[Item] = []
            for key in wanted:
                if key in states:
                    flags, states[key] = next_change(states[key], self.rng)
                    items.append((key[0], key[1], flags))
            seqs = self.pub.emit_many(items)
            self.record("emit_many", seqs, items)

    def collect(self) -> None:
        states = self.claim(self.pick(self.rng.randint(1, 5)))
        if not states:
            return
        steps = [key for key in states for _ in range(self.rng.randint(2, 6))]
        self.rng.shuffle(steps)  # interleaved objects; each object's flags stay in order
        with self.released(states):
            with self.pub.collect() as unit:
                for key in steps:
                    flags, states[key] = next_change(states[key], self.rng)
                    unit.emit(key[0], key[1], *flags)
            merged = [(type_, id_, list(flag_names(mask))) for type_, id_, mask in unit.changes]
            self.record("collect", unit.seqs, merged)

    def claim(self, keys: list[ObjectKey]) -> dict[ObjectKey, str]:
        states = self.objects.claim(keys)
        self.contended += len(set(keys)) - len(states)
        return states

    @contextmanager
    def released(self, states: dict[ObjectKey, str]) -> Iterator[None]:
        """Store the new states and release the claims once the call returned.

        A failed publish may or may not have landed: its claims are kept (they expire)
        rather than let another process derive flags from a state nobody knows.
        """
        yield
        self.objects.release(states)

    def record(self, kind: str, seqs: list[int], items: Sequence[Item]) -> None:
        """Log a call that returned: one line per change with its partition and seq."""
        where = [
            (partition_of(type_, id_, self.partitions), seq) for seq, (type_, id_, _) in zip(seqs, items, strict=True)
        ]
        log_published(self.log, where, items)
        self.published += len(seqs)
        self.calls[kind] += 1
        self.touched.update((type_, id_) for type_, id_, _ in items)

    def summary(self, seconds: float) -> dict[str, Any]:
        return {
            "published": self.published,
            "calls": self.calls,
            "contended": self.contended,
            "objects": len(self.touched),
            "seconds": round(seconds, 3),
        }


def shared_publisher_argv(
    url: str, namespace: str, log: Path, *, seed: int, seconds: float, rate: float, objects: int, partitions: int
) -> list[str]:
    """argv of a ``shared`` publisher process (objects shared with the other processes)."""
    return [
        sys.executable, "-m", "support.publisher", "shared", "--url", url, "--namespace", namespace,
        "--log", str(log), "--seed", str(seed), "--seconds", str(seconds), "--rate", str(rate),
        "--objects", str(objects), "--partitions", str(partitions),
    ]  # fmt: skip


def owned_publisher_argv(
    url: str, namespace: str, log: Path, *, number: int, seconds: float, rate: float, objects: int, **extra: Any
) -> list[str]:
    """argv of an ``owned`` publisher process (objects of its own, failures tolerated)."""
    argv = [
        sys.executable, "-m", "support.publisher", "owned", "--url", url, "--namespace", namespace,
        "--log", str(log), "--number", str(number), "--seconds", str(seconds), "--rate", str(rate),
        "--objects", str(objects),
    ]  # fmt: skip
    for name, value in extra.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    return argv


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="support.publisher shared", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="Redis of the track")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--log", required=True, help="JSON lines of every published change (appended)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="how long to publish")
    parser.add_argument("--rate", type=float, required=True, help="changes per second (on average)")
    parser.add_argument("--objects", type=int, required=True, help="size of the shared object pool")
    parser.add_argument("--partitions", type=int, default=None, help="expected partitions (default: the namespace's)")
    parser.add_argument("--retries", type=int, default=0, help="Publisher retries (a retry may store a call twice)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or args.objects < 1:
        parser.error("--seconds and --rate must be positive, --objects at least 1")
    return args


def shared_main(argv: list[str]) -> int:
    run = Run(parse(argv))
    start = time.monotonic()
    try:
        run.loop()
    finally:
        print(json.dumps(run.summary(time.monotonic() - start)), flush=True)
    return 0


def owned_main(argv: list[str]) -> int:
    """Publish a valid stream over objects of this process alone, logging what returned.

    Each process owns its objects (``number`` is part of every id), so its own states
    keep every object's stream valid without coordination. A call that raised may or
    may not have landed (in part: ``emit_many`` writes one partition after the other),
    so it is not logged as published: its items go to ``<log>.uncertain`` and its
    objects are never changed again (their state is unknown). An object gets at most
    ``--max-changes`` changes, so the checker's work per object stays small.
    """
    parser = argparse.ArgumentParser(prog="support.publisher owned")
    for name in ("--url", "--namespace", "--log"):
        parser.add_argument(name, required=True)
    for name in ("--number", "--objects"):
        parser.add_argument(name, type=int, required=True)
    for name in ("--seconds", "--rate"):
        parser.add_argument(name, type=float, required=True)
    parser.add_argument("--wait-replicas", type=int, default=0)
    parser.add_argument("--wait-timeout", type=float, default=1.0)
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--max-changes", type=int, default=8, help="changes per object at most (keeps checks fast)")
    parser.add_argument("--failure-pause", type=float, default=0.2, help="seconds to wait after a call that raised")
    args = parser.parse_args(argv)

    rng = random.Random(args.number)
    pub = Publisher.from_url(
        args.url, args.namespace, retries=args.retries, wait_replicas=args.wait_replicas, wait_timeout=args.wait_timeout
    )
    partitions = pub.meta.partitions
    pool: list[tuple[str, Any]] = []
    for index in range(args.objects):
        type_ = TYPES[index % len(TYPES)]
        pool.append((type_, f"p{args.number}-{index}" if type_ == "contribution" else args.number * 1_000_000 + index))
    states: dict[tuple[str, Any], str] = {}
    unknown: set[tuple[str, Any]] = set()  # objects of calls that raised: their state is unknown
    changed: dict[tuple[str, Any], int] = {}  # objects with max_changes changes are left alone
    log, uncertain = Path(args.log), Path(args.log + ".uncertain")
    log.touch()
    summary: dict[str, Any] = {"published": 0, "calls": 0, "failed_calls": 0, "errors": {}}
    failures: list[tuple[float, str, list[int]]] = []  # (wall clock at the call's start, error, partitions)
    slowest = 0.0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < args.seconds:
        ahead = summary["published"] - elapsed * args.rate
        if ahead > 0:
            time.sleep(min(ahead / args.rate, args.seconds - elapsed))
            continue
        free = [key for key in pool if key not in unknown and changed.get(key, 0) < args.max_changes]
        if not free:
            break
        kind = rng.choices(("emit", "emit_many", "collect"), (5, 2, 3))[0]
        picked = [free[rng.randrange(len(free))] for _ in range(rng.randint(3, 15) if kind == "emit_many" else 1)]
        items: list[tuple[str, Any, list[str]]] = []
        called, called_at = time.monotonic(), time.time()
        try:
            if kind == "collect":
                with pub.collect() as unit:
                    for key in [key for key in picked for _ in range(rng.randint(2, 5))]:
                        flags, states[key] = next_change(states.get(key, "absent"), rng)
                        unit.emit(key[0], key[1], *flags)
                    # collect() merges or splits: log what it actually publishes
                    items = [(t, i, list(flag_names(mask))) for t, i, mask in unit.changes]
                seqs = unit.seqs
            else:
                previous = {key: states.get(key, "absent") for key in picked}
                for key in picked:
                    flags, previous[key] = next_change(previous[key], rng)
                    items.append((key[0], key[1], flags))
                seqs = pub.emit_many(items) if kind == "emit_many" else [pub.emit(*items[0][:2], *items[0][2])]
                states.update(previous)
        except Exception as exc:  # a failed call: unknown whether (part of) it landed
            summary["failed_calls"] += 1
            name = type(exc).__name__
            summary["errors"][name] = summary["errors"].get(name, 0) + 1
            if kind == "collect":
                items = [(t, i, list(flag_names(mask))) for t, i, mask in unit.changes]
            failures.append((round(called_at, 3), name, sorted({partition_of(t, i, partitions) for t, i, _ in items})))
            with uncertain.open("a", encoding="utf-8") as out:
                out.write(json.dumps({"at": time.time(), "error": f"{name}: {exc}"[:500], "items": items}) + "\n")
            unknown.update(picked)
            time.sleep(args.failure_pause)
            continue
        slowest = max(slowest, time.monotonic() - called)
        for type_, id_, _flags in items:
            changed[(type_, id_)] = changed.get((type_, id_), 0) + 1
        where = [(partition_of(t, i, partitions), seq) for seq, (t, i, _) in zip(seqs, items, strict=True)]
        log_published(log, where, items)
        summary["published"] += len(seqs)
        summary["calls"] += 1
    summary.update(
        unknown=len(unknown),
        failures=failures,
        slowest_call_s=round(slowest, 3),
        seconds=round(time.monotonic() - start, 3),
    )
    print(json.dumps(summary), flush=True)
    return 0


MODES = {"shared": shared_main, "owned": owned_main}

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in MODES:
        sys.exit(MODES[sys.argv[1]](sys.argv[2:]))
    sys.exit("usage: python -m support.publisher {shared|owned} --url URL --namespace NS --log PATH ...")
