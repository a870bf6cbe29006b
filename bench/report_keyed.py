"""The report's section on scheduled runs that carry each key's state (--key)."""

from __future__ import annotations

from bench.figures import (
    BUILD,
    FULL,
    FULL_KEYED,
    INCREMENTAL,
    LARGE_RANDOM,
    LARGE_SORTED,
    ONE_ROW,
    QUICK,
    BenchConfig,
    KeyedResults,
    Results,
)
from bench.report_common import format_met, format_rate, machine_lines, short_count
from bench.run_keyed import KEY, SEED
from bench.workloads import RAGGED_MODEL, geometric_probabilities

KEYED_HEADING = "## Scheduled runs that carry state (--key)"
# What each run is, in the report.
LABELS = {
    BUILD: "the histories, `--key` from zero (builds state-history)",
    INCREMENTAL: "**incremental**: the day, `--state-in state-history`",
    FULL: "**full rescoring**: history + day, without `--key`",
    FULL_KEYED: "history + day, `--key` from zero (builds state-full)",
    LARGE_RANDOM: "a day against the large state, keys in random order",
    LARGE_SORTED: "a day against the large state, keys sorted",
}
INPUTS = {
    BUILD: "history.parquet",
    INCREMENTAL: "day.parquet",
    FULL: "whole.parquet",
    FULL_KEYED: "whole.parquet",
    LARGE_RANDOM: "lookup-random.parquet",
    LARGE_SORTED: "lookup-sorted.parquet",
}


def commands(keyed: KeyedResults, config: BenchConfig) -> dict[str, str]:
    """The command line of each run (files and folders by their role)."""
    common = f"--model ragged/model.onnx --max-length {config.keyed_max_length}"
    flags = {
        BUILD: f"--key {KEY} --state-out state-history",
        INCREMENTAL: f"--key {KEY} --state-in state-history --state-out state-incremental",
        FULL: "",
        FULL_KEYED: f"--key {KEY} --state-out state-full",
        LARGE_RANDOM: f"--key {KEY} --state-in state-{short_count(keyed.state_keys)} --state-out state-next",
        LARGE_SORTED: f"--key {KEY} --state-in state-{short_count(keyed.state_keys)} --state-out state-next",
    }
    return {
        name: f"python -m score {INPUTS[name]} out.parquet {common} {flags[name]}".rstrip()
        for name in LABELS
    }


def _count(summary: dict, name: str) -> str:
    value = summary.get(name)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,}"


def runs_table(keyed: KeyedResults) -> list[str]:
    lines = [
        "| run | rows | steps in the input | s | steps/s | peak RSS MB | keys in state | keys scored"
        " | new keys | carried unchanged | steps resumed | input sorted |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, label in LABELS.items():
        run, summary = keyed.runs[name], keyed.summaries[name]
        steps = summary.get("steps_scored", 0)
        cells = [
            f"{run.rows:,}",
            f"{steps:,}",
            f"{run.seconds:.2f}",
            format_rate(steps / run.seconds),
            f"{run.peak_rss_mb:.0f}",
            *(
                _count(summary, field)
                for field in (
                    "keys_in_state",
                    "keys_scored",
                    "keys_new",
                    "keys_carried_unchanged",
                    "steps_resumed",
                    "input_sorted_by_key",
                )
            ),
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def diff_table(keyed: KeyedResults) -> list[str]:
    diff = keyed.diff
    lines = [
        "| compared | state-incremental | state-full |",
        "|---|---:|---:|",
        f"| entries | {diff.rows[0]:,} | {diff.rows[1]:,} |",
        f"| keys equal, in order | {'yes' if diff.keys_equal else '**no**'} | |",
        f"| steps equal | {'yes' if diff.steps_equal else '**no**'} | |",
    ]
    for name, largest in diff.max_abs_diff.items():
        lines.append(f"| max abs diff, `{name}` | {largest:.2e} | |")
    return lines


def profile_lines(keyed: KeyedResults) -> list[str]:
    if not keyed.profiled:
        return []
    total = keyed.profile_total
    lines = [
        "### Where the incremental run's time goes",
        "",
        f"The {keyed.profiled} run under cProfile (`python -m cProfile -o F -m score ...`, the"
        f" same command; {keyed.profile_seconds:.1f} s wall, {total:.1f} s seen by the"
        f" profiler), its functions' own time counted by category as in the prefix section"
        f" (bench.profiling).",
        "",
        "| where | s | share |",
        "|---|---:|---:|",
    ]
    for category, seconds in keyed.profile.items():
        lines.append(f"| {category} | {seconds:.2f} | {seconds / total:.1%} |")
    lines += ["", "| function | counted in | own s | cumulative s |", "|---|---|---:|---:|"]
    for name, category, own, cumulative in keyed.profile_functions:
        lines.append(f"| `{name}` | {category} | {own:.2f} | {cumulative:.2f} |")
    return lines


def memory_lines(keyed: KeyedResults) -> list[str]:
    if not keyed.memory:
        return []

    def mb(value: int) -> str:
        return f"{value / 2**20:.0f}"

    lines = [
        "### Where the memory goes",
        "",
        "Each run over its memory target, and a run of one row for comparison, once more under"
        " `python -m bench.memory` (score's `main` in-process, /proc/self/status sampled every"
        " 5 ms): its largest resident set, and when the resident set first came within 3% of"
        " that (where the memory rose; the very largest sample can come later, wherever a little"
        " more is added to memory that stays resident): its anonymous and file-backed parts, the"
        " bytes Arrow's memory pool held, and where the job was. *Other anonymous* is numpy's"
        " buffers, Python's objects, the libraries' own heaps, onnxruntime's arena, and memory"
        " freed but kept by an allocator. Then a third run with tracemalloc (`--sites`): the"
        " most Python and numpy held at once, and the allocation sites holding it. MB are MiB.",
        "",
        "| run | job's peak RSS | largest (bench.memory) | at the rise: resident | anonymous"
        " | file-backed | Arrow pool | other anonymous | Arrow's own peak"
        " | Python + numpy peak (--sites) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, peak in keyed.memory.items():
        lines.append(
            f"| {name} | {keyed.runs[name].peak_rss_mb:.0f} | {mb(peak.largest)}"
            f" | {mb(peak.resident)} | {mb(peak.anonymous)} | {mb(peak.file_backed)}"
            f" | {mb(peak.arrow)} | {mb(peak.anonymous - peak.arrow)} | {mb(peak.arrow_peak)}"
            f" | {mb(peak.traced_peak)} |"
        )
    lines += [
        "",
        "Where the job was when each run's memory rose to its peak (its frames, then the"
        " innermost):",
        "",
    ]
    lines += [f"- {name}: `{peak.where or '-'}`" for name, peak in keyed.memory.items()]
    for name, peak in keyed.memory.items():
        if name == ONE_ROW:
            continue
        lines += [
            "",
            f"{name}: the allocation sites of Python and numpy holding the most at their peak"
            f" (repository frames, outermost first):",
            "",
            "| site | MB |",
            "|---|---:|",
            *[f"| `{site}` | {mb(size)} |" for site, size in peak.sites],
        ]
    return lines


def keyed_markdown(results: Results, quick: bool) -> list[str]:
    keyed = results.keyed
    assert keyed is not None
    config = results.config
    spec = keyed.workload.model.spec
    shortest, longest = config.keyed_lengths
    ratio = (
        1
        - geometric_probabilities(longest - shortest + 1, config.keyed_mean_length - shortest + 1)[
            0
        ]
    )
    incremental, full, full_keyed = (keyed.runs[name] for name in (INCREMENTAL, FULL, FULL_KEYED))
    state_mb = keyed.state_keys * keyed.state_floats * 4 / 1e6
    text = [
        KEYED_HEADING,
        "",
        *(
            ["**A `--quick` smoke run: small files, single runs; not a measurement.**", ""]
            if quick
            else []
        ),
        *machine_lines(results),
        f"- Code measured: {keyed.source}",
        "",
        f"Workload: {short_count(keyed.keys)} keys (an int64 `{KEY}` column, 0..{keyed.keys - 1:,},"
        f" every file written sorted by key) with one history each: lengths {shortest}..{longest}"
        f" from a geometric distribution truncated to that range (P(length = n) proportional to"
        f" r^(n-{shortest}), r = {ratio:.4f}, chosen for a mean of {config.keyed_mean_length:g};"
        f" measured mean {keyed.history_steps / keyed.keys:.2f}, {keyed.history_steps:,} steps;"
        f" seed {SEED}), values uniform over {spec.x_values[0]}..{spec.x_values[-1]}."
        f" *history.parquet* holds each key's history, *day.parquet* its {keyed.day_steps} new"
        f" steps, *whole.parquet* both back to back (one row per key in each; cached as"
        f" bench/work/keyed_{{history,day,whole}}_ragged_{keyed.keys}.parquet). The model is the"
        f" ragged section's variable-length one (2 LSTM layers of 64 units, trained on rows of"
        f" 1..{spec.seq_len} steps, {RAGGED_MODEL.data_rows:,} rows): histories are longer than"
        f" that, so every run passes `--max-length {config.keyed_max_length}` (predictions past"
        f" step {spec.seq_len} are extrapolation; timed, not judged).",
        "",
        f"Every run is the whole process, `python -m score ... --threads {config.threads} --quiet"
        f" --summary S.json` (bench.measure: wall time and the child's own peak RSS), in this"
        f" order: the histories keyed from the zero state, which writes *state-history* (the"
        f" cost of rescoring every history with state output); then, in turns"
        f" ({config.keyed_rounds} each, fastest shown), the **incremental** run (the day from"
        f" state-history) and the **full rescoring** (each whole history without `--key`, what"
        f" users must run today); then the whole histories with `--key` from zero, whose"
        f" *state-full* must equal the incremental run's *state-incremental*. The counts are"
        f" the runs' own summaries; *steps in the input* is `steps_scored`.",
        "",
        "| run | command |",
        "|---|---|",
        *[f"| {name} | `{command}` |" for name, command in commands(keyed, config).items()],
        "",
        *runs_table(keyed),
        "",
        f"The incremental run takes {incremental.seconds:.2f} s against {full.seconds:.2f} s for"
        f" the full rescoring (**{keyed.speedup:.2f}x**) and {full_keyed.seconds:.2f} s for the"
        f" full rescoring with state output ({full_keyed.seconds / incremental.seconds:.2f}x); it"
        f" reads and writes {short_count(keyed.keys)} states of {keyed.state_floats * 4:,} bytes"
        f" ({keyed.keys * keyed.state_floats * 4 / 1e6:.0f} MB of float32 each way).",
        *rounds_lines(keyed),
        "",
        "The two states after the day, read back with pyarrow (state-incremental: the histories'"
        " state, then the day; state-full: each whole history from zero):",
        "",
        *diff_table(keyed),
        "",
        f"*The large state*: {keyed.state_keys:,} keys (0..{keyed.state_keys - 1:,}), each at"
        f" {config.keyed_state_steps} steps with random float32 states"
        f" ({state_mb:.0f} MB of float32; {keyed.state_bytes / 1e6:.0f} MB on disk), written"
        f" directly with pyarrow in the schema and key-value metadata of state-history (its"
        f" `seqscore.rows` updated) and row groups of the job's writer. Against it,"
        f" {keyed.lookup_rows:,} rows of {keyed.day_steps} steps whose keys are drawn without"
        f" replacement from its keys: in the order drawn (the job holds the input in memory to"
        f" sort it), and sorted by key (the job streams it).",
        "",
        "### Targets (scheduled runs)",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        *[
            f"| {target} | {measured} | {format_met(met)} |"
            for target, measured, met in keyed.targets()
        ],
        "",
        *profile_lines(keyed),
        *([""] if keyed.profiled else []),
        *memory_lines(keyed),
        *([""] if keyed.memory else []),
        f"Reproduce: `python -m bench --only keyed` (`--quick`: {short_count(QUICK.keyed_keys)}"
        f" keys and a {short_count(QUICK.keyed_state_keys)}-key state, report under"
        " bench/work/). On a shared machine rates move a lot from minute to minute; the"
        " incremental run and the full rescoring run in turns so that a busy spell slows both:"
        " read the ratios as +-30%, and rerun before acting on one.",
    ]
    return text


def summary_lines(keyed: KeyedResults) -> list[str]:
    lines = []
    for name, label in LABELS.items():
        run = keyed.runs[name]
        lines.append(
            f"keyed: {label.replace('*', ''):62s} {run.rows:>9,} rows {run.seconds:8.2f} s"
            f" {run.peak_rss_mb:6.0f} MB"
        )
    lines.append(
        f"keyed: incremental / full rescoring: {keyed.speedup:.2f}x;"
        f" state max |diff| {keyed.diff.largest:.2e}"
    )
    for target, measured, met in keyed.targets():
        lines.append(f"{format_met(met)}  {target}: {measured}")
    return lines


def rounds_lines(keyed: KeyedResults) -> list[str]:
    """Every round's seconds of the two runs in turns (the fastest of each is the ratio's)."""
    if len(keyed.rounds.get(INCREMENTAL, [])) < 2:
        return []
    incremental, full = keyed.rounds[INCREMENTAL], keyed.rounds[FULL]
    pairs = ", ".join(f"{full_s / incremental_s:.2f}x" for incremental_s, full_s in zip(incremental, full))
    return [
        "",
        f"Round by round (in turns): incremental {', '.join(f'{s:.2f}' for s in incremental)} s;"
        f" full rescoring {', '.join(f'{s:.2f}' for s in full)} s; each round's own ratio {pairs}.",
    ]

