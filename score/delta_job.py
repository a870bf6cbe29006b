"""A run with --output-format delta: every input file's scored rows into one Delta Lake table,
committed once after the run's floors (score.delta_output does the table's side)."""

from __future__ import annotations

import sys
import time

import pyarrow as pa

from score import delta_output, inputs, storage
from score import model as models
from score.core import (
    ScoreOptions,
    check_input_schema,
    new_cache,
    output_schema,
    score_batch_with_stats,
)
from score.delta_files import DataFiles
from score.errors import InvalidInput, InvalidRow
from score.job import (
    FileResult,
    JobConfig,
    RunState,
    batch_rows,
    check_gates,
    drift_report,
    no_baseline_warning,
    run_keyed,
)
from score.keyed_files import CountedRows


def run(scorer: models.Scorer, config: JobConfig, state: RunState) -> None:
    """--output-format delta: every input file's scored rows into one table, committed once
    (score.delta_output), after the run's floors; a transaction already committed publishes
    nothing (exit 0, said on stderr)."""
    txn = delta_output.parse_txn(config.txn_id)
    target = delta_output.inspect(config.output, config.mode, txn)
    pairs, _ = inputs.plan(config.input, config.output, config.input_version, output_is_table=True)
    done = delta_output.already_committed(target, txn)
    if done is not None and config.key is not None:
        check_state_published(config, done)
    if done is not None:
        state.output_table = delta_output.table_record(config.output, target.version, config.mode, txn, False)
        state.warnings.append(done)
        return
    if config.key is not None:
        version = _keyed_into_table(scorer, config, state, target, txn, pairs)
    else:
        version = _into_table(scorer, config, state, target, txn, pairs)
        if models.baseline(scorer) is None:  # (run_keyed says it itself)
            state.warnings.append(no_baseline_warning(scorer))
    state.output_table = delta_output.table_record(config.output, version, config.mode, txn, version is not None)
    if version is None:  # another run committed the same transaction meanwhile
        state.warnings.append(delta_output.committed_meanwhile(config.output, txn))
        return
    if config.progress != "none":  # the one line a file's reporter says, for the table
        rows, invalid = sum(r.rows for r in state.files), sum(r.rows_invalid for r in state.files)
        print(f"scored {config.input} -> {config.output}: {rows:,} rows ({invalid:,} invalid), "
              f"committed as version {version} of the Delta Lake table", file=sys.stderr)


def _into_table(scorer: models.Scorer, config: JobConfig, state: RunState, target: delta_output.Target,
                txn: delta_output.Transaction | None, pairs: list[tuple[str, str, str]]) -> int | None:
    """Every input file's scored rows streamed into the table's files (delta_output.write),
    committed after the floors; the version committed, or None (committed meanwhile)."""
    sources = [(location, inputs.open_source(location, config.input_version)) for location, _, _ in pairs]
    for _, source in sources:
        if hasattr(source, "describe"):  # a Delta Lake table's snapshot (score.delta)
            state.input_table = source.describe()
    schemas = []
    for location, source in sources:
        check_input_schema_of(location, source, scorer, config.options)
        schemas.append(output_schema(source.schema_arrow, config.options))
    schema = schemas[0]
    for (location, _), other in zip(sources, schemas):
        if not other.equals(schema):
            raise InvalidInput(f"{location}: its columns differ from {sources[0][0]}'s; one table "
                               f"takes one schema (score the files apart, or align them)")
    if target.exists and config.mode == "append":
        delta_output.check_schema(target, schema)
    written = delta_output.file_schema(target, schema, config.mode)
    cache = new_cache(scorer, config.options)

    def batches():
        for location, source in sources:
            started, rows, invalid = time.perf_counter(), 0, 0
            for batch in source.iter_batches(batch_size=batch_rows(source, scorer, config)):
                try:
                    scored, batch_stats = score_batch_with_stats(scorer, batch, config.options, cache)
                except InvalidRow as error:
                    state.rows_in += error.row + 1
                    raise InvalidInput(f"{location}: row {rows + error.row}: {error.detail}") from None
                state.stats.merge(batch_stats)
                state.rows_in += batch.num_rows
                rows += batch.num_rows
                invalid += int(batch_stats.rows - batch_stats.reason_counts[0])
                yield delta_output.conform(scored, written, config.output)
            state.files.append(FileResult(location, config.output, rows, invalid,
                                          time.perf_counter() - started))

    def floors() -> None:
        state.drift = drift_report(scorer, state.stats)
        check_gates(config.input, scorer, state.stats, config)

    try:
        return delta_output.write(target, written, batches(), config.mode, txn, floors,
                                  threaded=config.threaded_io)
    finally:
        state.drift = drift_report(scorer, state.stats)


def check_state_published(config: JobConfig, done: str) -> None:
    """A keyed run whose transaction is committed publishes nothing, when the run that committed
    it left its state at --state-out (it publishes the state first); else the chain of states
    would break there (65)."""
    from score import state_store

    if not storage.exists(storage.join(config.state_out, state_store.MANIFEST)):
        raise InvalidInput(f"{done.removesuffix('; nothing was published')}, but --state-out "
                           f"{config.state_out} holds no state: the run that committed it wrote its "
                           f"state elsewhere; give that run's --state-out, or a new --txn-id VERSION")


def _keyed_into_table(scorer: models.Scorer, config: JobConfig, state: RunState,
                      target: delta_output.Target, txn: delta_output.Transaction | None,
                      pairs: list[tuple[str, str, str]]) -> int | None:
    """--key with --output-format delta: score.keyed_job with every file's rows into the table
    (TableOutput), committed once after the state is published; the version committed, or None
    (committed meanwhile)."""
    from score import keyed_checks

    keyed_checks.check_model(scorer)
    state.keyed = keyed_checks.KeyedRecord()
    made: list[TableOutput] = []

    def table(files) -> TableOutput:
        schema = files[0].scored_schema
        for file in files[1:]:
            if not file.scored_schema.equals(schema):
                raise InvalidInput(f"{file.input}: its columns differ from {files[0].input}'s; one table "
                                   f"takes one schema (score the files apart, or align them)")
        if target.exists and config.mode == "append":
            delta_output.check_schema(target, schema)
        made.append(TableOutput(target, delta_output.file_schema(target, schema, config.mode), config.mode, txn))
        return made[0]

    run_keyed(scorer, config, state, pairs, False, table)
    return made[0].version


class TableOutput:
    """A keyed run's OUTPUT as a Delta Lake table: every input file's scored rows into the
    table's data files (score.delta_files), one commit when score.keyed_job calls commit()."""

    def __init__(self, target: delta_output.Target, schema: pa.Schema, mode: str | None,
                 txn: delta_output.Transaction | None) -> None:
        self.target, self.schema, self.mode, self.txn = target, schema, mode, txn
        self.files = DataFiles(target.location, schema)
        self.version: int | None = None

    def open(self, file) -> TableFile:
        return TableFile(self, file.input, file.rows)

    def commit(self) -> None:
        self.version = delta_output.commit_files(self.target, self.files, self.mode, self.txn)

    def abort(self) -> None:
        self.files.abort()


class TableFile(CountedRows):
    """One input file's rows in a TableOutput, as score.keyed_job writes a KeyedOutput."""

    def __init__(self, table: TableOutput, input_location: str, rows: int) -> None:
        self.table, self.input, self.rows = table, input_location, rows
        self.location = table.target.location

    def write(self, batch: pa.RecordBatch) -> None:
        try:
            self.table.files.write_batch(delta_output.conform(batch, self.table.schema, self.location))
        except OSError as error:
            raise storage.write_error(self.location, error) from None
        self.count(batch)

    def close(self, metadata: dict[str, str]) -> None:
        """Nothing to close: the table's files close at commit; the rows must be the footer's."""
        self.check_rows()

    def abort(self) -> None:
        self.table.abort()


def check_input_schema_of(location: str, source, scorer: models.Scorer, options: ScoreOptions) -> None:
    """check_input_schema, the failure naming the input."""
    try:
        check_input_schema(source.schema_arrow, scorer, options)
    except InvalidInput as error:
        raise InvalidInput(f"{location}: {error}") from None
