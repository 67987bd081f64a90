"""``scripts/bench.py --targets``: the names it takes and one tiny real run of the opensearch figure.

Nothing here asserts on timings: the figure is measured on osmem-server started by the
figure itself, and the test checks what it reports, not how fast.
"""

from __future__ import annotations

import pytest

from benchmarks import parse_args
from benchmarks import target_opensearch as figure
from benchmarks.report import Results
from benchmarks.targets import TARGETS, parse_target_urls, parse_targets


def test_target_names_are_checked() -> None:
    assert parse_targets("opensearch") == ["opensearch"]
    assert parse_targets("all") == list(TARGETS)
    for bad in ("", "elastic", "opensearch,nope"):
        with pytest.raises(ValueError, match="known are opensearch"):
            parse_targets(bad)
    assert parse_args(["--targets", "opensearch", "--quick"]).targets == "opensearch"


def test_the_raw_side_sends_what_the_backend_sends() -> None:
    from livesync.backends.opensearch_bulk import encode

    records = figure._records(3, "created", 0)
    backend = b"".join(encode(record, tombstones=False).data for record in records)
    raw = figure._raw_batch(records)
    assert [line.replace(b" ", b"") for line in raw.splitlines()] == [
        line.replace(b" ", b"") for line in backend.splitlines()
    ]


@pytest.mark.slow
def test_a_tiny_opensearch_run_reports_both_workloads_and_their_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(figure, "RECORDS_QUICK", 40)
    monkeypatch.setattr(figure, "BATCH", 20)
    results = Results()

    figure.measure(results, quick=True, repeats=1)

    assert set(results.figures) == {"T_opensearch_created", "T_opensearch_updated"}
    for data in results.figures.values():
        assert data["backend"]["changes"] == data["raw_bulk"]["changes"] == 40
        assert data["ratio"] > 0
    assert [target.limit for target in results.targets] == [0.7, 0.7]


def test_target_urls_are_name_url_pairs_of_known_targets() -> None:
    assert parse_target_urls(["sql=postgresql://u@db/test"]) == {"sql": "postgresql://u@db/test"}
    with pytest.raises(ValueError, match=r"expected NAME=URL"):
        parse_target_urls(["sql"])
    with pytest.raises(ValueError, match=r"unknown target 'mongo'"):
        parse_target_urls(["mongo=mongodb://x"])


@pytest.mark.slow
def test_a_tiny_sql_run_reports_its_ratio_against_copy() -> None:
    from support.sql_databases import POSTGRES_URL, unreachable

    why = unreachable(POSTGRES_URL)
    if why:
        pytest.skip(why)
    from benchmarks import target_sql

    results = Results()
    target_sql.measure(results, quick=True, repeats=1, url=POSTGRES_URL)

    section = results.figures["T_sql"]
    assert section["records"] == 10_000 and section["ratio"] > 0
    [target] = results.targets
    assert target.value == pytest.approx(section["ratio"], rel=1e-3)


def test_livesync_bench_refuses_an_unknown_target_naming_it() -> None:
    from click.testing import CliRunner

    from livesync.cli import main

    result = CliRunner().invoke(main, ["bench", "--targets", "nosuch"])
    assert result.exit_code == 2
    assert "unknown target nosuch" in result.output
