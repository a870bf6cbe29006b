"""The report's section on reading and writing Delta Lake tables (a table as INPUT,
--output-format delta)."""

from __future__ import annotations

from bench.figures import QUICK, Results
from bench.figures_delta import (
    DELTA_APPEND,
    DELTA_PATHS,
    DELTA_TO_DELTA,
    READS_DELTA,
    WRITES_DELTA,
    DeltaResults,
)
from bench.report_common import format_met, machine_lines, short_count

DELTA_HEADING = "## Delta Lake tables in and out (--output-format delta)"


def command(path: str, threads: int) -> str:
    """The command line of ``path``'s runs (files and tables by their role)."""
    source = "default_table" if path in READS_DELTA else "default.parquet"
    if path == DELTA_APPEND:
        output, flags = "appended_table", " --output-format delta --mode append"
    elif path in WRITES_DELTA:
        output, flags = "new_table", " --output-format delta"
    else:
        output, flags = "out.parquet", ""
    return (
        f"python -m score {source} {output} --model default/model.onnx --threads {threads}"
        f" --quiet{flags}"
    )


def runs_table(delta: DeltaResults) -> list[str]:
    rounds = delta.rounds
    lines = [
        "| path | "
        + " | ".join(f"s, round {number + 1}" for number in range(rounds))
        + " | fastest s | median s | ratio (fastest) | ratio (median) | peak RSS MB |",
        "|---|" + "---:|" * (rounds + 5),
    ]
    for path in DELTA_PATHS:
        fastest = delta.fastest(path)
        ratio = f"{delta.path_ratio(path):.2f}x"
        cells = [
            *(f"{run.seconds:.2f}" for run in delta.runs[path]),
            f"{fastest.seconds:.2f}",
            f"{delta.median(path):.2f}",
            f"**{ratio}**" if path == DELTA_TO_DELTA else ratio,
            f"{delta.path_median_ratio(path):.2f}x",
            f"{fastest.peak_rss_mb:.0f}",
        ]
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    return lines


def log_child_lines(delta: DeltaResults) -> list[str]:
    child = delta.log_child
    return [
        f"The log's child process by itself (`python -m score.delta_log default_table \"\"`, once,"
        f" after the warm-up: version {child.version}, {child.files} live file(s)):"
        f" **{child.seconds:.2f} s** wall, **{child.peak_rss_mb:.0f} MB** peak RSS. The job starts"
        f" it as the command line is read, so it runs beside the job's imports and the model's"
        f" load, and its memory is a process of its own: the job's peak RSS above (ru_maxrss"
        f" from wait4, bench.launch) is the largest of the job's and its waited-for children's,"
        f" not their sum. The two overlap only while the job starts, below its own peak; at"
        f" worst, were both peaks at once, a Delta->Delta run would hold"
        f" {delta.fastest(DELTA_TO_DELTA).peak_rss_mb + child.peak_rss_mb:.0f} MB.",
    ]


def appended_line(delta: DeltaResults) -> str:
    runs = delta.rounds + 1
    expected = runs * delta.workload.rows
    check = "as expected" if delta.appended_rows == expected else f"expected {expected:,}"
    return (
        f"The appended table ended at version {delta.appended_version} with"
        f" {delta.appended_rows:,} rows ({check}: the run that created it and {delta.rounds}"
        f" append(s), one commit each), so each append ran against a log one commit longer than"
        f" the one before, as a daily job's does."
    )


def delta_markdown(results: Results, quick: bool) -> list[str]:
    delta = results.delta
    assert delta is not None
    config = results.config
    return [
        DELTA_HEADING,
        "",
        *(
            ["**A `--quick` smoke run: small files, single runs; not a measurement.**", ""]
            if quick
            else []
        ),
        *machine_lines(results),
        f"- Code measured: {delta.source}",
        "",
        f"Workload: the default workload's {short_count(delta.workload.rows)} rows, read from its"
        f" Parquet file or from a copy of it as a Delta table (written once by delta-rs,"
        f" `deltalake.write_deltalake`, one commit; cached as"
        f" bench/work/delta_uniform_default_{delta.workload.rows}), and written to a Parquet"
        f" file, to a new Delta table (removed after each run), or appended to one table"
        f" (`--mode append`) that the section creates with one Delta->Delta run before the rounds"
        f" and that grows every round. The model is the default one (`make train`). Reading a"
        f" table, the job replays its log in a child process (score.delta_log) and reads the live"
        f" files itself; writing one, it writes the data files with its own Parquet writer and"
        f" commits once at the end through delta-rs.",
        "",
        f"Each run is the whole process (bench.measure: wall time and the job's own peak RSS)."
        f" After one Parquet->Delta run not counted (it warms the page cache), the five paths run"
        f" in turns, {delta.rounds} round(s), so that a busy spell on the machine slows them all;"
        f" each ratio is the path's fastest run over Parquet->Parquet's fastest (the median ratio"
        f" beside it), and peak RSS the largest of the path's runs.",
        "",
        "| path | command |",
        "|---|---|",
        *[f"| {path} | `{command(path, config.threads)}` |" for path in DELTA_PATHS],
        "",
        *runs_table(delta),
        "",
        *log_child_lines(delta),
        "",
        appended_line(delta),
        "",
        "### Targets (Delta Lake)",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        *[
            f"| {target} | {measured} | {format_met(met)} |"
            for target, measured, met in delta.targets()
        ],
        "",
        f"Reproduce: `python -m bench --only delta` (`--quick`: {short_count(QUICK.rows)} rows,"
        f" {QUICK.delta_rounds} round(s), report under bench/work/). On a shared machine times"
        f" move a lot from minute to minute: the rounds' own times show how much.",
    ]


def summary_lines(delta: DeltaResults) -> list[str]:
    lines = []
    for path in DELTA_PATHS:
        run = delta.fastest(path)
        lines.append(
            f"delta: {path:20s} {run.rows:>9,} rows {run.seconds:8.2f} s (fastest)"
            f" {delta.median(path):8.2f} s (median) {delta.path_ratio(path):5.2f}x"
            f" {run.peak_rss_mb:6.0f} MB"
        )
    child = delta.log_child
    lines.append(
        f"delta: the log's child by itself {child.seconds:.2f} s, {child.peak_rss_mb:.0f} MB;"
        f" Delta->Delta / Parquet->Parquet {delta.ratio:.2f}x (median {delta.median_ratio:.2f}x)"
    )
    for target, measured, met in delta.targets():
        lines.append(f"{format_met(met)}  {target}: {measured}")
    return lines
