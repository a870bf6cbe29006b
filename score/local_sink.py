"""Atomic output on a local disk: a file appears under its final name only when it is complete.

Write a temporary file beside OUTPUT, fsync it, check its row count from the footer,
``os.replace`` it over OUTPUT and fsync the directory. A job killed at any moment (SIGKILL
included) leaves OUTPUT absent, the previous complete file, or the new complete one.
"""

from __future__ import annotations

import os
import secrets

import pyarrow as pa
import pyarrow.parquet as pq

from score import sink_common, storage
from score.errors import OutputError


def _fsync_path(path: str, directory: bool = False) -> None:
    handle = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


class LocalSink:
    """A temporary file beside OUTPUT that becomes OUTPUT on commit."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.path = os.path.abspath(storage.local_path(location))
        directory, name = os.path.split(self.path)
        self.directory = directory
        if os.path.isdir(self.path):
            raise OutputError(f"{location}: is a directory; expected a file path for the output")
        if not os.path.isdir(directory):
            raise OutputError(f"{location}: cannot create the output (the directory {directory} does not exist)")
        # Hidden name (Spark, Hive and pyarrow skip '.' files); unique per run, so two runs
        # writing the same OUTPUT never share a temporary file.
        self.temporary = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            handle = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            os.close(handle)
        except OSError as error:
            raise storage.write_error(location, error) from None

    @property
    def target(self) -> str | pa.NativeFile:
        """What the Parquet writer writes to."""
        return self.temporary

    def commit(self, expected_rows: int) -> None:
        """fsync, check the footer's row count, rename into place, fsync the directory."""
        try:
            _fsync_path(self.temporary)
            rows = pq.read_metadata(self.temporary).num_rows
        except OSError as error:
            raise storage.write_error(self.location, error) from None
        sink_common.check_row_count(self.location, rows, expected_rows)
        self._publish()

    def _publish(self) -> None:
        """Rename the temporary file over OUTPUT and fsync the directory, with signals held."""
        try:
            with sink_common.signals_held():
                os.replace(self.temporary, self.path)
                _fsync_path(self.directory, directory=True)
        except OSError as error:
            raise storage.write_error(self.location, error) from None

    def abort(self) -> None:
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass


def write_small_file(location: str, data: bytes) -> None:
    """Write a small file (summary, _SUCCESS) with the same all-or-nothing guarantee."""
    sink = LocalSink(location)
    try:
        with open(sink.temporary, "wb") as handle:
            handle.write(data)
        _fsync_path(sink.temporary)
        sink._publish()
    except OSError as error:
        sink.abort()
        raise storage.write_error(location, error) from None
    except BaseException:
        sink.abort()
        raise
