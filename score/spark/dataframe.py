"""The DataFrame API: score_dataframe, and the planning every Spark run shares (the schema, the
model shipped to the executors, the row locations, mapInArrow with the worker's function).

pyspark is imported only inside functions, so that importing this module costs nothing.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyarrow as pa

from score import model as models
from score import storage
from score.core import ScoreOptions, check_input_schema, output_schema
from score.errors import InvalidInput, UsageError
from score.spark.failures import spark_message
from score.spark.worker import FILE_COLUMN, ROW_COLUMN, WorkerPlan, score_partition

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

DEFAULT_THREADS = 1  # many tasks share an executor's cores: one onnxruntime thread per task
PANDAS_WARNING = "PySpark does not yet fully support pandas"  # mapInArrow never uses pandas


def spark_output_schema(input_schema: StructType, options: ScoreOptions) -> StructType:
    """The input columns as Spark has them, then core.output_schema's four output columns.

    Spark declares Arrow lists as ArrayType and ignores their item names (item / element); it
    keeps the Arrow nullability (all four output fields are nullable, and so are their items).
    """
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StructField, StructType

    arrow_input = arrow_schema(input_schema)
    added = list(output_schema(arrow_input, options))[len(arrow_input) :]
    fields = [StructField(f.name, from_arrow_type(f.type), f.nullable) for f in added]
    return StructType(list(input_schema.fields) + fields)


def arrow_schema(schema: StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        return to_arrow_schema(schema, timezone="UTC")
    except Exception as error:  # noqa: BLE001  (PySparkTypeError and friends)
        raise InvalidInput(
            f"the input has a column Spark cannot pass to Arrow ({spark_message(error)})"
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


def with_row_location(df: DataFrame) -> DataFrame | None:
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


def score_frame(
    df: DataFrame,
    scorer: models.Scorer,
    model_path: str,
    options: ScoreOptions,
    threads: int,
    stats: object | None = None,
) -> DataFrame:
    """``df`` scored lazily by score_partition on the executors, each task adding its stats to
    the accumulator ``stats`` when given (the command's run and score_dataframe share this)."""
    source, function, schema = scoring_plan(df, scorer, model_path, options, threads, stats)
    return map_in_arrow(source, function, schema)


def scoring_plan(
    df: DataFrame,
    scorer: models.Scorer,
    model_path: str,
    options: ScoreOptions,
    threads: int,
    stats: object | None = None,
) -> tuple[DataFrame, Callable, StructType]:
    """What score_frame maps: the frame to map (``df``, with each row's location when invalid
    rows stop the job), the partition function (score_partition with its plan), and the
    scored schema. A Delta OUTPUT wraps the function to write each task's files as it scores.

    Steps: 1. check the options and the schema on the driver; 2. ship the model; 3. add each
    row's file and row index when invalid rows stop the job; 4. the plan.
    """
    # 1. Refuse what cannot work before any task runs.
    if threads < 1:
        raise UsageError(f"--threads {threads}: expected a positive integer")
    options.validate(scorer)
    check_input_schema(arrow_schema(df.schema), scorer, options)
    schema = spark_output_schema(df.schema, options)

    # 2-3. The model travels by SparkFiles; row locations only matter when a row stops the job.
    shipped_name = ship_model(df.sparkSession, model_path)
    located = with_row_location(df) if options.on_invalid == "error" else None
    plan = WorkerPlan(model_path, shipped_name, scorer.sha256, threads, options,
                      locate=located is not None, stats=stats)
    return (located if located is not None else df), functools.partial(score_partition, plan), schema


def map_in_arrow(df: DataFrame, function: Callable, schema: StructType | str) -> DataFrame:
    """df.mapInArrow, without the pandas warning: mapInArrow builds a pandas_udf internally,
    which warns about pandas it never uses."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PANDAS_WARNING)
        return df.mapInArrow(function, schema)


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
    return score_frame(df, scorer, model_path, options, threads)
