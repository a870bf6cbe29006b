"""Where files live: plain paths on a local disk, or URIs that pyarrow's file systems resolve.

Everything that touches a file system for reading goes through here, so that every failure is
turned into one named error with the documented exit code, whatever the store. Failures while
writing are mapped here too (``write_error``), for the sinks and for the job's checks of OUTPUT.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import urllib.parse
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from score.errors import (
    InputMissing,
    InputPermission,
    InvalidInput,
    OutputError,
    SeqscoreError,
    StorageError,
    first_line,
)

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def is_uri(location: str) -> bool:
    return bool(_URI.match(location)) and not location.startswith("file://")


def local_path(location: str) -> str:
    """The local path for a plain path or a file:// URI."""
    if location.startswith("file://"):
        return location[len("file://") :]
    return location


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The file system and the path within it.

    Object stores are resolved once per bucket: pyarrow's from_uri may look up the bucket's
    region with a request, and a run resolves the same bucket for every file it touches.
    """
    if not is_uri(location):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(location))
    parts = urllib.parse.urlsplit(location)
    try:
        if parts.scheme in _BUCKET_SCHEMES and not parts.query and parts.netloc:
            filesystem = _bucket_filesystem(f"{parts.scheme}://{parts.netloc}")
            return filesystem, parts.netloc + urllib.parse.unquote(parts.path)
        return pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as error:
        raise InputMissing(f"{location}: cannot resolve this URI ({first_line(error)})") from None
    except OSError as error:
        raise read_error(location, error) from None


# Schemes whose paths are BUCKET/KEY, so that one file system serves a whole bucket.
_BUCKET_SCHEMES = {"s3", "gs", "gcs"}


@functools.lru_cache(maxsize=32)
def _bucket_filesystem(root: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(root)[0]


def join(location: str, relative: str) -> str:
    """``relative`` under a directory; a URI keeps its query (``?endpoint_override=...``)."""
    if is_uri(location):
        parts = urllib.parse.urlsplit(location)
        return parts._replace(path=parts.path.rstrip("/") + "/" + relative).geturl()
    return os.path.join(location, relative)


def read_error(location: str, error: BaseException) -> Exception:
    """Map an exception raised while reading ``location`` to a named error."""
    text = str(error)
    code = getattr(error, "errno", None)
    if isinstance(error, FileNotFoundError) or code == errno.ENOENT:
        return InputMissing(f"{location}: no such file")
    if isinstance(error, PermissionError) or code in (errno.EACCES, errno.EPERM):
        return InputPermission(f"{location}: permission denied")
    if isinstance(error, IsADirectoryError):
        return InvalidInput(f"{location}: is a directory; expected a file")
    if any(marker in text for marker in _MISSING):
        return InputMissing(f"{location}: no such object or bucket ({first_line(error)})")
    if any(marker in text for marker in DENIED):
        return InputPermission(f"{location}: permission denied ({first_line(error)})")
    what = "storage or network error" if is_uri(location) else "I/O error"
    return StorageError(f"{location}: {what} while reading ({first_line(error)})")


# How pyarrow's object-store clients spell "not there" and "not allowed" in their errors.
_MISSING = ("NoSuchBucket", "NO_SUCH_BUCKET", "NoSuchKey", "NO_SUCH_KEY", "NOT_FOUND",
            "RESOURCE_NOT_FOUND", "Path does not exist", "Bucket does not exist")
DENIED = ("ACCESS_DENIED", "AccessDenied", "Forbidden", "HTTP 403", "response code 403",
           "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH",
           "SignatureDoesNotMatch")


def write_error(location: str, error: BaseException) -> Exception:
    """Map an exception raised while writing ``location``: 73 when OUTPUT cannot be created, else 74."""
    if is_uri(location):
        return _store_write_error(location, error)
    return _disk_write_error(location, error)


# Errors that mean "this OUTPUT cannot be created here" rather than "the disk failed".
_DISK_CANNOT_CREATE = {errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                       errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}


def _disk_write_error(location: str, error: BaseException) -> Exception:
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
    if code in _DISK_CANNOT_CREATE:
        return OutputError(f"{location}: cannot create the output ({os.strerror(code)})")
    return StorageError(f"{location}: I/O error while writing ({first_line(error)}); nothing was published")


# Text of pyarrow's errors (AWS error names, HTTP codes) that mean "cannot create OUTPUT here".
_STORE_CANNOT_CREATE = ("NoSuchBucket", "NO_SUCH_BUCKET", "Bucket does not exist", "RESOURCE_NOT_FOUND")


def _store_write_error(location: str, error: BaseException) -> Exception:
    if isinstance(error, SeqscoreError):
        return error
    text = str(error)
    # Without the request id, which makes every store error unique.
    line = re.sub(r"\s*\(Request ID: [^)]*\)", "", first_line(error))
    if any(marker in text for marker in ("NO_SUCH_BUCKET", "NoSuchBucket")):
        bucket = urllib.parse.urlsplit(location).netloc
        return OutputError(f"{location}: cannot create the output (no such bucket '{bucket}')")
    if isinstance(error, PermissionError) or any(marker in text for marker in DENIED):
        return OutputError(f"{location}: cannot create the output: permission denied ({line})")
    if isinstance(error, FileNotFoundError) or any(marker in text for marker in _STORE_CANNOT_CREATE):
        return OutputError(f"{location}: cannot create the output ({line})")
    return StorageError(f"{location}: storage or network error while writing ({line}); nothing was published")


@dataclass(frozen=True)
class Entry:
    location: str  # as given, or joined under the directory that was given
    relative: str  # path under the directory that was given ('' for a single file)


def kind(location: str) -> str:
    """'file', 'directory', or raise InputMissing."""
    filesystem, path = resolve(location)
    try:
        info = filesystem.get_file_info(path)
    except OSError as error:
        raise read_error(location, error) from None
    if info.type == pafs.FileType.NotFound:
        raise InputMissing(f"{location}: {_what_is_missing(filesystem, path, location)}")
    if info.type == pafs.FileType.Directory:
        return "directory"
    return "file"


def _what_is_missing(filesystem: pafs.FileSystem, path: str, location: str) -> str:
    """'no such bucket' when the bucket itself is absent: the likelier typo to look for."""
    if urllib.parse.urlsplit(location).scheme in _BUCKET_SCHEMES and "/" in path.strip("/"):
        bucket = path.strip("/").split("/")[0]
        try:
            if filesystem.get_file_info(bucket).type == pafs.FileType.NotFound:
                return f"no such bucket '{bucket}'"
        except OSError:
            pass  # the question was only for a better message
        return "no such object or prefix"
    return "no such file or directory"


def exists(location: str) -> bool:
    filesystem, path = resolve(location)
    try:
        return filesystem.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as error:
        raise read_error(location, error) from None


def is_directory(location: str, for_output: bool = False) -> bool:
    """Whether ``location`` is a directory; ``for_output``: a failure means OUTPUT (73, 74)."""
    filesystem, path = resolve(location)
    try:
        return filesystem.get_file_info(path).type == pafs.FileType.Directory
    except OSError as error:
        if for_output:
            raise write_error(location, error) from None
        raise read_error(location, error) from None


def _hidden(relative: str) -> bool:
    # Spark, Hive and pyarrow datasets all ignore names starting with '_' or '.'
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def list_tree(location: str) -> list[str]:
    """Every path under a directory, relative to it, directories ending with '/' (one listing,
    also on a store), in sorted order."""
    filesystem, path = resolve(location)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as error:
        raise read_error(location, error) from None
    prefix = path.rstrip("/") + "/"
    relatives = []
    for info in infos:
        if info.path.startswith(prefix) and info.type in (pafs.FileType.File, pafs.FileType.Directory):
            relative = info.path[len(prefix) :]
            relatives.append(relative + "/" if info.type == pafs.FileType.Directory else relative)
    return sorted(relatives)


def parquet_entries(location: str, relatives: list[str]) -> list[Entry]:
    """The *.parquet files of a list_tree listing, skipping hidden names."""
    return [Entry(join(location, relative), relative) for relative in relatives
            if relative.endswith(".parquet") and not _hidden(relative)]


def list_parquet(location: str) -> list[Entry]:
    """Every *.parquet file under a directory, in sorted order, skipping hidden names."""
    return parquet_entries(location, list_tree(location))


def read_bytes(location: str) -> bytes:
    """Read a whole (small) file: the model and its checksum."""
    if not is_uri(location):
        path = local_path(location)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as error:
            raise read_error(location, error) from None
    filesystem, path = resolve(location)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except OSError as error:
        raise read_error(location, error) from None


def open_input(location: str) -> pa.NativeFile:
    """A random-access file for the Parquet reader (streamed by range requests on stores)."""
    if not is_uri(location):
        try:
            return pa.OSFile(local_path(location), "rb")
        except OSError as error:
            raise read_error(location, error) from None
    filesystem, path = resolve(location)
    try:
        return filesystem.open_input_file(path)
    except OSError as error:
        raise read_error(location, error) from None
