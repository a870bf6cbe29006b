"""A Delta Lake OUTPUT on Spark (--output-format delta): each task scores its partition and
writes the scored rows as data files under the table's root (score.delta_files), and the driver
commits the files of the tasks that succeeded, once, with delta-rs (score.delta_output.commit),
after the run's floors: the local job's table, refusals, transactions and summary.

A task attempt that fails removes its own files; the driver collects only the successful
attempts' (a result task's output is taken once per partition), so a retried or speculative
attempt's files are never committed. A run that fails removes every file its tasks wrote (their
names start with the run's prefix); a killed run leaves them as orphans a vacuum removes.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from score import delta_output, storage
from score.delta_files import DataFile, DataFiles, remove_run_files
from score.errors import InvalidInput, UsageError
from score.spark.dataframe import arrow_schema, map_in_arrow, scoring_plan

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from score import model as models
    from score.spark.job import SparkJobConfig, SparkRunState

FILES = "path string, size long, rows long, modified_ms long"  # what each task returns
FILES_ARROW = pa.schema([("path", pa.string()), ("size", pa.int64()), ("rows", pa.int64()),
                         ("modified_ms", pa.int64())])


@dataclass(frozen=True)
class TaskPlan:
    """What a task needs to write its partition's files."""

    table: str  # the table's root
    schema: pa.Schema  # the files' schema (delta_output.file_schema)
    prefix: str  # the run's file names start with it: part-<run id>-


def check(config: SparkJobConfig) -> delta_output.Target | None:
    """Before Spark starts: the local job's refusals (2, 65, 73) and the table as it is now;
    None when OUTPUT is Parquet."""
    delta_output.check_flags(config.output_format, config.mode, config.txn_id)
    if config.output_format != "delta":
        return None
    if config.key is not None:
        raise UsageError("python -m score.spark --key with --output-format delta is not supported yet: "
                         "write the scored dataset, or run python -m score --key --output-format delta")
    return delta_output.inspect(config.output, config.mode, delta_output.parse_txn(config.txn_id))


def already_committed(config: SparkJobConfig, target: delta_output.Target, state: SparkRunState) -> bool:
    """Whether --txn-id's transaction is in the table already (said, exit 0, Spark not started)."""
    txn = delta_output.parse_txn(config.txn_id)
    line = delta_output.already_committed(target, txn)
    if line is None:
        return False
    state.output_table = delta_output.table_record(config.output, target.version, config.mode, txn, False)
    state.warnings.append(line)
    return True


def write_partition(score: Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]], plan: TaskPlan,
                    batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The mapInArrow function: score the partition (score_partition) and write its rows as
    data files; returns one row per file written."""
    from pyspark import TaskContext

    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    files = DataFiles(plan.table, plan.schema, name=f"{plan.prefix}{partition:05d}", create_root=False)
    try:
        for scored in score(batches):
            files.write_batch(delta_output.conform(scored, plan.schema, plan.table))
        written = files.finish()
    except BaseException:
        files.abort()
        raise
    yield pa.RecordBatch.from_pylist([file.to_dict() for file in written], schema=FILES_ARROW)


def run(session: SparkSession, config: SparkJobConfig, scorer: models.Scorer, state: SparkRunState,
        df: DataFrame, target: delta_output.Target, stats: object) -> None:
    """Score ``df`` into the table and commit once.

    Steps: 1. plan the scoring and the files' schema (an append's columns must match); 2. a new
    local table's folder, removed again if the run fails; 3. score and write: one action, whose
    tasks add the stats; 4. the floors, on the merged stats; 5. one commit with the tasks' files.
    """
    from score import job

    txn = delta_output.parse_txn(config.txn_id)
    # 1. The plan: nothing runs yet.
    try:
        source, score, schema = scoring_plan(df, scorer, config.model, config.options, config.threads, stats)
    except InvalidInput as error:
        raise InvalidInput(f"{config.input}: {error}") from None
    run_schema = arrow_schema(schema)
    if target.exists and config.mode == "append":
        delta_output.check_schema(target, run_schema)
    written_schema = delta_output.file_schema(target, run_schema, config.mode)
    plan = TaskPlan(config.output, written_schema, f"part-{uuid.uuid4().hex[:16]}-")
    # 2. Tasks share the folder; only the driver makes (and on failure removes) a new one.
    if not target.exists and not storage.is_uri(config.output):
        os.makedirs(storage.local_path(config.output))
        state.created.append(config.output)
    state.orphans = (config.output, plan.prefix)
    # 3. Score and write.
    state.spark["partitions"] = source.rdd.getNumPartitions()
    rows = map_in_arrow(source, functools.partial(write_partition, score, plan), FILES).collect()
    files = sorted((DataFile(row["path"], row["size"], row["rows"], row["modified_ms"]) for row in rows),
                   key=lambda file: file.path)
    state.stats = stats.value
    state.drift = job.drift_report(scorer, state.stats)
    # 4. The floors: below one, the files go (the run fails, __main__ removes them).
    job.check_gates(config.input, scorer, state.stats, config)
    # 5. Commit. From here on a failure may have committed: the files stay.
    state.orphans = None
    version = delta_output.commit(target, written_schema, files, config.mode, txn)
    state.output_table = delta_output.table_record(config.output, version, config.mode, txn, version is not None)
    if version is None:
        remove_run_files(config.output, plan.prefix)
        state.warnings.append(delta_output.committed_meanwhile(config.output, txn))
        return
    if config.output in state.created:
        state.created.remove(config.output)
    state.published = True
