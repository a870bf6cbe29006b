"""Writing the scored rows as a Delta Lake table (--output-format delta), committed once.

The scored batches stream into delta-rs's writer (`write_deltalake` over a record batch reader)
and the table gets one commit at the end: a reader sees the previous version or the new one,
never a part. A run that fails or is killed commits nothing; the files it wrote are orphans a
vacuum removes. `--txn-id APP:VERSION` records the application's transaction in that commit
(Delta's `txn` action): a rerun whose VERSION the table already holds for APP publishes
nothing and exits 0 saying so, which makes a retried daily append exactly-once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from score import delta, delta_log, storage
from score.errors import (
    InvalidInput,
    OutputError,
    SeqscoreError,
    StorageError,
    UsageError,
    first_line,
)

MODES = ("append", "overwrite")
TXN = re.compile(r"^(?P<app>[^:\s]+):(?P<version>\d+)$")
FILE_BYTES = 64 << 20  # one data file per 64 MB written: bounded memory in delta-rs's writer
ROW_GROUP_ROWS = 65_536


@dataclass(frozen=True)
class Transaction:
    """--txn-id APP:VERSION: an application id and an increasing integer (a run date, say)."""

    app: str
    version: int

    def __str__(self) -> str:
        return f"{self.app}:{self.version}"


def parse_txn(text: str | None) -> Transaction | None:
    if text is None:
        return None
    match = TXN.match(text)
    if match is None:
        raise UsageError(f"--txn-id {text!r}: expected APP:VERSION, an application id and a "
                         f"non-negative integer (for example daily-scores:20261203)")
    return Transaction(match["app"], int(match["version"]))


def check_flags(output_format: str, mode: str | None, txn: str | None, key: str | None) -> None:
    """The flags that only mean something with --output-format delta (exit 2)."""
    if output_format != "delta":
        for flag, value in (("--mode", mode), ("--txn-id", txn)):
            if value is not None:
                raise UsageError(f"{flag} applies to a Delta Lake OUTPUT: add --output-format delta")
        return
    if not delta.available():
        raise UsageError(f"--output-format delta needs the delta extra: {delta.EXTRA}")
    if key is not None:
        raise UsageError("--output-format delta with --key is not supported yet: write the scored "
                         "file, then append it to a table")
    parse_txn(txn)


@dataclass
class Target:
    """The OUTPUT table as the run found it."""

    location: str
    exists: bool
    version: int | None  # its version before the run
    schema: pa.Schema | None
    recorded: int | None  # the version --txn-id's APP has committed, None if none


def inspect(location: str, mode: str | None, txn: Transaction | None) -> Target:
    """Refuse what cannot be written (2, 65, 73) before anything is scored."""
    if storage.exists(location) and not delta.is_table(location):
        raise OutputError(f"{location}: exists and is not a Delta Lake table; choose a new path "
                          f"or an existing table")
    if not delta.is_table(location):
        return Target(location, False, None, None, None)
    if mode is None:
        raise UsageError(f"{location}: is a Delta Lake table already; say --mode append or --mode "
                         f"overwrite (neither is safe to guess)")
    from deltalake import DeltaTable

    try:
        table = DeltaTable(delta_log.table_uri(location),
                           storage_options=delta_log.storage_options(location))
        recorded = table.transaction_version(txn.app) if txn is not None else None
        schema = pa.schema(table.schema().to_arrow())
        return Target(location, True, table.version(), schema, recorded)
    except Exception as error:  # noqa: BLE001  (delta-rs' exceptions, named)
        raise delta_log.translate(location, error) from None


def already_committed(target: Target, txn: Transaction | None) -> str | None:
    """The line for a rerun whose transaction the table holds (exit 0, nothing published);
    InvalidInput (65) for a VERSION below the recorded one."""
    if txn is None or target.recorded is None:
        return None
    if txn.version < target.recorded:
        raise InvalidInput(f"{target.location}: --txn-id {txn}: the table has recorded version "
                           f"{target.recorded} for {txn.app}, later than {txn.version}; versions "
                           f"of one application only increase")
    if txn.version == target.recorded:
        return (f"{target.location}: transaction {txn} is already committed (table version "
                f"{target.version}); nothing was published")
    return None


def _plain(data_type: pa.DataType) -> str:
    """A type as Delta keeps it: list item names, string and list widths aside."""
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or \
            pa.types.is_fixed_size_list(data_type):
        return f"list<{_plain(data_type.value_type)}>"
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or \
            str(data_type) == "string_view":
        return "string"
    return str(data_type)


def check_schema(target: Target, schema: pa.Schema) -> None:
    """An append must bring the table's columns with their types (65, naming the columns)."""
    if target.schema is None:
        return
    have = {field_.name: _plain(field_.type) for field_ in target.schema}
    bring = {field_.name: _plain(field_.type) for field_ in schema}
    missing = [name for name in have if name not in bring]
    extra = [name for name in bring if name not in have]
    changed = [f"{name} ({bring[name]}, the table has {have[name]})" for name in bring
               if name in have and have[name] != bring[name]]
    problems = []
    if missing:
        problems.append(f"the table's column(s) {', '.join(missing)} are not in this run's output")
    if extra:
        problems.append(f"this run's column(s) {', '.join(extra)} are not in the table")
    if changed:
        problems.append(f"other types: {', '.join(changed)}")
    if problems:
        raise InvalidInput(f"{target.location}: --mode append: the output's schema differs from "
                           f"the table's: {'; '.join(problems)}; nothing was committed")


def write(target: Target, schema: pa.Schema, batches: Iterator[pa.RecordBatch], mode: str | None,
          txn: Transaction | None, finish: Callable[[], None]) -> int:
    """Stream ``batches`` into the table and commit once; ``finish`` runs after the last batch
    and before the commit (the run's floors: an exception there commits nothing). Returns the
    version committed."""
    from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
    from deltalake import Transaction as DeltaTransaction

    failure: list[BaseException] = []

    def stream() -> Iterator[pa.RecordBatch]:
        try:
            yield from batches
            finish()
        except BaseException as error:  # noqa: BLE001  (kept, raised again as it was)
            failure.append(error)
            raise

    properties = CommitProperties(app_transactions=[DeltaTransaction(app_id=txn.app, version=txn.version)]
                                  if txn is not None else None)
    try:
        write_deltalake(
            delta_log.table_uri(target.location),
            pa.RecordBatchReader.from_batches(schema, stream()),
            mode=(mode or "error") if target.exists else "error",
            schema_mode="overwrite" if target.exists and mode == "overwrite" else None,
            storage_options=delta_log.storage_options(target.location),
            target_file_size=FILE_BYTES,
            writer_properties=WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="SNAPPY"),
            commit_properties=properties,
        )
    except SeqscoreError:
        raise
    except BaseException as error:  # noqa: BLE001  (delta-rs wraps what the stream raised)
        if failure:
            raise failure[0] from None
        if isinstance(error, KeyboardInterrupt):
            raise
        raise _write_failure(target.location, error) from None
    try:
        return DeltaTable(delta_log.table_uri(target.location),
                          storage_options=delta_log.storage_options(target.location)).version()
    except Exception as error:  # noqa: BLE001
        raise delta_log.translate(target.location, error) from None


def _write_failure(location: str, error: BaseException) -> SeqscoreError:
    text = first_line(error)
    if "CommitFailed" in type(error).__name__ or "conflict" in text.lower():
        return StorageError(f"{location}: the commit failed ({text}); nothing was committed, run again")
    if "Schema" in type(error).__name__:
        return InvalidInput(f"{location}: the table does not take this run's output ({text}); "
                            f"nothing was committed")
    return StorageError(f"{location}: cannot write the table ({text}); nothing was committed")
