"""Starting Spark for the command line, with the JVM's console output kept out of stderr."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

from score.errors import SeqscoreError, UsageError
from score.spark.failures import spark_message

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from score.spark.job import SparkJobConfig

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
            f"Spark did not start ({spark_message(error)}); its log: {log_path}"
        ) from None
    finally:
        os.close(descriptor)
    return session, log_path
