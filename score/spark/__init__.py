"""Scale-out: the scoring job on Apache Spark, one Arrow record batch at a time through mapInArrow.

Every task runs score.core.score_batch_with_stats, the very function the local job runs, with
the model loaded once per Python worker. pyspark is imported only inside functions, so that
importing this package (for its parser, say) costs nothing.

    python -m score.spark INPUT OUTPUT [--master URL] [--model PATH] [--top-k K] ...

The modules: worker (the mapInArrow function), dataframe (score_dataframe and the planning every
run shares), job (the command's run, publishing and summary), hadoop (locations through Spark's
file system), failures (Spark's errors as named ones), session (starting Spark), and __main__
(the command line and its signals).
"""

from __future__ import annotations

from score.spark.dataframe import DEFAULT_THREADS, score_dataframe, ship_model, spark_output_schema
from score.spark.failures import describe, spark_error
from score.spark.job import (
    SparkJobConfig,
    SparkRunState,
    publish,
    run,
    staging_location,
    summary_of,
)
from score.spark.worker import StatsParam, WorkerPlan, score_partition

__all__ = [
    "DEFAULT_THREADS", "SparkJobConfig", "SparkRunState", "StatsParam", "WorkerPlan", "describe",
    "main", "parser", "publish", "run", "score_dataframe", "score_partition", "ship_model",
    "spark_error", "spark_output_schema", "staging_location", "summary_of",
]


def __getattr__(name: str):
    """main and parser, from the command line's module, imported on first use: importing it here
    would make `python -m score.spark` run a module that is already imported."""
    if name in ("main", "parser"):
        import importlib

        return getattr(importlib.import_module("score.spark.__main__"), name)
    raise AttributeError(f"module 'score.spark' has no attribute {name!r}")
