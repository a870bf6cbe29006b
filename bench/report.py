"""bench/results.md, bench/throughput.png and the printed ratios, from one run's Results.

The main section is written here; the sections on rows of any length, on prefix sharing, on
scheduled runs that carry state, on labels and on Delta Lake tables in bench.report_ragged,
bench.report_prefix, bench.report_keyed, bench.report_labels and bench.report_delta.
"""

from __future__ import annotations

from bench import measure
from bench.figures import DEFAULT, DISTINCT, LARGE, SKEWED, SWEEP_DISTINCT, UNIFORM, Results
from bench.report_common import (
    JOB,
    KERAS,
    RAW,
    cpu_model,
    format_met,
    format_percent,
    format_rate,
    format_ratio,
    machine_lines,
    short_count,
)
from bench.report_delta import DELTA_HEADING, delta_markdown
from bench.report_delta import summary_lines as delta_summary_lines
from bench.report_keyed import KEYED_HEADING, keyed_markdown
from bench.report_keyed import summary_lines as keyed_summary_lines
from bench.report_labels import LABELS_HEADING, labels_markdown
from bench.report_labels import summary_lines as labels_summary_lines
from bench.report_prefix import PREFIX_HEADING, prefix_label, prefix_markdown, step_share
from bench.report_ragged import RAGGED_HEADING, ragged_markdown

# The in-memory paths' reference for each workload (the job's files share their model).
FAMILY = {DEFAULT: DEFAULT, LARGE: DEFAULT, DISTINCT: DISTINCT, SWEEP_DISTINCT: DISTINCT}


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


# results.md --------------------------------------------------------------------------------------------
def main_table(results: Results) -> list[str]:
    lines = [
        "| path | workload | rows timed | batch | rows/s | x Keras | x raw ORT | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table_rows(results):
        lines.append(
            f"| {row['path']} | {row['workload']} | {row['rows']:,} | {row['batch']} | {format_rate(row['rate'])} "
            f"| {row['keras']:.2f} | {row['raw']:.2f} | {row['rss']:.0f} |"
        )
    return lines


def targets_table(results: Results) -> list[str]:
    lines = ["| target | measured | |", "|---|---:|---|"]
    for target, measured, met in targets(results, results.job):
        lines.append(f"| {target} | {measured} | {format_met(met)} |")
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
                format_rate(raw),
                format_rate(job.rows_per_second if job else None),
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
                + " | ".join(format_rate(rates.get(n)) for n in counts)
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
            f"| {_label(results, name)} | {figures['model_rows_share']:.1%} | {format_rate(figures['with'])} "
            f"| {format_rate(figures['without'])} | {figures['with'] / figures['without']:.2f}x |"
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
                cells += [format_rate(run.rows_per_second), f"{run.peak_rss_mb:.0f}"]
            else:
                cells += [str(run or "-"), "-"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _label(results: Results, name: str) -> str:
    workload = results.workloads[name]
    return f"{FAMILY[name]} {short_count(workload.rows)}"


def markdown(results: Results, quick: bool, previous: str | None = None) -> str:
    """The whole report. Sections this run did not measure are kept from ``previous`` (the
    report it replaces), so that `--only` refreshes its part and leaves the rest alone."""
    if results.workloads:
        document = main_markdown(results, quick)
    elif previous:
        document = previous
        for heading in (
            RAGGED_HEADING,
            PREFIX_HEADING,
            KEYED_HEADING,
            LABELS_HEADING,
            DELTA_HEADING,
        ):
            document = without_section(document, heading)
    else:
        document = "# Benchmark: the scoring job against Keras predict and raw onnxruntime\n"
    parts = [document]
    for heading, lines in (
        (RAGGED_HEADING, ragged_markdown(results, quick) if results.ragged else None),
        (PREFIX_HEADING, prefix_markdown(results, quick) if results.prefix else None),
        (KEYED_HEADING, keyed_markdown(results, quick) if results.keyed else None),
        (LABELS_HEADING, labels_markdown(results, quick) if results.labels else None),
        (DELTA_HEADING, delta_markdown(results, quick) if results.delta else None),
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
        f"{short_count(workloads[DEFAULT].rows)} and {short_count(workloads[LARGE].rows)} rows; *all-distinct*"
        f" has {short_count(workloads[DISTINCT].rows)} rows of 12 steps, no two alike, scored by a"
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
            "The job with one optimisation switched off by `python -m bench.variant`, through"
            " the job's benchmark switches (fields of ScoreOptions, SessionConfig and JobConfig"
            " that no command-line flag sets); compare each row with the first.",
            "",
            *variants_table(results),
        ]
    return "\n".join(text) + "\n"


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
            f"{row['path']:32s} {row['workload']:13s} {row['rows']:>10,} rows {format_rate(row['rate']):>10} rows/s"
            f"  {row['keras']:5.2f}x Keras  {row['raw']:5.2f}x raw ORT  {row['rss']:6.0f} MB"
        )
    for target, measured, met in targets(results, results.job):
        lines.append(f"{format_met(met)}  {target}: {measured}")
    if results.ragged is not None:
        ragged = results.ragged
        for label, run in (("in file order", ragged.file_order), ("sorted", ragged.by_length)):
            lines.append(
                f"ragged: raw onnxruntime {label:16s} {ragged.rows_timed:>10,} rows"
                f" {format_rate(run.best):>10} rows/s (batch {run.best_batch_size},"
                f" padding {format_percent(run.padding[run.best_batch_size])})"
            )
        lines.append(
            f"ragged: job {ragged.job.rows:>10,} rows {format_rate(ragged.job.rows_per_second):>10}"
            f" rows/s, {ragged.job.peak_rss_mb:.0f} MB"
        )
        for target, measured, met in ragged.targets():
            lines.append(f"{format_met(met)}  {target}: {measured}")
    if results.prefix is not None:
        prefix = results.prefix
        for name in (UNIFORM, SKEWED, DEFAULT):
            run, steps = prefix.job[name], prefix.steps[name]
            lines.append(
                f"prefix: job {prefix_label(prefix, name):13s} {format_rate(run.rows_per_second):>10}"
                f" rows/s  {prefix.speedup(name):5.2f}x raw ORT  {format_ratio(prefix.sharing_ratio(name))}"
                f" without sharing  steps computed {step_share(steps)}"
            )
        for target, measured, met in prefix.targets():
            lines.append(f"{format_met(met)}  {target}: {measured}")
    if results.keyed is not None:
        lines += keyed_summary_lines(results.keyed)
    if results.labels is not None:
        lines += labels_summary_lines(results.labels)
    if results.delta is not None:
        lines += delta_summary_lines(results.delta)
    return lines
