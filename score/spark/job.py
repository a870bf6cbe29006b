"""python -m score.spark's job: read INPUT, score it, write it through Spark's committer, merge
the tasks' statistics, and under --max-psi publish only within the limit."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from score import delta, delta_output, job, storage, summary
from score import model as models
from score.core import BatchStats, ScoreOptions, empty_stats
from score.delta_files import remove_run_files
from score.errors import InputMissing, InvalidInput, OutputError, SeqscoreError, UsageError
from score.spark import delta as spark_delta
from score.spark.dataframe import DEFAULT_THREADS, score_frame
from score.spark.failures import condition, spark_error
from score.spark.hadoop import child, exists, remove_output, rename
from score.spark.worker import StatsParam

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from score.keyed_checks import KeyedRecord


@dataclass(frozen=True)
class SparkJobConfig:
    """One run of python -m score.spark."""

    input: str  # a Parquet file or dataset (a path, or any URI Spark reads: s3a://, hdfs://)
    output: str  # the Parquet dataset to create; it must not exist yet
    model: str = "artifacts/model.onnx"  # the exported ONNX file as the driver reads it
    options: ScoreOptions = field(default_factory=ScoreOptions)
    threads: int = DEFAULT_THREADS  # onnxruntime intra-op threads per task
    batch_size: int | None = None  # rows per Arrow batch; None: Spark's default (10,000)
    master: str | None = None  # None: spark-submit's master, else local[*]
    quiet: bool = False  # no line when done
    summary: str | None = None  # where the driver writes the JSON summary (as python -m score)
    max_psi: float | None = None  # publish only when no step's input or prediction PSI exceeds it
    min_accuracy: float | None = None  # publish only at or above this top-1 accuracy (--labels)
    min_estimated_accuracy: float | None = None  # publish only at or above this mean top-1 probability
    input_version: int | None = None  # a Delta Lake INPUT: the version to read (None: latest)
    key: str | None = None  # --key: scheduled runs that carry each key's state (score.spark.keyed)
    state_in: str | None = None
    state_out: str | None = None
    output_format: str = "parquet"  # delta: OUTPUT is a Delta Lake table (score.spark.delta_write)
    mode: str | None = None  # --mode append|overwrite, for a table that exists
    txn_id: str | None = None  # --txn-id APP:VERSION: exactly-once appends


@dataclass
class SparkRunState:
    """What the summary and the command line need after run(), also after a failure."""

    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=summary.utc_now)
    scorer: models.Scorer | None = None
    stats: BatchStats | None = None  # merged from every task that finished
    drift: dict | None = None
    warnings: list[str] = field(default_factory=list)
    spark: dict = field(default_factory=dict)  # master, application_id, partitions, spark_version
    # Locations this run created (the dataset it wrote, OUTPUT once moved there): a failed run
    # removes them. Never anything that existed before the run.
    created: list[str] = field(default_factory=list)
    published: bool = False  # OUTPUT holds this run's dataset, _SUCCESS included
    keyed: KeyedRecord | None = None  # a run with --key: its keys and state
    input_table: dict | None = None  # a Delta Lake INPUT: its format, version and files read
    output_table: dict | None = None  # a Delta Lake OUTPUT: the version committed, or why none
    output_target: delta_output.Target | None = None  # that table as the run found it
    # A Delta OUTPUT's files not committed yet: (table, the run's file prefix), removed if it fails.
    orphans: tuple[str, str] | None = None

    @property
    def rows(self) -> int:
        return self.stats.rows if self.stats is not None else 0

    @property
    def rows_invalid(self) -> int:
        return int(self.stats.rows - self.stats.reason_counts[0]) if self.stats is not None else 0


def check_locations(config: SparkJobConfig) -> None:
    """Refuse, before Spark starts, what the local job refuses (local paths only)."""
    if storage.is_uri(config.input) or storage.is_uri(config.output):
        if config.input.rstrip("/") == config.output.rstrip("/"):
            raise UsageError(f"OUTPUT is INPUT ({config.output}); choose another output path")
        return
    source = os.path.abspath(storage.local_path(config.input))
    target = os.path.abspath(storage.local_path(config.output))
    if not os.path.exists(source):
        raise InputMissing(f"{config.input}: no such file or directory")
    read_through_log = spark_delta.reads(config.input, spark_delta.table_at(None, config.input))
    if not read_through_log and config.input_version is not None:
        raise UsageError(f"--input-version: {config.input} is not a Delta Lake table (no _delta_log/ "
                         f"in it); time travel reads a table's earlier version")
    if os.path.realpath(target) == os.path.realpath(source):
        raise UsageError(f"OUTPUT is INPUT ({config.output}); choose another output path")
    if os.path.realpath(target).startswith(os.path.realpath(source).rstrip(os.sep) + os.sep):
        raise UsageError(
            f"OUTPUT {config.output} is inside INPUT {config.input}; a later run would read "
            f"its own output. Choose a directory outside the input"
        )
    if os.path.lexists(target) and config.output_format != "delta":  # a table is inspected apart
        raise output_exists(config.output)
    if not os.path.isdir(os.path.dirname(target)):
        raise OutputError(f"{config.output}: the parent directory does not exist")


def output_exists(location: str) -> OutputError:
    """Spark writes a new dataset: an OUTPUT that exists is refused (73)."""
    return OutputError(
        f"{location}: already exists; Spark writes a whole new dataset. Remove it or choose "
        f"another path"
    )


def check_baseline(config: SparkJobConfig, scorer: models.Scorer) -> None:
    """--max-psi needs the model's training baseline: refuse before any task runs, not after."""
    if config.max_psi is not None and models.baseline(scorer) is None:
        raise UsageError(f"--max-psi: the model {scorer.location} carries no training baseline")


def run(session: SparkSession, config: SparkJobConfig, scorer: models.Scorer,
        state: SparkRunState | None = None) -> SparkRunState:
    """Read INPUT, score it, write it through Spark's committer (which writes _SUCCESS last),
    and merge the statistics every task gathered; under --max-psi, publish only within the limit.

    Steps: 1. read INPUT and plan the scoring, with an accumulator for the tasks' stats;
    2. write: to OUTPUT, or under --max-psi to a hidden staging sibling of OUTPUT; 3. merge the
    stats and measure the drift (also after a failure: the summary shows what was scored);
    4. under --max-psi, decide, then move the staged dataset to OUTPUT or remove it.

    The stats come with the write itself, without a second pass and without rows on the driver:
    the write is an action, its tasks are result tasks, and Spark's scheduler applies a result
    task's accumulator update only for the first attempt of a partition to succeed, so retried
    and speculative attempts are not counted twice.
    Raises a SeqscoreError subclass on failure; Spark's own exceptions are translated.
    """
    state = state if state is not None else SparkRunState()
    context = session.sparkContext
    state.scorer = scorer
    state.spark.update(master=context.master, application_id=context.applicationId,
                       spark_version=session.version)
    if config.batch_size is not None:
        session.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(config.batch_size))
    snapshot = None  # a Delta table's, read through its log; any other table is refused
    if spark_delta.reads(config.input, spark_delta.table_at(session, config.input)):
        snapshot = delta.open_snapshot(config.input, config.input_version)
        state.input_table = snapshot.describe()
    if config.key is not None:
        return _run_keyed(session, config, scorer, state, snapshot)
    if config.output_format == "delta":
        return _run_delta(session, config, scorer, state, snapshot)
    gated = (config.max_psi, config.min_accuracy, config.min_estimated_accuracy) != (None, None, None)
    target = staging_location(config.output, context.applicationId) if gated else config.output
    accumulator = context.accumulator(empty_stats(scorer), StatsParam(empty_stats(scorer)))
    try:
        # 1. Planning only: no task runs before the write.
        df = session.read.parquet(config.input) if snapshot is None else \
            spark_delta.read_snapshot(session, snapshot)
        try:
            scored = score_frame(df, scorer, config.model, config.options, config.threads, accumulator)
        except InvalidInput as error:
            raise InvalidInput(f"{config.input}: {error}") from None
        state.spark["partitions"] = scored.rdd.getNumPartitions()
        # 2. The staging name is new; OUTPUT itself is checked now, not after scoring it all.
        if gated and exists(session, config.output):
            raise output_exists(config.output)
        state.created.append(target)
        scored.write.mode("errorifexists").parquet(target)
    except SeqscoreError:
        raise
    except Exception as error:  # noqa: BLE001  (Py4J and PySpark exceptions, raised again translated)
        if condition(error) == "PATH_ALREADY_EXISTS" and target in state.created:
            state.created.remove(target)  # Spark refused before writing: not ours to remove
        raise_translated(error)
    finally:
        # 3. Every finished task's stats are in: the scheduler applies them before the job ends.
        state.stats = accumulator.value
        state.drift = job.drift_report(scorer, state.stats)
    if gated:
        # 4. The local job's decision, on the merged stats, before anything is published.
        try:
            job.check_gates(config.input, scorer, state.stats, config)
        except InvalidInput:
            remove_output(session, target)
            state.created.remove(target)
            raise
        publish(session, target, config.output, state)
    state.published = True
    return state


def _run_delta(session: SparkSession, config: SparkJobConfig, scorer: models.Scorer,
               state: SparkRunState, snapshot: delta.Snapshot | None) -> SparkRunState:
    """--output-format delta (score.spark.delta_write): the tasks write the files, the driver
    commits them once, after the floors."""
    from score.spark import delta_write

    accumulator = session.sparkContext.accumulator(empty_stats(scorer), StatsParam(empty_stats(scorer)))
    try:
        df = session.read.parquet(config.input) if snapshot is None else \
            spark_delta.read_snapshot(session, snapshot)
        delta_write.run(session, config, scorer, state, df, state.output_target, accumulator)
    except BaseException as error:
        if state.orphans is not None:  # now, and again once Spark has stopped (a late task's)
            remove_run_files(*state.orphans)
        if isinstance(error, SeqscoreError) or not isinstance(error, Exception):
            raise
        raise_translated(error)
    finally:
        state.stats = accumulator.value
        state.drift = job.drift_report(scorer, state.stats)
    return state


def _run_keyed(session: SparkSession, config: SparkJobConfig, scorer: models.Scorer,
               state: SparkRunState, snapshot: delta.Snapshot | None = None) -> SparkRunState:
    """A run with --key (score.spark.keyed): stage the scored rows with their new states, write
    OUTPUT from them in the input's order and the new state sorted by key, both hidden; then,
    within --max-psi, publish the state and OUTPUT, as the local job does.

    Steps: 1. stage the scored rows (the one write whose tasks add the stats); 2. OUTPUT's rows
    in the input's order; 3. the state's parts; 4. the drift gate; 5. publish the state, then
    OUTPUT; 6. remove the staged rows.
    """
    from pyspark.sql import functions as F  # noqa: N812

    from score import keyed as keyed_rows
    from score import state_writer
    from score.spark import keyed
    from score.spark.worker import FILE_COLUMN, ROW_COLUMN

    application = session.sparkContext.applicationId
    accumulator = session.sparkContext.accumulator(empty_stats(scorer), StatsParam(empty_stats(scorer)))
    rows_stage = staging_location(config.output, application + "-rows")
    output_stage = staging_location(config.output, application)
    record = state.keyed
    try:
        # 1. Score, with each row's state joined to it.
        staged, layout = keyed.score_keyed(session, config, scorer, state, accumulator, snapshot)
        state.spark["partitions"] = staged.rdd.getNumPartitions()
        if exists(session, config.output):
            raise output_exists(config.output)
        state.created.append(rows_stage)
        staged.write.mode("errorifexists").parquet(rows_stage)
        staged = session.read.parquet(rows_stage)
        # 2. OUTPUT: the input's columns and the scored ones, in the input's order.
        helpers = [keyed.MOVED, keyed.ORDER, FILE_COLUMN, ROW_COLUMN,
                   *(keyed.NEW + name for name in (state_writer.store.STEPS, *(t for t, _ in layout.tensors)))]
        state.created.append(output_stage)
        (staged.orderBy(keyed.ORDER).drop(*[name for name in helpers if name in staged.columns])
         .write.mode("errorifexists").parquet(output_stage))
        counts = staged.filter(F.col(keyed.MOVED)).agg(
            F.count(F.lit(1)).alias("scored"),
            F.sum(F.when(F.col(keyed_rows.STEPS_BEFORE) == 0, 1).otherwise(0)).alias("new"),
            F.sum(keyed_rows.STEPS_BEFORE).alias("resumed")).first()
        record.keys_scored, record.keys_new = int(counts["scored"]), int(counts["new"] or 0)
        record.steps_resumed = int(counts["resumed"] or 0)
        # 3. The new state: the moved keys and every other key of --state-in, sorted by key.
        folder = state_writer.staging_folder(config.state_out)
        state.created.append(folder)  # also when a task fails while it writes its part
        parts = keyed.write_state(session, staged, config, layout, record, folder)
    except SeqscoreError:
        raise
    except Exception as error:  # noqa: BLE001  (Py4J and PySpark exceptions, raised again translated)
        raise_translated(error)
    finally:
        state.stats = accumulator.value
        state.drift = job.drift_report(scorer, state.stats)
    # 4-5. Decide, then publish the state and OUTPUT.
    try:
        job.check_gates(config.input, scorer, state.stats, config)
    except InvalidInput:
        for location in (output_stage, folder):
            remove_output(session, location)
        raise
    lineage = {"input_fingerprint": record.input_fingerprint,
               "parent_fingerprint": record.state_in_fingerprint}
    metadata = state_writer.publish_parts(folder, config.state_out, layout, lineage, parts)
    state.created.remove(folder)
    record.keys_in_state_out = int(metadata["seqscore.rows"])
    record.keys_carried_unchanged = record.keys_in_state_out - record.keys_scored
    record.state_out_fingerprint = metadata["seqscore.fingerprint"]
    publish(session, output_stage, config.output, state)
    # 6. The staged rows served their purpose.
    remove_output(session, rows_stage)
    state.created.remove(rows_stage)
    state.published = True
    return state


def raise_translated(error: Exception) -> None:
    """Raise Spark's failure as the SeqscoreError it means, or as it is when it means none."""
    translated = spark_error(error)
    if translated is None:
        raise error
    raise translated from None


def staging_location(output: str, application_id: str) -> str:
    """Where a run under --max-psi writes before it decides: a sibling of OUTPUT (the same file
    system, so that publishing is a rename), hidden (Spark, Hadoop and pyarrow skip names that
    start with '.'), and named after the Spark application that owns it."""
    trimmed = output.rstrip("/")
    if storage.is_uri(trimmed):
        parent, _, name = trimmed.rpartition("/")
        return f"{parent}/.{name}.seqscore-{application_id}.tmp"
    parent, name = os.path.split(trimmed)
    return os.path.join(parent, f".{name}.seqscore-{application_id}.tmp")


def publish(session: SparkSession, staged: str, output: str, state: SparkRunState) -> None:
    """Move the staged dataset to OUTPUT, _SUCCESS last.

    Steps: 1. refuse an OUTPUT that appeared meanwhile (a rename would move the dataset into
    it); 2. set the staged _SUCCESS aside; 3. rename the dataset to OUTPUT, one atomic rename on
    a local disk or HDFS, a copy on S3; 4. put _SUCCESS back, so that a reader waiting for it
    never sees a partial dataset, also where step 3 is a copy.
    """
    marker = child(staged, job.SUCCESS_FILE)
    held = f"{staged.rstrip('/')}.{job.SUCCESS_FILE}"
    if exists(session, output):
        raise output_exists(output)
    has_marker = exists(session, marker)
    if has_marker:
        state.created.append(held)
        rename(session, marker, held)
    state.created.append(output)
    rename(session, staged, output)
    state.created.remove(staged)
    if has_marker:
        rename(session, held, child(output, job.SUCCESS_FILE))
        state.created.remove(held)


def summary_of(config: SparkJobConfig, state: SparkRunState, exit_code: int,
               error: str | None) -> dict:
    """The --summary JSON: score.summary's, as the local job's, from the merged stats, with
    `spark` (what only Spark knows) in place of the local job's `files`. rows_in counts the
    rows of the tasks that finished: a failed task's rows are not known to the driver."""
    spark = {"master": config.master, "application_id": None, "partitions": None,
             "spark_version": None, **state.spark}
    return summary.build(state, exit_code=exit_code, error=error, input_location=config.input,
                         output_location=config.output, options=config.options,
                         rows_in=state.rows, rows_out=state.rows if state.published else 0,
                         run={"spark": spark, **(state.keyed.to_dict() if state.keyed else {}),
                              **({"input_table": state.input_table} if state.input_table else {}),
                              **({"output_table": state.output_table} if state.output_table else {})},
                         keyed=state.keyed is not None)
