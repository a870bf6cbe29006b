"""A Delta Lake INPUT on Spark: the table's live files, as delta-rs's log replay names them
(score.delta, the same child process the local job runs), read by Spark's Parquet reader with
each file's partition values added as columns. Spark's own Parquet reader never sees the
table's folder, so the dead files in it are never read."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from score import delta, storage, tables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def table_at(session: SparkSession | None, location: str) -> tuple[tuple[str, str], str] | None:
    """The table INPUT is or holds (score.tables.format_of), from one look: a local folder's
    listing, or a store's markers through Spark's file system; None for plain Parquet."""
    if not storage.is_uri(location):
        if not os.path.isdir(storage.local_path(location)):
            return None
        return tables.format_of(storage.list_tree(location))
    from score.spark.hadoop import table_format

    try:
        return table_format(session, location)
    except Exception:  # noqa: BLE001  (a store Spark cannot list: its read says why, in one line)
        return None


def reads(location: str, found: tuple[tuple[str, str], str] | None) -> bool:
    """Whether INPUT is a Delta table Spark reads through its log; any other table is refused
    (65): Spark's Parquet reader would read every file in its folder, the dead ones too. A
    Delta INPUT needs the extra."""
    if found is None:
        return False
    if found != (tables.DELTA, "") or not delta.available():
        raise tables.refusal(location, found)
    return True


def read_snapshot(session: SparkSession, snapshot: delta.Snapshot) -> DataFrame:
    """The snapshot's live rows as a DataFrame, columns in the table's order."""
    from pyspark.sql import functions as F  # noqa: N812
    from pyspark.sql.pandas.types import from_arrow_schema, from_arrow_type

    schema = snapshot.schema_arrow
    if not snapshot.live:
        return session.createDataFrame([], from_arrow_schema(schema))
    groups: dict[tuple, list[str]] = {}
    for file in snapshot.live:
        groups.setdefault(tuple(sorted(file.partition.items())), []).append(file.location)
    frames = []
    for values, paths in groups.items():
        frame = session.read.parquet(*paths)
        for name, value in values:
            frame = frame.withColumn(name, F.lit(value).cast(from_arrow_type(schema.field(name).type)))
        frames.append(frame)
    joined = functools.reduce(lambda left, right: left.unionByName(right, allowMissingColumns=True), frames)
    return joined.select(*schema.names)
