"""The report's section on prefix sharing (issue 13)."""

from __future__ import annotations

from bench import measure
from bench.figures import (
    DEFAULT,
    LARGE,
    PREFIX_TARGETS,
    SKEWED,
    UNIFORM,
    PrefixResults,
    Results,
)
from bench.report_common import JOB, RAW, format_met, format_rate, machine_lines, short_count
from bench.workloads import DISTINCT_MODEL, SKEW_EXPONENT

PREFIX_HEADING = "## Prefix sharing (issue 13)"


# Prefix sharing ----------------------------------------------------------------------------------------
def prefix_label(prefix: PrefixResults, name: str) -> str:
    workload = prefix.workloads[name]
    return f"{'default' if name in (DEFAULT, LARGE) else name} {short_count(workload.rows)}"


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


def step_share(steps: dict[str, int]) -> str:
    if not steps.get("steps_scored"):
        return "-"
    return f"{steps['steps_computed'] / steps['steps_scored']:.1%}"


def prefix_table(prefix: PrefixResults) -> list[str]:
    lines = [
        "| path | workload | rows | rows/s | x raw ORT | steps computed / steps | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name in (UNIFORM, SKEWED, DEFAULT):
        label, raw = prefix_label(prefix, name), prefix.raw[name]
        lines.append(
            f"| {RAW}, batch {raw.best_batch_size} | {label} | {prefix.rows_timed:,}"
            f" | {format_rate(raw.best)} | 1.00 | 100.0% | {raw.peak_rss_mb:.0f} |"
        )
        runs = ((JOB, prefix.job[name], prefix.steps[name]),)
        runs += (
            ("job without prefix sharing", prefix.unshared[name], prefix.unshared_steps[name]),
        )
        for path, run, steps in runs:
            if isinstance(run, measure.JobRun):
                lines.append(
                    f"| {path} | {label} | {run.rows:,} | {format_rate(run.rows_per_second)}"
                    f" | {run.rows_per_second / raw.best:.2f} | {step_share(steps)}"
                    f" | {run.peak_rss_mb:.0f} |"
                )
            else:
                lines.append(f"| {path} | {label} | {run} | | | | |")
    large = prefix.large
    source = " (the main section's run)" if prefix.large_from_main else ""
    lines.append(
        f"| {JOB}{source} | {prefix_label(prefix, LARGE)} | {large.rows:,}"
        f" | {format_rate(large.rows_per_second)} | {large.rows_per_second / prefix.raw[DEFAULT].best:.2f}"
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
            f"| {prefix_label(prefix, name)} | {steps.get('steps_scored', 0):,}"
            f" | {computed(steps)} | {step_share(steps)} | {computed(unshared)}"
            f" | {step_share(unshared)} | {rows} |"
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
            f"| {prefix_label(prefix, name)} | {floor.raw_seconds:.2f} | {job_seconds:.2f}"
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
        f"Workloads: *uniform* and *skewed* have {short_count(uniform.rows)} rows of {spec.seq_len}"
        f" steps for the {spec.seq_len}-step model of the all-distinct workload (values"
        f" {values}, trained by the benchmark on {DISTINCT_MODEL.data_rows:,} rows; timed, not"
        f" judged on accuracy). *uniform* draws every step uniformly over the values, with"
        f" replacement, so rows share their first few steps only ({spec.x_classes}^k prefixes of"
        f" k steps); *skewed* draws every step as min(zipf({SKEW_EXPONENT:g}) - 1,"
        f" {spec.x_classes - 1}) (numpy's `default_rng(seed).zipf`) mapped to the values, so that"
        f" many rows share long prefixes. Both are seeded and cached in the work folder."
        f" *default* is the main section's default workload ({short_count(prefix.workloads[DEFAULT].rows)}"
        f" rows of 4 steps; {short_count(prefix.workloads[LARGE].rows)} for peak RSS).",
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
            f"| {target} | {measured} | {format_met(met)} |"
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
        f" profiler). Every function's own time is counted once, in the category of the module"
        f" it lives in (bench.profiling); the own time of numpy, most of pyarrow and most"
        f" built-in functions is counted with the function that called them.",
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
