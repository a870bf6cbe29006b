"""Spark's failures as the named errors (and exit codes) the local job raises, in one line."""

from __future__ import annotations

import re

from score import errors

# The last line of a Python traceback raised by one of our named errors inside a worker.
_WORKER_ERROR = re.compile(r"^score\.errors\.(\w+): (.+)$", re.MULTILINE)
_CONDITION = re.compile(r"^\[([A-Z][A-Z_.]*)\]")  # Spark's error class leads its message
_TRACEBACK_LAST = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)): (.+)$", re.MULTILINE)


def spark_error(error: BaseException) -> errors.SeqscoreError | None:
    """The named error a Spark failure stands for, or None when it is not one we know."""
    text = str(error)
    worker = _WORKER_ERROR.findall(text)
    if worker:
        name, message = worker[-1]
        named = getattr(errors, name, None)
        if name in ("InvalidRow", "Interrupted") or not (
            isinstance(named, type) and issubclass(named, errors.SeqscoreError)
        ):
            named = errors.InvalidInput
        return named(message.strip())
    message = spark_message(error)
    error_class = condition(error)
    if error_class == "PATH_NOT_FOUND":
        return errors.InputMissing(message)
    if error_class == "UNABLE_TO_INFER_SCHEMA":
        return errors.InputMissing(f"no Parquet files to read ({message})")
    if error_class == "PATH_ALREADY_EXISTS":
        return errors.OutputError(f"already exists ({message}); remove it or choose another path")
    if error_class.startswith(("FAILED_READ_FILE", "CANNOT_READ_FILE_FOOTER", "CANNOT_MERGE")):
        return errors.InvalidInput(f"not a readable Parquet dataset: {message}")
    if error_class == "PACKAGE_NOT_INSTALLED":  # mapInArrow checks for pandas, though it needs none
        return errors.UsageError(f"{message} Install the 'spark' extra: pip install -e '.[spark]'")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return errors.StorageError(f"I/O error while writing: {message}")
    return None


def spark_message(error: BaseException) -> str:
    """The first line of what Spark says, without Py4J's preamble and the JVM stack."""
    java = getattr(error, "java_exception", None)  # a Py4JJavaError PySpark did not convert
    text = str(java.getMessage()) if java is not None else str(error)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


def condition(error: BaseException) -> str:
    """Spark's error class (PATH_NOT_FOUND, ...), which leads its message; '' when none."""
    found = _CONDITION.match(spark_message(error))
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
    return f"{type(error).__name__}: {spark_message(error)}"
