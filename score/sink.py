"""Atomic output: a file appears under its final name only when it is complete.

Local disks: write a temporary file beside OUTPUT, fsync it, check its row count from the
footer, ``os.replace`` it over OUTPUT and fsync the directory. A job killed at any moment
(SIGKILL included) leaves OUTPUT absent, the previous complete file, or the new complete one.
Object stores: score.remote_sink, imported only when OUTPUT is a URI.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

from score import storage
from score.errors import OutputError, StorageError

# Errors that mean "this OUTPUT cannot be created here" rather than "the disk failed".
_CANNOT_CREATE = {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                  errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def write_error(location: str, error: BaseException) -> Exception:
    """Map an exception raised while writing ``location`` to a named error."""
    if storage.is_uri(location):
        from score import remote_sink

        return remote_sink.write_error(location, error)
    code = getattr(error, "errno", None)
    if code is None:
        # Arrow's own IOError carries the errno only in its text: "[errno 28] ..."
        text = str(error)
        for candidate in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG):
            if f"errno {candidate}]" in text or os.strerror(candidate) in text:
                code = candidate
                break
    if code in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"{location}: no space left on the device while writing; nothing was published")
    if code in _CANNOT_CREATE:
        return OutputError(f"{location}: cannot create the output ({os.strerror(code)})")
    return StorageError(f"{location}: I/O error while writing ({_first_line(error)}); nothing was published")


def check_row_count(location: str, rows: int, expected_rows: int, what: str = "file") -> None:
    """The footer of what was written must hold every row scored, or nothing is published."""
    if rows != expected_rows:
        raise StorageError(
            f"{location}: the written {what} holds {rows} rows, expected {expected_rows}; "
            f"nothing was published"
        )


@contextmanager
def signals_held():
    """Hold SIGTERM and SIGINT while the output is renamed, so a rename is never half-done."""
    held = {signal.SIGTERM, signal.SIGINT}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError):  # not the main thread, or no pthreads
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
            raise write_error(location, error) from None

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
            raise write_error(self.location, error) from None
        check_row_count(self.location, rows, expected_rows)
        try:
            with signals_held():
                os.replace(self.temporary, self.path)
                _fsync_path(self.directory, directory=True)
        except OSError as error:
            raise write_error(self.location, error) from None

    def abort(self) -> None:
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass


def open_sink(location: str):
    """The sink for OUTPUT: a local temporary file, or a multipart upload on an object store."""
    if storage.is_uri(location):
        from score.remote_sink import RemoteSink

        return RemoteSink(location)
    return LocalSink(location)


def write_small_file(location: str, data: bytes) -> None:
    """Write a small file (summary, _SUCCESS) with the same all-or-nothing guarantee."""
    if storage.is_uri(location):
        from score.remote_sink import write_small_object

        write_small_object(location, data)
        return
    sink = LocalSink(location)
    try:
        with open(sink.temporary, "wb") as handle:
            handle.write(data)
        _fsync_path(sink.temporary)
        with signals_held():
            os.replace(sink.temporary, sink.path)
            _fsync_path(sink.directory, directory=True)
    except OSError as error:
        sink.abort()
        raise write_error(location, error) from None
    except BaseException:
        sink.abort()
        raise
