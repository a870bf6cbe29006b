"""The benchmark's labels section: what measuring accuracy and calibration against a label column
(`--labels y`) costs the default run.

One labelled copy of the default workload (its x column, and y by the default rule with a
seeded share of the steps given another value, so that the accuracy measured is realistic, not
1.0) is scored without and with --labels, in turns. Every run is the whole process in a child of
its own (bench.measure), with the default model and the same threads.
"""

from __future__ import annotations

import json
import os
import pstats
import sys

import numpy as np
import pyarrow.parquet as pq

from bench import measure, profiling
from bench.figures import DEFAULT, LABELS_COLUMN, LABELS_RATIO, BenchConfig, LabelsResults
from bench.run_keyed import cached, source_version
from bench.workloads import (
    DEFAULT_MODEL,
    BenchError,
    Workload,
    prepare_model,
    prepare_workload,
    write_table,
)

SEED = 5  # of the steps whose label is replaced, and of their new labels
MODULUS = 25  # the default rule: y_t = (x_0 + ... + x_t) mod MODULUS
WITHOUT = "without --labels"  # the two runs, as the report and the profile name them
LABELLED = f"with --labels {LABELS_COLUMN}"


def run_labels(config: BenchConfig, log=print) -> LabelsResults:
    """Steps: 1. the default model and the labelled copy of the default workload; 2. one run
    with --labels, not counted (it warms the page cache); 3. the job without and with --labels,
    in turns, so that a busy spell on the machine slows both; 4. when the ratio misses its
    target, both runs once more under cProfile."""
    # 1. Model and data.
    source = source_version()
    model = prepare_model(DEFAULT_MODEL, config.work, log)
    workload = prepare_workload(model, DEFAULT, config.rows, config.work, "uniform", log=log)
    labelled = prepare_labelled_workload(workload, config.labels_noise, config.work, log)

    # 2. A run not counted: the file, the model and the libraries into the page cache.
    log(f"labels: one run with --labels {LABELS_COLUMN}, not counted (warms the page cache)")
    timed_run(labelled, config, labels=True)

    # 3. In turns: without, then with --labels.
    without, with_labels = [], []
    summary: dict = {}
    unlabelled: dict = {}
    for pair in range(config.labels_pairs):
        log(
            f"labels: {labelled.rows:,} rows {WITHOUT}, then {LABELLED}"
            f" ({pair + 1}/{config.labels_pairs})"
        )
        run, unlabelled = timed_run(labelled, config, labels=False)
        without.append(run)
        run, summary = timed_run(labelled, config, labels=True)
        with_labels.append(run)
    results = LabelsResults(
        labelled,
        config.labels_noise,
        replaced_count(labelled.rows * model.spec.seq_len, config.labels_noise),
        without,
        with_labels,
        quality_figures(summary),
        unlabelled.get("estimated_accuracy", {}).get("value"),
        source,
    )

    # 4. Where the extra time goes, when the ratio misses its target.
    if results.ratio > LABELS_RATIO:
        log(f"labels: the ratio misses {LABELS_RATIO:.2f}x; profiling both runs (cProfile)")
        profile_runs(results, config)
    return results


# The runs ------------------------------------------------------------------------------------------
def job_command(
    workload: Workload, config: BenchConfig, labels: bool, variant: tuple[str, ...] | None = None
) -> list[str]:
    """`python -m score IN OUT --model M --threads N --quiet --summary S [--labels y]`: the two
    runs differ by --labels alone."""
    output, summary = scratch_paths(config)
    command = measure.job_command(
        workload, output, config.threads, variant=variant, summary=summary
    )
    return command + (["--labels", LABELS_COLUMN] if labels else [])


def scratch_paths(config: BenchConfig) -> tuple[str, str]:
    """Where a run's scored output and its --summary go."""
    return (
        os.path.join(config.work, "scored.parquet"),
        os.path.join(config.work, "labels-summary.json"),
    )


def timed_run(workload: Workload, config: BenchConfig, labels: bool) -> tuple[measure.JobRun, dict]:
    """One run of the job: its wall time and peak RSS, and its --summary (output and summary
    removed)."""
    child = measure.run_child(job_command(workload, config, labels))
    return measure.JobRun(workload.rows, child.seconds, child.peak_rss_mb), read_summary(config)


def read_summary(config: BenchConfig) -> dict:
    output, summary_path = scratch_paths(config)
    os.unlink(output)
    with open(summary_path) as handle:
        summary = json.load(handle)
    os.unlink(summary_path)
    return summary


def quality_figures(summary: dict) -> dict[str, float | None]:
    """The labelled run's figures the report keeps: its own quality (`quality`), its estimated
    accuracy (the mean top-1 probability) and the test split's (`baseline_quality`)."""
    measured = summary.get("quality") or {}
    baseline = summary.get("baseline_quality")
    baseline = baseline if isinstance(baseline, dict) else {}
    top_k = measured.get("top_k_accuracy") or [None]
    return {
        "steps": measured.get("steps"),
        "accuracy": measured.get("accuracy"),
        "top_k": len(top_k) if top_k[-1] is not None else None,
        "top_k_accuracy": top_k[-1],
        "sequence_accuracy": measured.get("sequence_accuracy"),
        "log_loss": measured.get("log_loss"),
        "ece": measured.get("ece"),
        "estimated_accuracy": (summary.get("estimated_accuracy") or {}).get("value"),
        "baseline_accuracy": baseline.get("accuracy"),
        "baseline_ece": baseline.get("ece"),
    }


def profile_runs(results: LabelsResults, config: BenchConfig) -> None:
    """Both runs once more under cProfile, reading and writing in the main thread (bench.variant
    --serial-io) so that one profile sees all of a run: seconds per category (bench.profiling)
    of each, and the labelled run's functions with the most time of their own."""
    for name, labels in ((WITHOUT, False), (LABELLED, True)):
        profile_path = os.path.join(config.work, f"labels-{'with' if labels else 'without'}.prof")
        job = job_command(results.workload, config, labels, variant=("--serial-io",))
        child = measure.run_child([sys.executable, "-m", "cProfile", "-o", profile_path, *job[1:]])
        read_summary(config)
        stats = pstats.Stats(profile_path)
        categories, functions = profiling.where_time_goes(stats, profiling.PROFILE_FUNCTIONS)
        results.profile[name] = categories
        results.profile_totals[name] = stats.total_tt  # type: ignore[attr-defined]
        results.profile_seconds[name] = child.seconds
        if labels:
            results.profile_functions = functions


# The data ------------------------------------------------------------------------------------------
def replaced_count(steps: int, noise: float) -> int:
    """The steps of ``steps`` whose label is replaced: the share ``noise``, rounded."""
    return int(round(noise * steps))


def noisy_labels(
    x: np.ndarray, y_values: tuple[int, ...], noise: float, seed: int = SEED
) -> np.ndarray:
    """Labels for the rows ``x`` (rows, steps): y_t = (x_0 + ... + x_t) mod 25, then
    replaced_count(steps, noise) steps, drawn without replacement, each given another of
    ``y_values`` (uniform over the others)."""
    truth = np.cumsum(x, axis=1) % MODULUS
    values = np.asarray(y_values, dtype=np.int64)
    order = np.argsort(values)
    classes = order[np.minimum(np.searchsorted(values, truth, sorter=order), values.size - 1)]
    if not np.array_equal(values[classes], truth):
        raise BenchError(
            f"the model's y values ({len(y_values)}) lack some of the default rule's 0..{MODULUS - 1}"
        )
    generator = np.random.default_rng(seed)
    flat = classes.reshape(-1)
    steps = generator.choice(flat.size, size=replaced_count(flat.size, noise), replace=False)
    flat[steps] = (flat[steps] + generator.integers(1, values.size, size=steps.size)) % values.size
    return values[flat].reshape(x.shape)


def read_rows(workload: Workload) -> np.ndarray:
    """A fixed-length workload's input column as (rows, steps) int64."""
    column_name = workload.model.spec.input_column
    column = pq.read_table(workload.path, columns=[column_name]).column(column_name)
    flat = column.combine_chunks().flatten().to_numpy()
    return flat.astype(np.int64, copy=False).reshape(workload.rows, -1)


def prepare_labelled_workload(
    workload: Workload, noise: float, work: str, log=print
) -> Workload:
    """Write (or reuse) ``workload``'s x column beside a y column of labels (noisy_labels)."""
    model = workload.model
    path = os.path.join(work, f"labelled_{model.name}_{workload.rows}.parquet")
    with open(workload.path + ".key") as handle:
        recipe = f"{handle.read().strip()}|{MODULUS}|{noise}|{SEED}"
    if not cached(path, recipe):
        log(
            f"data: writing {workload.rows:,} rows of {workload.name} with labels"
            f" ({noise:.0%} of the steps replaced) to {path}"
        )
        x = read_rows(workload)
        y = noisy_labels(x, model.spec.y_values, noise)
        write_table(path, {model.spec.input_column: x, LABELS_COLUMN: y})
        with open(path + ".key", "w") as handle:
            handle.write(recipe + "\n")
    return Workload(f"{workload.name}, labelled", path, workload.rows, model)
