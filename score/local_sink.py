"""Atomic output on a local disk: a file appears under its final name only when it is complete.

Write a temporary file beside OUTPUT (score.atomic), fsync it, check its row count from the
footer, rename it over OUTPUT and fsync the directory. A job killed at any moment (SIGKILL
included) leaves OUTPUT absent, the previous complete file, or the new complete one.
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from score import atomic, sink_common, storage
from score.errors import OutputError


class LocalSink:
    """A temporary file beside OUTPUT that becomes OUTPUT on commit."""

    def __init__(self, location: str) -> None:
        self.location = location
        path = os.path.abspath(storage.local_path(location))
        directory = os.path.dirname(path)
        if os.path.isdir(path):
            raise OutputError(f"{location}: is a directory; expected a file path for the output")
        if not os.path.isdir(directory):
            raise OutputError(f"{location}: cannot create the output (the directory {directory} does not exist)")
        try:
            self.file = atomic.AtomicFile(path)
        except OSError as error:
            raise storage.write_error(location, error) from None

    @property
    def target(self) -> str | pa.NativeFile:
        """What the Parquet writer writes to."""
        return self.file.temporary

    def commit(self, expected_rows: int) -> None:
        """fsync, check the footer's row count, rename into place, fsync the directory."""
        try:
            atomic.fsync_file(self.file.temporary)
            rows = pq.read_metadata(self.file.temporary).num_rows
        except OSError as error:
            raise storage.write_error(self.location, error) from None
        sink_common.check_row_count(self.location, rows, expected_rows)
        self.publish()

    def publish(self) -> None:
        """Rename the complete temporary file over OUTPUT and fsync the directory, with signals held."""
        try:
            with sink_common.signals_held():
                self.file.commit()
        except OSError as error:
            raise storage.write_error(self.location, error) from None

    def abort(self) -> None:
        self.file.abort()


def write_small_file(location: str, data: bytes) -> None:
    """Write a small file (summary, _SUCCESS) with the same all-or-nothing guarantee."""
    sink = LocalSink(location)
    try:
        sink.file.write(data)
        sink.publish()
    except OSError as error:
        raise storage.write_error(location, error) from None
    finally:
        sink.abort()  # nothing left to remove once published
