"""The benchmark's core: prepare the models and workloads, measure every path, collect results.

Each figure comes from a child process of its own (bench.measure), on the same models, data and
thread count, so that the ratios within one run are fair even on a busy machine.
"""

from __future__ import annotations

import json
import os

from bench import measure, profiling
from bench.figures import (
    DEFAULT,
    DELTA,
    DISTINCT,
    FILE_ORDER_PATH,
    KEYED,
    LABELS,
    LARGE,
    MAIN,
    PREFIX,
    RAGGED,
    RAGGED_WORKLOAD,
    SECTIONS,
    SORTED_PATH,
    SWEEP_DISTINCT,
    BenchConfig,
    RaggedResults,
    Results,
)
from bench.run_delta import run_delta
from bench.run_keyed import run_keyed
from bench.run_labels import run_labels
from bench.run_prefix import run_prefix
from bench.workloads import (
    DEFAULT_MODEL,
    DISTINCT_MODEL,
    RAGGED_MODEL,
    BenchError,
    Workload,
    prepare_model,
    prepare_ragged_workload,
    prepare_workload,
)

# The job with one of its optimisations switched off (bench.variant), to show what each pays.
VARIANTS = {
    "no de-duplication (and no cache)": ("--no-dedup",),
    "no result cache across batches": ("--no-cache",),
    "top-k in numpy, not in the graph": ("--numpy-top-k",),
    "no reader/writer threads": ("--serial-io",),
    "whole batch per session.run": ("--whole-batch",),
    "with thread spinning": ("--spinning",),
}


def prepare(config: BenchConfig, log=print) -> dict[str, Workload]:
    """Train (once) the two models and write (once) the workload files."""
    os.makedirs(config.work, exist_ok=True)
    default_model = prepare_model(DEFAULT_MODEL, config.work, log)
    distinct_model = prepare_model(DISTINCT_MODEL, config.work, log)
    return {
        DEFAULT: prepare_workload(
            default_model, DEFAULT, config.rows, config.work, "uniform", log=log
        ),
        LARGE: prepare_workload(
            default_model, LARGE, config.large_rows, config.work, "uniform", log=log
        ),
        DISTINCT: prepare_workload(
            distinct_model, DISTINCT, config.distinct_rows, config.work, "distinct", log=log
        ),
        SWEEP_DISTINCT: prepare_workload(
            distinct_model,
            SWEEP_DISTINCT,
            config.sweep_distinct_rows,
            config.work,
            "distinct",
            log=log,
        ),
    }


def run_benchmark(config: BenchConfig, log=print) -> Results:
    """The sections ``config.sections`` names, in order."""
    results = Results(config)
    for section in config.sections:
        if section not in SECTIONS:
            raise BenchError(f"section {section!r}: expected one of {', '.join(SECTIONS)}")
    if MAIN in config.sections:
        run_main(results, config, log)
    if RAGGED in config.sections:
        results.ragged = run_ragged(config, log)
    if PREFIX in config.sections:
        results.prefix = run_prefix(results, config, log)
    if KEYED in config.sections:
        results.keyed = run_keyed(config, log)
    if LABELS in config.sections:
        results.labels = run_labels(config, log)
    if DELTA in config.sections:
        results.delta = run_delta(config, log)
    return results


def run_main(results: Results, config: BenchConfig, log=print) -> None:
    """Steps: 1. models and data; 2. the three paths side by side; 3. de-duplication;
    4. the job's batch sweep; 5. the thread sweep; 6. cold start; 7. each optimisation off."""
    results.workloads = prepare(config, log)
    workloads = results.workloads
    threads = config.threads

    # 2. Side by side: Keras, raw onnxruntime (its batch sweep), the job.
    for name in (DEFAULT, DISTINCT):
        workload = workloads[name]
        log(f"{name}: Keras predict + argmax + top-3, batch {config.keras_batch_size}")
        results.keras[name] = measure.run_in_memory(
            "keras",
            workload,
            threads,
            [config.keras_batch_size],
            config.in_memory_rows,
            config.repeat,
        )
        log(f"{name}: raw onnxruntime, batch sizes {', '.join(map(str, config.batch_sizes))}")
        results.onnxruntime[name] = measure.run_in_memory(
            "onnxruntime",
            workload,
            threads,
            list(config.batch_sizes),
            config.in_memory_rows,
            config.repeat,
        )
    for name, repeat in ((DEFAULT, config.repeat), (LARGE, 1), (DISTINCT, 1)):
        log(f"{name}: the job, {workloads[name].rows:,} rows")
        results.job[name] = measure.run_job(workloads[name], config.work, threads, repeat=repeat)

    # 3. De-duplication: the job with and without it.
    for name in (DEFAULT, SWEEP_DISTINCT):
        log(f"{name}: de-duplication on and off")
        results.dedup[name] = dedup_effect(workloads[name], config)

    # 4. The job's batch sweep.
    for name in (DEFAULT, SWEEP_DISTINCT):
        log(f"{name}: the job at batch sizes {', '.join(map(str, config.job_batch_sizes))}")
        results.job_batch_sweep[name] = {
            size: measure.run_job(workloads[name], config.work, threads, batch_size=size)
            for size in config.job_batch_sizes
        }

    # 5. Threads.
    results.thread_sweep = thread_sweep(results, config, log)

    # 6. Cold start.
    log(f"cold start: {config.cold_runs} runs on a 1-row file")
    results.cold_start = measure.cold_start(
        workloads[DEFAULT].model, config.work, threads, config.cold_runs
    )

    # 7. What each optimisation pays: the job with it switched off.
    if config.variants:
        measure_variants(results, config, log)


def run_ragged(config: BenchConfig, log=print) -> RaggedResults:
    """Steps: 1. the ragged model and workload; 2. raw onnxruntime over the rows in file order
    and sorted by length (each at a few batch sizes); 3. the job, with and without
    de-duplication, and at other --batch-size; 4. a profile of the job if it misses a target."""
    # 1. Model and data.
    os.makedirs(config.work, exist_ok=True)
    model = prepare_model(RAGGED_MODEL, config.work, log)
    workload = prepare_ragged_workload(
        model, RAGGED_WORKLOAD, config.ragged_rows, config.ragged_mean_length, config.work, log=log
    )
    threads, sizes = config.threads, list(config.ragged_batch_sizes)
    rows_timed = min(config.ragged_in_memory_rows, workload.rows)

    # 2. Raw onnxruntime, the rows as they come and sorted by length.
    raw = {}
    for path in (FILE_ORDER_PATH, SORTED_PATH):
        log(f"ragged: raw {path}, {rows_timed:,} rows, batch sizes {', '.join(map(str, sizes))}")
        raw[path] = measure.run_in_memory(path, workload, threads, sizes, rows_timed, config.repeat)

    # 3. The job; without de-duplication and prefix sharing its steps_computed / steps_scored
    # is the padding alone.
    summary = os.path.join(config.work, "ragged-summary.json")
    log(f"ragged: the job, {workload.rows:,} rows")
    job = measure.run_job(workload, config.work, threads, repeat=config.repeat, summary=summary)
    job_steps = measure.summary_steps(summary)
    log("ragged: the job without de-duplication or prefix sharing")
    no_dedup = measure.try_job(
        workload, config.work, config.threads, ("--no-dedup", "--no-prefix-sharing"), summary=summary
    )
    no_dedup_steps = measure.summary_steps(summary) if isinstance(no_dedup, measure.JobRun) else {}
    results = RaggedResults(
        workload,
        rows_timed,
        raw[FILE_ORDER_PATH],
        raw[SORTED_PATH],
        job,
        job_steps,
        no_dedup,
        no_dedup_steps,
    )
    for size in config.ragged_job_batch_sizes:
        log(f"ragged: the job at --batch-size {size}")
        results.job_batch_sweep[size] = measure.run_job(
            workload, config.work, threads, batch_size=size
        )

    # 4. Where the job's time goes, when it misses a target.
    if not all(met for _, _, met in results.targets()):
        log("ragged: the job misses a target; profiling it (cProfile, I/O in the main thread)")
        results.profile, results.profile_seconds = profile_job(workload, config)
    return results


def profile_job(
    workload: Workload, config: BenchConfig
) -> tuple[list[tuple[str, float, float]], float]:
    """The job under cProfile, reading and writing in its main thread (bench.variant
    --serial-io) so that one profile sees all of it: the functions with the most time of their
    own (name, own seconds, cumulative seconds), and the profiled run's wall time."""
    stats, seconds = profiling.profiled_run(
        workload, config.work, config.threads, "ragged-job.prof"
    )
    return profiling.top_functions(stats, config.profile_rows), seconds


def dedup_effect(workload: Workload, config: BenchConfig) -> dict[str, float]:
    """rows/s with and without de-duplication, and the share of rows the model actually ran."""
    summary_path = os.path.join(config.work, "dedup-summary.json")
    output = os.path.join(config.work, "scored.parquet")
    command = measure.job_command(workload, output, config.threads) + ["--summary", summary_path]
    with_dedup = measure.run_child(command)
    os.unlink(output)
    with open(summary_path) as handle:
        distinct = json.load(handle).get("distinct_sequences_scored")
    without = measure.run_job(workload, config.work, config.threads, variant=("--no-dedup",))
    return {
        "with": workload.rows / with_dedup.seconds,
        "without": without.rows_per_second,
        "model_rows_share": distinct / workload.rows if distinct is not None else float("nan"),
    }


def thread_counts(cores: int) -> list[int]:
    """1, 2, 4, ... up to the core count, and the core count itself."""
    counts, count = [], 1
    while count < cores:
        counts.append(count)
        count *= 2
    return counts + [cores]


def thread_sweep(
    results: Results, config: BenchConfig, log=print
) -> dict[str, dict[str, dict[int, float]]]:
    """rows/s of raw onnxruntime (at its best batch size) and of the job, per thread count."""
    sweep: dict[str, dict[str, dict[int, float]]] = {"raw onnxruntime": {}, "job": {}}
    for name, ort_name in ((DEFAULT, DEFAULT), (SWEEP_DISTINCT, DISTINCT)):
        workload = results.workloads[name]
        best_batch = results.onnxruntime[ort_name].best_batch_size
        sweep["raw onnxruntime"][name], sweep["job"][name] = {}, {}
        for threads in thread_counts(config.threads):
            log(f"{name}: {threads} thread(s)")
            run = measure.run_in_memory(
                "onnxruntime",
                results.workloads[ort_name],
                threads,
                [best_batch],
                config.in_memory_rows,
                1,
            )
            sweep["raw onnxruntime"][name][threads] = run.best
            sweep["job"][name][threads] = measure.run_job(
                workload, config.work, threads
            ).rows_per_second
    return sweep


def measure_variants(results: Results, config: BenchConfig, log=print) -> None:
    """The job with each optimisation switched off, on the default and all-distinct files.

    A variant that no longer applies (score/ has moved on) is reported as failed, not fatal.
    """
    workloads = results.workloads
    candidates = {"the job as it is (through bench.variant)": (), **VARIANTS}
    for label, flags in candidates.items():
        results.variants[label] = {}
        for name in (DEFAULT, SWEEP_DISTINCT):
            log(f"{name}: variant {label}")
            results.variants[label][name] = measure.try_job(
                workloads[name], config.work, config.threads, flags
            )
