"""bench/results.md, bench/throughput.png and the printed ratios, from one run's Results."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import math
import os
import platform

from bench import measure
from bench.run import (
    DEFAULT,
    DISTINCT,
    LARGE,
    PREFIX_TARGETS,
    SKEWED,
    SWEEP_DISTINCT,
    UNIFORM,
    PrefixResults,
    RaggedResults,
    Results,
)
from bench.workloads import DISTINCT_MODEL, RAGGED_MODEL, SKEW_EXPONENT, geometric_probabilities

LIBRARIES = ("onnxruntime", "pyarrow", "numpy", "tensorflow", "keras")
# The in-memory paths' reference for each workload (the job's files share their model).
FAMILY = {DEFAULT: DEFAULT, LARGE: DEFAULT, DISTINCT: DISTINCT, SWEEP_DISTINCT: DISTINCT}
KERAS = "Keras predict + argmax + top-3"
RAW = "raw onnxruntime"
JOB = "job (`python -m score`)"
RAGGED_HEADING = "## Rows of any length (issue 12)"
PREFIX_HEADING = "## Prefix sharing (issue 13)"


# Machine -------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def library_version(name: str) -> str:
    for distribution in (name, f"{name}-cpu"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "absent"


def machine_lines(results: Results) -> list[str]:
    libraries = ", ".join(f"{name} {library_version(name)}" for name in LIBRARIES)
    return [
        f"- Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores; RAM {memory_gib():.1f} GiB",
        f"- Python {platform.python_version()}; {libraries}",
        f"- Threads for every path: {results.config.threads}",
    ]


# Figures ---------------------------------------------------------------------------------------------
def table_rows(results: Results) -> list[dict]:
    """One row per path and workload: rows/s, ratios, peak RSS."""
    rows = []
    for family in (DEFAULT, DISTINCT):
        keras = results.keras[family].best
        raw = results.onnxruntime[family].best

        def row(
            path: str, workload: str, rows_timed: int, batch: str, rate: float, rss: float
        ) -> dict:
            return {
                "path": path,
                "workload": workload,
                "rows": rows_timed,
                "batch": batch,
                "rate": rate,
                "keras": rate / keras,
                "raw": rate / raw,
                "rss": rss,
            }

        in_memory = results.config.in_memory_rows
        keras_run, raw_run = results.keras[family], results.onnxruntime[family]
        rows.append(
            row(
                KERAS,
                family,
                in_memory,
                str(keras_run.best_batch_size),
                keras_run.best,
                keras_run.peak_rss_mb,
            )
        )
        rows.append(
            row(
                RAW,
                family,
                in_memory,
                str(raw_run.best_batch_size),
                raw_run.best,
                raw_run.peak_rss_mb,
            )
        )
        for name in (DEFAULT, LARGE) if family == DEFAULT else (DISTINCT,):
            workload = results.workloads[name]
            run = results.job[name]
            rows.append(
                row(JOB, family, workload.rows, "default", run.rows_per_second, run.peak_rss_mb)
            )
    return rows


def targets(results: Results, job: dict[str, measure.JobRun]) -> list[tuple[str, str, bool]]:
    """The issue's targets for one set of job runs: (target, measured, met)."""
    if not all(name in job for name in (DEFAULT, LARGE, DISTINCT)):
        return []
    keras = results.keras[DEFAULT].best
    raw = results.onnxruntime[DISTINCT].best
    speed = job[DEFAULT].rows_per_second / keras
    overhead = job[DISTINCT].rows_per_second / raw
    small, large = job[DEFAULT].peak_rss_mb, job[LARGE].peak_rss_mb
    cold = results.cold_start.median if results.cold_start else float("nan")
    return [
        (
            f"job >= 5x Keras, default {results.workloads[DEFAULT].rows:,} rows",
            f"{speed:.2f}x",
            speed >= 5,
        ),
        (
            f"job >= 0.85x raw onnxruntime, all-distinct {results.workloads[DISTINCT].rows:,} rows",
            f"{overhead:.2f}x",
            overhead >= 0.85,
        ),
        (
            f"peak RSS at {results.workloads[LARGE].rows:,} rows <= 400 MB",
            f"{large:.0f} MB",
            large <= 400,
        ),
        (
            f"peak RSS at {results.workloads[LARGE].rows:,} rows <= 1.10x the "
            f"{results.workloads[DEFAULT].rows:,}-row figure",
            f"{large / small:.2f}x ({small:.0f} MB)",
            large <= 1.10 * small,
        ),
        ("cold start <= 1.0 s (1-row file, median)", f"{cold:.2f} s", cold <= 1.0),
    ]


def _rate(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def _mark(met: bool) -> str:
    return "PASS" if met else "MISS"


# results.md --------------------------------------------------------------------------------------------
def main_table(results: Results) -> list[str]:
    lines = [
        "| path | workload | rows timed | batch | rows/s | x Keras | x raw ORT | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table_rows(results):
        lines.append(
            f"| {row['path']} | {row['workload']} | {row['rows']:,} | {row['batch']} | {_rate(row['rate'])} "
            f"| {row['keras']:.2f} | {row['raw']:.2f} | {row['rss']:.0f} |"
        )
    return lines


def targets_table(results: Results) -> list[str]:
    lines = ["| target | measured | |", "|---|---:|---|"]
    for target, measured, met in targets(results, results.job):
        lines.append(f"| {target} | {measured} | {_mark(met)} |")
    return lines


def batch_sweep_table(results: Results) -> list[str]:
    names = (DEFAULT, SWEEP_DISTINCT)
    lines = [
        "| batch size | raw ORT, default | job, default | job RSS MB | raw ORT, all-distinct "
        "| job, all-distinct | job RSS MB |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sorted(set(results.config.batch_sizes) | set(results.config.job_batch_sizes)):
        cells = []
        for name in names:
            raw = results.onnxruntime[FAMILY[name]].rates.get(size)
            job = results.job_batch_sweep.get(name, {}).get(size)
            cells += [
                _rate(raw),
                _rate(job.rows_per_second if job else None),
                f"{job.peak_rss_mb:.0f}" if job else "-",
            ]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return lines


def thread_table(results: Results) -> list[str]:
    counts = sorted({n for path in results.thread_sweep.values() for w in path.values() for n in w})
    lines = [
        "| path | workload | "
        + " | ".join(f"{n} thread{'s' if n > 1 else ''}" for n in counts)
        + " |",
        "|---|---|" + "---:|" * len(counts),
    ]
    for path, per_workload in results.thread_sweep.items():
        for name, rates in per_workload.items():
            lines.append(
                f"| {path} | {_label(results, name)} | "
                + " | ".join(_rate(rates.get(n)) for n in counts)
                + " |"
            )
    return lines


def dedup_table(results: Results) -> list[str]:
    lines = [
        "| workload | rows the model ran | job with de-duplication | without | gain |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, figures in results.dedup.items():
        lines.append(
            f"| {_label(results, name)} | {figures['model_rows_share']:.1%} | {_rate(figures['with'])} "
            f"| {_rate(figures['without'])} | {figures['with'] / figures['without']:.2f}x |"
        )
    return lines


def variants_table(results: Results) -> list[str]:
    names = (DEFAULT, SWEEP_DISTINCT)
    lines = [
        "| job variant | "
        + " | ".join(f"{_label(results, n)} rows/s | RSS MB" for n in names)
        + " |",
        "|---|" + "---:|---:|" * len(names),
    ]
    for label, runs in results.variants.items():
        cells = []
        for name in names:
            run = runs.get(name)
            if isinstance(run, measure.JobRun):
                cells += [_rate(run.rows_per_second), f"{run.peak_rss_mb:.0f}"]
            else:
                cells += [str(run or "-"), "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _label(results: Results, name: str) -> str:
    workload = results.workloads[name]
    return f"{FAMILY[name]} {_short(workload.rows)}"


def _short(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1000 and rows % 1000 == 0:
        return f"{rows // 1000}k"
    return f"{rows:,}"


def markdown(results: Results, quick: bool, previous: str | None = None) -> str:
    """The whole report. Sections this run did not measure are kept from ``previous`` (the
    report it replaces), so that `--only` refreshes its part and leaves the rest alone."""
    if results.workloads:
        document = main_markdown(results, quick)
    elif previous:
        document = without_section(without_section(previous, RAGGED_HEADING), PREFIX_HEADING)
    else:
        document = "# Benchmark: the scoring job against Keras predict and raw onnxruntime\n"
    parts = [document]
    for heading, lines in (
        (RAGGED_HEADING, ragged_markdown(results, quick) if results.ragged else None),
        (PREFIX_HEADING, prefix_markdown(results, quick) if results.prefix else None),
    ):
        part = "\n".join(lines) + "\n" if lines is not None else section(previous or "", heading)
        if part:
            parts.append(part)
    return "\n".join(part.rstrip("\n") + "\n" for part in parts)


def section(document: str, heading: str) -> str:
    """The section of ``document`` that starts with ``heading``, up to the next `## ` heading."""
    lines = document.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(heading)]
    if not starts:
        return ""
    ends = [i for i in range(starts[0] + 1, len(lines)) if lines[i].startswith("## ")]
    return "".join(lines[starts[0] : ends[0] if ends else len(lines)]).rstrip("\n") + "\n"


def without_section(document: str, heading: str) -> str:
    """``document`` less its section that starts with ``heading``."""
    part = section(document, heading)
    return document.replace(part, "", 1).rstrip("\n") + "\n" if part else document


def main_markdown(results: Results, quick: bool) -> str:
    config = results.config
    cold = results.cold_start
    workloads = results.workloads
    text = [
        "# Benchmark: the scoring job against Keras predict and raw onnxruntime",
        "",
        "Written by `make bench` (`python -m bench`); the figures below are from one run on one"
        " machine, so compare the ratios, not the absolute rates, with another run.",
        *(
            ["", "**A `--quick` smoke run: small files, single runs; not a measurement.**"]
            if quick
            else []
        ),
        "",
        *machine_lines(results),
        "",
        "## Side by side",
        "",
        f"Workloads: *default* draws every step uniformly from the default model's x values (4 steps,"
        f" 11 values: only 11^4 = 14,641 possible sequences, so rows repeat), "
        f"{_short(workloads[DEFAULT].rows)} and {_short(workloads[LARGE].rows)} rows; *all-distinct*"
        f" has {_short(workloads[DISTINCT].rows)} rows of 12 steps, no two alike, scored by a"
        f" 12-step model of the same shape (2 LSTM layers of 64 units) that the benchmark trains.",
        f"Keras and raw onnxruntime time the first {config.in_memory_rows:,} rows, already"
        f" encoded in memory (best of {config.repeat}); raw onnxruntime is shown at its best batch"
        f" size. The job is the whole process, `python -m score IN OUT --quiet`: start-up, model"
        f" check, Parquet in, validation, inference, top-3, Parquet out, atomic publish.",
        "",
        *main_table(results),
        "",
        "## Targets (issue 6)",
        "",
        *targets_table(results),
        "",
        f"Cold start (`python -m score` on a 1-row file, {len(cold.seconds)} runs): best"
        f" {cold.best:.2f} s, median {cold.median:.2f} s.",
        "",
        "## De-duplication",
        "",
        "The job runs each distinct sequence of a record batch through the model once, and keeps"
        " the results in a bounded cache for the rest of the run; *without* switches both off.",
        "",
        *dedup_table(results),
        "",
        "## Batch size",
        "",
        "Raw onnxruntime: rows per `session.run`. The job: `--batch-size` (rows per Parquet"
        " record batch; the default is the job's own).",
        "",
        *batch_sweep_table(results),
        "",
        "![rows/s against batch size](throughput.png)",
        "",
        "## Threads",
        "",
        *thread_table(results),
    ]
    if results.variants:
        text += [
            "",
            "## What each optimisation pays (bench.variant)",
            "",
            "The job with one optimisation switched off, patched in its own process by"
            " `python -m bench.variant` (score/ is not edited); compare each row with the first.",
            "",
            *variants_table(results),
        ]
    return "\n".join(text) + "\n"


# Rows of any length ----------------------------------------------------------------------------------
def ragged_table(ragged: RaggedResults) -> list[str]:
    in_order, by_length = ragged.file_order.best, ragged.by_length.best
    lines = [
        "| path | rows | batch | rows/s | x raw in file order | x raw sorted | padding "
        "(extra steps) | model steps / real step | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def line(
        path: str, rows: int, batch: str, rate: float, padding: float, share: float, rss: float
    ) -> str:
        return (
            f"| {path} | {rows:,} | {batch} | {_rate(rate)} | {rate / in_order:.2f} "
            f"| {rate / by_length:.2f} | {_percent(padding)} | {share:.2f} | {rss:.0f} |"
        )

    for label, run in (
        ("in file order", ragged.file_order),
        ("sorted by length", ragged.by_length),
    ):
        padding = run.padding[run.best_batch_size]
        lines.append(
            line(
                f"{RAW}, {label}",
                ragged.rows_timed,
                str(run.best_batch_size),
                run.best,
                padding,
                1 + padding,
                run.peak_rss_mb,
            )
        )
    job = ragged.job
    lines.append(
        line(
            JOB,
            job.rows,
            "default",
            job.rows_per_second,
            ragged.job_padding,
            ragged.model_step_share,
            job.peak_rss_mb,
        )
    )
    if isinstance(ragged.no_dedup, measure.JobRun):
        steps = ragged.no_dedup_steps
        lines.append(
            line(
                "job without de-duplication or prefix sharing (bench.variant --no-dedup --no-prefix-sharing)",
                ragged.no_dedup.rows,
                "default",
                ragged.no_dedup.rows_per_second,
                ragged.job_padding,
                steps["steps_computed"] / steps["steps_scored"],
                ragged.no_dedup.peak_rss_mb,
            )
        )
    else:
        lines.append(f"| job without de-duplication | {ragged.no_dedup} | | | | | | | |")
    for size, run in ragged.job_batch_sweep.items():
        lines.append(
            f"| job, `--batch-size {size}` | {run.rows:,} | {size:,} | {_rate(run.rows_per_second)}"
            f" | {run.rows_per_second / in_order:.2f} | {run.rows_per_second / by_length:.2f}"
            f" | - | - | {run.peak_rss_mb:.0f} |"
        )
    return lines


def ragged_sweep_table(ragged: RaggedResults) -> list[str]:
    lines = [
        "| batch size | raw ORT in file order | padding | raw ORT sorted by length | padding |",
        "|---:|---:|---:|---:|---:|",
    ]
    for size in sorted(ragged.file_order.rates):
        cells = []
        for run in (ragged.file_order, ragged.by_length):
            cells += [_rate(run.rates.get(size)), _percent(run.padding.get(size))]
        lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
    return lines


def ragged_profile_table(ragged: RaggedResults) -> list[str]:
    lines = ["| function | own s | cumulative s |", "|---|---:|---:|"]
    for name, own, cumulative in ragged.profile:
        lines.append(f"| `{name}` | {own:.2f} | {cumulative:.2f} |")
    return lines


def ragged_profile_lines(ragged: RaggedResults) -> list[str]:
    """What the profile and the step counts say, in figures."""
    session = sum(own for name, own, _ in ragged.profile if "onnxruntime" in name and "run" in name)
    lines = [
        f"- onnxruntime's `run`: {session:.1f} s of {ragged.profile_seconds:.1f} s"
        f" ({session / ragged.profile_seconds:.0%}); the rest is the job's own work (reading,"
        f" keys, grouping, padding, scatter, Arrow assembly, Parquet writing, profile)."
    ]
    if ragged.no_dedup_steps:
        with_dedup = ragged.job_steps["steps_computed"]
        without = ragged.no_dedup_steps["steps_computed"]
        rows = ragged.job_steps.get("distinct_sequences_scored", 0) / ragged.workload.rows
        lines.append(
            f"- De-duplication and the run cache skip {1 - rows:.1%} of the rows (the rows that"
            f" repeat are the short ones); with prefix sharing the model computes"
            f" {1 - with_dedup / without:.1%} fewer steps than with neither."
        )
    return lines


def _flag(flags: tuple[str, ...], name: str) -> str:
    return flags[flags.index(name) + 1]


def _percent(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1%}"


def ragged_markdown(results: Results, quick: bool) -> list[str]:
    ragged = results.ragged
    assert ragged is not None
    config, workload, steps = results.config, ragged.workload, ragged.job_steps
    spec = workload.model.spec
    first = geometric_probabilities(spec.seq_len, config.ragged_mean_length)[0]
    file_mean = steps["steps_scored"] / workload.rows
    timed_mean = ragged.file_order.real_steps / ragged.rows_timed
    distinct = steps.get("distinct_sequences_scored", 0) / workload.rows
    recipe = RAGGED_MODEL
    text = [
        RAGGED_HEADING,
        "",
        *(
            ["**A `--quick` smoke run: small files, single runs; not a measurement.**", ""]
            if quick
            else []
        ),
        *machine_lines(results),
        "",
        f"Workload: {_short(workload.rows)} rows with an int64 `id` column and a list<int64> `x`"
        f" column; lengths 1..{spec.seq_len} from a geometric distribution truncated to"
        f" 1..{spec.seq_len} (P(length = n) proportional to r^(n-1), r = {1 - first:.4f}, chosen"
        f" for a mean of {config.ragged_mean_length:g}; measured mean {file_mean:.2f}; seeded),"
        f" values uniform over 0..10. The model is a variable-length one that the benchmark"
        f" trains on {recipe.data_rows:,} rows drawn the same way, with the default rule"
        f" (y_t = (x_0 + ... + x_t) mod 25) and architecture (2 LSTM layers of 64 units),"
        f" {_flag(recipe.train_flags, '--epochs')} epochs: it is timed, not judged on accuracy.",
        "",
        f"Raw onnxruntime is what a user writes by hand: a plain session with the job's session"
        f" options, batches of B rows each padded to its own longest row, `session.run` and"
        f" nothing else (no top-k). It times the first {ragged.rows_timed:,} rows (mean length"
        f" {timed_mean:.2f}; rows are drawn independently, so rows/s over them compares with the"
        f" whole file's), already encoded and cut into padded batches before the clock starts,"
        f" best of {config.repeat}, at its best batch size of"
        f" {', '.join(map(str, config.ragged_batch_sizes))}. *Sorted by length*: the same after"
        f" a stable sort of the rows by length. The job is the whole process on the whole file,"
        f" `python -m score IN OUT --quiet --summary S.json` (best of {config.repeat}); it ran"
        f" the model on {distinct:.1%} of the rows (the others repeat a sequence already"
        f" scored: short rows repeat often).",
        "",
        "*Padding* is padded steps / real steps - 1: for raw onnxruntime at its best batch size;"
        " for the job, steps_computed / steps_scored - 1 from the summary of the run without"
        " de-duplication or prefix sharing, where every row runs once from its first step."
        " *Model steps / real step* is the steps the model ran per real step of the input (the"
        " job's with de-duplication and prefix sharing, from its summary): under 1 where shared"
        " prefixes save more steps than padding costs.",
        "",
        *ragged_table(ragged),
        "",
        *ragged_sweep_table(ragged),
        "",
        "### Targets (issue 12)",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        *[
            f"| {target} | {measured} | {_mark(met)} |"
            for target, measured, met in ragged.targets()
        ],
    ]
    if ragged.profile:
        text += [
            "",
            "### Where the job's time goes",
            "",
            f"The job (default batch size) under cProfile (`python -m cProfile -m bench.variant"
            f" --serial-io`, so that reading and writing run in the profiled thread;"
            f" {ragged.profile_seconds:.1f} s wall with the profiler): the functions with the"
            f" most time of their own. onnxruntime's share is"
            f" `InferenceSession.run`'s own time.",
            "",
            *ragged_profile_table(ragged),
            "",
            *ragged_profile_lines(ragged),
        ]
    text += [
        "",
        "On a shared machine (other work on its cores) rates move a lot from minute to minute"
        " (on the 2-core machine of these figures the same 1M-row job took 25 s and 48 s back"
        " to back); every path ran in the same run with the same threads, but minutes apart:"
        " read the ratios as +-30%, and rerun `python -m bench --only ragged` before acting"
        " on one.",
    ]
    return text


# Prefix sharing ----------------------------------------------------------------------------------------
def _prefix_label(prefix: PrefixResults, name: str) -> str:
    workload = prefix.workloads[name]
    return f"{'default' if name in (DEFAULT, LARGE) else name} {_short(workload.rows)}"


def _ratio(value: float) -> str:
    return "    -" if math.isnan(value) else f"{value:5.2f}x"


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


def _step_share(steps: dict[str, int]) -> str:
    if not steps.get("steps_scored"):
        return "-"
    return f"{steps['steps_computed'] / steps['steps_scored']:.1%}"


def prefix_table(prefix: PrefixResults) -> list[str]:
    lines = [
        "| path | workload | rows | rows/s | x raw ORT | steps computed / steps | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in (UNIFORM, SKEWED, DEFAULT):
        label, raw = _prefix_label(prefix, name), prefix.raw[name]
        lines.append(
            f"| {RAW}, batch {raw.best_batch_size} | {label} | {prefix.rows_timed:,}"
            f" | {_rate(raw.best)} | 1.00 | 100.0% | {raw.peak_rss_mb:.0f} |"
        )
        runs = ((JOB, prefix.job[name], prefix.steps[name]),)
        runs += (
            ("job without prefix sharing", prefix.unshared[name], prefix.unshared_steps[name]),
        )
        for path, run, steps in runs:
            if isinstance(run, measure.JobRun):
                lines.append(
                    f"| {path} | {label} | {run.rows:,} | {_rate(run.rows_per_second)}"
                    f" | {run.rows_per_second / raw.best:.2f} | {_step_share(steps)}"
                    f" | {run.peak_rss_mb:.0f} |"
                )
            else:
                lines.append(f"| {path} | {label} | {run} | | | | |")
    large = prefix.large
    source = " (the main section's run)" if prefix.large_from_main else ""
    lines.append(
        f"| {JOB}{source} | {_prefix_label(prefix, LARGE)} | {large.rows:,}"
        f" | {_rate(large.rows_per_second)} | {large.rows_per_second / prefix.raw[DEFAULT].best:.2f}"
        f" | - | {large.peak_rss_mb:.0f} |"
    )
    return lines


def prefix_steps_table(prefix: PrefixResults) -> list[str]:
    lines = [
        "| workload | steps scored | steps computed | share | without prefix sharing | share "
        "| distinct rows the model ran |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def computed(steps: dict[str, int]) -> str:
        return f"{steps['steps_computed']:,}" if "steps_computed" in steps else "-"

    for name in (UNIFORM, SKEWED, DEFAULT):
        steps, unshared = prefix.steps[name], prefix.unshared_steps[name]
        distinct = steps.get("distinct_sequences_scored")
        rows = "-" if distinct is None else f"{distinct / prefix.workloads[name].rows:.1%}"
        lines.append(
            f"| {_prefix_label(prefix, name)} | {steps.get('steps_scored', 0):,}"
            f" | {computed(steps)} | {_step_share(steps)} | {computed(unshared)}"
            f" | {_step_share(unshared)} | {rows} |"
        )
    return lines


def prefix_floor_table(prefix: PrefixResults) -> list[str]:
    lines = [
        "| workload | raw ORT s | job s | steps the job computed | floor s | floor x raw"
        " | distinct prefixes of the whole file | floor s | floor x raw | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, target in PREFIX_TARGETS.items():
        floor = prefix.floors.get(name)
        if floor is None:
            continue
        total = floor.rows * prefix.workloads[name].model.spec.seq_len
        job_seconds = floor.rows / prefix.job[name].rows_per_second
        lines.append(
            f"| {_prefix_label(prefix, name)} | {floor.raw_seconds:.2f} | {job_seconds:.2f}"
            f" | {floor.batch_steps:,} ({floor.batch_steps / total:.0%})"
            f" | {floor.seconds(floor.batch_steps):.2f} | {floor.best_ratio(floor.batch_steps):.2f}x"
            f" | {floor.file_steps:,} ({floor.file_steps / total:.0%})"
            f" | {floor.seconds(floor.file_steps):.2f} | {floor.best_ratio(floor.file_steps):.2f}x"
            f" | {target:.1f}x |"
        )
    return lines


def prefix_floor_lines(prefix: PrefixResults) -> list[str]:
    floors = list(prefix.floors.values())
    if not floors:
        return []
    floor = floors[0]
    return [
        "### The floor under the targets",
        "",
        f"The least time any job could take on these rows, from parts measured in this run: the"
        f" steps it computes at raw onnxruntime's own cost per step (its best batch size, the same"
        f" {floor.cores} threads: {', '.join(f'{f.step_us:.2f}' for f in floors)} us a step),"
        f" plus writing the job's output with the job's own Parquet writer on one core"
        f" ({', '.join(f'{f.write_seconds:.2f}' for f in floors)} s), divided over the"
        f" {floor.cores} cores. Reading, encoding, the prefix tree, the scatter and start-up are"
        f" left out, so the job cannot be faster than this. *Steps the job computed* shares"
        f" prefixes within each record batch (memory bounded by the batch); *distinct prefixes of"
        f" the whole file* is what sharing across every batch would leave, which would hold a"
        f" carried state (1 KB) for every prefix of the file. A floor under its target means the"
        f" target cannot be met on this machine with that much sharing.",
        "",
        *prefix_floor_table(prefix),
    ]


def prefix_profile_table(prefix: PrefixResults) -> list[str]:
    total = prefix.profile_total
    lines = ["| where | s | share |", "|---|---:|---:|"]
    for category, seconds in prefix.profile.items():
        lines.append(f"| {category} | {seconds:.2f} | {seconds / total:.1%} |")
    lines.append(f"| total seen by the profiler | {total:.2f} | 100.0% |")
    return lines


def prefix_functions_table(prefix: PrefixResults) -> list[str]:
    lines = ["| function | counted in | own s | cumulative s |", "|---|---|---:|---:|"]
    for name, category, own, cumulative in prefix.profile_functions:
        lines.append(f"| `{name}` | {category} | {own:.2f} | {cumulative:.2f} |")
    return lines


def prefix_markdown(results: Results, quick: bool) -> list[str]:
    prefix = results.prefix
    assert prefix is not None
    config = results.config
    uniform = prefix.workloads[UNIFORM]
    spec = uniform.model.spec
    values = f"{spec.x_values[0]}..{spec.x_values[-1]}"
    text = [
        PREFIX_HEADING,
        "",
        *(
            ["**A `--quick` smoke run: small files, single runs; not a measurement.**", ""]
            if quick
            else []
        ),
        *machine_lines(results),
        "",
        f"Workloads: *uniform* and *skewed* have {_short(uniform.rows)} rows of {spec.seq_len}"
        f" steps for the {spec.seq_len}-step model of the all-distinct workload (values"
        f" {values}, trained by the benchmark on {DISTINCT_MODEL.data_rows:,} rows; timed, not"
        f" judged on accuracy). *uniform* draws every step uniformly over the values, with"
        f" replacement, so rows share their first few steps only ({spec.x_classes}^k prefixes of"
        f" k steps); *skewed* draws every step as min(zipf({SKEW_EXPONENT:g}) - 1,"
        f" {spec.x_classes - 1}) (numpy's `default_rng(seed).zipf`) mapped to the values, so that"
        f" many rows share long prefixes. Both are seeded and cached in the work folder."
        f" *default* is the main section's default workload ({_short(prefix.workloads[DEFAULT].rows)}"
        f" rows of 4 steps; {_short(prefix.workloads[LARGE].rows)} for peak RSS).",
        "",
        f"Raw onnxruntime, as in the main section: `session.run` over the first"
        f" {prefix.rows_timed:,} rows of the workload, already encoded in memory (best of"
        f" {config.repeat}), at its best batch size of"
        f" {', '.join(map(str, config.batch_sizes))}; measured on each workload just before the"
        f" job. The job is `python -m score IN OUT --quiet --summary S.json`; *without prefix"
        f" sharing* is the same through `python -m bench.variant --no-prefix-sharing`"
        f" (`ScoreOptions.share_prefixes` off; de-duplication and the result cache stay on). The"
        f" two run in turns, {_times(config.repeat)} each ({_times(config.prefix_default_rounds)}"
        f" on the default workload), and each shows its fastest run. *Steps computed / steps* is"
        f" `steps_computed` / `steps_scored` from the job's summary: the share of the rows' steps"
        f" the model computed (raw onnxruntime computes every one).",
        "",
        *prefix_table(prefix),
        "",
        *prefix_steps_table(prefix),
        "",
        "### Targets (issue 13)",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        *[
            f"| {target} | {measured} | {_mark(met)} |"
            for target, measured, met in prefix.targets()
        ],
        "",
        *prefix_floor_lines(prefix),
        "",
        "### Where the skewed job's time goes",
        "",
        f"The job on the skewed workload under cProfile (`python -m cProfile -o F -m bench.variant"
        f" --serial-io -- IN OUT --quiet`: reading and writing run in the profiled main thread"
        f" instead of the job's reader and writer threads, so that one profile sees all the work;"
        f" {prefix.profile_seconds:.1f} s wall, {prefix.profile_total:.1f} s seen by the"
        f" profiler). Every function's own time is counted once, in the category of its module"
        f" (and function); the own time of numpy, pyarrow and built-in functions is counted with"
        f" the job's function that called them.",
        "",
        *prefix_profile_table(prefix),
        "",
        *prefix_functions_table(prefix),
        "",
        "On a shared machine rates move a lot from minute to minute; every path ran in the same"
        " run with the same threads, the job with and without prefix sharing in turns: read the"
        " ratios as +-30%, and rerun `python -m bench --only prefix` before acting on one.",
    ]
    return text


# throughput.png ---------------------------------------------------------------------------------------
def plot(results: Results, path: str) -> None:
    """rows/s against batch size for each path, one panel per workload, log x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for axis, name in zip(axes, (DEFAULT, SWEEP_DISTINCT)):
        family = FAMILY[name]
        raw = results.onnxruntime[family].rates
        axis.plot(list(raw), list(raw.values()), "o-", label=f"{RAW} (in memory)")
        sweep = results.job_batch_sweep.get(name, {})
        axis.plot(
            list(sweep),
            [run.rows_per_second for run in sweep.values()],
            "s-",
            label="job, Parquet to Parquet",
        )
        keras = results.keras[family]
        axis.plot(
            [keras.best_batch_size],
            [keras.best],
            "D",
            color="tab:red",
            label=f"Keras predict + argmax + top-3 (batch {keras.best_batch_size})",
        )
        axis.axhline(keras.best, color="tab:red", linestyle=":", linewidth=1)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("batch size (rows)")
        axis.set_ylabel("rows/s")
        axis.set_ylim(bottom=0)
        axis.set_title(f"{_label(results, name)} rows")
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    figure.suptitle(
        f"seqscore throughput, {results.config.threads} threads, {cpu_model()}", fontsize=10
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


# Console -----------------------------------------------------------------------------------------------
def summary_lines(results: Results) -> list[str]:
    lines = []
    for row in table_rows(results) if results.workloads else []:
        lines.append(
            f"{row['path']:32s} {row['workload']:13s} {row['rows']:>10,} rows {_rate(row['rate']):>10} rows/s"
            f"  {row['keras']:5.2f}x Keras  {row['raw']:5.2f}x raw ORT  {row['rss']:6.0f} MB"
        )
    for target, measured, met in targets(results, results.job):
        lines.append(f"{_mark(met)}  {target}: {measured}")
    if results.ragged is not None:
        ragged = results.ragged
        for label, run in (("in file order", ragged.file_order), ("sorted", ragged.by_length)):
            lines.append(
                f"ragged: raw onnxruntime {label:16s} {ragged.rows_timed:>10,} rows"
                f" {_rate(run.best):>10} rows/s (batch {run.best_batch_size},"
                f" padding {_percent(run.padding[run.best_batch_size])})"
            )
        lines.append(
            f"ragged: job {ragged.job.rows:>10,} rows {_rate(ragged.job.rows_per_second):>10}"
            f" rows/s, {ragged.job.peak_rss_mb:.0f} MB"
        )
        for target, measured, met in ragged.targets():
            lines.append(f"{_mark(met)}  {target}: {measured}")
    if results.prefix is not None:
        prefix = results.prefix
        for name in (UNIFORM, SKEWED, DEFAULT):
            run, steps = prefix.job[name], prefix.steps[name]
            lines.append(
                f"prefix: job {_prefix_label(prefix, name):13s} {_rate(run.rows_per_second):>10}"
                f" rows/s  {prefix.speedup(name):5.2f}x raw ORT  {_ratio(prefix.sharing_ratio(name))}"
                f" without sharing  steps computed {_step_share(steps)}"
            )
        for target, measured, met in prefix.targets():
            lines.append(f"{_mark(met)}  {target}: {measured}")
    return lines
