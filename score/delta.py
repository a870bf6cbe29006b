"""Reading a Delta Lake table's snapshot: its live rows, never the dead files in its folder.

A Delta table is a folder of Parquet files plus `_delta_log/`, which says which files are live
at each version. delta-rs (the `deltalake` package, the `delta` extra: Rust, no JVM) replays
the log in a short child process (score.delta_log) and names the live files, their row counts
and partition values; the job then streams those files with its own Parquet reader, record
batch by record batch, as it streams any Parquet file. A snapshot offers the few things the
job asks of a pq.ParquetFile (its Arrow schema, its row count, its batches, a fingerprint), so
the local job, --key, --labels and the summary take it unchanged.

A table whose protocol needs more than reading whole files (deletion vectors, column mapping,
any reader feature not known to be safe) is refused with one line (exit 65), never scored
with deleted rows.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import subprocess
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from score import delta_prefetch, storage
from score.errors import InputMissing, InvalidInput, StorageError, first_line

EXTRA = "pip install -e '.[delta]'"  # what installs the support (make setup does)
CHILD_SECONDS = 600  # the log's reader: minutes only for a huge log on a slow store
LOG = "_delta_log"


def available() -> bool:
    """Whether delta-rs is installed (the `delta` extra). Found, not imported: importing it
    would bring its runtime (about 30 MB) into the scoring process the log's child keeps free."""
    return importlib.util.find_spec("deltalake") is not None


def is_table(location: str) -> bool:
    """Whether ``location`` is a Delta table's root (a `_delta_log/` folder in it)."""
    try:
        return storage.is_directory(location) and storage.is_directory(storage.join(location, LOG))
    except InputMissing:
        return False


@dataclass
class SnapshotMetadata:
    """The part of pq.FileMetaData the job reads: the row count, and a fingerprint source."""

    num_rows: int
    table: str
    version: int
    files: int
    num_row_groups: int = 0
    num_columns: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"delta_table": self.table, "version": self.version, "num_rows": self.num_rows,
                "files": self.files}


@dataclass(frozen=True)
class LiveFile:
    """One file the snapshot's log says is live, and the partition values of its rows."""

    location: str
    rows: int | None  # from the log's statistics, when written
    partition: dict[str, str | None]  # partition column -> its value as text (None: null)


class Snapshot:
    """One version of a Delta table, read like a pq.ParquetFile (schema_arrow, metadata,
    iter_batches, close): its live files one after the other, each streamed by the job's own
    Parquet reader (score.inputs.open_parquet: bounded, on a store by range requests), with the
    partition columns the log gives each file added as constants."""

    def __init__(self, location: str, resolved: dict[str, Any]) -> None:
        self.location = location
        self.version, self.latest = int(resolved["version"]), int(resolved["latest"])
        self.schema_arrow: pa.Schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(resolved["schema"])))
        self.live = [LiveFile(file["location"], file["rows"], file["partition"]) for file in resolved["files"]]
        counted = [file.rows for file in self.live]
        rows = sum(counted) if None not in counted else sum(self._footer_rows(file) for file in self.live)
        self.metadata = SnapshotMetadata(int(rows), location, self.version, len(self.live))

    def _footer_rows(self, file: LiveFile) -> int:
        from score import inputs

        parquet = inputs.open_parquet(file.location)
        try:
            return parquet.metadata.num_rows
        finally:
            parquet.close()

    def iter_batches(self, batch_size: int, columns: list[str] | None = None, use_threads: bool = True):
        """The snapshot's record batches, file by file, in the table's schema (or ``columns``)."""
        from score import inputs

        names = columns if columns is not None else self.schema_arrow.names
        schema = pa.schema([self.schema_arrow.field(name) for name in names])
        for file in self.live:
            parquet = inputs.open_parquet(file.location)
            try:
                present = set(parquet.schema_arrow.names)
                wanted = [name for name in names if name in present and name not in file.partition]
                for batch in parquet.iter_batches(batch_size=batch_size, columns=wanted,
                                                  use_threads=use_threads):
                    yield _in_schema(batch, schema, file.partition)
            finally:
                parquet.close()

    def describe(self) -> dict[str, Any]:
        """The summary's `input_table`."""
        return {"format": "delta", "location": self.location, "version": self.version,
                "latest_version": self.latest, "files": len(self.live), "rows": self.metadata.num_rows}

    def close(self) -> None:
        """Nothing held open between files."""


def _in_schema(batch: pa.RecordBatch, schema: pa.Schema, partition: dict[str, Any]) -> pa.RecordBatch:
    """A file's batch in the table's schema: partition columns from the log, columns the file
    lacks (added to the table after it was written) null, types widened as the table says."""
    arrays = []
    for field_ in schema:
        if field_.name in partition:
            value = partition[field_.name]
            arrays.append(pa.array([value] * batch.num_rows, pa.string()).cast(field_.type)
                          if value is not None else pa.nulls(batch.num_rows, field_.type))
        elif field_.name in batch.schema.names:
            column = batch.column(field_.name)
            arrays.append(column if column.type == field_.type else column.cast(field_.type))
        else:
            arrays.append(pa.nulls(batch.num_rows, field_.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def open_snapshot(location: str, version: int | None = None) -> Snapshot:
    """The table at ``version`` (None: its latest), or the named error the log's reader raised.

    delta-rs replays the log in a short child process (score.delta_log): its runtime and the
    log's state (about 60 MB) never join the scoring process, which keeps the memory of a run
    over a table that of a run over its files."""
    if not available():
        raise InvalidInput(f"{location}: is a Delta Lake table; reading it needs the delta extra: {EXTRA}")
    return Snapshot(location, ask_log(location, delta_prefetch.reading(location, version)))


def ask_log(location: str, arguments: tuple[str, ...]) -> dict[str, Any]:
    """The answer of the log's child process (score.delta_log) for ``arguments``: started
    early by score.delta_prefetch, or now; its error raised as the named error it is."""
    child = delta_prefetch.take(arguments)
    try:
        stdout, stderr = child.communicate(timeout=CHILD_SECONDS)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise StorageError(f"{location}: reading the table's log took over {CHILD_SECONDS} s") from None
    try:
        answer = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise InvalidInput(f"{location}: the table's log could not be read "
                           f"({first_line(stderr) or f'exit {child.returncode}'})") from None
    if answer.get("error"):
        kind = {65: InvalidInput, 66: InputMissing, 74: StorageError}.get(answer["exit_code"], InvalidInput)
        raise kind(answer["error"])
    return answer
