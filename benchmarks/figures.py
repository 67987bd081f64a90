"""The measurements: class ``Bench`` runs every figure against one Redis, under one key prefix.

Figures 1 (raw redis-py baselines), 2 (livesync publish), 4 (peers: RQ, Redis Streams)
and the publish half of 6 are measured here; the backlogs and agent runs of figures 3, 5
and 6 are in :mod:`benchmarks.backlogs`, the table rows and targets in
:mod:`benchmarks.summary`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import msgpack

from benchmarks import peer_job, summary
from benchmarks.backlogs import measure_backlogs
from benchmarks.baseline import encode_change, iter_batches
from benchmarks.namespaces import BenchSpace
from benchmarks.plan import BATCH, INTERLEAVE_BATCHES, INTERLEAVE_SINGLE, Plan
from benchmarks.report import Measure, Results, progress
from livesync import Publisher
from livesync.changes import ChangeTuple
from livesync.workload import iter_changes

Trial = Callable[[int, int, int], float]


def interleave(first: Trial, second: Trial, total: int, chunk: int, repeats: int) -> tuple[list[float], list[float]]:
    """Run two trials over ``[0, total)`` in alternating chunks; return each one's seconds per repeat.

    A trial is called as ``trial(repeat, start, stop)`` and returns the seconds it took. The
    two sides alternate every ``chunk`` (the order flips each time), so both see the same
    background load (other users of this machine and of Redis), which keeps their ratio honest.
    """
    first_times: list[float] = []
    second_times: list[float] = []
    for repeat in range(repeats):
        a = b = 0.0
        for index, start in enumerate(range(0, total, chunk)):
            stop = min(total, start + chunk)
            if index % 2:
                b += second(repeat, start, stop)
                a += first(repeat, start, stop)
            else:
                a += first(repeat, start, stop)
                b += second(repeat, start, stop)
        first_times.append(a)
        second_times.append(b)
    return first_times, second_times


class Bench(BenchSpace):
    """One benchmark run against one Redis: every figure, measured in the keys of its :class:`BenchSpace`."""

    def __init__(self, client: Any, url: str, plan: Plan) -> None:
        super().__init__(client, url, plan)
        self.results = Results()

    # -- 1a / 1c / 2 batched --

    def _read_trial(self, key: str) -> tuple[float, int]:
        """ZRANGEBYSCORE in pages of 1,000 with msgpack unpack; return (seconds, changes)."""
        zrangebyscore = self.redis.zrangebyscore
        unpackb = msgpack.unpackb
        low: str = "-inf"
        count = 0
        clock = time.perf_counter()
        while True:
            page = zrangebyscore(key, low, "+inf", start=0, num=BATCH, withscores=True)
            for member, _score in page:
                unpackb(member)
            count += len(page)
            if len(page) < BATCH:
                break
            low = f"({int(page[-1][1])}"
        return time.perf_counter() - clock, count

    def batched(self, items: list[ChangeTuple]) -> tuple[Measure, Measure, Measure, str]:
        """Figures 1a and 2 (emit_many), interleaved, then 1c on the 1a key; returns the 1a key too."""
        plan = self.plan
        batches = list(iter_batches(items, BATCH))
        _manager, publisher = self.new_manager("publish")
        zadd = self.redis.zadd
        emit_many = publisher.emit_many

        def baseline(repeat: int, start: int, stop: int) -> float:
            key = self.key(f"zset-batched-{repeat}")
            seq = start * BATCH
            clock = time.perf_counter()
            for batch in batches[start:stop]:
                ts = int(time.time() * 1000)
                mapping: dict[bytes, int] = {}
                for item in batch:
                    seq += 1
                    mapping[encode_change(seq, ts, item)] = seq
                zadd(key, mapping)
            return time.perf_counter() - clock

        def livesync(_repeat: int, start: int, stop: int) -> float:
            clock = time.perf_counter()
            for batch in batches[start:stop]:
                emit_many(batch)
            return time.perf_counter() - clock

        base_times, live_times = interleave(baseline, livesync, len(batches), INTERLEAVE_BATCHES, plan.repeats)
        self.drop_namespace("publish")
        key = self.key(f"zset-batched-{plan.repeats - 1}")
        for repeat in range(plan.repeats - 1):
            self.redis.delete(self.key(f"zset-batched-{repeat}"))
        read = Measure(len(items), [])
        for _ in range(plan.repeats):
            seconds, count = self._read_trial(key)
            if count != len(items):
                raise RuntimeError(f"baseline 1c read {count} members of {key}, expected {len(items)}")
            read.seconds.append(seconds)
        return Measure(len(items), base_times), Measure(len(items), live_times), read, key

    # -- 1b / 2 single --

    def single(self, items: list[ChangeTuple]) -> tuple[Measure, Measure]:
        """Figures 1b (one ZADD per change) and 2 (one ``emit`` per change), interleaved."""
        _manager, publisher = self.new_manager("single")
        emit = publisher.emit
        zadd = self.redis.zadd

        def baseline(repeat: int, start: int, stop: int) -> float:
            key = self.key(f"zset-single-{repeat}")
            clock = time.perf_counter()
            for seq in range(start + 1, stop + 1):
                zadd(key, {encode_change(seq, int(time.time() * 1000), items[seq - 1]): seq})
            return time.perf_counter() - clock

        def livesync(_repeat: int, start: int, stop: int) -> float:
            clock = time.perf_counter()
            for type_, id_, flags in items[start:stop]:
                emit(type_, id_, *flags)
            return time.perf_counter() - clock

        base_times, live_times = interleave(baseline, livesync, len(items), INTERLEAVE_SINGLE, self.plan.repeats)
        self.redis.delete(*[self.key(f"zset-single-{r}") for r in range(self.plan.repeats)])
        self.drop_namespace("single")
        return Measure(len(items), base_times), Measure(len(items), live_times)

    # -- 4a RQ --

    def peer_rq(self, items: list[ChangeTuple]) -> tuple[Measure, Measure]:
        """Figure 4a: one RQ job per change, JSON serializer, burst SimpleWorker.

        Returns (enqueue, execute) measures; the execute rate is the peer's figure.
        """
        from rq import Queue, SimpleWorker
        from rq.registry import FailedJobRegistry
        from rq.serializers import JSONSerializer

        queue = Queue(self.prefix, connection=self.redis, serializer=JSONSerializer)
        ts = int(time.time() * 1000)
        datas = [
            Queue.prepare_data(
                peer_job.JOB_NAME,
                args=[encode_change(seq, ts, item).hex()],
                job_id=f"{self.prefix}-job-{seq}",
                result_ttl=0,
                failure_ttl=600,
                timeout=60,
            )
            for seq, item in enumerate(items, 1)
        ]
        clock = time.perf_counter()
        for start in range(0, len(datas), BATCH):
            queue.enqueue_many(datas[start : start + BATCH])
        enqueue = Measure(len(items), [time.perf_counter() - clock], "single run")
        worker = SimpleWorker(
            [queue],
            name=f"{self.prefix}-worker",
            connection=self.redis,
            serializer=JSONSerializer,
            log_job_description=False,
        )
        before = len(peer_job.RECEIVED)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            clock = time.perf_counter()
            worker.work(burst=True, logging_level="WARNING")
            execute = Measure(len(items), [time.perf_counter() - clock], "single run")
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        done = len(peer_job.RECEIVED) - before
        failed = FailedJobRegistry(queue=queue).count
        del peer_job.RECEIVED[before:]
        if done != len(items) or failed:
            raise RuntimeError(f"RQ peer: {done} of {len(items)} jobs ran, {failed} failed")
        return enqueue, execute

    # -- 4b Streams --

    def peer_streams(self, items: list[ChangeTuple]) -> tuple[Measure, Measure]:
        """Figure 4b: pipelined XADD, then XREADGROUP COUNT 1000 + unpack + XACK per page.

        Every repetition of the consumer reads the whole stream through a new group.
        """
        key = self.key("stream")
        ts = int(time.time() * 1000)
        clock = time.perf_counter()
        seq = 0
        for batch in iter_batches(items, BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for item in batch:
                seq += 1
                pipe.xadd(key, {"c": encode_change(seq, ts, item)})
            pipe.execute()
        xadd = Measure(len(items), [time.perf_counter() - clock], "single run")
        consume = Measure(len(items), [])
        unpackb = msgpack.unpackb
        for repeat in range(self.plan.repeats):
            group = f"g{repeat}"
            self.redis.xgroup_create(key, group, id="0")
            count = 0
            clock = time.perf_counter()
            while True:
                response = self.redis.xreadgroup(group, "c1", {key: ">"}, count=BATCH)
                if not response or not response[0][1]:
                    break
                entries = response[0][1]
                ids = []
                for entry_id, fields in entries:
                    unpackb(fields[b"c"])
                    ids.append(entry_id)
                self.redis.xack(key, group, *ids)
                count += len(entries)
            consume.seconds.append(time.perf_counter() - clock)
            if count != len(items):
                raise RuntimeError(f"Streams peer read {count} entries, expected {len(items)}")
            self.redis.xgroup_destroy(key, group)
        self.redis.delete(key)
        return xadd, consume

    # -- 6 publish with 1 vs 50 agents --

    def publish_scaling(self) -> tuple[Measure, Measure]:
        """Figure 6: batched publish rate with 1 agent vs ``scaling_agents`` agents (interleaved)."""
        plan = self.plan
        batches = list(iter_batches(iter_changes(plan.scaling_changes, plan.objects, plan.seed + 6), BATCH))
        _m1, pub1 = self.new_manager("agents-1", 1)
        _mn, pubn = self.new_manager(f"agents-{plan.scaling_agents}", plan.scaling_agents)

        def trial(publisher: Publisher) -> Trial:
            def publish(_repeat: int, start: int, stop: int) -> float:
                clock = time.perf_counter()
                for batch in batches[start:stop]:
                    publisher.emit_many(batch)
                return time.perf_counter() - clock

            return publish

        one, many = interleave(trial(pub1), trial(pubn), len(batches), INTERLEAVE_BATCHES, plan.repeats)
        self.drop_namespace("agents-1")
        self.drop_namespace(f"agents-{plan.scaling_agents}")
        return Measure(plan.scaling_changes, one), Measure(plan.scaling_changes, many)

    # -- everything --

    def run(self) -> Results:
        """Measure every figure, then compute the targets."""
        plan = self.plan
        res = self.results
        fig = res.figures
        items = list(iter_changes(plan.baseline_changes, plan.objects, plan.seed))

        progress(f"1a/2/1c: batched ZADD vs emit_many, {len(items):,} changes, best of {plan.repeats}")
        zadd_batched, emit_many, read, base_key = self.batched(items)
        base_bytes = int(self.redis.memory_usage(base_key, samples=0) or 0)
        self.redis.delete(base_key)
        fig["1a_zadd_batched"] = zadd_batched.to_dict()
        fig["1c_zrangebyscore_unpack"] = read.to_dict()
        fig["2_emit_many"] = emit_many.to_dict()
        fig["5_baseline_bytes_per_change"] = base_bytes / len(items)

        progress(f"1b/2: one ZADD vs one emit per change, {plan.single_changes:,} changes, best of {plan.repeats}")
        zadd_single, emit_single = self.single(items[: plan.single_changes])
        fig["1b_zadd_single"] = zadd_single.to_dict()
        fig["2_emit_single"] = emit_single.to_dict()

        progress(f"4b: Redis Streams, {len(items):,} changes")
        xadd, consume = self.peer_streams(items)
        fig["4b_streams_xadd"] = xadd.to_dict()
        fig["4b_streams_consume"] = consume.to_dict()

        progress(f"4a: one RQ job per change, {plan.rq_changes:,} jobs, SimpleWorker burst")
        enqueue, execute = self.peer_rq(items[: plan.rq_changes])
        fig["4a_rq_enqueue"] = enqueue.to_dict()
        fig["4a_rq_execute"] = execute.to_dict()
        del items

        progress(f"6: publish with 1 vs {plan.scaling_agents} agents, {plan.scaling_changes:,} changes per round")
        one, many = self.publish_scaling()
        fig["6_publish_1_agent"] = one.to_dict()
        fig[f"6_publish_{plan.scaling_agents}_agents"] = many.to_dict()

        runs = measure_backlogs(self)
        fig["6_backlogs"] = runs
        main = next(run for run in runs if run["size"] == plan.main_size)
        fig["3_agent_run"] = main["run"]
        fig["5_bytes_per_change"] = main["bytes_per_change"]

        summary.figure_rows(
            res, plan, zadd_batched, zadd_single, read, emit_many, emit_single, enqueue, execute, xadd, consume
        )
        summary.scaling_rows(res, plan, one, many, runs, main, base_bytes / plan.baseline_changes)
        summary.add_targets(
            res, plan, zadd_batched, zadd_single, read, emit_many, emit_single, execute, consume, one, many, runs
        )
        return res
