"""The benchmark's core: prepare the models and workloads, measure every path, collect results.

Each figure comes from a child process of its own (bench.measure), on the same models, data and
thread count, so that the ratios within one run are fair even on a busy machine.
"""

from __future__ import annotations

import json
import math
import os
import pstats
import re
import sys
from collections import defaultdict
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
# size, threads, cold start, variants); "ragged", rows of any length (issue 12); "prefix",
# prefix-shared inference (issue 13).
MAIN = "main"
RAGGED = "ragged"
PREFIX = "prefix"
SECTIONS = (MAIN, RAGGED, PREFIX)

# The job with one of its optimisations switched off (bench.variant), to show what each pays.
VARIANTS = {
    "no de-duplication (and no cache)": ("--no-dedup",),
    "no result cache across batches": ("--no-cache",),
    "top-k in numpy, not in the graph": ("--numpy-top-k",),
    "no reader/writer threads": ("--serial-io",),
    "whole batch per session.run": ("--whole-batch",),
    "with thread spinning": ("--spinning",),
}
NO_PREFIX_SHARING = ("--no-prefix-sharing",)  # the prefix section's "without" (bench.variant)


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
    sections: tuple[str, ...] = SECTIONS  # the parts to run (MAIN, RAGGED, PREFIX)
    ragged_rows: int = 1_000_000  # the ragged workload: lengths 1..64 of the ragged model
    ragged_mean_length: float = 16.0  # its mean length (a truncated geometric distribution)
    ragged_in_memory_rows: int = 200_000  # rows the raw ragged paths time (the first ones)
    ragged_batch_sizes: tuple[int, ...] = (256, 512, 1024, 4096)  # raw ORT over ragged rows
    ragged_job_batch_sizes: tuple[int, ...] = (4096, 16_384)  # the job's --batch-size, ragged
    profile_rows: int = 12  # functions the ragged job's profile lists when it misses a target
    prefix_rows: int = 1_000_000  # the uniform and skewed workloads (the all-distinct model's)
    prefix_default_rounds: int = 3  # default workload: alternate runs with and without sharing


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
    prefix_rows=100_000,
    prefix_default_rounds=1,
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
        """Extra steps the job ran for padding alone: measured without de-duplication and
        without prefix sharing, where every valid row runs once from its first step, as
        steps_computed / steps_scored - 1."""
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


@dataclass(frozen=True)
class Floor:
    """A lower bound on the job's time for one workload, from parts measured in this run: the
    steps the model must compute at raw onnxruntime's own cost per step (its best batch size,
    the same threads), plus writing the job's output on the share of two cores it can take.
    Everything else the job does (reading, encoding, the prefix tree, the scatter, start-up)
    is left out, so the job cannot be faster than this."""

    rows: int
    raw_seconds: float  # raw onnxruntime for the rows, at its best batch size
    step_us: float  # raw onnxruntime's microseconds per step (2 threads: the whole machine)
    batch_steps: int  # steps the job computed (prefixes shared within each record batch)
    file_steps: int  # distinct prefixes of the whole file (shared across every batch)
    write_seconds: float  # writing the job's output with the job's writer, one thread
    cores: int

    def seconds(self, steps: int) -> float:
        return steps * self.step_us / 1e6 + self.write_seconds / self.cores

    def best_ratio(self, steps: int) -> float:
        """The most the job could be over raw onnxruntime if it computed ``steps``."""
        return self.raw_seconds / self.seconds(steps)


@dataclass
class PrefixResults:
    """The prefix section: the job with and without prefix sharing (bench.variant
    --no-prefix-sharing) against raw onnxruntime over the same rows, per workload."""

    workloads: dict[str, Workload]  # UNIFORM, SKEWED, DEFAULT and LARGE
    rows_timed: int  # rows raw onnxruntime times: the first ones of each workload
    raw: dict[str, measure.InMemoryRun]  # per workload (not LARGE)
    job: dict[str, measure.JobRun]  # the job as it is, per workload (not LARGE)
    steps: dict[str, dict[str, int]]  # its --summary: steps_scored, steps_computed, ...
    unshared: dict[str, measure.JobRun | str]  # without prefix sharing, or why that failed
    unshared_steps: dict[str, dict[str, int]]
    large: measure.JobRun  # the job on the LARGE file, for its peak RSS
    large_from_main: bool  # that run is the main section's, in this same benchmark run
    profile: dict[str, float] = field(default_factory=dict)  # skewed job: category -> seconds
    profile_functions: list[tuple[str, str, float, float]] = field(default_factory=list)
    profile_total: float = 0.0  # seconds the profiler saw
    profile_seconds: float = 0.0  # wall time of the profiled run
    floors: dict[str, Floor] = field(default_factory=dict)  # UNIFORM, SKEWED: the least time possible

    def speedup(self, name: str) -> float:
        """The job's rows/s over raw onnxruntime's (at its best batch size) on ``name``."""
        return self.job[name].rows_per_second / self.raw[name].best

    def sharing_ratio(self, name: str) -> float:
        """rows/s with prefix sharing over rows/s without; NaN if the run without failed."""
        unshared = self.unshared.get(name)
        if not isinstance(unshared, measure.JobRun):
            return float("nan")
        return self.job[name].rows_per_second / unshared.rows_per_second

    def targets(self) -> list[tuple[str, str, bool]]:
        """Issue 13's targets: (target, measured, met)."""
        uniform, skewed = self.speedup(UNIFORM), self.speedup(SKEWED)
        uniform_target, skewed_target = PREFIX_TARGETS[UNIFORM], PREFIX_TARGETS[SKEWED]
        ratio = self.sharing_ratio(DEFAULT)
        large = self.large.peak_rss_mb
        rows = self.workloads[UNIFORM].rows
        return [
            (
                f"job >= {uniform_target:.1f}x raw onnxruntime, uniform {rows:,} rows",
                f"{uniform:.2f}x",
                uniform >= uniform_target,
            ),
            (
                f"job >= {skewed_target:.1f}x raw onnxruntime, skewed {rows:,} rows",
                f"{skewed:.2f}x",
                skewed >= skewed_target,
            ),
            (
                f"default {self.workloads[DEFAULT].rows:,} rows: job with prefix sharing"
                f" >= 0.95x without",
                "failed" if math.isnan(ratio) else f"{ratio:.2f}x",
                ratio >= 0.95,
            ),
            (
                f"peak RSS at {self.workloads[LARGE].rows:,} rows (default) <= 400 MB",
                f"{large:.0f} MB",
                large <= 400,
            ),
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
    prefix: PrefixResults | None = None  # the prefix section, when it ran


# Workload names. The job's sweeps and variants use DEFAULT and SWEEP_DISTINCT.
DEFAULT = "default"
LARGE = "default-5x"
DISTINCT = "all-distinct"
SWEEP_DISTINCT = "all-distinct-sweep"
RAGGED_WORKLOAD = "ragged"
UNIFORM = "uniform"  # the prefix section's: 12 steps, each uniform (rows share short prefixes)
SKEWED = "skewed"  # and each from a clipped zipf distribution (rows share long prefixes)
PREFIX_TARGETS = {UNIFORM: 1.0, SKEWED: 1.8}  # issue 13: the job over raw onnxruntime
# The raw paths over ragged rows (bench.paths).
FILE_ORDER_PATH = "onnxruntime-file-order"
SORTED_PATH = "onnxruntime-sorted"


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
    job_steps = _steps(summary)
    log("ragged: the job without de-duplication or prefix sharing")
    no_dedup = _try_job(workload, config, ("--no-dedup", "--no-prefix-sharing"), None, summary)
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
    """The step and row counts of a job's --summary (and the file removed)."""
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
    stats, seconds = profiled_run(workload, config, "ragged-job.prof")
    entries = []
    for (filename, line, function), (_, _, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append((_function_name(filename, line, function), own, cumulative))
    entries.sort(key=lambda entry: entry[1], reverse=True)
    return entries[: config.profile_rows], seconds


def profiled_run(workload: Workload, config: BenchConfig, name: str) -> tuple[pstats.Stats, float]:
    """The job under cProfile (profile kept in the work folder as ``name``), reading and
    writing in its main thread (bench.variant --serial-io) so that one profile sees all of it:
    its statistics and the run's wall time."""
    profile_path = os.path.join(config.work, name)
    output = os.path.join(config.work, "scored.parquet")
    job = measure.job_command(workload, output, config.threads, variant=("--serial-io",))
    command = [sys.executable, "-m", "cProfile", "-o", profile_path, *job[1:]]
    child = measure.run_child(command)
    os.unlink(output)
    return pstats.Stats(profile_path), child.seconds


def _function_name(filename: str, line: int, function: str) -> str:
    """module-relative `path:line(function)`, or the built-in's name."""
    if filename == "~":
        return function
    for root in (REPO, *sys.path):
        if root and filename.startswith(root + os.sep):
            filename = os.path.relpath(filename, root)
            break
    return f"{filename}:{line}({function})"


def run_prefix(results: Results, config: BenchConfig, log=print) -> PrefixResults:
    """Steps: 1. the models and the uniform, skewed and default workloads; 2. per workload, raw
    onnxruntime's batch sweep, then the job with and without prefix sharing in turns; 3. peak
    RSS at the large default file (the main section's run when it ran); 4. where the skewed
    job's time goes (cProfile)."""
    # 1. Models and data.
    os.makedirs(config.work, exist_ok=True)
    distinct_model = prepare_model(DISTINCT_MODEL, config.work, log)
    default_model = prepare_model(DEFAULT_MODEL, config.work, log)
    workloads = {
        UNIFORM: prepare_workload(
            distinct_model, UNIFORM, config.prefix_rows, config.work, "uniform", log=log
        ),
        SKEWED: prepare_workload(
            distinct_model, SKEWED, config.prefix_rows, config.work, "skewed", log=log
        ),
        DEFAULT: prepare_workload(
            default_model, DEFAULT, config.rows, config.work, "uniform", log=log
        ),
    }
    rows_timed = min(config.in_memory_rows, *(workload.rows for workload in workloads.values()))

    # 2. Raw onnxruntime, then the job with and without prefix sharing, per workload.
    raw, job, steps, unshared, unshared_steps = {}, {}, {}, {}, {}
    for name, rounds in (
        (UNIFORM, config.repeat),
        (SKEWED, config.repeat),
        (DEFAULT, config.prefix_default_rounds),
    ):
        workload = workloads[name]
        log(f"{name}: raw onnxruntime, batch sizes {', '.join(map(str, config.batch_sizes))}")
        raw[name] = measure.run_in_memory(
            "onnxruntime",
            workload,
            config.threads,
            list(config.batch_sizes),
            rows_timed,
            config.repeat,
        )
        log(f"{name}: the job with and without prefix sharing, {workload.rows:,} rows, x{rounds}")
        job[name], steps[name], unshared[name], unshared_steps[name] = with_and_without(
            workload, config, rounds
        )

    # 3. Peak RSS on the large default file.
    large = results.job.get(LARGE)
    if large is not None:
        workloads[LARGE] = results.workloads[LARGE]
    else:
        workloads[LARGE] = prepare_workload(
            default_model, LARGE, config.large_rows, config.work, "uniform", log=log
        )
        log(f"{LARGE}: the job, {config.large_rows:,} rows (peak RSS)")
        large = measure.run_job(workloads[LARGE], config.work, config.threads)
    prefix = PrefixResults(
        workloads,
        rows_timed,
        raw,
        job,
        steps,
        unshared,
        unshared_steps,
        large,
        LARGE in results.job,
    )

    # 4. Where the time goes, and the least time the targets' workloads could take.
    for name in PREFIX_TARGETS:
        log(f"{name}: the floor (distinct prefixes of the file; writing the job's output)")
        prefix.floors[name] = prefix_floor(workloads[name], config, raw[name], steps[name])
    log(f"{SKEWED}: profiling the job (cProfile, I/O in the main thread)")
    stats, prefix.profile_seconds = profiled_run(workloads[SKEWED], config, "prefix-job.prof")
    prefix.profile, prefix.profile_functions = where_time_goes(stats, PROFILE_FUNCTIONS)
    prefix.profile_total = stats.total_tt  # type: ignore[attr-defined]
    return prefix


def with_and_without(
    workload: Workload, config: BenchConfig, rounds: int
) -> tuple[measure.JobRun, dict[str, int], measure.JobRun | str, dict[str, int]]:
    """The job, and the job through bench.variant --no-prefix-sharing, in turns ``rounds`` times
    (so that a busy spell on the machine slows both): the fastest run of each, with its largest
    peak RSS and its --summary step counts. The run without is the reason it failed, if it did."""
    summary = os.path.join(config.work, "prefix-summary.json")
    shared: list[measure.JobRun] = []
    unshared: list[measure.JobRun] = []
    steps: dict[str, int] = {}
    unshared_steps: dict[str, int] = {}
    failure = ""
    for _ in range(rounds):
        shared.append(measure.run_job(workload, config.work, config.threads, summary=summary))
        steps = _steps(summary)
        if failure:
            continue
        run = _try_job(workload, config, NO_PREFIX_SHARING, None, summary)
        if isinstance(run, str):
            failure = run
            if os.path.exists(summary):  # a failed job still writes its summary
                os.unlink(summary)
        else:
            unshared.append(run)
            unshared_steps = _steps(summary)
    without = failure or measure.fastest(unshared)
    return measure.fastest(shared), steps, without, unshared_steps


def file_prefixes(workload: Workload) -> int:
    """Distinct prefixes of all the rows of ``workload`` (a fixed-length file), each counted
    once: the steps a model sharing prefixes across the whole file would compute."""
    import numpy as np
    import pyarrow.parquet as pq

    from score import prefix

    spec = workload.model.spec
    column = pq.read_table(workload.path, columns=[spec.input_column]).column(0).combine_chunks()
    flat = np.searchsorted(np.asarray(spec.x_values), column.values.to_numpy())
    offsets = column.offsets.to_numpy().astype(np.int64)
    tree = prefix.build_tree(flat, offsets, np.arange(offsets.size - 1), spec.x_classes)
    return int(tree.nodes.sum())


def write_seconds(workload: Workload, config: BenchConfig) -> float:
    """Score ``workload`` once more, keeping the output, and time writing that output again with
    the job's writer (score.job.dictionary_columns, batches of the job's default size) in this
    process, best of config.repeat."""
    import time

    import pyarrow.parquet as pq

    from score.job import DEFAULT_BATCH_SIZE, dictionary_columns

    scored = os.path.join(config.work, "floor-scored.parquet")
    again = os.path.join(config.work, "floor-written.parquet")
    measure.run_child(measure.job_command(workload, scored, config.threads))
    table = pq.read_table(scored)
    best = math.inf
    for _ in range(max(config.repeat, 1)):
        started = time.perf_counter()
        with pq.ParquetWriter(again, table.schema, use_dictionary=dictionary_columns(table.schema)) as writer:
            for batch in table.to_batches(max_chunksize=DEFAULT_BATCH_SIZE):
                writer.write_batch(batch)
        best = min(best, time.perf_counter() - started)
    for path in (scored, again):
        os.unlink(path)
    return best


def prefix_floor(
    workload: Workload, config: BenchConfig, raw: measure.InMemoryRun, steps: dict[str, int]
) -> Floor:
    seq_len = workload.model.spec.seq_len
    return Floor(
        rows=workload.rows,
        raw_seconds=workload.rows / raw.best,
        step_us=1e6 / (raw.best * seq_len),
        batch_steps=steps.get("steps_computed", workload.rows * seq_len),
        file_steps=file_prefixes(workload),
        write_seconds=write_seconds(workload, config),
        cores=min(config.threads, os.cpu_count() or 1),
    )


# Where the profiled job's time goes. A function's own time goes to the first category whose
# pattern its name (`path:line(function)` as _function_name writes it, or a built-in's) matches;
# a function that none matches (numpy, most of pyarrow, built-ins) passes its time on to its
# callers, in proportion to the time each call took, until a named function takes it. So every
# second the profiler saw is counted once; what reaches no named function is "not attributed".
PROFILE_FUNCTIONS = 8  # the functions with the most own time, listed beside the categories
ONNXRUNTIME_RUN = "onnxruntime session.run"
NOT_ATTRIBUTED = "not attributed (interpreter, runpy, profiler)"
PROFILE_CATEGORIES = (
    (ONNXRUNTIME_RUN, r"onnxruntime.*[.(]run(_\w+)?[)>]"),
    (
        "start-up: imports, arguments, model load and checks",
        r"^<frozen |\(<module>\)$|onnxruntime|^score/(__main__|spec|onnx_wire)\.py"
        r"|^score/model\.py:\d+\((load|session_options|_(read_model_bytes|check_checksum|audit"
        r"|check_io|probe|open_session))\)",
    ),
    ("prefix planning and state gathering (score/prefix.py)", r"^score/prefix\.py"),
    (
        "reading and encoding the sequences (score/encoding.py)",
        r"^score/encoding\.py|^score/core\.py:\d+\((read_sequences|check_input_schema)\)",
    ),
    (
        "Parquet reading",
        r"builtins\.next>|parquet/core\.py:\d+\((iter_batches|read\w*)\)|^score/storage\.py"
        r"|^score/job\.py:\d+\(open_parquet\)|^score/pipeline\.py:\d+\((prefetch|read|put)\)",
    ),
    (
        "output assembly and Parquet writing",
        r"parquet/core\.py:\d+\((write\w*|close)\)|^score/(local_sink|remote_sink|sink\w*)\.py"
        r"|^score/core\.py:\d+\((_list_array|_nested_list_array|_error_column|output_schema)\)"
        r"|^score/pipeline\.py|^bench/variant\.py:\d+\(write\)",
    ),
    (
        "monitoring: drift profile and summary (score/monitor.py)",
        r"^score/monitor\.py|^score/job\.py:\d+\((summary|summary_head|summary_figures|drift_report|check_max_psi"
        r"|_output_metadata|length_histogram|write_summary)\)",
    ),
    ("the rest of score/: de-duplication, result cache, top-k scatter, job loop", r"^score/"),
)


def _category(name: str) -> str | None:
    for category, pattern in PROFILE_CATEGORIES:
        if re.search(pattern, name):
            return category
    return None


def where_time_goes(
    stats: pstats.Stats, functions: int
) -> tuple[dict[str, float], list[tuple[str, str, float, float]]]:
    """Seconds per category (PROFILE_CATEGORIES), largest first, and the ``functions``
    functions with the most time of their own: (name, category, own s, cumulative s)."""
    table = stats.stats  # type: ignore[attr-defined]
    names = {function: _function_name(*function) for function in table}
    categories = {function: _category(name) for function, name in names.items()}
    totals: dict[str, float] = defaultdict(float)

    def pass_on(function, seconds: float, weight: int, pending: dict) -> None:
        """Hand ``seconds`` of ``function`` to its callers, weighted by each call's own time
        (weight 2) or cumulative time (weight 3)."""
        callers = table[function][4]
        total = sum(edge[weight] for edge in callers.values())
        if total <= 0 and weight == 2:  # own time too small to split: by cumulative time
            weight, total = 3, sum(edge[3] for edge in callers.values())
        if total <= 0:
            totals[NOT_ATTRIBUTED] += seconds
            return
        for caller, edge in callers.items():
            share = seconds * edge[weight] / total
            if categories.get(caller):
                totals[categories[caller]] += share
            else:
                pending[caller] += share

    pending: dict = defaultdict(float)
    for function, (_, _, own, _, _) in table.items():
        if categories[function]:
            totals[categories[function]] += own
        elif own > 0:
            pass_on(function, own, 2, pending)
    for _ in range(100):  # up the call graph; a cycle of unnamed functions keeps a remainder
        if not pending:
            break
        handed, pending = pending, defaultdict(float)
        for function, seconds in handed.items():
            pass_on(function, seconds, 3, pending)
    totals[NOT_ATTRIBUTED] += sum(pending.values())

    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:functions]
    listed = [
        (names[function], categories[function] or "(passed on to its callers)", own, cumulative)
        for function, (_, _, own, cumulative, _) in top
    ]
    ordered = dict(sorted(totals.items(), key=lambda item: item[1], reverse=True))
    return ordered, listed


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
