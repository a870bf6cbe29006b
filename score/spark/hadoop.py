"""Locations as Spark writes them: a local path through os, a store's URI through Spark's own
Hadoop file system (the driver's JVM), so that the job checks, moves and removes what it wrote
with the file system that wrote it."""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import TYPE_CHECKING

from score import storage, tables
from score.errors import StorageError
from score.spark.failures import spark_message

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

def child(location: str, name: str) -> str:
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
        raise StorageError(f"cannot move {source} to {target}: {spark_message(error)}") from None
    if not moved:
        raise StorageError(f"cannot move {source} to {target}: the file system refused the rename")


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


def table_format(session: SparkSession, location: str) -> tuple[tuple[str, str], str] | None:
    """The table (score.tables.format_of) whose marker is at the root of a store's folder,
    looked for through Spark's Hadoop file system (at the root only: a store's whole listing
    is Spark's to make)."""
    filesystem, path = _hadoop(session, location)
    if not filesystem.exists(path) or not filesystem.getFileStatus(path).isDirectory():
        return None
    jvm = session.sparkContext._jvm
    found = []
    for name in ("_delta_log", ".hoodie"):
        if filesystem.exists(jvm.org.apache.hadoop.fs.Path(child(location, name))):
            found.append(name + "/")
    matches = filesystem.globStatus(jvm.org.apache.hadoop.fs.Path(child(location, "metadata/*.metadata.json")))
    found += [f"metadata/{status.getPath().getName()}" for status in (matches or [])]
    return tables.format_of(found)
