"""A run with --output-format delta: every input file's scored rows into one Delta Lake table,
committed once after the run's floors (score.delta_output does the table's side)."""

from __future__ import annotations

import sys
import time

from score import delta_output, inputs
from score import model as models
from score.core import (
    ScoreOptions,
    check_input_schema,
    new_cache,
    output_schema,
    score_batch_with_stats,
)
from score.errors import InvalidInput, InvalidRow
from score.job import (
    FileResult,
    JobConfig,
    RunState,
    batch_rows,
    check_gates,
    drift_report,
    no_baseline_warning,
)


def run(scorer: models.Scorer, config: JobConfig, state: RunState) -> None:
    """--output-format delta: every input file's scored rows into one table, committed once
    (score.delta_output), after the run's floors; a transaction already committed publishes
    nothing (exit 0, said on stderr)."""
    txn = delta_output.parse_txn(config.txn_id)
    target = delta_output.inspect(config.output, config.mode, txn)
    pairs, _ = inputs.plan(config.input, config.output, config.input_version, output_is_table=True)
    done = delta_output.already_committed(target, txn)
    if done is not None:
        state.output_table = {"format": "delta", "location": config.output, "version": target.version,
                              "committed": False, "transaction": str(txn), "already_committed": True}
        state.warnings.append(done)
        return
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
        version = delta_output.write(target, written, batches(), config.mode, txn, floors,
                                     threaded=config.threaded_io)
    finally:
        state.drift = drift_report(scorer, state.stats)
    if version is None:  # another run committed the same transaction meanwhile
        state.output_table = {"format": "delta", "location": config.output, "version": None,
                              "committed": False, "transaction": str(txn), "already_committed": True}
        state.warnings.append(f"{config.output}: transaction {txn} was committed by another run "
                              f"while this one scored; nothing was published")
        return
    state.output_table = {"format": "delta", "location": config.output, "version": version,
                          "committed": True, "mode": config.mode or "create",
                          "transaction": str(txn) if txn is not None else None}
    if config.progress != "none":  # the one line a file's reporter says, for the table
        rows, invalid = sum(r.rows for r in state.files), sum(r.rows_invalid for r in state.files)
        print(f"scored {config.input} -> {config.output}: {rows:,} rows ({invalid:,} invalid), "
              f"committed as version {version} of the Delta Lake table", file=sys.stderr)
    if models.baseline(scorer) is None:
        state.warnings.append(no_baseline_warning(scorer))


def check_input_schema_of(location: str, source, scorer: models.Scorer, options: ScoreOptions) -> None:
    """check_input_schema, the failure naming the input."""
    try:
        check_input_schema(source.schema_arrow, scorer, options)
    except InvalidInput as error:
        raise InvalidInput(f"{location}: {error}") from None
