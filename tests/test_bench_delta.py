"""The benchmark's delta section, its pure parts: the Delta copy of a workload, the ratio and
targets arithmetic, and the report section. Nothing is trained or timed here (the benchmark
itself does that)."""

from __future__ import annotations

import os
import sys

import pyarrow.parquet as pq
import pytest
from conftest import FIXTURE_MODEL, delta_rows

from bench import report
from bench.figures import BenchConfig, Results
from bench.figures_delta import (
    DELTA_APPEND,
    DELTA_PATHS,
    DELTA_RATIO,
    DELTA_TO_DELTA,
    DELTA_TO_PARQUET,
    PARQUET_TO_DELTA,
    PARQUET_TO_PARQUET,
    DeltaResults,
    LogChild,
)
from bench.measure import JobRun
from bench.report_delta import DELTA_HEADING
from bench.run_delta import path_command, prepare_delta_table
from bench.workloads import Model, Workload, prepare_workload

ROWS = 1_000_000


def test_delta_copy_holds_the_workloads_rows_and_is_written_once(tmp_path, spec):
    deltalake = pytest.importorskip("deltalake")
    model = Model("default", str(FIXTURE_MODEL.parent), spec)
    workload = prepare_workload(model, "default", 300, str(tmp_path), "uniform", log=lambda _: None)
    table = prepare_delta_table(workload, str(tmp_path), log=lambda _: None)
    assert os.path.isdir(os.path.join(table, "_delta_log"))
    assert delta_rows(table).equals(pq.read_table(workload.path))
    logged = []
    assert prepare_delta_table(workload, str(tmp_path), log=logged.append) == table
    assert logged == []  # cached: written once
    with open(table + ".key", "a") as handle:
        handle.write("another recipe\n")
    prepare_delta_table(workload, str(tmp_path), log=logged.append)
    assert len(logged) == 1 and deltalake.DeltaTable(table).version() == 0  # rewritten afresh


TO_DELTA = ["--output-format", "delta"]


@pytest.mark.parametrize(("path", "reads", "writes", "flags"), [
    pytest.param(PARQUET_TO_PARQUET, "in.parquet", "delta-scored.parquet", [], id="plain"),
    pytest.param(PARQUET_TO_DELTA, "in.parquet", "delta-scored", TO_DELTA, id="to_delta"),
    pytest.param(DELTA_TO_PARQUET, "in_table", "delta-scored.parquet", [], id="from_delta"),
    pytest.param(DELTA_TO_DELTA, "in_table", "delta-scored", TO_DELTA, id="delta_to_delta"),
    pytest.param(DELTA_APPEND, "in_table", "delta-appended", [*TO_DELTA, "--mode", "append"],
                 id="append"),
])
def test_each_path_is_the_plain_command_with_its_input_and_output(spec, path, reads, writes,
                                                                  flags):
    model = Model("default", "m", spec)
    parquet = Workload("default", "in.parquet", 10, model)
    table = Workload("default, Delta", "in_table", 10, model)
    command = path_command(path, parquet, table, BenchConfig(work="w", threads=2))
    assert command == [sys.executable, "-m", "score", reads, os.path.join("w", writes),
                       "--model", os.path.join("m", "model.onnx"), "--threads", "2", "--quiet",
                       *flags]


def delta_results(spec, seconds: dict[str, list[float]], delta_rss: float = 350.0) -> Results:
    """Results of a made-up delta section: Delta->Delta at ``delta_rss``, the rest at 300 MB."""
    model = Model("default", "default", spec)
    workload = Workload("default", "uniform_default_1000000.parquet", ROWS, model)
    runs = {
        path: [JobRun(ROWS, value, delta_rss if path == DELTA_TO_DELTA else 300.0)
               for value in seconds.get(path, seconds[PARQUET_TO_PARQUET])]
        for path in DELTA_PATHS
    }
    results = Results(BenchConfig(threads=2))
    results.delta = DeltaResults(workload, "delta_uniform_default_1000000", runs,
                                 LogChild(0.83, 96.0, 0, 1), 3, 3 * ROWS, "commit abc1234")
    return results


def test_ratio_is_fastest_over_fastest_and_median_over_median(spec):
    delta = delta_results(spec, {PARQUET_TO_PARQUET: [2.0, 2.5, 4.0],
                                 DELTA_TO_DELTA: [3.0, 2.2, 2.6]}).delta
    assert delta.ratio == pytest.approx(2.2 / 2.0)
    assert delta.median_ratio == pytest.approx(2.6 / 2.5)
    assert delta.path_ratio(PARQUET_TO_PARQUET) == 1.0 and delta.rounds == 3


@pytest.mark.parametrize(("delta_seconds", "delta_rss", "verdicts"), [
    pytest.param([2.3, 2.5], 350.0, [True, True], id="both_met"),
    pytest.param([2.5, 2.41], 350.0, [False, True], id="slow"),
    pytest.param([2.3, 2.4], 400.0, [True, False], id="rss_at_the_bound"),
    pytest.param([3.0, 2.9], 512.0, [False, False], id="both_missed"),
])
def test_targets_judge_the_fastest_time_and_the_largest_peak(spec, delta_seconds, delta_rss,
                                                             verdicts):
    delta = delta_results(spec, {PARQUET_TO_PARQUET: [2.0, 2.1], DELTA_TO_DELTA: delta_seconds},
                          delta_rss).delta
    targets = delta.targets()
    assert [met for _, _, met in targets] == verdicts
    assert targets[0][1] == f"{min(delta_seconds) / 2.0:.2f}x"
    assert targets[1][1] == f"{delta_rss:.0f} MB"
    assert f"{DELTA_RATIO:.1f}x" in targets[0][0] and "400 MB" in targets[1][0]


@pytest.mark.parametrize(("delta_seconds", "verdict"), [
    pytest.param([2.2, 2.3], "PASS", id="met"),
    pytest.param([2.9, 3.1], "MISS", id="missed"),
])
def test_report_section_shows_every_path_the_log_child_and_the_targets(spec, delta_seconds,
                                                                        verdict):
    results = delta_results(spec, {PARQUET_TO_PARQUET: [2.0, 2.1], DELTA_TO_PARQUET: [2.05, 2.15],
                                   DELTA_TO_DELTA: delta_seconds})
    previous = f"# Benchmark\n\n## Side by side\n\nkept\n\n{DELTA_HEADING}\n\nold figures\n"
    document = report.markdown(results, quick=False, previous=previous)
    assert document.count(DELTA_HEADING) == 1 and "old figures" not in document
    assert "## Side by side\n\nkept" in document
    assert f"**{min(delta_seconds) / 2.0:.2f}x**" in document
    assert f"| {verdict} |" in document
    for text in (*DELTA_PATHS, "--output-format delta --mode append", "| 2.00 |", "| 2.05 |",
                 "| 350 |", "0.83 s", "96 MB", "3,000,000 rows (as expected",
                 "python -m bench --only delta"):
        assert text in document, text
    lines = report.summary_lines(results)
    assert any(line.startswith(verdict) and "Delta->Delta <=" in line for line in lines)
    assert any("the log's child by itself 0.83 s, 96 MB" in line for line in lines)
