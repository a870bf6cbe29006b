"""The job's inputs: which files to score into which outputs, and opening each as Parquet with
every reader failure named (corrupt data 65, storage 74)."""

from __future__ import annotations

import os

import pyarrow.parquet as pq

from score import delta, storage, tables
from score.errors import (
    InputMissing,
    InvalidInput,
    OutputError,
    SeqscoreError,
    StorageError,
    UsageError,
    first_line,
)

# Limits on the Parquet footer's Thrift structures: a forged file cannot make the reader
# allocate gigabytes for metadata.
THRIFT_STRING_LIMIT = 64 << 20
THRIFT_CONTAINER_LIMIT = 1 << 20


def _same_location(first: str, second: str) -> bool:
    if storage.is_uri(first) or storage.is_uri(second):
        return first.rstrip("/") == second.rstrip("/")
    first, second = storage.local_path(first), storage.local_path(second)
    if os.path.exists(first) and os.path.exists(second):
        return os.path.samefile(first, second)
    return os.path.abspath(first) == os.path.abspath(second)


def _inside(child: str, parent: str) -> bool:
    if storage.is_uri(child) or storage.is_uri(parent):
        return child.rstrip("/").startswith(parent.rstrip("/") + "/")
    child = os.path.realpath(storage.local_path(child))
    parent = os.path.realpath(storage.local_path(parent))
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def plan(input_location: str, output_location: str, input_version: int | None = None,
         output_is_table: bool = False) -> tuple[list[tuple[str, str, str]], bool]:
    """(input, output, relative name) for each file, and whether this is directory mode. A
    Delta Lake table's folder is one input, read through its log (score.delta), like a file.
    ``output_is_table``: OUTPUT is one Delta table (score.delta_output), whatever INPUT is."""
    if _same_location(input_location, output_location):
        raise UsageError(f"OUTPUT is INPUT ({output_location}); choose another output path")
    if storage.kind(input_location) == "file":
        if input_version is not None:
            raise _version_needs_a_table(input_location)
        if not output_is_table and storage.is_directory(output_location, for_output=True):
            raise _output_is_directory(output_location)
        return [(input_location, output_location, "")], False
    if _inside(output_location, input_location):
        raise UsageError(
            f"OUTPUT {output_location} is inside INPUT {input_location}; a later run would score "
            f"its own output. Choose a directory outside the input"
        )
    listing = storage.list_tree(input_location)
    if tables.format_of(listing) == (tables.DELTA, "") and delta.available():
        if not output_is_table and storage.is_directory(output_location, for_output=True):
            raise OutputError(f"{output_location}: is a directory; INPUT is a Delta Lake table, "
                              f"so OUTPUT must be a file path")
        return [(input_location, output_location, "")], False
    if input_version is not None:
        raise _version_needs_a_table(input_location)
    tables.check_not_a_table(input_location, listing)
    entries = storage.parquet_entries(input_location, listing)
    if not entries:
        raise InputMissing(f"{input_location}: no *.parquet files in this directory")
    return [(entry.location, storage.join(output_location, entry.relative), entry.relative)
            for entry in entries], not output_is_table


def _version_needs_a_table(location: str) -> Exception:
    return UsageError(f"--input-version: {location} is not a Delta Lake table (no _delta_log/ in "
                      f"it); time travel reads a table's earlier version")


def open_source(location: str, version: int | None = None):
    """A Parquet file (open_parquet), or a Delta Lake table's snapshot at ``version`` (a
    score.delta.Snapshot, read like one)."""
    if delta.is_table(location):
        return delta.open_snapshot(location, version)
    return open_parquet(location)


def _output_is_directory(location: str) -> Exception:
    return OutputError(f"{location}: is a directory; INPUT is a file, so OUTPUT must be a file path")


def open_parquet(location: str) -> pq.ParquetFile:
    """Open a Parquet file with bounded Thrift sizes; any failure becomes a named error."""
    if not storage.is_uri(location):
        path = storage.local_path(location)
        try:
            if os.path.getsize(path) == 0:
                raise InvalidInput(f"{location}: the file is empty (0 bytes); expected a Parquet file")
        except OSError as error:
            raise storage.read_error(location, error) from None
    source = storage.open_input(location)
    try:
        return pq.ParquetFile(
            source,
            thrift_string_size_limit=THRIFT_STRING_LIMIT,
            thrift_container_size_limit=THRIFT_CONTAINER_LIMIT,
            arrow_extensions_enabled=False,
            page_checksum_verification=True,
            # On a store, fetch each row group's column chunks in a few coalesced range
            # requests rather than one per page; memory stays bounded by a row group.
            pre_buffer=storage.is_uri(location),
        )
    except Exception as error:  # noqa: BLE001  (every reader failure is classified below)
        source.close()
        raise read_failure(location, error) from None


def read_failure(location: str, error: BaseException) -> Exception:
    """A failure inside the Parquet reader: corrupt data (65) unless the storage failed (74)."""
    if isinstance(error, SeqscoreError):
        return error
    if isinstance(error, OSError) and getattr(error, "errno", None) is not None:
        return storage.read_error(location, error)
    if storage.is_uri(location) and isinstance(error, OSError):
        mapped = storage.read_error(location, error)
        if not isinstance(mapped, StorageError) or "AWS Error" in str(error):
            return mapped
    detail = first_line(error)
    if "magic bytes" in detail:
        return InvalidInput(f"{location}: not a Parquet file, or truncated (no Parquet footer: {detail})")
    return InvalidInput(f"{location}: corrupt or truncated Parquet file ({detail})")
