"""The benchmark's core: prepare the models and workloads, measure every path, collect results.

Each figure comes from a child process of its own (bench.measure), on the same models, data and
thread count, so that the ratios within one run are fair even on a busy machine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

from bench import measure
from bench.workloads import (
    DEFAULT_MODEL,
    DISTINCT_MODEL,
    REPO,
    BenchError,
    Workload,
    prepare_model,
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


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures, and how hard."""

    work: str = os.path.join(REPO, "bench", "work")  # models, workloads, scratch (gitignored)
    threads: int = os.cpu_count() or 1  # intra-op threads for every path
    rows: int = 1_000_000  # the default workload
    large_rows: int = 5_000_000  # the default workload again, for the memory bound
    distinct_rows: int = 1_000_000  # the all-distinct workload
    sweep_distinct_rows: int = 200_000  # the all-distinct file the job's sweeps and variants use
    in_memory_rows: int = 131_072  # rows the in-memory paths time (the first ones of a workload)
    batch_sizes: tuple[int, ...] = (512, 1024, 2048, 4096, 16_384, 65_536, 131_072)  # raw ORT
    job_batch_sizes: tuple[int, ...] = (4096, 16_384, 65_536, 131_072)  # the job's --batch-size
    keras_batch_size: int = 4096  # the question's way
    repeat: int = 2  # the in-memory paths and the cheap job runs report the best of this many
    cold_runs: int = 7  # runs of the job on a 1-row file
    variants: bool = True  # also measure the job with each optimisation off (bench.variant)


# A smoke test of the whole pipeline in about a minute: small files, few points, no repeats.
QUICK = BenchConfig(
    rows=100_000,
    large_rows=500_000,
    distinct_rows=100_000,
    sweep_distinct_rows=50_000,
    in_memory_rows=50_000,
    batch_sizes=(1024, 8192, 65_536),
    job_batch_sizes=(8192, 65_536),
    repeat=1,
    cold_runs=3,
)


@dataclass
class Results:
    """Everything the report shows. Rates are rows per second; memory is peak RSS in MB."""

    config: BenchConfig
    workloads: dict[str, Workload] = field(default_factory=dict)
    keras: dict[str, measure.InMemoryRun] = field(default_factory=dict)  # per workload
    onnxruntime: dict[str, measure.InMemoryRun] = field(default_factory=dict)  # per workload
    job: dict[str, measure.JobRun] = field(default_factory=dict)  # per workload
    job_batch_sweep: dict[str, dict[int, measure.JobRun]] = field(default_factory=dict)
    # path -> workload -> threads -> rows/s
    thread_sweep: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)
    cold_start: measure.ColdStart | None = None
    dedup: dict[str, dict[str, float]] = field(default_factory=dict)  # workload -> figures
    variants: dict[str, dict[str, measure.JobRun | str]] = field(default_factory=dict)  # name -> w


# Workload names. The job's sweeps and variants use DEFAULT and SWEEP_DISTINCT.
DEFAULT = "default"
LARGE = "default-5x"
DISTINCT = "all-distinct"
SWEEP_DISTINCT = "all-distinct-sweep"


def prepare(config: BenchConfig, log=print) -> dict[str, Workload]:
    """Train (once) the two models and write (once) the workload files."""
    os.makedirs(config.work, exist_ok=True)
    default_model = prepare_model(DEFAULT_MODEL, config.work, log)
    distinct_model = prepare_model(DISTINCT_MODEL, config.work, log)
    return {
        DEFAULT: prepare_workload(default_model, DEFAULT, config.rows, config.work, False, log=log),
        LARGE: prepare_workload(
            default_model, LARGE, config.large_rows, config.work, False, log=log
        ),
        DISTINCT: prepare_workload(
            distinct_model, DISTINCT, config.distinct_rows, config.work, True, log=log
        ),
        SWEEP_DISTINCT: prepare_workload(
            distinct_model, SWEEP_DISTINCT, config.sweep_distinct_rows, config.work, True, log=log
        ),
    }


def run_benchmark(config: BenchConfig, log=print) -> Results:
    """Steps: 1. models and data; 2. the three paths side by side; 3. de-duplication;
    4. the job's batch sweep; 5. the thread sweep; 6. cold start; 7. each optimisation off."""
    results = Results(config, prepare(config, log))
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
    return results


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
            results.variants[label][name] = _try_job(workloads[name], config, flags, None)


def _try_job(
    workload: Workload, config: BenchConfig, flags: tuple[str, ...], batch_size: int | None
):
    try:
        return measure.run_job(
            workload, config.work, config.threads, batch_size=batch_size, variant=flags
        )
    except BenchError as error:
        return f"failed: {str(error).splitlines()[-1].strip()}"


def with_threads(config: BenchConfig, threads: int | None) -> BenchConfig:
    return replace(config, threads=threads) if threads else config
