"""The benchmark (``benchmarks/``, ``scripts/bench.py``, ``livesync bench``), piece by piece.

A quick benchmark takes half a minute, too long for every test run; these tests check
the pieces instead: the workload generator, the RQ peer job, the ratios and PASS/FAIL of
the report, the plan and the command lines, and one tiny real run of every figure against
the test Redis. Nothing here asserts on timings.
"""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis
from click.testing import CliRunner

from benchmarks import Bench, Plan, make_plan, parse_args, peer_job, summary
from benchmarks import main as bench_main
from benchmarks.baseline import encode_change, iter_batches
from benchmarks.figures import interleave
from benchmarks.plan import FULL, QUICK
from benchmarks.report import Measure, Results, Target, print_table
from benchmarks.scale import (
    SCALE,
    SCALE_QUICK,
    RedisCost,
    ScaleModel,
    ScalePlan,
    add_counters,
    counters_delta,
    make_scale_plan,
    model_lines,
    parse_workers,
    redis_counters,
    speedups,
)
from benchmarks.scale_run import ScaleBench, flatten_note, scale_rows
from livesync import SyncManager
from livesync.changes import FLAG_BITS
from livesync.cli import AppContext
from livesync.cli import bench as cli_bench
from livesync.cli.bench import COMMANDS, bench
from livesync.workload import APPEAR_FLAGS, DISAPPEAR_FLAGS, MODIFICATIONS, TYPES, flags_mask, generate
from livesync.workload import iter_changes as iter_workload

ROOT = Path(__file__).resolve().parents[1]
UNREACHABLE_URL = "redis://:hunter2@127.0.0.1:1/0"

#: Every figure of a run, by its JSON key (with 3 scaling agents instead of 50).
FIGURES = {
    "1a_zadd_batched",
    "1b_zadd_single",
    "1c_zrangebyscore_unpack",
    "2_emit_many",
    "2_emit_single",
    "3_agent_run",
    "4a_rq_enqueue",
    "4a_rq_execute",
    "4b_streams_consume",
    "4b_streams_xadd",
    "5_baseline_bytes_per_change",
    "5_bytes_per_change",
    "6_backlogs",
    "6_publish_1_agent",
    "6_publish_3_agents",
}


# -- workload ----------------------------------------------------------------------------------


def test_workload_is_deterministic_by_seed() -> None:
    first = list(iter_workload(5_000, 500, seed=7))
    assert first == list(iter_workload(5_000, 500, seed=7))
    assert first != list(iter_workload(5_000, 500, seed=8))
    assert len(first) == 5_000


def test_workload_appears_only_when_not_live_and_disappears_only_when_live() -> None:
    live: set[tuple[str, int | str]] = set()
    unpublished: set[tuple[str, int | str]] = set()
    seen_flags: set[str] = set()
    for type_, id_, flags in iter_workload(50_000, 1_000, seed=3):
        key = (type_, id_)
        names = set(flags)
        seen_flags |= names
        assert flags and len(names) == len(flags) and names <= set(FLAG_BITS), flags
        if names & APPEAR_FLAGS:
            assert key not in live, (key, flags)
            assert len(names & APPEAR_FLAGS) == 1
            if "published" in names:
                assert key in unpublished
                unpublished.discard(key)
            live.add(key)
        else:
            assert key in live, (key, flags)  # updates, moves, deletes: only of live objects
        if names & DISAPPEAR_FLAGS:
            assert names in ({"deleted"}, {"unpublished"}), flags
            live.discard(key)
            if "unpublished" in names:
                assert type_ == "event"
                unpublished.add(key)
    assert seen_flags >= {"created", "deleted", "undeleted", "moved", "published", "unpublished", *MODIFICATIONS}


def test_workload_ids_follow_the_types() -> None:
    for type_, id_, _flags in iter_workload(2_000, 100, seed=1):
        assert type_ in TYPES
        if type_ == "contribution":
            assert isinstance(id_, str) and id_.startswith("c-") and 0 <= int(id_[2:]) < 100
        else:
            assert isinstance(id_, int) and 0 <= id_ < 100
            assert TYPES[id_ % len(TYPES)] == type_


def test_the_benchmark_streams_the_demo_workload() -> None:
    # one generator: the benchmark's changes are those of livesync demo, streamed
    assert list(iter_workload(3_000, 200, 5)) == generate(3_000, 200, 5)
    assert list(iter_workload(2_000, 1, 9)) == generate(2_000, 1, 9)


def test_the_demo_workload_is_unchanged() -> None:
    # digests of generate() before the benchmark's generator was folded into it
    digest = hashlib.sha256(repr(generate(5_000, 300, 42)).encode()).hexdigest()
    assert digest == "a4395baea8e818a59582158f8b060f9184f5b797fd800f65ea31657544bd7fb3"
    digest = hashlib.sha256(repr(generate(2_000, 10, 7)).encode()).hexdigest()
    assert digest == "5f2a702cf33e67e55ab8827679a32ecbc85da95a53ee8efa8bc45491c62d5952"


def test_iter_batches_groups_and_keeps_the_rest() -> None:
    items = list(iter_workload(2_500, 100))
    batches = list(iter_batches(items, 1_000))
    assert [len(batch) for batch in batches] == [1_000, 1_000, 500]
    assert [item for batch in batches for item in batch] == items
    assert list(iter_batches([], 10)) == []


def test_encode_change_is_the_baseline_member() -> None:
    member = encode_change(12, 1_700_000_000_000, ("contribution", "c-5", ["created", "title_changed"]))
    mask = FLAG_BITS["created"] | FLAG_BITS["title_changed"]
    assert msgpack.unpackb(member) == [12, 1_700_000_000_000, "contribution", "c-5", mask]
    assert flags_mask(["created", "title_changed"]) == mask


# -- RQ peer job ---------------------------------------------------------------------------------


def test_peer_job_decodes_the_hex_change() -> None:
    before = len(peer_job.RECEIVED)
    try:
        peer_job.handle_change(encode_change(3, 99, ("event", 42, ["deleted"])).hex())
        peer_job.handle_change(encode_change(4, 99, ("contribution", "c-1", ["moved"])).hex())
        assert peer_job.RECEIVED[before:] == [
            (3, 99, "event", 42, FLAG_BITS["deleted"]),
            (4, 99, "contribution", "c-1", FLAG_BITS["moved"]),
        ]
    finally:
        del peer_job.RECEIVED[before:]


def test_peer_job_is_importable_by_its_job_name() -> None:
    from rq.utils import import_attribute

    assert import_attribute(peer_job.JOB_NAME) is peer_job.handle_change


# -- report: measures, targets, table ------------------------------------------------------------------


def test_measure_keeps_the_best_repetition() -> None:
    measure = Measure(1_000, [0.5, 0.25, 1.0])
    assert measure.best == 0.25
    assert measure.rate == 4_000
    data = measure.to_dict()
    assert data["best_seconds"] == 0.25 and data["median_seconds"] == 0.5
    assert data["changes_per_second"] == 4_000 and data["method"] == "best of 3"
    assert Measure(10, [1.0], "single run").to_dict()["method"] == "single run"
    assert Measure(10, [0.0]).rate == float("inf")


def test_target_passes_on_the_right_side_of_its_limit() -> None:
    assert Target("up", 0.6, 0.6).passed
    assert not Target("up", 0.59, 0.6).passed
    assert Target("down", 80.0, 80.0, higher_is_better=False).passed
    assert not Target("down", 80.5, 80.0, higher_is_better=False).passed
    assert Target("down", 1.0, 1.2, higher_is_better=False).to_dict() == {
        "name": "down",
        "value": 1.0,
        "limit": 1.2,
        "op": "<=",
        "unit": "x",
        "passed": True,
    }


def _run(size: int, seconds: float, rss: int) -> dict[str, Any]:
    return {
        "size": size,
        "publish": {"changes_per_second": 50_000.0},
        "bytes_per_change": 40.0,
        "run": {
            "changes_per_second": size / seconds,
            "seconds": seconds,
            "peak_rss_kib": rss,
            "rss_before_run_kib": 40_000,
            "records": size // 2,
            "windows": 3,
        },
    }


def _figures_from_numbers() -> tuple[Results, Plan]:
    """A report filled from made-up measures: 1a 100k/s, 1b 10k/s, 1c 200k/s, 4a 100/s, 4b 100k/s."""
    plan = Plan(sizes=(1_000, 10_000, 20_000), scaling_agents=50, repeats=2, run_repeats=3)
    res = Results()
    zadd_batched, zadd_single = Measure(100_000, [1.0, 2.0]), Measure(10_000, [1.0])
    read, emit_many = Measure(200_000, [1.0]), Measure(100_000, [2.0])  # emit_many: 0.5 x 1a (fails 0.6)
    emit_single, enqueue = Measure(10_000, [1.25]), Measure(100, [0.1])  # emit: 0.8 x 1b (passes 0.7)
    execute, xadd, consume = Measure(100, [1.0]), Measure(100_000, [1.0]), Measure(100_000, [1.0])
    one, many = Measure(10_000, [1.0]), Measure(10_000, [1.0 / 0.95])  # 0.95 x (passes 0.9)
    runs = [_run(1_000, 0.01, 50_000), _run(10_000, 0.1, 52_000), _run(20_000, 0.25, 61_000)]
    main = runs[1]  # 100k ch/s: 0.5 x 1c, 1,000 x 4a, 1.0 x 4b
    res.figures.update(
        {
            "1a_zadd_batched": zadd_batched.to_dict(),
            "1c_zrangebyscore_unpack": read.to_dict(),
            "4a_rq_execute": execute.to_dict(),
            "4b_streams_consume": consume.to_dict(),
            "3_agent_run": main["run"],
            "5_bytes_per_change": 90.0,  # fails <= 80
        }
    )
    summary.figure_rows(
        res, plan, zadd_batched, zadd_single, read, emit_many, emit_single, enqueue, execute, xadd, consume
    )
    summary.scaling_rows(res, plan, one, many, runs, main, 120.0)
    summary.add_targets(
        res, plan, zadd_batched, zadd_single, read, emit_many, emit_single, execute, consume, one, many, runs
    )
    return res, plan


def test_targets_are_ratios_of_the_given_numbers() -> None:
    res, _plan = _figures_from_numbers()
    got = {target.name: (round(target.value, 4), target.limit, target.passed) for target in res.targets}
    assert got == {
        "batched publish (emit_many) >= 0.6 x baseline 1a": (0.5, 0.6, False),
        "single emit >= 0.7 x baseline 1b": (0.8, 0.7, True),
        "agent run (10,000) >= 0.5 x baseline 1c": (0.5, 0.5, True),
        "agent run (10,000) >= 500 x RQ peer 4a": (1_000.0, 500.0, True),
        "agent run (10,000) >= 0.6 x Streams consumer 4b": (1.0, 0.6, True),
        "bytes per stored change (10,000 backlog) <= 80": (90.0, 80.0, False),
        "publish with 50 agents >= 0.9 x with 1 agent": (0.95, 0.9, True),
        "run time 20,000 <= 2.4 x run time 10,000": (2.5, 2.4, False),  # 0.25 s / 0.1 s
        "peak RSS 20,000 run <= 1.2 x 1,000 run": (1.22, 1.2, False),  # 61,000 / 50,000 KiB
    }


def test_table_rows_and_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    res, _plan = _figures_from_numbers()
    rows = {(row[0], row[1]): row for row in res.rows}
    assert rows[("2", "emit_many x 1,000, 100,000 changes")][2:] == ("50,000 ch/s", "0.50 x 1a", "best of 2")
    assert rows[("3", "agent run, 10,000 changes, 100,000 objects")][3] == "0.50 x 1c, 1,000 x 4a, 1.00 x 4b"
    assert rows[("5", "bytes per stored change (10,000 backlog)")][2:4] == ("40.0 B", "0.33 x 1a's")
    assert rows[("6", "agent run 20,000: time, rate, peak RSS")][3].endswith("25.0 x time, 1.22 x RSS of 1,000")
    assert len(res.rows) == 22

    print_table(res)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[1].split() == ["fig", "measurement", "value", "compared", "method"]
    assert set(lines[2]) == {"-", " "}
    assert "  FAIL  batched publish (emit_many) >= 0.6 x baseline 1a" in out
    assert "  PASS  single emit >= 0.7 x baseline 1b" in out
    assert "     0.50 x (>= 0.6)" in out and "    90.00 B (<= 80)" in out
    assert "\n5 of 9 targets pass:\n" in out
    assert out.count("  FAILED: ") == 4


# -- plan and interleaving -----------------------------------------------------------------------------


def test_plans_and_options() -> None:
    assert make_plan() == FULL and make_plan(quick=True) == QUICK
    assert FULL.main_size == 1_000_000 and QUICK.main_size == 100_000
    plan = make_plan(quick=True, sizes="2_000,500", objects=50, repeats=1, window=100, batch_size=10)
    assert (plan.sizes, plan.objects, plan.repeats, plan.window, plan.batch_size) == ((500, 2_000), 50, 1, 100, 10)
    assert plan.baseline_changes == QUICK.baseline_changes
    assert Plan(sizes=(7,)).main_size == 7
    for bad in (",", "0,10", "a,b"):
        with pytest.raises(ValueError, match="positive sizes"):
            make_plan(sizes=bad)


def test_interleave_alternates_the_order_every_chunk() -> None:
    calls: list[tuple[str, int, int, int]] = []

    def trial(name: str) -> Any:
        def run(repeat: int, start: int, stop: int) -> float:
            calls.append((name, repeat, start, stop))
            return 1.0

        return run

    first, second = interleave(trial("a"), trial("b"), 25, 10, 2)
    assert first == second == [3.0, 3.0]
    order = [("a", 0, 10), ("b", 0, 10), ("b", 10, 20), ("a", 10, 20), ("a", 20, 25), ("b", 20, 25)]
    assert calls[:6] == [(name, 0, start, stop) for name, start, stop in order]
    assert calls[6:] == [(name, 1, start, stop) for name, start, stop in order]


# -- command lines ---------------------------------------------------------------------------------------


def test_livesync_bench_help() -> None:
    assert [bench] == COMMANDS
    result = CliRunner().invoke(bench, ["--help"], obj=AppContext({}), prog_name="livesync bench")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Every figure is a ratio against baselines measured in the same run" in text
    assert "A full run takes under 5 minutes on 2 cores, --quick under 30 s" in text
    for option in ("--quick", "--json PATH", "--sizes", "--objects", "--repeats", "--check", "--profile"):
        assert option in text


def test_livesync_bench_rejects_bad_sizes_and_unreachable_redis() -> None:
    runner = CliRunner()
    result = runner.invoke(bench, ["--sizes", "0"], obj=AppContext({}))
    assert result.exit_code == 2 and "--sizes" in result.output
    result = runner.invoke(bench, ["--quick"], obj=AppContext({"redis_url": UNREACHABLE_URL}))
    assert result.exit_code == 1
    assert "cannot reach Redis" in result.output and "hunter2" not in result.output


@pytest.mark.parametrize("cwd", [ROOT, ROOT / "tests"])
def test_script_help(cwd: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--help"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "every figure is a ratio against baselines" in done.stdout and "--quick" in done.stdout


def test_python_m_livesync_bench_is_gone() -> None:
    # scripts/bench.py is the one entry point; the installed package holds no benchmark
    done = subprocess.run(
        [sys.executable, "-m", "livesync.bench", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "No module named livesync.bench" in done.stderr


def test_livesync_bench_outside_a_checkout_says_it_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_bench, "CHECKOUT", tmp_path)  # an installed package: no scripts/, no benchmarks/
    result = CliRunner().invoke(bench, ["--quick"], obj=AppContext({}))
    assert result.exit_code == 1
    assert "not part of an installed livesync package" in result.output and "scripts/bench.py" in result.output


def test_script_reports_an_unreachable_redis() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/bench.py", "--quick", "--redis-url", UNREACHABLE_URL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "cannot reach Redis at" in done.stderr and "hunter2" not in done.stderr


# -- layout: outside the installed package, no import circle, type-checked ------------------------


def test_the_installed_package_holds_no_benchmark() -> None:
    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    assert "livesync" in packages
    assert [name for name in packages if "bench" in name] == []
    assert (ROOT / "benchmarks" / "__init__.py").is_file()


def test_mypy_checks_the_benchmark() -> None:
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]["packages"]
    assert "benchmarks" in packages and "livesync" in packages


def _harness_imports(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (``TYPE_CHECKING`` imports too), read from the source."""
    name = package.name
    modules = {path.stem for path in package.glob("*.py") if path.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for module in modules:
        targets: set[str] = set()
        for node in ast.walk(ast.parse((package / f"{module}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == name:
                    targets |= {alias.name for alias in node.names if alias.name in modules}
                elif node.module.startswith(name + "."):
                    targets.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                targets |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith(name + ".")}
        graph[module] = targets - {module}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of ``graph``, each as the path that closes it (from its smallest module)."""
    found: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        for target in sorted(graph.get(module, ())):
            if target == path[0]:
                found.append([*path, target])
            elif target not in path and target > path[0]:
                visit(target, [*path, target])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_benchmark_modules_import_no_circle() -> None:
    graph = _harness_imports(ROOT / "benchmarks")
    assert {"backlogs", "figures", "namespaces"} <= set(graph)
    assert _circles(graph) == []
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]  # the check finds one


def test_dropping_a_namespace_keeps_those_its_name_prefixes(redis_url: str) -> None:
    # backlog-20000 and backlog-200000 of the quick run: dropping one must leave the other
    client = redis.Redis.from_url(redis_url)
    space = Bench(client, redis_url, Plan())
    try:
        for label in ("n-1", "n-10"):
            _manager, publisher = space.new_manager(label)
            publisher.emit("event", 1, "created")
        space.drop_namespace("n-1")
        kept = SyncManager(client, space.namespace("n-10"))
        assert kept.track(0).head() == 1 and [agent.id for agent in kept.list_agents()] == ["bench"]
        left = client.scan_iter(match=f"*{space.namespace('n-1')}*")
        assert [key for key in left if space.namespace("n-10").encode() not in key] == []
    finally:
        space.cleanup()
        client.close()


# -- one tiny real run --------------------------------------------------------------------------------------

TINY = Plan(
    baseline_changes=2_000,
    single_changes=200,
    rq_changes=40,
    scaling_changes=2_000,
    scaling_agents=3,
    sizes=(300, 1_000, 2_000),
    objects=200,
    repeats=1,
    run_repeats=2,
)


@pytest.fixture
def tiny_bench(redis_url: str) -> Iterator[Bench]:
    """A benchmark of the tiny plan on the test Redis; its keys are deleted afterwards."""
    client = redis.Redis.from_url(redis_url)
    tiny = Bench(client, redis_url, TINY)
    yield tiny
    tiny.cleanup()
    assert list(client.scan_iter(match=f"*{tiny.prefix}*", count=1000)) == []
    assert not client.sismember("rq:queues", f"rq:queue:{tiny.prefix}")
    client.close()


@pytest.mark.slow
def test_tiny_run_measures_every_figure(tiny_bench: Bench, capsys: pytest.CaptureFixture[str]) -> None:
    results = tiny_bench.run()
    fig = results.figures
    assert set(fig) == FIGURES
    assert json.loads(json.dumps(fig)) == fig  # JSON-ready
    assert fig["1a_zadd_batched"]["changes"] == 2_000 and fig["4a_rq_execute"]["changes"] == 40
    assert fig["3_agent_run"]["changes"] == 1_000 and fig["3_agent_run"]["peak_rss_kib"] > 0
    assert [run["size"] for run in fig["6_backlogs"]] == [300, 1_000, 2_000]
    for run in fig["6_backlogs"]:
        assert len(run["runs"]) == 2 and all(report["changes"] == run["size"] for report in run["runs"])
        assert run["stored_after_run"] == 0  # the last round pruned the track empty
    assert fig["5_bytes_per_change"] > 0 and fig["5_baseline_bytes_per_change"] > 0
    assert len(results.targets) == 9 and len(results.rows) == 22
    print_table(results)
    assert "of 9 targets pass" in capsys.readouterr().out
    assert peer_job.RECEIVED == []  # the RQ peer's jobs ran in this process and were dropped after counting


# -- figure 7 (--scale): plan, Redis cost, model, rows, options -------------------------------------


def test_parse_workers_sorts_and_requires_one() -> None:
    assert parse_workers("1,2,4") == (1, 2, 4)
    assert parse_workers(" 4, 1,2,2 ,") == (1, 2, 4)
    assert parse_workers("1") == (1,)
    for bad in ("", ",", "a,1", "0,1", "1,65", "-1,1"):
        with pytest.raises(ValueError, match="between 1 and 64"):
            parse_workers(bad)
    with pytest.raises(ValueError, match="must include 1"):
        parse_workers("2,4")


def test_scale_plans_and_options() -> None:
    assert make_scale_plan() == SCALE and make_scale_plan(quick=True) == SCALE_QUICK
    assert (SCALE.changes, SCALE.objects, SCALE.partitions, SCALE.workers) == (400_000, 100_000, 4, (1, 2, 4))
    assert 2 <= SCALE.repeats <= 3 and SCALE_QUICK.changes < SCALE.changes
    plan = make_scale_plan(True, "2,1", 1_000, 50, 2, window=100, batch_size=10)
    assert (plan.workers, plan.changes, plan.objects, plan.repeats) == ((1, 2), 1_000, 50, 2)
    assert (plan.window, plan.batch_size, plan.single_changes) == (100, 10, SCALE_QUICK.single_changes)
    with pytest.raises(ValueError, match="at least 4 changes"):
        make_scale_plan(changes=3)
    with pytest.raises(ValueError, match="positive"):
        make_scale_plan(repeats=0)
    with pytest.raises(ValueError, match="must include 1"):
        make_scale_plan(workers="2,4")


def _info(zrangebyscore: int, evalsha: int, cpu_main: float | None, cpu: float) -> tuple[dict[str, Any], ...]:
    """(INFO commandstats, INFO cpu) as redis-py parses them; ``cpu_main`` None: no main-thread fields."""
    stats: dict[str, Any] = {
        "cmdstat_zrangebyscore": {"calls": 10, "usec": zrangebyscore},
        "cmdstat_zrevrangebyscore": {"calls": 2, "usec": 5},
        "cmdstat_evalsha": {"calls": 3, "usec": evalsha},
        "cmdstat_hget": {"calls": 99, "usec": 1_000},  # called inside scripts too: never added up
    }
    info: dict[str, Any] = {"used_cpu_user": cpu, "used_cpu_sys": 0.5}
    if cpu_main is not None:
        info |= {"used_cpu_user_main_thread": cpu_main, "used_cpu_sys_main_thread": 0.25}
    return stats, info


def test_redis_counters_deltas_and_sums() -> None:
    before = redis_counters(*_info(100, 50, 1.0, 2.0))
    after = redis_counters(*_info(400, 250, 1.5, 9.0))
    assert before["zrangebyscore_usec"] == 100 and before["cpu_seconds"] == 1.25  # the main thread's time
    assert "hget_usec" not in before
    assert redis_counters(*_info(0, 0, None, 2.0))["cpu_seconds"] == 2.5  # older servers: the process's
    assert redis_counters({}, {})["cpu_seconds"] == 0.0 and redis_counters({}, {})["evalsha_usec"] == 0.0
    delta = counters_delta(before, after)
    assert (delta["zrangebyscore_usec"], delta["evalsha_usec"], delta["cpu_seconds"]) == (300, 200, 0.5)
    assert delta["zrevrangebyscore_usec"] == 0
    total = add_counters([delta, delta])
    assert (total["zrangebyscore_usec"], total["cpu_seconds"]) == (600, 1.0)


def test_redis_cost_per_change() -> None:
    counters = {"zrangebyscore_usec": 300.0, "zrevrangebyscore_usec": 100.0, "evalsha_usec": 600.0}
    cost = RedisCost.from_counters({**counters, "cpu_seconds": 0.004}, changes=2_000, private=True)
    assert cost.commands_usec_per_change == 0.5  # (300 + 100 + 600) us / 2,000
    assert cost.cpu_usec_per_change == 2.0  # 4,000 us / 2,000
    assert (cost.basis, cost.usec_per_change) == ("server CPU", 2.0)
    data = cost.to_dict()
    assert (data["read_usec"], data["ack_usec"], data["usec_per_change"], data["private_redis"]) == (400, 600, 2, True)
    shared = RedisCost.from_counters({**counters, "cpu_seconds": 0.004}, changes=2_000, private=False)
    assert (shared.basis, shared.usec_per_change) == ("read+ack commands", 0.5)  # others' load is in the CPU
    no_cpu = RedisCost.from_counters(counters, changes=2_000, private=True)
    assert no_cpu.basis == "read+ack commands"
    with pytest.raises(ValueError):
        RedisCost.from_counters(counters, changes=0, private=True)


def test_scale_model_arithmetic() -> None:
    model = ScaleModel(per_partition_rate=250_000, redis_usec_per_change=0.5, partitions=4)
    assert model.redis_limit == 2_000_000  # 1e6 us / 0.5 us per change
    assert model.saturating_partitions == 8  # 2,000,000 / 250,000
    assert model.rate() == 1_000_000  # P=4 x 250,000: below the bound
    assert model.rate(16) == 2_000_000  # 4,000,000 unbounded, one Redis serves 2,000,000
    assert model.rate(16, masters=3) == 4_000_000  # three masters: the workers are the limit again
    assert model.rate(64, masters=3) == 6_000_000
    data = model.to_dict()
    assert data["redis_limit_changes_per_second"] == 2_000_000 and data["saturating_partitions"] == 8
    assert data["unbounded_rate"] == data["predicted_rate"] == 1_000_000
    assert data["predicted"] == {"P=4": 1_000_000, "P=16": 2_000_000, "P=64": 2_000_000}
    for bad in ((0, 0.5, 4), (250_000, 0, 4), (250_000, 0.5, 0)):
        with pytest.raises(ValueError):
            ScaleModel(*bad)
    with pytest.raises(ValueError, match="masters"):
        model.rate(4, masters=0)


def test_speedups_are_against_one_worker() -> None:
    assert speedups({4: 300.0, 1: 200.0, 2: 250.0}) == {1: 1.0, 2: 1.25, 4: 1.5}
    with pytest.raises(ValueError, match="1 worker"):
        speedups({2: 10.0})


def test_model_lines_name_the_limit() -> None:
    model = ScaleModel(250_000, 0.5, 4)
    cost = RedisCost.from_counters({"evalsha_usec": 100.0, "cpu_seconds": 0.001}, 2_000, True)
    single = (ScaleModel(40_000, 1.0, 4), RedisCost.from_counters({"cpu_seconds": 0.002}, 2_000, True))
    text = "\n".join(model_lines(model, cost, 250.0, single))
    assert "per-partition rate r = 250,000 ch/s" in text
    assert "c = 0.500 us of server CPU (read+ack commands alone: 0.050 us); 250 changes per stored member" in text
    assert "P=4: 1,000,000 ch/s" in text
    assert "Redis becomes the limit at about 2,000,000 changes/s per Redis (or per cluster master)" in text
    assert "from about 8.0 busy partitions" in text and "M x 2,000,000 changes/s" in text
    assert "one change per publish" in text and "about 1,000,000 changes/s per Redis" in text
    shared = RedisCost.from_counters({"evalsha_usec": 1_000.0}, 2_000, False)
    assert "server CPU not used" in "\n".join(model_lines(ScaleModel(250_000, 0.5, 4), shared, 1.0))


def _scale_run(workers: int, seconds: float, busy: float) -> dict[str, Any]:
    return {
        "workers": workers,
        "changes": 400_000,
        "seconds": seconds,
        "changes_per_second": 400_000 / seconds,
        "busy_seconds": busy,
        "busy_changes_per_second": 400_000 / busy,
        "startup_seconds": 0.5,
    }


def test_scale_rows_and_note() -> None:
    backlog = {
        "changes": 400_000,
        "objects": 100_000,
        "partitions": 4,
        "publish_changes_per_second": 200_000.0,
        "published_with": "emit_many x 1,000",
        "changes_per_member": 250.0,
        "track_memory_bytes": 8 * 1024 * 1024,
    }
    cost = RedisCost.from_counters({"zrangebyscore_usec": 4_000.0, "cpu_seconds": 0.02}, 400_000, True).to_dict()
    model = ScaleModel(400_000, 0.05, 4).to_dict()
    section = {
        "plan": {"workers": [1, 2]},
        "backlog": backlog,
        "runs": {
            "1": {"best": _scale_run(1, 2.0, 1.0), "best_busy": _scale_run(1, 2.0, 1.0), "speedup": 1.0,
                  "busy_speedup": 1.0, "samples": [{}, {}]},
            "2": {"best": _scale_run(2, 1.6, 0.8), "best_busy": _scale_run(2, 1.6, 0.8), "speedup": 1.25,
                  "busy_speedup": 1.25, "samples": [{}, {}]},
        },
        "redis_cost": cost,
        "model": model,
        "single": {
            "backlog": {**backlog, "changes": 40_000, "changes_per_member": 1.0, "published_with": "emit"},
            "best_busy": _scale_run(1, 2.0, 1.0),
            "samples": [{}],
            "redis_cost": cost,
            "model": model,
        },
    }  # fmt: skip
    rows = {(row[1], row[2]): row for row in scale_rows(section)}
    assert all(row[0] == "7" for row in rows.values())
    assert rows[("1 worker(s): first start -> all exited", "2.00 s")][3] == "200,000 ch/s, 1.00 x 1 worker"
    assert rows[("2 worker(s): first start -> all exited", "1.60 s")][3:] == (
        "250,000 ch/s, 1.25 x 1 worker",
        "fastest of 2",
    )
    assert rows[("  busy: first job start -> last job end", "0.80 s")][3].startswith("500,000 ch/s, 1.25 x 1 worker")
    assert rows[("  Redis per change, batched: read+ack commands", "0.010 us")]
    assert rows[("  Redis per change, batched: server CPU", "0.050 us")][4] == "INFO cpu, all runs"
    limit = rows[("  model, batched: one Redis (or master) serves", "20,000,000 ch/s")]
    assert limit[3] == "from ~50.0 busy partitions at 400,000 ch/s"
    assert len(scale_rows(section)) == 13  # backlog, 2 x 2 runs, 2 costs, model; single: backlog, run, 2, model
    note = flatten_note(2, 2.5)
    assert "2 usable core(s)" in note and "cannot exceed 2x" in note and "load average was 2.50" in note
    assert "load average" not in flatten_note(8)


def test_scale_options_of_the_script() -> None:
    args = parse_args(["--scale", "--scale-workers", "1,2", "--scale-changes", "1000", "--scale-redis", "given"])
    assert (args.scale, args.scale_workers, args.scale_changes, args.scale_redis) == (True, "1,2", 1_000, "given")
    assert parse_args([]).scale is False and parse_args([]).scale_redis == "private"
    with pytest.raises(SystemExit, match="separate runs"):
        bench_main(["--scale", "--profile"])
    with pytest.raises(SystemExit, match="--scale: the worker counts must include 1"):
        bench_main(["--scale", "--scale-workers", "2,4"])


def test_livesync_bench_scale_options() -> None:
    runner = CliRunner()
    result = runner.invoke(bench, ["--help"], obj=AppContext({}), prog_name="livesync bench")
    text = " ".join(result.output.split())
    for option in ("--scale ", "--scale-workers N,N,N", "--scale-changes N", "--scale-redis [private|given]"):
        assert option in text
    assert "Redis becomes" not in text and "on a 2-core machine they flatten early" in text
    result = runner.invoke(bench, ["--scale", "--scale-workers", "2"], obj=AppContext({}))
    assert result.exit_code == 2 and "must include 1" in result.output
    result = runner.invoke(bench, ["--scale", "--profile"], obj=AppContext({}))
    assert result.exit_code == 2 and "separate runs" in result.output
    unreachable = AppContext({"redis_url": UNREACHABLE_URL})
    result = runner.invoke(bench, ["--scale", "--scale-redis", "given"], obj=unreachable)
    assert result.exit_code == 1
    assert "cannot reach Redis" in result.output and "hunter2" not in result.output


@pytest.mark.slow
def test_tiny_scale_run_with_real_workers(redis_url: str) -> None:
    """Real `livesync worker --burst` processes on the test Redis; only the wiring is checked, no timing."""
    plan = ScalePlan(changes=400, objects=50, single_changes=40, workers=(1, 2), repeats=1, run_timeout=60)
    client = redis.Redis.from_url(redis_url)
    scale = ScaleBench(plan, client, redis_url, client, redis_url, private=False)
    try:
        section = scale.run()
    finally:
        scale.cleanup()
    try:
        assert json.loads(json.dumps(section)) == section
        assert section["backlog"]["changes"] == 400 and sum(section["backlog"]["heads"]) == 400
        assert section["single"]["backlog"]["changes_per_member"] == 1.0
        for workers in ("1", "2"):
            run = section["runs"][workers]["best"]
            assert run["workers"] == int(workers) and run["changes"] == 400 and run["jobs"] == 4
            assert run["redis"]["evalsha_calls"] >= 4  # at least one fenced ack per partition run
        assert section["runs"]["1"]["speedup"] == 1.0
        assert section["redis_cost"]["basis"] == "read+ack commands"  # a shared Redis: not its CPU
        assert section["model"]["partitions"] == 4 and section["model"]["redis_limit_changes_per_second"] > 0
        assert any("Redis becomes the limit at about" in line for line in section["model_text"])
        assert list(client.scan_iter(match=f"*{scale.prefix}*", count=1000)) == []
        assert not any(scale.prefix.encode() in member for member in client.smembers("rq:workers"))
    finally:
        client.close()
