"""What one benchmark run measures and what it found: its config, the names of its sections and
workloads, and the results of each section, shared by the run (bench.run) and the report
(bench.report)."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench import measure
from bench.workloads import REPO, Workload

if TYPE_CHECKING:  # bench.figures_delta imports this module
    from bench.figures_delta import DeltaResults

# The parts of a run: "main", every fixed-length section (side by side, de-duplication, batch
# size, threads, cold start, variants); "ragged", rows of any length (issue 12); "prefix",
# prefix-shared inference (issue 13); "keyed", a chain of scheduled runs that carry each key's
# state (--key, --state-in, --state-out); "labels", what measuring accuracy and calibration
# against a label column (--labels) costs; "delta", the job reading and writing Delta Lake tables.
MAIN = "main"
RAGGED = "ragged"
PREFIX = "prefix"
KEYED = "keyed"
LABELS = "labels"
DELTA = "delta"
SECTIONS = (MAIN, RAGGED, PREFIX, KEYED, LABELS, DELTA)


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
    sections: tuple[str, ...] = SECTIONS  # the parts to run (MAIN, RAGGED, PREFIX, ...)
    ragged_rows: int = 1_000_000  # the ragged workload: lengths 1..64 of the ragged model
    ragged_mean_length: float = 16.0  # its mean length (a truncated geometric distribution)
    ragged_in_memory_rows: int = 200_000  # rows the raw ragged paths time (the first ones)
    ragged_batch_sizes: tuple[int, ...] = (256, 512, 1024, 4096)  # raw ORT over ragged rows
    ragged_job_batch_sizes: tuple[int, ...] = (4096, 16_384)  # the job's --batch-size, ragged
    profile_rows: int = 12  # functions the ragged job's profile lists when it misses a target
    prefix_rows: int = 1_000_000  # the uniform and skewed workloads (the all-distinct model's)
    prefix_default_rounds: int = 3  # default workload: alternate runs with and without sharing
    keyed_keys: int = 200_000  # the scheduled chain: keys, each with a history and a day's steps
    keyed_lengths: tuple[int, int] = (20, 300)  # shortest and longest history
    keyed_mean_length: float = 100.0  # mean history length (a truncated geometric distribution)
    keyed_day_steps: int = 8  # new steps per key in the day's file
    keyed_max_length: int = 400  # --max-length of every keyed run: above any history plus a day
    keyed_state_keys: int = 1_000_000  # the large state: keys 0..N-1, written directly
    keyed_state_steps: int = 50  # the steps each key of the large state has consumed
    keyed_lookup_rows: int = 200_000  # the input against the large state: a random subset of keys
    keyed_rounds: int = 4  # the incremental run and the full rescoring, in turns: fastest of each
    labels_pairs: int = 10  # the labels section: runs without and with --labels, in turns
    labels_noise: float = 0.05  # share of the labelled copy's steps whose label is replaced
    delta_rounds: int = 5  # the delta section: rounds of every Parquet/Delta path, in turns


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
    keyed_keys=20_000,
    keyed_state_keys=100_000,
    keyed_lookup_rows=20_000,
    labels_pairs=1,
    keyed_rounds=1,
    delta_rounds=1,
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


# The keyed section's runs (KeyedResults.runs), in the order they run.
BUILD = "build"  # the histories, keyed from the zero state: the state the chain starts from
INCREMENTAL = "incremental"  # the day's steps only, from that state
FULL = "full"  # each whole history plus the day, without --key: what users run today
FULL_KEYED = "full-keyed"  # the same rows with --key from the zero state: the state to match
LARGE_RANDOM = "large-random"  # a day's rows against the large state, keys in random order
LARGE_SORTED = "large-sorted"  # the same rows sorted by key
ONE_ROW = "one-row"  # one key's day from the zero state: the memory probe's baseline
KEYED_SPEEDUP = 8.0  # the incremental run over the full rescoring, at least
KEYED_RSS_MB = 400  # peak RSS of the incremental run and of the runs on the large state, at most
KEYED_DIFF = 1e-6  # the largest |difference| between the two states' tensors, at most


@dataclass(frozen=True)
class StateDiff:
    """Two state datasets compared entry by entry."""

    rows: tuple[int, int]  # entries of each
    keys_equal: bool  # the same keys in the same order
    steps_equal: bool  # and the same steps for each
    max_abs_diff: dict[str, float]  # per state tensor column: the largest |difference|

    @property
    def exact(self) -> bool:
        """Keys and steps equal, entry for entry."""
        return self.rows[0] == self.rows[1] and self.keys_equal and self.steps_equal

    @property
    def largest(self) -> float:
        return max(self.max_abs_diff.values(), default=float("nan"))


@dataclass(frozen=True)
class MemoryPeak:
    """Where one run's memory stood at its peak (bench.memory), and which allocations of Python
    and numpy held the most at their own peak (bench.memory --sites, a run of its own)."""

    largest: int  # bytes: the largest VmRSS of the run
    resident: int  # VmRSS when it first came within 3% of that: where the memory rose
    anonymous: int  # of which RssAnon: the heap, Arrow's pool, numpy's buffers
    file_backed: int  # and RssFile: the libraries' code and anything mapped from files
    arrow: int  # bytes Arrow's memory pool held then
    arrow_peak: int  # the pool's own peak over the run
    where: str  # the job's frames (and the innermost) then
    traced_peak: int  # the --sites run: the most bytes of Python objects and numpy buffers
    sites: list[tuple[str, int]]  # then: allocation site (repository frames), bytes


@dataclass
class KeyedResults:
    """The keyed section: a scheduled run resumed from the state of every key's history against
    rescoring each whole history, and runs against a large state."""

    workload: Workload  # the histories file (one row per key)
    history_steps: int  # the steps of all the histories
    day_steps: int  # new steps per key in the day's file
    state_floats: int  # float32 values of one key's state (h and c of every layer)
    state_keys: int  # keys of the large state
    state_bytes: int  # its size on disk
    lookup_rows: int  # rows of the input against the large state
    runs: dict[str, measure.JobRun]  # BUILD, INCREMENTAL, FULL, FULL_KEYED, LARGE_RANDOM, ...
    summaries: dict[str, dict]  # each run's --summary: its key and step counts
    diff: StateDiff  # the incremental run's state against the full keyed run's
    source: str = ""  # the code measured: its commit, and whether score/ differed from it
    profiled: str = ""  # the run profiled because it missed a target, if any
    profile: dict[str, float] = field(default_factory=dict)  # category -> seconds
    profile_functions: list[tuple[str, str, float, float]] = field(default_factory=list)
    profile_total: float = 0.0  # seconds the profiler saw
    profile_seconds: float = 0.0  # wall time of the profiled run
    memory: dict[str, MemoryPeak] = field(default_factory=dict)  # ONE_ROW, runs over KEYED_RSS_MB
    rounds: dict[str, list[float]] = field(default_factory=dict)  # INCREMENTAL, FULL: every round's s

    @property
    def keys(self) -> int:
        return self.workload.rows

    @property
    def speedup(self) -> float:
        """The full rescoring's seconds over the incremental run's."""
        return self.runs[FULL].seconds / self.runs[INCREMENTAL].seconds

    def targets(self) -> list[tuple[str, str, bool]]:
        """The scheduled chain's targets: (target, measured, met)."""
        incremental = self.runs[INCREMENTAL].peak_rss_mb
        diff = self.diff
        measured = f"{diff.largest:.2e}" + ("" if diff.exact else "; keys or steps differ")
        large = f"{self.state_keys:,}-key state, {self.lookup_rows:,} rows"
        return [
            (
                f"incremental run >= {KEYED_SPEEDUP:.0f}x faster than rescoring each whole history"
                f" (without --key), {self.keys:,} keys",
                f"{self.speedup:.2f}x",
                self.speedup >= KEYED_SPEEDUP,
            ),
            (
                f"incremental run peak RSS <= {KEYED_RSS_MB} MB",
                f"{incremental:.0f} MB",
                incremental <= KEYED_RSS_MB,
            ),
            (
                f"incremental state = whole-history state: keys and steps equal, max |diff| <="
                f" {KEYED_DIFF:g}",
                measured,
                diff.exact and diff.largest <= KEYED_DIFF,
            ),
            *[
                (
                    f"peak RSS <= {KEYED_RSS_MB} MB, {large} {order}",
                    f"{self.runs[name].peak_rss_mb:.0f} MB",
                    self.runs[name].peak_rss_mb <= KEYED_RSS_MB,
                )
                for name, order in (
                    (LARGE_RANDOM, "in random order"),
                    (LARGE_SORTED, "sorted by key"),
                )
            ],
        ]


LABELS_RATIO = 1.25  # the default workload with --labels over the same run without, at most
LABELS_COLUMN = "y"  # the labelled copy's column of true labels, one per step of x


@dataclass
class LabelsResults:
    """The labels section: the job over one labelled file without and with --labels, in turns."""

    workload: Workload  # the labelled copy of the default workload: its x column and y
    noise: float  # the share of its steps whose label was replaced by another y value
    replaced_steps: int  # those steps
    without: list[measure.JobRun]  # the runs without --labels, in the order they ran
    labelled: list[measure.JobRun]  # with --labels, each right after the run without before it
    quality: dict[str, float | None]  # the labelled runs' figures (run_labels.quality_figures)
    unlabelled_estimate: float | None  # the runs without --labels: their estimated accuracy
    source: str = ""  # the code measured: its commit, and whether score/ differed from it
    # When the ratio misses LABELS_RATIO: both runs once more under cProfile (bench.profiling).
    profile: dict[str, dict[str, float]] = field(default_factory=dict)  # run -> category -> s
    profile_functions: list[tuple[str, str, float, float]] = field(default_factory=list)
    profile_totals: dict[str, float] = field(default_factory=dict)  # run -> seconds profiled
    profile_seconds: dict[str, float] = field(default_factory=dict)  # run -> wall time

    @property
    def fastest_without(self) -> measure.JobRun:
        return measure.fastest(self.without)

    @property
    def fastest_labelled(self) -> measure.JobRun:
        return measure.fastest(self.labelled)

    @property
    def ratio(self) -> float:
        """The fastest labelled run's seconds over the fastest run's without --labels."""
        return self.fastest_labelled.seconds / self.fastest_without.seconds

    @property
    def median_ratio(self) -> float:
        """The same from the median runs: a second reading of a noisy machine."""
        return median_seconds(self.labelled) / median_seconds(self.without)

    def pair_ratios(self) -> list[float]:
        """Each labelled run over the run without --labels just before it."""
        return [pair[1].seconds / pair[0].seconds for pair in zip(self.without, self.labelled)]

    def targets(self) -> list[tuple[str, str, bool]]:
        """The --labels cost target: (target, measured, met)."""
        return [
            (
                f"job with --labels <= {LABELS_RATIO:.2f}x the same run without,"
                f" default {self.workload.rows:,} rows (fastest of each)",
                f"{self.ratio:.2f}x",
                self.ratio <= LABELS_RATIO,
            )
        ]


def median_seconds(runs: list[measure.JobRun]) -> float:
    return statistics.median(run.seconds for run in runs)


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
    keyed: KeyedResults | None = None  # the keyed section, when it ran
    labels: LabelsResults | None = None  # the labels section, when it ran
    delta: DeltaResults | None = None  # the delta section, when it ran


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
