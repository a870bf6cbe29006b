"""Scale-out: the scoring job on Apache Spark, one Arrow record batch at a time through mapInArrow.

Every task runs score.core.score_batch, the very function the local job runs, with the model
loaded once per Python worker. pyspark is imported only here, and only inside functions, so that
importing this module (for its parser, say) costs nothing.

    python -m score.spark INPUT OUTPUT [--master URL] [--model PATH] [--top-k K] ...
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa

from score import cli, errors, job, monitor, storage
from score import model as models
from score.core import (
    BatchStats,
    ScoreOptions,
    check_input_schema,
    empty_stats,
    length_warnings,
    new_cache,
    output_schema,
    score_batch_with_stats,
)
from score.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_SOFTWARE,
    InputMissing,
    Interrupted,
    InvalidInput,
    InvalidRow,
    ModelError,
    OutputError,
    SeqscoreError,
    StorageError,
    UsageError,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

DEFAULT_THREADS = 1  # many tasks share an executor's cores: one onnxruntime thread per task
# Where each row came from, added to the batches under on_invalid='error' only, so that the
# first invalid row is reported as `FILE: row N` exactly like the local job. Dropped before
# score_batch sees the batch.
FILE_COLUMN = "_seqscore_file"
ROW_COLUMN = "_seqscore_row"
_PANDAS_WARNING = "PySpark does not yet fully support pandas"  # mapInArrow never uses pandas
# The last line of a Python traceback raised by one of our named errors inside a worker.
_WORKER_ERROR = re.compile(r"^score\.errors\.(\w+): (.+)$", re.MULTILINE)
_CONDITION = re.compile(r"^\[([A-Z][A-Z_.]*)\]")  # Spark's error class leads its message
_TRACEBACK_LAST = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$", re.MULTILINE)


# The worker side ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerPlan:
    """Everything a task needs; pickled into the mapInArrow function once per job."""

    model: str  # the model as the driver was given it (a path or a URI)
    shipped_name: str | None  # its name under SparkFiles when it was shipped, else None
    sha256: str  # what the driver loaded: a worker refuses any other model
    threads: int  # onnxruntime intra-op threads per task
    options: ScoreOptions
    locate: bool = False  # the batches end with FILE_COLUMN and ROW_COLUMN
    stats: object | None = None  # a Spark accumulator of BatchStats (StatsParam), or None


@dataclass(frozen=True)
class StatsParam:
    """Spark's AccumulatorParam for a run's BatchStats (PySpark needs only the two methods).

    Each task adds its partition's stats once, at the end of the partition; the driver merges
    the tasks' stats with BatchStats.merge, hence Profile.merge, exactly as the local job merges
    its batches. The rows themselves never travel to the driver.
    """

    empty: BatchStats  # the run's empty stats, whose shapes follow the model's spec

    def zero(self, value: BatchStats) -> BatchStats:
        del value  # the driver's running total, which a task must not start from
        return copy.deepcopy(self.empty)

    def addInPlace(self, total: BatchStats, more: BatchStats) -> BatchStats:  # PySpark's name
        total.merge(more)
        return total


# One loaded model per Python worker process and model: loading verifies and probes the model,
# which is worth doing once, not once per task. Spark reuses a worker for many tasks.
_SCORERS: dict[tuple[str, str, int], models.Scorer] = {}


def worker_scorer(plan: WorkerPlan) -> models.Scorer:
    """The plan's model, loaded on first use in this process and cached for every later task."""
    key = (plan.model, plan.sha256, plan.threads)
    scorer = _SCORERS.get(key)
    if scorer is None:
        scorer = _load_on_worker(plan)
        _SCORERS[key] = scorer
    return scorer


def _model_candidates(plan: WorkerPlan) -> list[str]:
    """The path as given (local mode, shared disks, URIs), then the copy shipped by SparkFiles."""
    candidates = [plan.model]
    if plan.shipped_name is not None:
        from pyspark import SparkFiles

        candidates.append(SparkFiles.get(plan.shipped_name))
    return candidates


def _load_on_worker(plan: WorkerPlan) -> models.Scorer:
    config = models.SessionConfig(threads=plan.threads)
    tried = []
    for location in _model_candidates(plan):
        if not storage.is_uri(location) and not os.path.isfile(storage.local_path(location)):
            tried.append(f"{location}: no such file")
            continue
        try:
            scorer = models.load(location, config)
        except ModelError as error:
            tried.append(str(error))
            continue
        if scorer.sha256 == plan.sha256:
            return scorer
        tried.append(f"{location} has sha256 {scorer.sha256}")
    raise ModelError(
        f"this executor cannot read the driver's model {plan.model} (sha256 {plan.sha256}): "
        f"{'; '.join(tried)}. Ship it with spark-submit --files, or put it where every "
        f"executor can read it"
    )


def score_partition(
    plan: WorkerPlan, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """The mapInArrow function: score every batch of one partition with the local job's
    score_batch_with_stats, then add the partition's merged stats to plan.stats once."""
    scorer = worker_scorer(plan)
    # One result cache per task, as the local job keeps one per run: a sequence repeated within
    # the partition runs through the model once. Tasks share nothing, so each has its own.
    cache = new_cache(scorer, plan.options)
    stats = empty_stats(scorer)  # stats.rows: rows already scored, for partition-relative messages
    for batch in batches:
        data = batch.drop_columns([FILE_COLUMN, ROW_COLUMN]) if plan.locate else batch
        try:
            scored, batch_stats = score_batch_with_stats(scorer, data, plan.options, cache)
        except InvalidRow as error:
            where = _row_location(batch, plan, error.row, stats.rows + error.row)
            raise InvalidInput(f"{where}: {error.detail}") from None
        stats.merge(batch_stats)
        yield scored
    # Once per partition, after its last batch: the update travels with the task's result, and
    # the scheduler applies a result task's update once per partition (see run()).
    if plan.stats is not None:
        plan.stats.add(stats)


def _row_location(
    batch: pa.RecordBatch, plan: WorkerPlan, batch_row: int, partition_row: int
) -> str:
    """`FILE: row N` (N counts from 0 in the file) when known, else the partition and its row."""
    if plan.locate:
        location = _display_path(batch.column(FILE_COLUMN)[batch_row].as_py())
        return f"{location}: row {batch.column(ROW_COLUMN)[batch_row].as_py()}"
    from pyspark import TaskContext

    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    return f"partition {partition}: row {partition_row} of the partition"


def _display_path(location: str) -> str:
    """Spark's percent-encoded URI (file:/a%20b/c.parquet) as the path a person typed."""
    location = urllib.parse.unquote(location)
    for prefix in ("file://", "file:"):
        if location.startswith(prefix):
            return location[len(prefix) :]
    return location


# The driver side ------------------------------------------------------------------------------
def spark_output_schema(input_schema: StructType, options: ScoreOptions) -> StructType:
    """The input columns as Spark has them, then core.output_schema's four output columns.

    Spark declares Arrow lists as ArrayType and ignores their item names (item / element); it
    keeps the Arrow nullability (all four output fields are nullable, and so are their items).
    """
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StructField, StructType

    arrow_input = _arrow_schema(input_schema)
    added = list(output_schema(arrow_input, options))[len(arrow_input) :]
    fields = [StructField(f.name, from_arrow_type(f.type), f.nullable) for f in added]
    return StructType(list(input_schema.fields) + fields)


def _arrow_schema(schema: StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        return to_arrow_schema(schema, timezone="UTC")
    except Exception as error:  # noqa: BLE001  (PySparkTypeError and friends)
        raise InvalidInput(
            f"the input has a column Spark cannot pass to Arrow ({_spark_message(error)})"
        ) from None


def ship_model(session: SparkSession, location: str) -> str | None:
    """Make a local model file available to every executor; return its SparkFiles name.

    A file already shipped under the same name (spark-submit --files) is used as it is; the
    workers compare its sha256 with the driver's. A URI is not shipped: executors read it.
    """
    if storage.is_uri(location):
        return None
    name = os.path.basename(storage.local_path(location))
    context = session.sparkContext
    if not any(os.path.basename(path.rstrip("/")) == name for path in context.listFiles):
        context.addFile(os.path.abspath(storage.local_path(location)))
    return name


def _with_row_location(df: DataFrame) -> DataFrame | None:
    """df plus the file and row index of every row, or None when Spark cannot tell them."""
    from pyspark.errors import PySparkException
    from pyspark.sql import functions

    if "_metadata" in df.columns:  # a data column hides Spark's metadata column
        return None
    # PySpark logs every analysis error it raises; this one is expected and answered by None.
    logger = logging.getLogger("DataFrameQueryContextLogger")
    disabled, logger.disabled = logger.disabled, True
    try:
        return df.select(
            "*",
            functions.col("_metadata.file_path").alias(FILE_COLUMN),
            functions.col("_metadata.row_index").alias(ROW_COLUMN),
        )
    except PySparkException:  # not read from files, or a format without row indices
        return None
    finally:
        logger.disabled = disabled


def _scored(
    df: DataFrame,
    scorer: models.Scorer,
    model_path: str,
    options: ScoreOptions,
    threads: int,
    stats: object | None = None,
) -> DataFrame:
    """Steps: 1. check the options and the schema on the driver; 2. ship the model; 3. add each
    row's file and row index when invalid rows stop the job; 4. mapInArrow with score_partition."""
    # 1. Refuse what cannot work before any task runs.
    if threads < 1:
        raise UsageError(f"--threads {threads}: expected a positive integer")
    options.validate(scorer)
    check_input_schema(_arrow_schema(df.schema), scorer, options)
    schema = spark_output_schema(df.schema, options)

    # 2-3. The model travels by SparkFiles; row locations only matter when a row stops the job.
    shipped_name = ship_model(df.sparkSession, model_path)
    located = _with_row_location(df) if options.on_invalid == "error" else None
    plan = WorkerPlan(model_path, shipped_name, scorer.sha256, threads, options,
                      locate=located is not None, stats=stats)

    # 4. mapInArrow builds a pandas_udf internally, which warns about pandas it never uses.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PANDAS_WARNING)
        return (located if located is not None else df).mapInArrow(
            functools.partial(score_partition, plan), schema
        )


def score_dataframe(
    df: DataFrame,
    model_path: str,
    top_k: int = 3,
    on_invalid: str = "error",
    input_column: str | None = None,
    *,
    input_columns: tuple[str, ...] | None = None,
    threads: int = DEFAULT_THREADS,
    max_length: int | None = None,
) -> DataFrame:
    """Score a Spark DataFrame: every input column, then y_pred, top_k_values, top_k_probs, error.

    Lazy like any DataFrame: nothing runs until an action (a write, a count). The model is loaded
    and checked on the driver now (ModelError), and once per Python worker when tasks run.
    Under on_invalid='error' the first invalid row a task meets fails the job; the message says
    `FILE: row N` for a DataFrame read straight from Parquet, else the partition and the row
    within it.

    Args:
        model_path: a local path (shipped to the executors with SparkContext.addFile unless a
            file of that name was shipped with spark-submit --files) or a URI executors can read.
        threads: onnxruntime intra-op threads per task; raise it together with spark.task.cpus.
    """
    scorer = models.load(model_path, models.SessionConfig(threads=1))
    options = ScoreOptions(top_k=top_k, on_invalid=on_invalid, input_column=input_column,
                           input_columns=input_columns, max_length=max_length)
    return _scored(df, scorer, model_path, options, threads)


# The job ---------------------------------------------------------------------------------------
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


@dataclass
class SparkRunState:
    """What the summary and the command line need after run(), also after a failure."""

    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=lambda: job.utc_now())
    scorer: models.Scorer | None = None
    stats: BatchStats | None = None  # merged from every task that finished
    drift: dict | None = None
    warnings: list[str] = field(default_factory=list)
    spark: dict = field(default_factory=dict)  # master, application_id, partitions, spark_version
    # Locations this run created (the dataset it wrote, OUTPUT once moved there): a failed run
    # removes them. Never anything that existed before the run.
    created: list[str] = field(default_factory=list)
    published: bool = False  # OUTPUT holds this run's dataset, _SUCCESS included

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
    if os.path.realpath(target) == os.path.realpath(source):
        raise UsageError(f"OUTPUT is INPUT ({config.output}); choose another output path")
    if os.path.realpath(target).startswith(os.path.realpath(source).rstrip(os.sep) + os.sep):
        raise UsageError(
            f"OUTPUT {config.output} is inside INPUT {config.input}; a later run would read "
            f"its own output. Choose a directory outside the input"
        )
    if os.path.lexists(target):
        raise _output_exists(config.output)
    if not os.path.isdir(os.path.dirname(target)):
        raise OutputError(f"{config.output}: the parent directory does not exist")


def _output_exists(location: str) -> OutputError:
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
    gated = config.max_psi is not None
    target = staging_location(config.output, context.applicationId) if gated else config.output
    accumulator = context.accumulator(empty_stats(scorer), StatsParam(empty_stats(scorer)))
    try:
        # 1. Planning only: no task runs before the write.
        df = session.read.parquet(config.input)
        try:
            scored = _scored(df, scorer, config.model, config.options, config.threads, accumulator)
        except InvalidInput as error:
            raise InvalidInput(f"{config.input}: {error}") from None
        state.spark["partitions"] = scored.rdd.getNumPartitions()
        # 2. The staging name is new; OUTPUT itself is checked now, not after scoring it all.
        if gated and exists(session, config.output):
            raise _output_exists(config.output)
        state.created.append(target)
        scored.write.mode("errorifexists").parquet(target)
    except SeqscoreError:
        raise
    except Exception as error:  # Py4J and PySpark exceptions, translated below
        if _condition(error) == "PATH_ALREADY_EXISTS" and target in state.created:
            state.created.remove(target)  # Spark refused before writing: not ours to remove
        translated = spark_error(error)
        if translated is None:
            raise
        raise translated from None
    finally:
        # 3. Every finished task's stats are in: the scheduler applies them before the job ends.
        state.stats = accumulator.value
        state.drift = job.drift_report(scorer, state.stats)
    if gated:
        # 4. The local job's decision, on the merged stats, before anything is published.
        try:
            job.check_max_psi(config.input, scorer, state.stats, config.max_psi)
        except InvalidInput:
            remove_output(session, target)
            state.created.remove(target)
            raise
        publish(session, target, config.output, state)
    state.published = True
    return state


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
    marker = _child(staged, job.SUCCESS_FILE)
    held = f"{staged.rstrip('/')}.{job.SUCCESS_FILE}"
    if exists(session, output):
        raise _output_exists(output)
    has_marker = exists(session, marker)
    if has_marker:
        state.created.append(held)
        rename(session, marker, held)
    state.created.append(output)
    rename(session, staged, output)
    state.created.remove(staged)
    if has_marker:
        rename(session, held, _child(output, job.SUCCESS_FILE))
        state.created.remove(held)


def _child(location: str, name: str) -> str:
    if storage.is_uri(location):
        return f"{location.rstrip('/')}/{name}"
    return os.path.join(location, name)


def _hadoop(session: SparkSession, location: str):
    """Spark's own Hadoop file system for a URI, and the path in it: what Spark writes with."""
    jvm = session.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(location)
    return path.getFileSystem(session.sparkContext._jsc.hadoopConfiguration()), path


def exists(session: SparkSession | None, location: str) -> bool:
    """Whether a local path or a store's location exists (a store's through the session)."""
    if not storage.is_uri(location):
        return os.path.lexists(storage.local_path(location))
    filesystem, path = _hadoop(session, location)
    return bool(filesystem.exists(path))


def rename(session: SparkSession, source: str, target: str) -> None:
    """Rename within one file system: os.rename on a local disk, Hadoop's rename on a store."""
    if not storage.is_uri(source):
        try:
            os.rename(storage.local_path(source), storage.local_path(target))
        except OSError as error:
            raise storage.write_error(target, error) from None
        return
    filesystem, path = _hadoop(session, source)
    try:
        moved = filesystem.rename(path, session.sparkContext._jvm.org.apache.hadoop.fs.Path(target))
    except Exception as error:  # noqa: BLE001  (Py4J: the store's failure, said in one line)
        raise StorageError(f"cannot move {source} to {target}: {_spark_message(error)}") from None
    if not moved:
        raise StorageError(f"cannot move {source} to {target}: the file system refused the rename")


def summary(config: SparkJobConfig, state: SparkRunState, exit_code: int,
            error: str | None) -> dict:
    """The --summary JSON: the local job's keys, built by the local job's code from the merged
    stats, with `spark` (what only Spark knows) in place of the local job's `files`."""
    payload = job.summary_head(
        exit_code=exit_code, error=error, input_location=config.input,
        output_location=config.output, options=config.options, started=state.started,
        started_at=state.started_at, rows_in=state.rows,
        rows_out=state.rows if state.published else 0,
    )
    payload["spark"] = {"master": config.master, "application_id": None, "partitions": None,
                        "spark_version": None, **state.spark}
    payload.update(job.summary_figures(config.options, state.scorer, state.stats, state.drift))
    payload["warnings"] = list(state.warnings)
    return payload


def spark_error(error: BaseException) -> SeqscoreError | None:
    """The named error a Spark failure stands for, or None when it is not one we know."""
    text = str(error)
    worker = _WORKER_ERROR.findall(text)
    if worker:
        name, message = worker[-1]
        named = getattr(errors, name, None)
        if name in ("InvalidRow", "Interrupted") or not (
            isinstance(named, type) and issubclass(named, SeqscoreError)
        ):
            named = InvalidInput
        return named(message.strip())
    message = _spark_message(error)
    condition = _condition(error)
    if condition == "PATH_NOT_FOUND":
        return InputMissing(message)
    if condition == "UNABLE_TO_INFER_SCHEMA":
        return InputMissing(f"no Parquet files to read ({message})")
    if condition == "PATH_ALREADY_EXISTS":
        return OutputError(f"already exists ({message}); remove it or choose another path")
    if condition.startswith(("FAILED_READ_FILE", "CANNOT_READ_FILE_FOOTER", "CANNOT_MERGE")):
        return InvalidInput(f"not a readable Parquet dataset: {message}")
    if condition == "PACKAGE_NOT_INSTALLED":  # mapInArrow checks for pandas, though it needs none
        return UsageError(f"{message} Install the 'spark' extra: pip install -e '.[spark]'")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return StorageError(f"I/O error while writing: {message}")
    return None


def _spark_message(error: BaseException) -> str:
    """The first line of what Spark says, without Py4J's preamble and the JVM stack."""
    java = getattr(error, "java_exception", None)  # a Py4JJavaError PySpark did not convert
    text = str(java.getMessage()) if java is not None else str(error)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _condition(error: BaseException) -> str:
    """Spark's error class (PATH_NOT_FOUND, ...), which leads its message; '' when none."""
    found = _CONDITION.match(_spark_message(error))
    return found.group(1) if found else ""


def describe(error: BaseException) -> str:
    """One line for an unexpected Spark failure: the worker's exception, not Spark's preamble."""
    found = _TRACEBACK_LAST.findall(str(error))
    if found:
        name, message = found[-1]
        hint = ""
        if name.endswith("ModuleNotFoundError"):
            hint = "; the executors need seqscore and its dependencies (see the README)"
        return f"{name}: {message.strip()}{hint}"
    return f"{type(error).__name__}: {_spark_message(error)}"


def remove_output(session: SparkSession | None, location: str) -> None:
    """Remove what a failed or refused run wrote; only ever called for a location it created.

    Local directories and files go with shutil and os; a store's through Spark's Hadoop file
    system (session).
    """
    if not storage.is_uri(location):
        path = storage.local_path(location)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return
    if session is None:
        return
    filesystem, path = _hadoop(session, location)
    if filesystem.exists(path):
        filesystem.delete(path, True)


# The session --------------------------------------------------------------------------------------
@contextlib.contextmanager
def _stderr_to(descriptor: int) -> Iterator[None]:
    """Point file descriptor 2 elsewhere while a child process (the JVM) inherits it."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(descriptor, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def start_session(config: SparkJobConfig) -> tuple[SparkSession, str | None]:
    """A SparkSession for the command line, and the file that holds the JVM's console output.

    Launched from here, the JVM (and every Python worker it forks) writes its log to a temporary
    file, so that stderr carries one line. Under spark-submit the JVM already runs: its log
    goes where spark-submit sends it, and the log file is None.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise UsageError(
            "python -m score.spark needs pyspark, the 'spark' extra: pip install -e '.[spark]'"
        ) from None
    launching = "PYSPARK_GATEWAY_PORT" not in os.environ
    if launching and not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        raise UsageError("Spark needs a Java runtime (17 or later) on PATH or in JAVA_HOME; "
                         "`make setup` installs one")
    master = config.master or ("local[*]" if launching else None)
    if launching and master.startswith("local"):
        # Local workers run on this machine: use this interpreter, which has seqscore.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("seqscore")
    builder = builder.config("spark.ui.showConsoleProgress", "false")
    if master is not None:
        builder = builder.master(master)
    if not launching:
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        return session, None
    descriptor, log_path = tempfile.mkstemp(prefix="seqscore-spark-", suffix=".log")
    try:
        with _stderr_to(descriptor):
            session = builder.getOrCreate()
            session.sparkContext.setLogLevel("ERROR")
    except Exception as error:  # noqa: BLE001  (the JVM did not start: say where its log is)
        raise SeqscoreError(
            f"Spark did not start ({_spark_message(error)}); its log: {log_path}"
        ) from None
    finally:
        os.close(descriptor)
    return session, log_path


# The command line ---------------------------------------------------------------------------------
DESCRIPTION = """\
Score a Parquet file or dataset on Apache Spark with the exported ONNX model: the same batch
function, output columns and validation as python -m score, through mapInArrow. OUTPUT is a new
Parquet dataset written by Spark's committer (_SUCCESS last); it must not exist. Every task
reports its counts and distributions beside its rows; the driver merges them into the local
job's --summary and drift check, and under --max-psi publishes OUTPUT only within the limit."""

EPILOG = """\
exit codes: 0 ok; 2 usage; 65 bad data (the first invalid row a task met, as FILE: row N; not
Parquet; wrong column; drift above --max-psi); 66 INPUT missing; 70 internal error (Spark's log is kept and named);
73 OUTPUT exists or cannot be created; 74 I/O error; 78 model missing, corrupt or not matching
its spec (checked on the driver before Spark starts); 130 Ctrl-C; 143 SIGTERM. A failed run
removes the OUTPUT it created, and still writes its --summary."""


def parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(prog="python -m score.spark", description=DESCRIPTION, epilog=EPILOG,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT",
                   help="Parquet file or dataset (path or URI Spark reads)")
    p.add_argument("output", metavar="OUTPUT",
                   help="the Parquet dataset to create (must not exist)")
    p.add_argument("--master", metavar="URL",
                   help="Spark master (default: spark-submit's, else local[*])")
    p.add_argument("--model", metavar="PATH",
                   help="the exported ONNX file (default $SCORE_MODEL, else artifacts/model.onnx); "
                        "shipped to the executors unless spark-submit --files already did")
    p.add_argument("--top-k", type=cli.positive_int, default=3, metavar="K",
                   help="most likely classes reported per step, 1..classes (default 3)")
    p.add_argument("--on-invalid", choices=["error", "null"], default="error",
                   help="error: the first invalid row fails the job, exit 65, no output (default); "
                        "null: keep every row, invalid ones get null predictions and an error")
    columns = p.add_mutually_exclusive_group()
    columns.add_argument("--input-column", metavar="NAME",
                         help="list column holding the sequences (default: the model's, usually x)")
    columns.add_argument("--input-columns", metavar="A,B,C,D",
                         help="wide layout: one integer column per step, in step order")
    p.add_argument("--batch-size", type=cli.positive_int, default=None, metavar="N",
                   help="rows per Arrow batch (spark.sql.execution.arrow.maxRecordsPerBatch, "
                        "default 10000)")
    p.add_argument("--max-length", type=cli.positive_int, default=None, metavar="N",
                   help="variable-length models: score rows of up to N steps (default: the longest "
                        "training length)")
    p.add_argument("--threads", type=cli.positive_int, default=DEFAULT_THREADS, metavar="N",
                   help="onnxruntime intra-op threads per task (default 1: tasks share the cores)")
    p.add_argument("--summary", metavar="PATH",
                   help="write a JSON summary (status, counts, speed, distributions, drift, and "
                        "Spark's master, application id and partitions), also when the run fails")
    p.add_argument("--low-confidence", type=cli.probability, default=0.5, metavar="P",
                   help="a step whose top-1 probability is below P counts as low-confidence (default 0.5)")
    p.add_argument("--max-psi", type=cli.non_negative, default=None, metavar="X",
                   help="fail (exit 65, nothing published) if any step's input or prediction PSI "
                        "exceeds X; the dataset is written beside OUTPUT, hidden, and moved to "
                        "OUTPUT only within the limit (default: off)")
    p.add_argument("--quiet", action="store_true", help="no line when the job is done")
    return p


def _config(args: argparse.Namespace) -> SparkJobConfig:
    input_columns = None
    if args.input_columns is not None:
        input_columns = tuple(name.strip() for name in args.input_columns.split(","))
        if not all(input_columns):
            raise UsageError(f"--input-columns {args.input_columns!r}: a column name is empty")
    options = ScoreOptions(top_k=args.top_k, on_invalid=args.on_invalid,
                           input_column=args.input_column, input_columns=input_columns,
                           low_confidence=args.low_confidence, max_length=args.max_length)
    return SparkJobConfig(
        input=args.input,
        output=args.output,
        model=args.model or os.environ.get("SCORE_MODEL") or "artifacts/model.onnx",
        options=options,
        threads=args.threads,
        batch_size=args.batch_size,
        master=args.master,
        quiet=args.quiet,
        summary=args.summary,
        max_psi=args.max_psi,
    )


class _Signals:
    """SIGTERM and Ctrl-C. Before Spark starts they interrupt at once; while it runs, the main
    thread is inside a Py4J call that an exception would corrupt, so the jobs are cancelled from
    another thread and the failed write is then reported as the interruption."""

    def __init__(self) -> None:
        self.session: SparkSession | None = None
        self.received: Interrupted | None = None

    def handle(self, signum, frame) -> None:
        terminated = signum == signal.SIGTERM
        name, code = ("SIGTERM", EXIT_SIGTERM) if terminated else ("SIGINT", EXIT_SIGINT)
        if self.session is None:
            raise Interrupted(name, code)
        if self.received is None:
            self.received = Interrupted(name, code)
            threading.Thread(target=self._cancel_until_stopped, daemon=True).start()

    def _cancel_until_stopped(self) -> None:
        """Cancel the running job, and any the driver still starts (a write sets up its
        committer before it submits its job), until the main thread lets go of the session."""
        session = self.session
        while self.session is not None:
            try:
                session.sparkContext.cancelAllJobs()
            except Exception:  # noqa: BLE001  (the context is stopping: nothing left to cancel)
                return
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signals = _Signals()
    previous = {number: signal.signal(number, signals.handle)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(args, signals)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _main(args: argparse.Namespace, signals: _Signals) -> int:
    """Steps: 1. check the locations and load the model (before Spark starts); 2. start Spark;
    3. run; 4. stop Spark, then remove what the failed run created; 5. the warnings and one
    line on stderr; 6. the summary, whatever happened."""
    warnings.filterwarnings("ignore", message=_PANDAS_WARNING)
    state = SparkRunState()
    session, log_path, config = None, None, None
    exit_code, message = 0, None
    try:
        config = _config(args)
        check_locations(config)
        scorer = models.load(config.model, models.SessionConfig(threads=1))
        state.scorer, state.stats = scorer, empty_stats(scorer)
        config.options.validate(scorer)
        check_baseline(config, scorer)
        state.warnings.extend(length_warnings(scorer, config.options))
        for line in state.warnings:  # now: the run may take hours
            print(f"warning: {line}", file=sys.stderr)
        session, log_path = start_session(config)
        signals.session = session
        signal.signal(signal.SIGINT, signals.handle)  # SparkContext installed its own
        run(session, config, scorer, state)
    except KeyboardInterrupt:
        exit_code, message = EXIT_SIGINT, "interrupted by SIGINT; no output was published"
    except SeqscoreError as error:
        exit_code, message = error.exit_code, str(error)
    except Exception as error:  # a bug or an unknown Spark failure: still one line
        if os.environ.get("SCORE_DEBUG") and signals.received is None:
            raise
        exit_code = EXIT_SOFTWARE
        message = f"internal error ({describe(error)})"
    finally:
        signals.session = None
        if signals.received is not None and exit_code:  # whatever the cancelled job raised
            exit_code, message = signals.received.exit_code, str(signals.received)
        _shut_down(session, state.created if exit_code else [])

    if log_path is not None:
        if exit_code in (EXIT_SOFTWARE, errors.EXIT_IOERR):
            message = f"{message}; Spark's log: {log_path}"
        else:
            os.unlink(log_path)
    message = cli.one_line(message) if message else None
    if state.drift:
        for line in monitor.drift_warnings(state.drift):
            print(f"warning: {line}", file=sys.stderr)
    if message:
        print(f"error: {message}", file=sys.stderr)
    elif not config.quiet:
        seconds = time.perf_counter() - state.started
        print(f"scored {config.input} -> {config.output}: {state.rows} rows "
              f"({state.rows_invalid} invalid) in {seconds:.2f} s", file=sys.stderr)
    if config is not None and config.summary:
        try:
            job.write_summary(config.summary, summary(config, state, exit_code, message))
        except SeqscoreError as error:
            print(f"error: --summary {error}", file=sys.stderr)  # the message names the location
            exit_code = exit_code or error.exit_code
    return exit_code


def _shut_down(session: SparkSession | None, removing: list[str]) -> None:
    """Stop Spark; remove what a failed run created (``removing``) once no task can still write.

    A store is cleaned through Spark's own file system, so before stopping (jobs cancelled
    first); a local directory after stopping, when every task is gone.
    """
    if session is None:
        return
    remote = [location for location in removing if storage.is_uri(location)]
    try:
        if remote:
            session.sparkContext.cancelAllJobs()
            for location in remote:
                remove_output(session, location)
    finally:
        session.stop()
    for location in removing:
        if not storage.is_uri(location):
            remove_output(None, location)


if __name__ == "__main__":
    # Run the module as score.spark, not __main__, so that cloudpickle ships score_partition by
    # reference and every worker shares one model cache.
    from score.spark import main as _spark_main

    sys.exit(_spark_main())
