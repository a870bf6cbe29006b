"""Reading a Delta Lake table's snapshot: its live rows, never the dead files in its folder.

A Delta table is a folder of Parquet files plus `_delta_log/`, which says which files are live
at each version. delta-rs (the `deltalake` package, the `delta` extra: Rust, no JVM) replays
the log and hands back a pyarrow dataset of the live files, partition columns included, which
the job streams record batch by record batch as it streams a Parquet file. A snapshot offers
the few things the job asks of a pq.ParquetFile (its Arrow schema, its row count, its batches,
a fingerprint), so the local job, --key, --labels and the summary take it unchanged.

What delta-rs cannot read exactly (deletion vectors and other reader features it does not
support) is refused with one line (exit 65), never scored with deleted rows.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from score import storage
from score.errors import InputMissing, InvalidInput, StorageError, first_line

EXTRA = "pip install -e '.[delta]'"  # what installs the support (make setup does)
LOG = "_delta_log"


def available() -> bool:
    """Whether delta-rs is installed (the `delta` extra)."""
    try:
        import deltalake  # noqa: F401
    except ImportError:
        return False
    return True


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


class Snapshot:
    """One version of a Delta table, read like a pq.ParquetFile (schema_arrow, metadata,
    iter_batches, close)."""

    def __init__(self, location: str, table, version: int, latest: int) -> None:
        self.location = location
        self.version = version
        self.latest = latest
        try:
            self.dataset = table.to_pyarrow_dataset()
        except Exception as error:  # noqa: BLE001  (delta-rs' exceptions, named below)
            raise translate(location, error) from None
        self.files = len(self.dataset.files) if hasattr(self.dataset, "files") else 0
        self.schema_arrow: pa.Schema = self.dataset.schema
        self.metadata = SnapshotMetadata(self.dataset.count_rows(), location, version, self.files)

    def iter_batches(self, batch_size: int, columns: list[str] | None = None, use_threads: bool = True):
        """The snapshot's record batches, file by file (bounded memory, as a Parquet file)."""
        return self.dataset.to_batches(columns=columns, batch_size=batch_size, use_threads=use_threads,
                                       batch_readahead=2, fragment_readahead=1)

    def describe(self) -> dict[str, Any]:
        """The summary's `input_table`."""
        return {"format": "delta", "location": self.location, "version": self.version,
                "latest_version": self.latest, "files": self.files, "rows": self.metadata.num_rows}

    def close(self) -> None:
        """Nothing held open between batches."""


def open_snapshot(location: str, version: int | None = None) -> Snapshot:
    """The table at ``version`` (None: its latest), or a named error: 65 for a log that cannot
    be read, a version past the latest or a reader feature delta-rs does not support; 74 for
    the storage; 2 without the extra."""
    if not available():
        raise InvalidInput(f"{location}: is a Delta Lake table; reading it needs the delta extra: {EXTRA}")
    from deltalake import DeltaTable

    options = storage_options(location)
    try:
        table = DeltaTable(table_uri(location), storage_options=options)
        latest = table.version()
    except Exception as error:  # noqa: BLE001  (delta-rs' exceptions, named below)
        raise translate(location, error) from None
    if version is not None and version != latest:
        if version > latest:
            raise InvalidInput(f"{location}: --input-version {version} is past the table's latest "
                               f"version, {latest}")
        try:
            table.load_as_version(version)
        except Exception as error:  # noqa: BLE001
            raise translate(location, error, version) from None
    return Snapshot(location, table, latest if version is None else version, latest)


def table_uri(location: str) -> str:
    """What delta-rs takes: an absolute local path, or the URI without its query."""
    if not storage.is_uri(location):
        return os.path.abspath(storage.local_path(location))
    return location.split("?", 1)[0]


def storage_options(location: str) -> dict[str, str]:
    """The job's object storage settings (score.storage's environment) as delta-rs takes them."""
    if not location.startswith("s3://"):
        return {}
    options = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN"):
        if os.environ.get(name):
            options[name] = os.environ[name]
    options.setdefault("AWS_REGION", options.get("AWS_DEFAULT_REGION", "us-east-1"))
    return options


def translate(location: str, error: BaseException, version: int | None = None) -> Exception:
    """delta-rs' failure as the job's named error, in one line."""
    from deltalake.exceptions import DeltaProtocolError, TableNotFoundError

    detail = first_line(error).removeprefix("Kernel error: ").removeprefix("Generic delta kernel error: ")
    if isinstance(error, TableNotFoundError):
        return InvalidInput(f"{location}: not a readable Delta Lake table ({detail})")
    if isinstance(error, DeltaProtocolError):
        return InvalidInput(f"{location}: the table uses a feature this reader does not support "
                            f"({detail}); nothing was scored")
    text = str(error)
    if "contiguous commit" in text:  # a commit file missing between two others
        missing = re.search(r"_delta_log/(\d+\.json)", text)
        after = f" before {missing.group(1)}" if missing else ""
        return InvalidInput(f"{location}: the table's _delta_log cannot be read (a commit file is "
                            f"missing{after})")
    if "Json error" in text or "parsing" in text:
        return InvalidInput(f"{location}: the table's _delta_log cannot be read ({detail[:300]})")
    if isinstance(error, OSError) or "Object Store" in text or "ObjectStore" in text:
        return StorageError(f"{location}: cannot read the table ({detail})")
    at = f" at version {version}" if version is not None else ""
    return InvalidInput(f"{location}: the Delta Lake table cannot be read{at} ({detail[:300]})")
