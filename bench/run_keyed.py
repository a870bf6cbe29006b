"""The benchmark's keyed section: a chain of scheduled runs that carry each key's LSTM state
(`--key user --state-in PREVIOUS --state-out NEW`) against rescoring each whole history, and
runs against a state of many keys.

Every run is the whole process in a child of its own (bench.measure), with the ragged model
(variable length, so histories of any length fit it) and the same threads.
"""

from __future__ import annotations

import json
import os
import pstats
import shutil
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench import measure, profiling
from bench.figures import (
    BUILD,
    FULL,
    FULL_KEYED,
    INCREMENTAL,
    KEYED_RSS_MB,
    KEYED_SPEEDUP,
    LARGE_RANDOM,
    LARGE_SORTED,
    ONE_ROW,
    BenchConfig,
    KeyedResults,
    MemoryPeak,
    StateDiff,
)
from bench.workloads import (
    RAGGED_MODEL,
    REPO,
    Model,
    Workload,
    draw_lengths,
    list_column,
    prepare_model,
    ragged_column,
    write_columns,
)
from score.arrays import offsets_from_lengths, segment_gather
from score.state_store import PART_NAME, ROWS_PER_CHUNK, STEPS

KEY = "user"  # the key column of every file of the section
SEED = 3  # of every file the section draws
SCRATCH = "keyed"  # the folder under the work folder for the runs' outputs and states
# The --summary fields each run's figures keep.
SUMMARY_FIELDS = (
    "rows_in",
    "steps_scored",
    "steps_computed",
    "keys_in_state",
    "keys_scored",
    "keys_new",
    "keys_carried_unchanged",
    "keys_in_state_out",
    "steps_resumed",
    "input_sorted_by_key",
)


@dataclass(frozen=True)
class ChainFiles:
    """The chain's inputs: one row per key in each, keys ascending."""

    history: Workload  # each key's whole history
    day: str  # each key's new steps of the day
    whole: str  # each key's history and the day's steps, back to back
    history_steps: int  # the steps of all the histories


@dataclass(frozen=True)
class Plan:
    """One run of the job: its input, and with --key the states it reads and writes."""

    input: str
    keyed: bool = True
    state_in: str | None = None
    state_out: str | None = None  # replaced by each run


def run_keyed(config: BenchConfig, log=print) -> KeyedResults:
    """Steps: 1. the ragged model and the chain's files; 2. the state of the histories (keyed,
    from zero); 3. the day from that state, in turns with rescoring each whole history without
    --key; 4. the whole histories with --key from zero, and its state against the incremental
    run's; 5. the large state and a day's rows against it, in random and in key order; 6. for
    a run that misses a target, where its time (cProfile) or its memory (bench.memory) goes."""
    # 1. Model and data.
    source = source_version()
    model = prepare_model(RAGGED_MODEL, config.work, log)
    chain = prepare_chain(model, config, log)
    scratch = os.path.join(config.work, SCRATCH)
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    states = {
        name: os.path.join(scratch, f"state-{name}") for name in (BUILD, INCREMENTAL, FULL_KEYED)
    }
    plans = {
        BUILD: Plan(chain.history.path, state_out=states[BUILD]),
        INCREMENTAL: Plan(chain.day, state_in=states[BUILD], state_out=states[INCREMENTAL]),
        FULL: Plan(chain.whole, keyed=False),
        FULL_KEYED: Plan(chain.whole, state_out=states[FULL_KEYED]),
    }
    runs: dict[str, measure.JobRun] = {}
    summaries: dict[str, dict] = {}

    # 2. The state the chain starts from: every history, keyed, from the zero state.
    log(f"keyed: the state of {chain.history.rows:,} histories ({chain.history_steps:,} steps)")
    runs[BUILD], summaries[BUILD] = timed_run(model, plans[BUILD], config)

    # 3. The day from that state, and each whole history rescored as users must today, in
    # turns so that a busy spell on the machine slows both.
    incremental, full = [], []
    for round_ in range(config.keyed_rounds):
        log(
            f"keyed: the day from the state, then the full rescoring"
            f" ({round_ + 1}/{config.keyed_rounds})"
        )
        run, summaries[INCREMENTAL] = timed_run(model, plans[INCREMENTAL], config)
        incremental.append(run)
        run, summaries[FULL] = timed_run(model, plans[FULL], config)
        full.append(run)
    runs[INCREMENTAL], runs[FULL] = measure.fastest(incremental), measure.fastest(full)

    # 4. The whole histories keyed from zero: the state the incremental run must reach.
    log("keyed: the whole histories with --key from the zero state")
    runs[FULL_KEYED], summaries[FULL_KEYED] = timed_run(model, plans[FULL_KEYED], config)
    diff = compare_states(states[INCREMENTAL], states[FULL_KEYED])
    shutil.rmtree(states[FULL_KEYED])

    # 5. A day's rows against a large state, as they come and sorted by key.
    large = prepare_large_state(states[BUILD], config, log)
    for name, path in prepare_lookups(model, config, log).items():
        log(
            f"keyed: {config.keyed_lookup_rows:,} rows against the"
            f" {config.keyed_state_keys:,}-key state ({name})"
        )
        plans[name] = Plan(path, state_in=large, state_out=os.path.join(scratch, "state-large"))
        runs[name], summaries[name] = timed_run(model, plans[name], config)
    results = KeyedResults(
        chain.history,
        chain.history_steps,
        config.keyed_day_steps,
        state_floats(states[BUILD]),
        config.keyed_state_keys,
        folder_bytes(large),
        config.keyed_lookup_rows,
        runs,
        summaries,
        diff,
        source,
        rounds={INCREMENTAL: [run.seconds for run in incremental], FULL: [run.seconds for run in full]},
    )

    # 6. Where a run's time or memory goes, when it misses its target.
    if results.speedup < KEYED_SPEEDUP:
        log("keyed: the incremental run misses its time target; profiling it (cProfile)")
        profile_run(results, INCREMENTAL, model, plans[INCREMENTAL], config)
    over = [
        name
        for name in (INCREMENTAL, LARGE_RANDOM, LARGE_SORTED)
        if runs[name].peak_rss_mb > KEYED_RSS_MB
    ]
    if over:
        log(
            f"keyed: {', '.join(over)} over {KEYED_RSS_MB} MB; where the memory goes (bench.memory)"
        )
        plans[ONE_ROW] = Plan(
            one_row_file(model, scratch, config.keyed_day_steps),
            state_out=os.path.join(scratch, "state-one-row"),
        )
        runs[ONE_ROW], summaries[ONE_ROW] = timed_run(model, plans[ONE_ROW], config)
        for name in (ONE_ROW, *over):
            results.memory[name] = memory_peak(model, plans[name], config)
    shutil.rmtree(scratch)
    return results


def source_version() -> str:
    """The commit this run measures, and whether score/ differs from it."""

    def git(*arguments: str) -> str:
        completed = subprocess.run(
            ["git", *arguments], cwd=REPO, capture_output=True, text=True, check=False
        )
        return completed.stdout.strip() if completed.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown (not a git checkout)"
    changed = git("status", "--porcelain", "--", "score")
    return f"commit {commit}" + (", score/ with uncommitted changes" if changed else "")


# The runs ------------------------------------------------------------------------------------------
def job_arguments(model: Model, plan: Plan, config: BenchConfig) -> list[str]:
    """`INPUT OUTPUT --model M ...` of one run; OUTPUT and the summary go to the scratch folder."""
    scratch = os.path.join(config.work, SCRATCH)
    arguments = [
        plan.input,
        os.path.join(scratch, "scored.parquet"),
        "--model",
        model.onnx,
        "--threads",
        str(config.threads),
        "--quiet",
        "--max-length",
        str(config.keyed_max_length),
        "--summary",
        os.path.join(scratch, "summary.json"),
    ]
    if plan.keyed:
        arguments += ["--key", KEY, "--state-out", plan.state_out or os.path.join(scratch, "state")]
    if plan.state_in:
        arguments += ["--state-in", plan.state_in]
    return arguments


def child_run(
    command: list[str], arguments: list[str], plan: Plan
) -> tuple[measure.ChildRun, dict]:
    """Run ``command`` (whose job takes ``arguments``) from a fresh --state-out: the child's
    figures and its --summary's SUMMARY_FIELDS. The scored output and the summary are removed;
    the state stays."""
    if plan.state_out:
        shutil.rmtree(plan.state_out, ignore_errors=True)
    child = measure.run_child(command)
    os.unlink(arguments[1])
    summary_path = arguments[arguments.index("--summary") + 1]
    with open(summary_path) as handle:
        summary = json.load(handle)
    os.unlink(summary_path)
    return child, {name: summary[name] for name in SUMMARY_FIELDS if summary.get(name) is not None}


def timed_run(model: Model, plan: Plan, config: BenchConfig) -> tuple[measure.JobRun, dict]:
    """One run of the job, `python -m score ...`: its wall time, peak RSS and summary figures."""
    arguments = job_arguments(model, plan, config)
    child, figures = child_run([sys.executable, "-m", "score", *arguments], arguments, plan)
    return measure.JobRun(int(figures["rows_in"]), child.seconds, child.peak_rss_mb), figures


def profile_run(
    results: KeyedResults, name: str, model: Model, plan: Plan, config: BenchConfig
) -> None:
    """The run ``name`` again under cProfile: where its time goes (bench.profiling)."""
    profile_path = os.path.join(config.work, f"keyed-{name}.prof")
    arguments = job_arguments(model, plan, config)
    command = [sys.executable, "-m", "cProfile", "-o", profile_path, "-m", "score", *arguments]
    child, _ = child_run(command, arguments, plan)
    stats = pstats.Stats(profile_path)
    results.profiled = name
    results.profile, results.profile_functions = profiling.where_time_goes(
        stats, profiling.PROFILE_FUNCTIONS
    )
    results.profile_total = stats.total_tt  # type: ignore[attr-defined]
    results.profile_seconds = child.seconds


def memory_peak(model: Model, plan: Plan, config: BenchConfig) -> MemoryPeak:
    """The run twice more under bench.memory: where its memory stood at its peak, then (with
    --sites: tracemalloc, whose bookkeeping takes memory of its own) the allocation sites at
    the traced peak."""
    report = os.path.join(config.work, SCRATCH, "memory.json")
    arguments = job_arguments(model, plan, config)
    figures = {}
    for flags in ((), ("--sites",)):
        command = [sys.executable, "-m", "bench.memory", *flags, report, "--", *arguments]
        child_run(command, arguments, plan)
        with open(report) as handle:
            figures[flags] = json.load(handle)
    peak, traced = figures[()]["peak"], figures[("--sites",)]
    return MemoryPeak(
        figures[()]["largest"],
        peak["VmRSS"],
        peak.get("RssAnon", 0),
        peak.get("RssFile", 0),
        peak["arrow"],
        figures[()]["arrow_peak"],
        peak["where"],
        traced["traced_peak"],
        [(site, size) for site, size in traced["sites"]],
    )


def one_row_file(model: Model, folder: str, day: int) -> str:
    """A day of one key: the smallest keyed run, for the memory probe's baseline."""
    path = os.path.join(folder, "one-row.parquet")
    steps = np.full((1, day), model.spec.x_values[0], dtype=np.int64)
    write_columns(
        path, {KEY: pa.array([0], pa.int64()), model.spec.input_column: list_column(steps)}
    )
    return path


def compare_states(first: str, second: str) -> StateDiff:
    """Two state folders entry by entry: keys, steps, and the largest |difference| of each
    state tensor (read one column of each at a time)."""
    files = [pq.ParquetFile(os.path.join(folder, PART_NAME)) for folder in (first, second)]
    rows = (files[0].metadata.num_rows, files[1].metadata.num_rows)
    names = [name for name in files[0].schema_arrow.names if name not in (KEY, STEPS)]

    def both(name: str) -> list[pa.Array]:
        return [file.read(columns=[name]).column(0).combine_chunks() for file in files]

    keys, steps = both(KEY), both(STEPS)
    largest = {}
    for name in names:
        ours, theirs = (column.flatten().to_numpy() for column in both(name))
        if ours.size != theirs.size or ours.size == 0:
            largest[name] = float("nan")
            continue
        largest[name] = float(np.max(np.abs(ours - theirs)))
    for file in files:
        file.close()
    return StateDiff(rows, keys[0].equals(keys[1]), steps[0].equals(steps[1]), largest)


def state_floats(folder: str) -> int:
    """The float32 values of one key's state in a state folder: the widths of its tensors."""
    schema = pq.read_schema(os.path.join(folder, PART_NAME))
    return sum(field.type.list_size for field in schema if pa.types.is_fixed_size_list(field.type))


def folder_bytes(folder: str) -> int:
    return sum(entry.stat().st_size for entry in os.scandir(folder) if entry.is_file())


# The data ------------------------------------------------------------------------------------------
def cached(path: str, recipe: str, key_path: str | None = None) -> bool:
    """``path`` exists and was written from ``recipe`` (its key file, by default PATH.key)."""
    try:
        with open(key_path or path + ".key") as handle:
            return handle.read().strip() == recipe and os.path.exists(path)
    except OSError:
        return False


def history_lengths(config: BenchConfig) -> np.ndarray:
    """Each key's history length: a geometric distribution truncated to keyed_lengths (P(n)
    proportional to r^(n - shortest)), r chosen for keyed_mean_length."""
    shortest, longest = config.keyed_lengths
    shift = shortest - 1
    lengths = draw_lengths(
        config.keyed_keys, longest - shift, config.keyed_mean_length - shift, SEED
    )
    return lengths + shift


def prepare_chain(model: Model, config: BenchConfig, log=print) -> ChainFiles:
    """Write (or reuse) the histories, the day's steps and both back to back: keys 0..N-1
    ascending (int64), values uniform over the model's x values."""
    spec, keys, day = model.spec, config.keyed_keys, config.keyed_day_steps
    paths = {
        name: os.path.join(config.work, f"keyed_{name}_{model.name}_{keys}.parquet")
        for name in ("history", "day", "whole")
    }
    recipe = (
        f"{spec.to_json()}|{keys}|{config.keyed_lengths}|{config.keyed_mean_length}|{day}|{SEED}"
    )
    lengths = history_lengths(config)
    if not all(cached(path, recipe) for path in paths.values()):
        log(
            f"data: writing {keys:,} histories ({config.keyed_lengths[0]}..{config.keyed_lengths[1]}"
            f" steps, mean {config.keyed_mean_length:g}), their day and both to {config.work}"
        )
        generator = np.random.default_rng(SEED)
        values = np.asarray(spec.x_values, dtype=np.int64)
        history = values[generator.integers(0, spec.x_classes, size=int(lengths.sum()))]
        today = values[generator.integers(0, spec.x_classes, size=(keys, day))]
        whole_offsets = offsets_from_lengths(lengths + day)
        whole = np.empty(int(whole_offsets[-1]), dtype=np.int64)
        whole[segment_gather(whole_offsets[:-1], lengths)] = history
        whole[segment_gather(whole_offsets[:-1] + lengths, np.full(keys, day))] = today.reshape(-1)
        key_column = pa.array(np.arange(keys, dtype=np.int64))
        columns = {
            "history": ragged_column(history, offsets_from_lengths(lengths)),
            "day": list_column(today),
            "whole": ragged_column(whole, whole_offsets),
        }
        for name, path in paths.items():
            write_columns(path, {KEY: key_column, spec.input_column: columns[name]})
            with open(path + ".key", "w") as handle:
                handle.write(recipe + "\n")
    history = Workload("keyed histories", paths["history"], keys, model)
    return ChainFiles(history, paths["day"], paths["whole"], int(lengths.sum()))


def prepare_large_state(template: str, config: BenchConfig, log=print) -> str:
    """Write (or reuse) a state of keyed_state_keys keys (0..N-1) for the model that wrote the
    state folder ``template``: its schema and metadata (the row count updated), every key at
    keyed_state_steps steps, states uniform over [-1, 1); row groups like the job's writer."""
    source = pq.ParquetFile(os.path.join(template, PART_NAME))
    schema = source.schema_arrow.remove_metadata()
    metadata = {
        name.decode(): value.decode()
        for name, value in (source.metadata.metadata or {}).items()
        if name.startswith(b"seqscore.")
    }
    source.close()
    keys, steps = config.keyed_state_keys, config.keyed_state_steps
    metadata["seqscore.rows"] = str(keys)
    folder = os.path.join(config.work, f"keyed_state_{keys}")
    recipe = (
        f"{metadata['seqscore.model_sha256']}|{schema.field(KEY).type}|"
        f"{metadata['seqscore.state_tensors']}|{keys}|{steps}|{ROWS_PER_CHUNK}|{SEED}"
    )
    if cached(os.path.join(folder, PART_NAME), recipe, folder + ".key"):
        return folder
    log(f"data: writing a state of {keys:,} keys to {folder}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    generator = np.random.default_rng(SEED)
    tensors = [field for field in schema if pa.types.is_fixed_size_list(field.type)]
    temporary = os.path.join(folder, PART_NAME + ".tmp")
    with pq.ParquetWriter(
        temporary, schema, use_dictionary=[KEY], write_page_checksum=True
    ) as writer:
        for start in range(0, keys, ROWS_PER_CHUNK):
            rows = min(ROWS_PER_CHUNK, keys - start)
            arrays = [
                pa.array(np.arange(start, start + rows, dtype=np.int64)),
                pa.array(np.full(rows, steps, dtype=np.int64)),
            ]
            for field in tensors:
                units = field.type.list_size
                values = generator.random(rows * units, dtype=np.float32) * 2 - 1
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values), units))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
        writer.add_key_value_metadata(metadata)
    os.replace(temporary, os.path.join(folder, PART_NAME))
    with open(folder + ".key", "w") as handle:
        handle.write(recipe + "\n")
    return folder


def prepare_lookups(model: Model, config: BenchConfig, log=print) -> dict[str, str]:
    """Write (or reuse) keyed_lookup_rows rows of keyed_day_steps steps for keys drawn without
    replacement from the large state's, in the order drawn (LARGE_RANDOM) and sorted (LARGE_SORTED)."""
    spec, rows, day = model.spec, config.keyed_lookup_rows, config.keyed_day_steps
    paths = {
        LARGE_RANDOM: os.path.join(
            config.work, f"keyed_lookup_random_{rows}_of_{config.keyed_state_keys}.parquet"
        ),
        LARGE_SORTED: os.path.join(
            config.work, f"keyed_lookup_sorted_{rows}_of_{config.keyed_state_keys}.parquet"
        ),
    }
    recipe = f"{spec.to_json()}|{rows}|{config.keyed_state_keys}|{day}|{SEED}"
    if all(cached(path, recipe) for path in paths.values()):
        return paths
    log(
        f"data: writing {rows:,} rows for keys of the {config.keyed_state_keys:,}-key state, in"
        f" random and in key order"
    )
    generator = np.random.default_rng(SEED)
    keys = generator.choice(config.keyed_state_keys, size=rows, replace=False).astype(np.int64)
    values = np.asarray(spec.x_values, dtype=np.int64)
    steps = values[generator.integers(0, spec.x_classes, size=(rows, day))]
    order = np.argsort(keys)
    for name, rows_in_order in ((LARGE_RANDOM, np.arange(rows)), (LARGE_SORTED, order)):
        columns = {
            KEY: pa.array(keys[rows_in_order]),
            spec.input_column: list_column(steps[rows_in_order]),
        }
        write_columns(paths[name], columns)
        with open(paths[name] + ".key", "w") as handle:
            handle.write(recipe + "\n")
    return paths
