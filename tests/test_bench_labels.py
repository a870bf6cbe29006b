"""The benchmark's labels section, its pure parts: the labelled copy of a workload and the report
section. Nothing is trained or timed here (the benchmark itself does that)."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURE_MODEL

from bench import report
from bench.figures import LABELS_RATIO, BenchConfig, LabelsResults, Results
from bench.measure import JobRun
from bench.report_labels import LABELS_HEADING
from bench.run_labels import (
    LABELLED,
    WITHOUT,
    noisy_labels,
    prepare_labelled_workload,
    replaced_count,
)
from bench.workloads import Model, Workload, prepare_workload

Y_VALUES = tuple(range(25))


def rule(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x, axis=1) % 25


@pytest.mark.parametrize("noise", [pytest.param(0.0, id="none"), pytest.param(0.05, id="5pc"),
                                   pytest.param(0.5, id="half")])
def test_noisy_labels_replace_the_stated_share_by_other_values(noise):
    x = np.random.default_rng(0).integers(0, 11, size=(500, 4))
    y = noisy_labels(x, Y_VALUES, noise)
    assert y.shape == x.shape and set(np.unique(y)) <= set(Y_VALUES)
    assert int((y != rule(x)).sum()) == replaced_count(x.size, noise) == round(noise * x.size)
    assert np.array_equal(y, noisy_labels(x, Y_VALUES, noise))  # seeded


def test_labelled_copy_keeps_x_and_adds_y(tmp_path, spec):
    model = Model("default", str(FIXTURE_MODEL.parent), spec)
    source = prepare_workload(model, "default", 300, str(tmp_path), "uniform", log=lambda _: None)
    labelled = prepare_labelled_workload(source, 0.05, str(tmp_path), log=lambda _: None)
    table = pq.read_table(labelled.path)
    assert table.column_names == [spec.input_column, "y"] and labelled.rows == 300
    assert table.column(spec.input_column).equals(pq.read_table(source.path).column(0))
    x = np.array(table.column(spec.input_column).to_pylist())
    y = np.array(table.column("y").to_pylist())
    assert int((y != rule(x)).sum()) == replaced_count(300 * spec.seq_len, 0.05)
    logged = []
    prepare_labelled_workload(source, 0.05, str(tmp_path), log=logged.append)
    assert logged == []  # cached: written once


def labels_results(spec, without: list[float], labelled: list[float]) -> Results:
    model = Model("default", "default", spec)
    workload = Workload("default, labelled", "labelled.parquet", 1_000_000, model)
    quality = {"steps": 4_000_000, "accuracy": 0.9491, "top_k": 3, "top_k_accuracy": 0.954,
               "sequence_accuracy": 0.81, "log_loss": 1.05, "ece": 0.0491,
               "estimated_accuracy": 0.997, "baseline_accuracy": 0.9988, "baseline_ece": 0.0027}
    results = Results(BenchConfig(threads=2))
    results.labels = LabelsResults(
        workload, 0.05, 200_000,
        [JobRun(1_000_000, seconds, 350.0) for seconds in without],
        [JobRun(1_000_000, seconds, 400.0) for seconds in labelled],
        quality, 0.997, "commit abc1234")
    return results


@pytest.mark.parametrize(("labelled", "verdict"), [
    pytest.param([1.2, 1.3, 1.25], "PASS", id="met"),
    pytest.param([1.6, 1.5, 1.7], "MISS", id="missed"),
])
def test_report_section_shows_both_runs_the_ratio_and_the_quality(spec, labelled, verdict):
    results = labels_results(spec, [1.0, 1.1, 1.05], labelled)
    previous = f"# Benchmark\n\n## Side by side\n\nkept\n\n{LABELS_HEADING}\n\nold figures\n"
    document = report.markdown(results, quick=False, previous=previous)
    assert document.count(LABELS_HEADING) == 1 and "old figures" not in document
    assert "## Side by side\n\nkept" in document
    ratio = min(labelled) / 1.0
    assert f"**{ratio:.2f}x**" in document
    assert f"| {verdict} |" in document and f"{LABELS_RATIO:.2f}x" in document
    for text in (WITHOUT, LABELLED, "--labels y", "0.9491", "0.9970", "0.0491", "| 350 |",
                 "| 400 |", "python -m bench --only labels"):
        assert text in document, text
    lines = report.summary_lines(results)
    assert any(line.startswith(verdict) for line in lines)
