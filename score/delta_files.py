"""The data files of a Delta Lake OUTPUT: the scored rows as Parquet files in the table's folder,
written by the job's own Parquet writer, then committed once by score.delta_output.commit.

A file in a table's folder that no commit names is not part of the table, so nothing written
here is seen before the commit. A run that fails removes the files it wrote; a run that is
killed leaves them as orphans, which a vacuum removes. The local job writes every file of a run
through one DataFiles; on Spark each task writes its partition's files through its own.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from score import storage
from score.columns import dictionary_columns

FILE_ROWS = 1_048_576  # rows per data file: a file of the default model's output is ~40 MB


@dataclass(frozen=True)
class DataFile:
    """One file written, as the commit's add action names it."""

    path: str  # relative to the table's root, as the log names it
    size: int  # bytes
    rows: int
    modified_ms: int  # when it was closed, in milliseconds since the epoch

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "rows": self.rows, "modified_ms": self.modified_ms}


class DataFiles:
    """A writer of Parquet files under a table's root, a new file every ``file_rows`` rows.

    Offers write_batch (so that pipeline.BackgroundWriter can run it in a thread), then finish()
    for the files written, or abort() to remove them.
    """

    def __init__(self, table: str, schema: pa.Schema, name: str = "part",
                 file_rows: int = FILE_ROWS, create_root: bool = True) -> None:
        self.table = table
        self.schema = schema
        self.name = f"{name}-{uuid.uuid4()}"  # no two runs, tasks or attempts share a name
        self.create_root = create_root  # False on Spark: the driver made the folder, tasks share it
        self.file_rows = file_rows
        self.filesystem, self.root = storage.resolve(table)
        self.files: list[DataFile] = []
        self._writer: pq.ParquetWriter | None = None
        self._path = ""
        self._rows = 0
        self._opened: list[str] = []  # every file started, for abort()
        self._created_root = False  # a new local table's folder: abort() removes it again

    def write_batch(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if self._writer is None:
            self._open()
        self._writer.write_batch(batch)
        self._rows += batch.num_rows
        if self._rows >= self.file_rows:
            self._close()

    def _open(self) -> None:
        if self.create_root and not self._opened and isinstance(self.filesystem, pafs.LocalFileSystem):
            self._created_root = self.filesystem.get_file_info(self.root).type == pafs.FileType.NotFound
            self.filesystem.create_dir(self.root, recursive=True)
        self._path = f"{self.name}-{len(self._opened):05d}.c000.snappy.parquet"
        location = f"{self.root.rstrip('/')}/{self._path}"
        self._opened.append(location)
        self._writer = pq.ParquetWriter(location, self.schema, filesystem=self.filesystem,
                                        use_dictionary=dictionary_columns(self.schema))
        self._rows = 0

    def _close(self) -> None:
        writer, self._writer = self._writer, None
        writer.close()
        size = self.filesystem.get_file_info(self._opened[-1]).size
        self.files.append(DataFile(self._path, int(size), self._rows, int(time.time() * 1000)))

    def finish(self) -> list[DataFile]:
        """Close the last file; the files written, in order."""
        if self._writer is not None:
            self._close()
        return list(self.files)

    def abort(self) -> None:
        """Close and remove every file this writer started (best effort: a file left behind is
        an orphan the table never names)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001  (the run's first error is the one reported)
                pass
            self._writer = None
        for location in self._opened:
            try:
                self.filesystem.delete_file(location)
            except Exception:  # noqa: BLE001
                pass
        if self._created_root:
            try:
                os.rmdir(self.root)  # only if still empty: nothing else is ever removed
            except OSError:
                pass
        self._opened, self.files, self._created_root = [], [], False


def remove_run_files(table: str, prefix: str) -> None:
    """Remove the files whose names start with ``prefix`` directly under the table's root (a
    failed Spark run's: its tasks' files, which no commit names). Best effort."""
    filesystem, root = storage.resolve(table)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except Exception:  # noqa: BLE001
        return
    for info in infos:
        if info.type == pafs.FileType.File and info.base_name.startswith(prefix):
            try:
                filesystem.delete_file(info.path)
            except Exception:  # noqa: BLE001
                pass
