"""Writing the scored rows as a Delta Lake table (--output-format delta), committed once.

The scored batches stream into Parquet data files under the table's root, written by the job's
own writer (score.delta_files), and delta-rs commits them once at the end: a reader sees the
previous version or the new one, never a part. A run that fails commits nothing and removes its
files; a run that is killed leaves them as orphans a vacuum removes. delta-rs is imported only
for the table's side (what the table is now, the commit), never to hold the rows. `--txn-id APP:VERSION` records the application's transaction in that commit
(Delta's `txn` action): a rerun whose VERSION the table already holds for APP publishes
nothing and exits 0 saying so, which makes a retried daily append exactly-once.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from score import delta, delta_log, delta_prefetch, delta_types, pipeline, storage
from score.delta_files import DataFile, DataFiles
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
RUN_KEY = "seqscore.run"  # the commit's custom metadata: which run committed it
HISTORY = 20  # commits read back to find this run's (others may land right after it)


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


def check_flags(output_format: str, mode: str | None, txn: str | None) -> None:
    """The flags that only mean something with --output-format delta (exit 2)."""
    if output_format != "delta":
        for flag, value in (("--mode", mode), ("--txn-id", txn)):
            if value is not None:
                raise UsageError(f"{flag} applies to a Delta Lake OUTPUT: add --output-format delta")
        return
    if not delta.available():
        raise UsageError(f"--output-format delta needs the delta extra: {delta.EXTRA}")
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
    found = delta.ask_log(location, delta_prefetch.inspecting(location, txn.app if txn is not None else None))
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(found["schema"])))
    return Target(location, True, int(found["version"]), schema, found["recorded"])


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


def file_schema(target: Target, schema: pa.Schema, mode: str | None) -> pa.Schema:
    """The Arrow schema the data files are written in: an append's, the table's own; else the
    run's output in the types Delta keeps (score.delta_types)."""
    if target.exists and mode == "append" and target.schema is not None:
        return target.schema
    return delta_types.delta_schema(schema, target.location)


def conform(batch: pa.RecordBatch, schema: pa.Schema, location: str) -> pa.RecordBatch:
    """A scored batch in the files' schema (file_schema); values a type cannot hold are refused."""
    if batch.schema.equals(schema):
        return batch
    try:
        return batch.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as error:
        raise InvalidInput(f"{location}: the scored rows do not fit the table's column types "
                           f"({first_line(error)}); nothing was committed") from None


def write(target: Target, schema: pa.Schema, batches: Iterator[pa.RecordBatch], mode: str | None,
          txn: Transaction | None, finish: Callable[[], None], threaded: bool = True) -> int | None:
    """Write ``batches`` (in file_schema) as data files under the table and commit them once;
    ``finish`` runs after the last batch and before the commit (the run's floors: an exception
    there commits nothing, and the files written are removed). Returns the version committed,
    or None when another run committed ``txn`` meanwhile (nothing is committed then)."""
    files = DataFiles(target.location, schema)
    background = pipeline.BackgroundWriter(files) if threaded else None
    try:
        try:
            for batch in batches:
                background.write(batch) if background is not None else files.write_batch(batch)
            if background is not None:
                background.finish()
            files.finish()
        except OSError as error:
            raise storage.write_error(target.location, error) from None
        finish()
    except BaseException:
        if background is not None:
            try:
                background.finish()
            except BaseException:  # noqa: BLE001  (the first error is the one to report)
                pass
        files.abort()
        raise
    return commit_files(target, files, mode, txn)


def commit_files(target: Target, files: DataFiles, mode: str | None, txn: Transaction | None) -> int | None:
    """Close ``files`` and commit them (commit); when ``txn`` landed meanwhile, remove them.
    The batches' memory is handed back first: delta-rs comes in only now."""
    written = files.finish()
    pipeline.release_freed_memory()
    version = commit(target, files.schema, written, mode, txn)
    if version is None:
        files.abort()
    return version


def table_record(location: str, version: int | None, mode: str | None, txn: Transaction | None,
                 committed: bool) -> dict:
    """The summary's `output_table`: the version committed, or the one found already holding
    ``txn`` (None when another run committed it while this one scored)."""
    if committed:
        return {"format": "delta", "location": location, "version": version, "committed": True,
                "mode": mode or "create", "transaction": str(txn) if txn is not None else None}
    return {"format": "delta", "location": location, "version": version, "committed": False,
            "transaction": str(txn), "already_committed": True}


def committed_meanwhile(location: str, txn: Transaction | None) -> str:
    """The warning of a run whose transaction another run committed while it scored (exit 0)."""
    return f"{location}: transaction {txn} was committed by another run while this one scored; nothing was published"


def commit(target: Target, schema: pa.Schema, files: list[DataFile], mode: str | None,
           txn: Transaction | None) -> int | None:
    """One commit that adds ``files`` (written in ``schema`` under the table's root) with
    delta-rs: a new table, an append, or an overwrite that removes every file live before.
    Returns the version committed; None when the table has recorded ``txn`` since it was
    inspected (nothing committed). The local job and Spark's driver both commit here."""
    from deltalake import CommitProperties, DeltaTable
    from deltalake import Schema as DeltaSchema
    from deltalake import Transaction as DeltaTransaction
    from deltalake.transaction import AddAction, create_table_with_add_actions

    run = uuid.uuid4().hex  # finds this commit in the table's history
    properties = CommitProperties(
        custom_metadata={RUN_KEY: run},
        app_transactions=[DeltaTransaction(app_id=txn.app, version=txn.version)] if txn is not None else None)
    actions = [AddAction(file.path, file.size, {}, file.modified_ms, True,
                         json.dumps({"numRecords": file.rows})) for file in files]
    uri, options = delta_log.table_uri(target.location), delta_log.storage_options(target.location)
    try:
        if not target.exists:
            create_table_with_add_actions(uri, DeltaSchema.from_arrow(schema), actions, mode="error",
                                          storage_options=options, commit_properties=properties)
            table = DeltaTable(uri, storage_options=options)
        else:
            table = DeltaTable(uri, storage_options=options)
            recorded = table.transaction_version(txn.app) if txn is not None else None
            if recorded is not None and recorded >= txn.version:
                return None
            table.create_write_transaction(actions, mode or "append", schema, commit_properties=properties)
            table.update_incremental()
        return next(int(entry["version"]) for entry in table.history(HISTORY) if entry.get(RUN_KEY) == run)
    except SeqscoreError:
        raise
    except StopIteration:
        raise StorageError(f"{target.location}: the commit is not in the table's last {HISTORY} "
                           f"versions; read the table's history to see whether it landed") from None
    except Exception as error:  # noqa: BLE001  (delta-rs' exceptions, named)
        raise _write_failure(target.location, error) from None


def _write_failure(location: str, error: BaseException) -> SeqscoreError:
    text = first_line(error)
    if "CommitFailed" in type(error).__name__ or "conflict" in text.lower():
        return StorageError(f"{location}: the commit failed ({text}); nothing was committed, run again")
    if "Schema" in type(error).__name__:
        return InvalidInput(f"{location}: the table does not take this run's output ({text}); "
                            f"nothing was committed")
    return StorageError(f"{location}: cannot write the table ({text}); nothing was committed")
