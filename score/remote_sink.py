"""Atomic output on object stores (s3://, gs://, hdfs://, ...) through pyarrow's file systems.

An object store has no rename, and pyarrow's S3 output stream has no abort: closing it, or
letting it be garbage-collected after an error, completes the multipart upload with whatever was
written (checked with pyarrow 26 against an S3 server). Streaming straight to OUTPUT could
therefore publish a partial object. So the job streams its multipart upload to a hidden key
beside OUTPUT (``.NAME.tmp-PID-RANDOM``: Spark, Hive and pyarrow datasets skip it), and on
success checks the footer's row count there and moves it into place: a server-side copy, which
makes OUTPUT appear whole in one step, then a delete of the hidden key (a rename on HDFS). On any
failure or signal the hidden object is closed and deleted. A SIGKILL can leave an incomplete
multipart upload (never an object) under the hidden key; a bucket lifecycle rule
(AbortIncompleteMultipartUpload) reclaims it. S3's copy is limited to 5 GB per object.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from score import atomic, sink_common, storage
from score.errors import OutputError, SeqscoreError, StorageError


def _resolve(location: str) -> tuple[pafs.FileSystem, str]:
    try:
        return storage.resolve(location)
    except SeqscoreError as error:
        if isinstance(error, StorageError):
            raise
        raise OutputError(f"cannot create the output: {error}") from None


class RemoteSink:
    """A hidden object beside OUTPUT, streamed as a multipart upload, moved into place on commit."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.filesystem, self.path = _resolve(location)
        parent, name = posixpath.split(self.path.rstrip("/"))
        if not name:
            raise OutputError(f"{location}: expected an object key after the bucket for the output")
        try:
            info = self.filesystem.get_file_info(self.path)
        except OSError as error:
            raise storage.write_error(location, error) from None
        if info.type == pafs.FileType.Directory:
            raise OutputError(f"{location}: is a directory; expected a file path for the output")
        self.temporary = posixpath.join(parent, atomic.hidden_name(name))
        try:
            self.stream = self.filesystem.open_output_stream(self.temporary)
        except OSError as error:
            raise storage.write_error(location, error) from None

    @property
    def target(self) -> pa.NativeFile:
        """What the Parquet writer writes to."""
        return self.stream

    def commit(self, expected_rows: int) -> None:
        """Complete the upload, check the footer's row count, move the object into place.

        Steps: 1. close the stream (completes the hidden object); 2. read its footer back;
        3. move it to OUTPUT with signals held, so a SIGTERM cannot land between copy and delete.
        """
        try:
            self.stream.close()
            with self.filesystem.open_input_file(self.temporary) as written:
                rows = pq.read_metadata(written).num_rows
        except OSError as error:
            raise storage.write_error(self.location, error) from None
        sink_common.check_row_count(self.location, rows, expected_rows, what="object")
        try:
            with sink_common.signals_held():
                self.filesystem.move(self.temporary, self.path)
        except OSError as error:
            raise storage.write_error(self.location, error) from None

    def abort(self) -> None:
        """Close and delete the hidden object; best effort, the first error is the one reported."""
        try:
            self.stream.close()
        except Exception:  # noqa: BLE001  (a broken connection: nothing more to close)
            pass
        try:
            self.filesystem.delete_file(self.temporary)
        except Exception:  # noqa: BLE001  (absent, or the store is unreachable: the hidden key stays)
            pass


def write_small_object(location: str, data: bytes) -> None:
    """Write a small object (summary, _SUCCESS) in one request: it appears whole or not at all."""
    filesystem, path = _resolve(location)
    try:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            raise OutputError(f"{location}: is a directory; expected a file path")
        stream = filesystem.open_output_stream(path)
    except OSError as error:
        raise storage.write_error(location, error) from None
    try:
        # Buffered whole in memory: below one part, close() sends it in a single request.
        stream.write(data)
        stream.close()
    except OSError as error:
        raise storage.write_error(location, error) from None


def remove_object(location: str) -> None:
    """Delete an object if it exists (a stale _SUCCESS): OUTPUT must not be a file."""
    filesystem, path = _resolve(location)
    try:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.File:
            filesystem.delete_file(path)
    except OSError as error:
        raise storage.write_error(location, error) from None


def check_output_directory(location: str) -> None:
    """OUTPUT of a directory run must not be an existing object."""
    filesystem, path = _resolve(location)
    try:
        info = filesystem.get_file_info(path.rstrip("/"))
    except OSError as error:
        raise storage.write_error(location, error) from None
    if info.type == pafs.FileType.File:
        raise OutputError(f"{location}: is a file; INPUT is a directory, so OUTPUT must be a directory")
