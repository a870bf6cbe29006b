"""The benchmark's core: prepare the models and workloads, measure every path, collect results.

Each figure comes from a child process of its own (bench.measure), on the same models, data and
thread count, so that the ratios within one run are fair even on a busy machine.
"""

from __future__ import annotations

import json
import os
import pstats
import sys
from dataclasses import dataclass, field, replace

from bench import measure
from bench.workloads import (
    DEFAULT_MODEL,
    DISTINCT_MODEL,
    RAGGED_MODEL,
    REPO,
    BenchError,
    Workload,
    prepare_model,
    prepare_ragged_workload,
    prepare_workload,
)

# The parts of a run: "main", every fixed-length section (side by side, de-duplication, batch
# size, threads, cold start, variants); "ragged", rows of any length (issue 12).
MAIN = "main"
RAGGED = "ragged"
SECTIONS = (MAIN, RAGGED)

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
    sections: tuple[str, ...] = SECTIONS  # the parts to run (MAIN, RAGGED)
    ragged_rows: int = 1_000_000  # the ragged workload: lengths 1..64 of the ragged model
    ragged_mean_length: float = 16.0  # its mean length (a truncated geometric distribution)
    ragged_in_memory_rows: int = 200_000  # rows the raw ragged paths time (the first ones)
    ragged_batch_sizes: tuple[int, ...] = (256, 512, 1024, 4096)  # raw ORT over ragged rows
    ragged_job_batch_sizes: tuple[int, ...] = (4096, 16_384)  # the job's --batch-size, ragged
    profile_rows: int = 12  # functions the ragged job's profile lists when it misses a target


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
    ragged_rows=100_000,
    ragged_in_memory_rows=50_000,
)


@dataclass
class RaggedResults:
    """The ragged section: raw onnxruntime over rows of any length against the job."""

    workload: Workload
    rows_timed: int  # rows the raw paths time: the first ones of the workload
    file_order: measure.InMemoryRun  # raw ORT, rows in file order, padded per batch
    by_length: measure.InMemoryRun  # raw ORT, rows sorted by length, padded per batch
    job: measure.JobRun
    job_steps: dict[str, int]  # the job's --summary: steps_scored, steps_computed, distinct rows
    no_dedup: measure.JobRun | str  # the job without de-duplication, or why it failed
    no_dedup_steps: dict[str, int]
    job_batch_sweep: dict[int, measure.JobRun] = field(default_factory=dict)  # --batch-size
    profile: list[tuple[str, float, float]] = field(default_factory=list)  # name, self s, cum s
    profile_seconds: float = 0.0  # wall time of the profiled run

    @property
    def job_padding(self) -> float:
        """Extra steps the job ran for padding alone: measured without de-duplication, where
        every valid row runs once, as steps_computed / steps_scored - 1."""
        steps = self.no_dedup_steps
        if not steps.get("steps_scored"):
            return float("nan")
        return steps["steps_computed"] / steps["steps_scored"] - 1

    @property
    def model_step_share(self) -> float:
        """Steps the job's model ran per real step of the file (padding in, repeats out)."""
        return self.job_steps["steps_computed"] / self.job_steps["steps_scored"]

    def targets(self) -> list[tuple[str, str, bool]]:
        """Issue 12's targets: (target, measured, met)."""
        job = self.job.rows_per_second
        in_order = job / self.file_order.best
        by_length = job / self.by_length.best
        padding = self.job_padding
        return [
            ("job >= 2x raw onnxruntime, rows in file order", f"{in_order:.2f}x", in_order >= 2),
            (
                "job >= 0.8x raw onnxruntime, rows sorted by length",
                f"{by_length:.2f}x",
                by_length >= 0.8,
            ),
            (
                f"job peak RSS <= 400 MB ({self.workload.rows:,} rows)",
                f"{self.job.peak_rss_mb:.0f} MB",
                self.job.peak_rss_mb <= 400,
            ),
            ("job padding <= 10% extra steps", f"{padding:.1%}", padding <= 0.10),
        ]


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
    ragged: RaggedResults | None = None  # the ragged section, when it ran


# Workload names. The job's sweeps and variants use DEFAULT and SWEEP_DISTINCT.
DEFAULT = "default"
LARGE = "default-5x"
DISTINCT = "all-distinct"
SWEEP_DISTINCT = "all-distinct-sweep"
RAGGED_WORKLOAD = "ragged"
# The raw paths over ragged rows (bench.paths).
FILE_ORDER_PATH = "onnxruntime-file-order"
SORTED_PATH = "onnxruntime-sorted"


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
    """The sections ``config.sections`` names, in order."""
    results = Results(config)
    for section in config.sections:
        if section not in SECTIONS:
            raise BenchError(f"section {section!r}: expected one of {', '.join(SECTIONS)}")
    if MAIN in config.sections:
        run_main(results, config, log)
    if RAGGED in config.sections:
        results.ragged = run_ragged(config, log)
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

    # 3. The job; without de-duplication its steps_computed / steps_scored is the padding alone.
    summary = os.path.join(config.work, "ragged-summary.json")
    log(f"ragged: the job, {workload.rows:,} rows")
    job = measure.run_job(workload, config.work, threads, repeat=config.repeat, summary=summary)
    job_steps = _steps(summary)
    log("ragged: the job without de-duplication")
    no_dedup = _try_job(workload, config, ("--no-dedup",), None, summary)
    no_dedup_steps = _steps(summary) if isinstance(no_dedup, measure.JobRun) else {}
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


def _steps(summary_path: str) -> dict[str, int]:
    """The step counts of a ragged job's --summary."""
    with open(summary_path) as handle:
        summary = json.load(handle)
    os.unlink(summary_path)
    names = ("steps_scored", "steps_computed", "distinct_sequences_scored", "rows_in")
    return {name: int(summary[name]) for name in names if summary.get(name) is not None}


def profile_job(
    workload: Workload, config: BenchConfig
) -> tuple[list[tuple[str, float, float]], float]:
    """The job under cProfile, reading and writing in its main thread (bench.variant
    --serial-io) so that one profile sees all of it: the functions with the most time of their
    own (name, own seconds, cumulative seconds), and the profiled run's wall time."""
    profile_path = os.path.join(config.work, "ragged-job.prof")
    output = os.path.join(config.work, "scored.parquet")
    job = measure.job_command(workload, output, config.threads, variant=("--serial-io",))
    command = [sys.executable, "-m", "cProfile", "-o", profile_path, *job[1:]]
    child = measure.run_child(command)
    os.unlink(output)
    stats = pstats.Stats(profile_path)
    entries = []
    for (filename, line, function), (_, _, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append((_function_name(filename, line, function), own, cumulative))
    entries.sort(key=lambda entry: entry[1], reverse=True)
    return entries[: config.profile_rows], child.seconds


def _function_name(filename: str, line: int, function: str) -> str:
    """module-relative `path:line(function)`, or the built-in's name."""
    if filename == "~":
        return function
    for root in (REPO, *sys.path):
        if root and filename.startswith(root + os.sep):
            filename = os.path.relpath(filename, root)
            break
    return f"{filename}:{line}({function})"


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
    workload: Workload,
    config: BenchConfig,
    flags: tuple[str, ...],
    batch_size: int | None,
    summary: str | None = None,
):
    try:
        return measure.run_job(
            workload,
            config.work,
            config.threads,
            batch_size=batch_size,
            variant=flags,
            summary=summary,
        )
    except BenchError as error:
        return f"failed: {str(error).splitlines()[-1].strip()}"


def with_threads(config: BenchConfig, threads: int | None) -> BenchConfig:
    return replace(config, threads=threads) if threads else config
