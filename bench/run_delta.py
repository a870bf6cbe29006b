"""The benchmark's delta section: what reading a Delta Lake table as INPUT and writing OUTPUT as one
(`--output-format delta`) cost against the plain Parquet-to-Parquet run.

The default workload is read from its Parquet file and from a copy of it as a Delta table, and
written to a Parquet file, to a new Delta table, or appended to a table that grows every round
(`--mode append`). Every run is the whole process in a child of its own (bench.measure), with
the default model and the same threads, so that the log's child process (score.delta_log, which
the job waits for) and the commit are in each run's time; peak RSS is the job's own, and the log
child's, a separate process, is measured by itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from bench import measure
from bench.figures import DEFAULT, BenchConfig
from bench.figures_delta import (
    DELTA_APPEND,
    DELTA_PATHS,
    PARQUET_TO_DELTA,
    READS_DELTA,
    WRITES_DELTA,
    DeltaResults,
    LogChild,
)
from bench.run_keyed import cached, source_version
from bench.workloads import DEFAULT_MODEL, BenchError, Workload, prepare_model, prepare_workload

SCORED_FILE = "delta-scored.parquet"  # scratch outputs in the work folder, removed after each run
SCORED_TABLE = "delta-scored"
APPENDED_TABLE = "delta-appended"  # kept from round to round, removed at the end


def run_delta(config: BenchConfig, log=print) -> DeltaResults:
    """Steps: 1. the default model and workload, and its copy as a Delta table; 2. one run not
    counted (it warms the page cache), and the table the appends grow; 3. the log's child
    process by itself; 4. every path in turns, round after round, so that a busy spell on the
    machine slows them all."""
    # 1. Model and data.
    source = source_version()
    model = prepare_model(DEFAULT_MODEL, config.work, log)
    workload = prepare_workload(model, DEFAULT, config.rows, config.work, "uniform", log=log)
    table = prepare_delta_table(workload, config.work, log)
    delta_input = Workload(f"{workload.name}, Delta", table, workload.rows, model)

    # 2. A run not counted (the files, the model and the libraries into the page cache), then
    # the appends' table: --mode append creates it, a Delta->Delta run into a new table.
    log(f"delta: one {PARQUET_TO_DELTA} run, not counted (warms the page cache)")
    timed_run(PARQUET_TO_DELTA, workload, delta_input, config)
    appended = output_location(DELTA_APPEND, config)
    remove(appended)
    log("delta: the table the appends grow, by one Delta->Delta run")
    timed_run(DELTA_APPEND, workload, delta_input, config)

    # 3. What the log's child costs by itself.
    log("delta: the log's child process (score.delta_log) by itself")
    log_child = measure_log_child(table)

    # 4. Rounds.
    runs: dict[str, list[measure.JobRun]] = {path: [] for path in DELTA_PATHS}
    for round_number in range(config.delta_rounds):
        log(
            f"delta: {workload.rows:,} rows, the {len(DELTA_PATHS)} paths in turns"
            f" ({round_number + 1}/{config.delta_rounds})"
        )
        for path in DELTA_PATHS:
            runs[path].append(timed_run(path, workload, delta_input, config))
    version, rows = table_figures(appended)
    remove(appended)
    return DeltaResults(workload, table, runs, log_child, version, rows, source)


# The runs ------------------------------------------------------------------------------------------
def output_location(path: str, config: BenchConfig) -> str:
    """Where ``path``'s runs write: a Parquet file, a new table, or the appends' table."""
    if path == DELTA_APPEND:
        name = APPENDED_TABLE
    else:
        name = SCORED_TABLE if path in WRITES_DELTA else SCORED_FILE
    return os.path.join(config.work, name)


def path_command(
    path: str, workload: Workload, delta_input: Workload, config: BenchConfig
) -> list[str]:
    """`python -m score IN OUT --model M --threads N --quiet [--output-format delta [--mode
    append]]`: the plain job's command with the path's input and output."""
    source = delta_input if path in READS_DELTA else workload
    command = measure.job_command(source, output_location(path, config), config.threads)
    if path in WRITES_DELTA:
        command += ["--output-format", "delta"]
    if path == DELTA_APPEND:
        command += ["--mode", "append"]
    return command


def timed_run(
    path: str, workload: Workload, delta_input: Workload, config: BenchConfig
) -> measure.JobRun:
    """One run of ``path``: its wall time and peak RSS (its output removed, but for the appends'
    table, which the next append grows)."""
    child = measure.run_child(path_command(path, workload, delta_input, config))
    if path != DELTA_APPEND:
        remove(output_location(path, config))
    return measure.JobRun(workload.rows, child.seconds, child.peak_rss_mb)


def measure_log_child(table: str) -> LogChild:
    """`python -m score.delta_log TABLE ""` (the latest version) by itself: its wall time, its
    peak RSS, and what it read."""
    child = measure.run_child([sys.executable, "-m", "score.delta_log", table, ""])
    answer = json.loads(child.stdout.strip().splitlines()[-1])
    if "error" in answer:
        raise BenchError(f"score.delta_log {table}: {answer['error']}")
    return LogChild(child.seconds, child.peak_rss_mb, answer["version"], len(answer["files"]))


# The data ------------------------------------------------------------------------------------------
def import_deltalake():
    """delta-rs (the `delta` extra), or BenchError saying how to install it."""
    try:
        import deltalake
    except ImportError:
        raise BenchError("the delta section needs delta-rs: pip install -e '.[delta]'") from None
    return deltalake


def prepare_delta_table(workload: Workload, work: str, log=print) -> str:
    """Write (or reuse) ``workload``'s file as a Delta table of one commit, by delta-rs's own
    writer (not the job's), the way a table the job is pointed at was written elsewhere."""
    deltalake = import_deltalake()
    name = os.path.splitext(os.path.basename(workload.path))[0]
    path = os.path.join(work, f"delta_{name}")
    with open(workload.path + ".key") as handle:
        recipe = f"{handle.read().strip()}|delta|deltalake {importlib.metadata.version('deltalake')}"
    if not cached(path, recipe):
        log(f"data: writing {workload.rows:,} rows of {workload.name} as a Delta table to {path}")
        # Into a temporary folder first, so that a crash never leaves a half-written table.
        temporary = path + ".tmp"
        remove(temporary)
        deltalake.write_deltalake(temporary, pq.read_table(workload.path))
        remove(path)
        os.replace(temporary, path)
        with open(path + ".key", "w") as handle:
            handle.write(recipe + "\n")
    return path


def table_figures(location: str) -> tuple[int, int]:
    """A Delta table's latest version and its rows (from the log's per-file counts)."""
    deltalake = import_deltalake()
    table = deltalake.DeltaTable(location)
    counts = pa.table(table.get_add_actions(flatten=True)).column("num_records")
    return table.version(), sum(counts.to_pylist())


def remove(location: str) -> None:
    """Remove a scratch file or table, if there is one."""
    if os.path.isdir(location):
        shutil.rmtree(location)
    elif os.path.exists(location):
        os.unlink(location)
