"""The report's section on rows of any length (issue 12)."""

from __future__ import annotations

from bench import measure
from bench.figures import RaggedResults, Results
from bench.report_common import (
    JOB,
    RAW,
    format_met,
    format_percent,
    format_rate,
    machine_lines,
    short_count,
)
from bench.workloads import RAGGED_MODEL, geometric_probabilities

RAGGED_HEADING = "## Rows of any length (issue 12)"


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
            f"| {path} | {rows:,} | {batch} | {format_rate(rate)} | {rate / in_order:.2f} "
            f"| {rate / by_length:.2f} | {format_percent(padding)} | {share:.2f} | {rss:.0f} |"
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
            f"| job, `--batch-size {size}` | {run.rows:,} | {size:,} | {format_rate(run.rows_per_second)}"
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
            cells += [format_rate(run.rates.get(size)), format_percent(run.padding.get(size))]
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
        f"Workload: {short_count(workload.rows)} rows with an int64 `id` column and a list<int64> `x`"
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
            f"| {target} | {measured} | {format_met(met)} |"
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
