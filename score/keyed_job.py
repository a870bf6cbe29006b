"""A run with --key: each row holds a key's new steps, scored from the state the key's history
left (--state-in), and every key's state after the run is written to --state-out.

The state is sorted by key and streamed (score.state_store), so memory never grows with the
keys it holds: the rows are taken in key order and merged with it. An input already sorted by
key (the run checks, reading the key column first) is streamed too, batch by batch; any other
input is held in memory, sorted, and its scored rows put back in input order before writing.

Nothing is published until everything is scored: then the state, then OUTPUT (and _SUCCESS in
directory mode). A run killed before leaves both as they were; one killed between the two
renames leaves the new state beside the old OUTPUT, and its retry (same INPUT and --state-in)
writes the same state and OUTPUT again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from score import inputs, keyed, keyed_files, keyed_spill, state_store, storage
from score.batch import BatchStats
from score.cache import new_cache
from score.columns import check_input_schema
from score.encoding import DUPLICATE_KEY, NULL_KEY
from score.errors import InvalidInput, InvalidRow
from score.job import (
    STEPS_PER_BATCH,
    SUCCESS_FILE,
    JobConfig,
    RunState,
    batch_rows,
    output_metadata,
)
from score.keyed_checks import KeyedRecord, check_model
from score.keyed_files import READ_ROWS, KeyedOutput
from score.model import Scorer
from score.sink import write_small_file
from score.state_store import StateChunk, StateCursor, StateLayout, StateReader
from score.state_writer import StateWriter
from score.summary import utc_now

# Rows scored at a time (at most; long rows fewer, as many as hold the job's STEPS_PER_BATCH
# steps), and entries of the state taken at a time: each piece's states (in, out and merged)
# stay a few MB for the benchmark's model.
KEYED_BATCH_ROWS = 16_384
# Rows per window when the spilled rows are merged back in input order: each window is held
# about four times (the window, in order, the file's batch beside it, the writer's row group).
MERGE_ROWS = 8_192
STATE_ROWS = state_store.ROWS_PER_CHUNK


@dataclass
class _File:
    """One input file of the run."""

    input: str
    output: str
    rows: int
    key_type: pa.DataType
    scored_schema: pa.Schema


class KeyedRun:
    """One run with --key: the first pass over the keys, the scoring in key order, the state."""

    def __init__(self, scorer: Scorer, config: JobConfig, state: RunState) -> None:
        self.scorer, self.config, self.options, self.state = scorer, config, config.options, state
        self.record: KeyedRecord = state.keyed
        self.key = config.key
        self.column = config.options.column(scorer)
        self.outputs: list[KeyedOutput] = []
        self.table = None  # a Delta Lake OUTPUT (score.delta_job.TableOutput), else one file per input
        # One cache for the whole run, as without --key: a new key's sequence scored in one
        # batch is not scored again in the next (with the state it ends in).
        self.cache = new_cache(scorer, config.options, states=True)

    # 1. The key column's first pass: types, order, fingerprint --------------------------------
    def scan(self, pairs: list[tuple[str, str, str]]) -> tuple[list[_File], bool]:
        """Each file's key type and scored schema, and whether the keys ascend strictly through
        every file (then the input is streamed)."""
        files, ascending, previous = [], True, None
        digest = hashlib.sha256()
        for input_location, output_location, relative in pairs:
            parquet = inputs.open_source(input_location, self.config.input_version)
            if hasattr(parquet, "describe"):  # a Delta Lake table's snapshot (score.delta)
                self.state.input_table = parquet.describe()
            try:
                schema = keyed_files.schema_of(parquet, input_location)
                self._check_schema(schema, input_location)
                key_type = state_store.check_key_type(schema.field(self.key).type, self.key, input_location)
                if files and key_type != files[0].key_type:
                    raise InvalidInput(
                        f"{input_location}: key column {self.key!r} is {key_type} but "
                        f"{files[0].input} has {files[0].key_type}; every file of a run needs one key type")
                digest.update(keyed_files.fingerprint_part(relative, parquet))
                for batch in keyed_files.batches(parquet, input_location, READ_ROWS, [self.key]):
                    if not ascending:
                        break
                    column = batch.column(0)
                    if column.null_count:
                        ascending = False
                        break
                    keys = state_store.key_numpy(column)
                    if keys.size:
                        ascending = ((previous is None or bool(keys[0] > previous))
                                     and bool(np.all(keys[1:] > keys[:-1])))
                        previous = keys[-1]
                files.append(_File(input_location, output_location, parquet.metadata.num_rows, key_type,
                                   keyed.output_schema(schema, self.options)))
            finally:
                parquet.close()
        self.record.input_fingerprint = digest.hexdigest()
        return files, ascending

    def _check_schema(self, schema: pa.Schema, location: str) -> None:
        try:
            check_input_schema(schema, self.scorer, self.options)
        except InvalidInput as error:
            raise InvalidInput(f"{location}: {error}") from None
        if schema.get_field_index(self.key) < 0:
            found = ", ".join(schema.names) or "none"
            raise InvalidInput(f"{location}: key column {self.key!r} not found (the file has: {found}); "
                               f"name the entity column with --key")
        if keyed.STEPS_BEFORE in schema.names:
            raise InvalidInput(f"{location}: the input already has a column named "
                               f"{keyed.STEPS_BEFORE!r}, which the output adds; rename or drop it")

    # 2. Scoring in key order ------------------------------------------------------------------
    def run(self, files: list[_File], ascending: bool, layout: StateLayout, cursor: StateCursor,
            writer: StateWriter) -> None:
        self.layout, self.cursor, self.writer = layout, cursor, writer
        self.record.input_sorted = ascending
        if ascending:
            self._run_streamed(files)
        else:
            self._run_in_memory(files)
        for rest in cursor.rest():  # the keys after the input's last: carried as they were
            writer.write(rest)

    def _open(self, file: _File) -> KeyedOutput:
        output = self.table.open(file) if self.table is not None else \
            KeyedOutput(file.input, file.output, file.rows, file.scored_schema)
        self.outputs.append(output)
        return output

    def _run_streamed(self, files: list[_File]) -> None:
        """Input sorted by key: each batch is a run of ascending keys, scored as it is read."""
        for file in files:
            output = self._open(file)
            parquet = inputs.open_source(file.input, self.config.input_version)
            try:
                done = 0
                rows = self.config.batch_size or min(batch_rows(parquet, self.scorer, self.config),
                                                     KEYED_BATCH_ROWS)
                for batch in keyed_files.batches(parquet, file.input, rows):
                    keys = state_store.key_numpy(batch.column(self.key))
                    problems = np.zeros(batch.num_rows, dtype=np.int8)
                    for scored in self._score(batch, keys, problems, None, None,
                                              lambda row, f=file, d=done: (f.input, d + row)):
                        output.write(scored)
                    done += batch.num_rows
            finally:
                parquet.close()

    def _run_in_memory(self, files: list[_File]) -> None:
        """Input in any order: hold its keys and sequences (and labels; not its other columns), find null
        and repeated keys, score in key order, spill the scored rows (score.keyed_spill), and
        write each file in its own order from the spill and a second read of the file."""
        parts = []
        labels = self.config.options.labels
        held = [self.key, self.column] + ([labels] if labels is not None else [])  # and no other
        for file in files:
            parquet = inputs.open_source(file.input, self.config.input_version)
            try:
                parts.append(keyed_files.read_all(parquet, file.input, held))
            finally:
                parquet.close()
        both = pa.concat_tables(parts, promote_options="permissive").combine_chunks()
        del parts
        starts = np.cumsum([0] + [file.rows for file in files])

        def where(position: int) -> tuple[str, int]:
            index = int(np.searchsorted(starts, position, side="right") - 1)
            return files[index].input, int(position - starts[index])

        key_column = both.column(0)
        null = np.asarray(key_column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        present = np.flatnonzero(~null)
        present_keys = state_store.key_numpy(key_column.filter(pa.array(~null)))
        keys = np.zeros(both.num_rows, dtype=present_keys.dtype)
        keys[present] = present_keys
        order = present[np.argsort(present_keys, kind="stable")]
        problems, messages = self._key_problems(keys, null, order, where)

        steps = pc.sum(pc.list_value_length(both.column(1))).as_py() or 0
        mean = max(steps / max(both.num_rows, 1), 1.0)
        step = self.config.batch_size or int(min(max(STEPS_PER_BATCH // mean, 1024), KEYED_BATCH_ROWS))
        chunks = [order[start : start + step] for start in range(0, order.size, step)]
        spill = keyed_spill.Spill()
        try:
            for chunk, nulls in [(chunk, None) for chunk in chunks] + [(np.flatnonzero(null), True)]:
                if chunk.size == 0:
                    continue
                taken = pa.array(chunk)
                scored = self._score(both.take(taken).combine_chunks().to_batches()[0], keys[chunk],
                                     problems[chunk], None if messages is None else messages.take(taken),
                                     np.ones(chunk.size, dtype=bool) if nulls else None,
                                     lambda row, c=chunk: where(int(c[row])))
                # One run of the spill per chunk (its pieces together): the merge holds a row
                # group of every run at once, so runs are few and long.
                spill.add(pa.Table.from_batches([piece.drop_columns(held)
                                                 for piece in scored]), chunk)
            del both, keys, problems, messages
            self._write_in_order(files, starts, spill.reader())
        finally:
            spill.close()

    def _write_in_order(self, files: list[_File], starts: np.ndarray, merge) -> None:
        """Each file read again, batch by batch, beside its scored rows from the spill."""
        for index, file in enumerate(files):
            output = self._open(file)
            parquet = inputs.open_source(file.input, self.config.input_version)
            try:
                position = int(starts[index])
                for batch in keyed_files.batches(parquet, file.input, MERGE_ROWS):
                    position += batch.num_rows
                    own = merge.until(position)
                    if own is None or own.num_rows != batch.num_rows:
                        raise InvalidInput(f"{file.input}: the file changed while the run read it "
                                           f"(its rows differ from the first read); run again")
                    table = pa.Table.from_batches([batch])
                    for name in own.column_names:
                        table = table.append_column(own.schema.field(name), own.column(name))
                    for part in table.cast(file.scored_schema).to_batches():
                        output.write(part)
            finally:
                parquet.close()

    def _key_problems(self, keys: np.ndarray, null: np.ndarray, order: np.ndarray, where
                      ) -> tuple[np.ndarray, pa.Array | None]:
        """NULL_KEY and DUPLICATE_KEY per row (input order), with their messages; with
        --on-invalid error the first one stops the run."""
        problems = np.zeros(keys.size, dtype=np.int8)
        sorted_keys = keys[order]
        repeated = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1
        if not null.any() and repeated.size == 0:
            return problems, None
        error = self.options.on_invalid == "error"
        texts = np.full(keys.size, None, dtype=object)
        if null.any():
            if error:
                location, line = where(int(np.flatnonzero(null)[0]))
                raise InvalidInput(f"{location}: row {line}: the key column {self.key!r} is null; "
                                   f"every row needs a key")
            problems[null] = NULL_KEY
            texts[null] = f"the key column {self.key!r} is null; every row needs a key"
        if repeated.size:
            # With a stable sort, the row before each repeat is its key's first row.
            firsts, seconds = order[repeated - 1], order[repeated]
            if error:
                pick = int(np.argmin(seconds))
                (location, first), (other, second) = where(int(firsts[pick])), where(int(seconds[pick]))
                rows = f"rows {first} and {second}" if other == location else f"row {first} and {other} row {second}"
                raise InvalidInput(
                    f"{location}: {rows}: key {_show(keys[firsts[pick]])} appears twice in this "
                    f"run's input; a run takes one row per key (its new steps)")
            duplicated = np.unique(np.concatenate([firsts, seconds]))
            problems[duplicated] = DUPLICATE_KEY
            texts[duplicated] = [f"key {_show(keys[row])} has more than one row in this run's input; "
                                 f"a run takes one row per key" for row in duplicated]
        return problems, pa.array(texts, pa.string())

    def _score(self, batch: pa.RecordBatch, keys: np.ndarray, problems: np.ndarray,
               messages: pa.Array | None, key_null: np.ndarray | None, where) -> list[pa.RecordBatch]:
        """Score rows of ascending keys (or of null keys: ``key_null``) from their states, and
        write the state up to their last key: theirs, and the unchanged keys among them. The
        state is taken STATE_ROWS entries at a time, with the rows those entries reach, so that
        memory stays bounded however many keys lie between two rows' keys."""
        if key_null is not None:  # null keys: invalid rows that touch no state
            return [self._score_piece(batch, keys, problems, messages, key_null, self.layout.empty(), where)]
        pieces, start, rows = [], 0, batch.num_rows
        while start < rows:
            entries = self.cursor.until(keys[-1], STATE_ROWS)
            stop = rows
            if len(entries) == STATE_ROWS:  # maybe more: only the rows up to its last key now
                stop = int(np.searchsorted(keys, entries.keys[-1], side="right"))
            if stop > start:
                part = slice(start, stop)
                pieces.append(self._score_piece(
                    batch.slice(start, stop - start), keys[part], problems[part],
                    None if messages is None else messages.slice(start, stop - start), None, entries,
                    lambda row, first=start: where(first + row)))
            else:
                self.writer.write(entries)
            start = stop
        return pieces

    def _score_piece(self, batch: pa.RecordBatch, keys: np.ndarray, problems: np.ndarray,
                     messages: pa.Array | None, key_null: np.ndarray | None, entries: StateChunk,
                     where) -> pa.RecordBatch:
        """Score rows whose states are among ``entries`` (the state's entries up to the rows'
        last key), then write those entries with the rows' new states in their place."""
        rows = batch.num_rows
        found = np.zeros(rows, dtype=bool)
        match = np.zeros(rows, dtype=np.int64)
        if len(entries):
            match = np.searchsorted(entries.keys, keys).clip(max=len(entries) - 1)
            found = entries.keys[match] == keys
        steps_before = np.where(found, entries.steps[match] if len(entries) else 0, 0).astype(np.int64)
        states = [np.where(found[:, None], state[match], np.float32(0)) if len(entries)
                  else np.zeros((rows, units), dtype=np.float32)
                  for state, units in zip(entries.states, self.scorer.state_units())]
        carried = keyed.Carried(steps_before, states, problems, messages, key_null)
        try:
            resumed = keyed.score_resumed(self.scorer, batch, self.options, carried, self.cache)
        except InvalidRow as error:
            self._count(None, error.row + 1)
            location, line = where(error.row)
            raise InvalidInput(f"{location}: row {line} (key {_show(keys[error.row])}): {error.detail}") from None
        self._count(resumed.stats, rows)
        if key_null is not None:
            return resumed.scored
        moved = resumed.moved
        self.record.keys_scored += int(moved.sum())
        self.record.keys_new += int((moved & ~found).sum())
        self.record.steps_resumed += resumed.steps_resumed
        replaced = np.zeros(len(entries), dtype=bool)
        replaced[match[moved & found]] = True
        kept = entries.take(np.flatnonzero(~replaced))
        new = StateChunk(keys[moved], resumed.steps_after[moved], [state[moved] for state in resumed.states])
        merged = StateChunk.concat([kept, new], self.layout)
        if len(merged):
            self.writer.write(merged.take(np.argsort(merged.keys, kind="stable")))
        return resumed.scored

    def _count(self, stats: BatchStats | None, rows: int) -> None:
        self.state.rows_in += rows
        if stats is not None:
            self.state.stats.merge(stats)


def _show(key) -> str:
    return repr(key.item() if isinstance(key, np.generic) else key)


def run(scorer: Scorer, config: JobConfig, state: RunState, pairs: list[tuple[str, str, str]],
        directory_mode: bool, publish_check, table=None) -> list[tuple[str, str, int, int]]:
    """Score ``pairs`` with --key; publish the state, then OUTPUT (then _SUCCESS in directory
    mode). ``publish_check(stats)`` raises when the run must not publish (the drift gate).
    ``table(files)``, when given, makes OUTPUT a Delta Lake table (score.delta_job.TableOutput:
    every file's rows into it, one commit after the state). Returns (input, output, rows,
    invalid rows) per file."""
    check_model(scorer)
    record = state.keyed
    work = KeyedRun(scorer, config, state)
    files, ascending = work.scan(pairs)
    if table is not None:
        work.table = table(files)
    layout = StateLayout.for_model(scorer, config.key, files[0].key_type)
    reader = StateReader(config.state_in, layout) if config.state_in else None
    if reader is not None:
        record.keys_in_state = reader.rows
        record.state_in_fingerprint = reader.fingerprint
    cursor = StateCursor(reader.chunks() if reader is not None else None, layout)
    writer = StateWriter(config.state_out, layout, {"input_fingerprint": record.input_fingerprint,
                                                    "parent_fingerprint": record.state_in_fingerprint})
    try:
        work.run(files, ascending, layout, cursor, writer)
        for output in work.outputs:
            metadata = output_metadata(scorer, config, output.input, output.rows, output.invalid)
            metadata.update({"seqscore.key": config.key, "seqscore.state_in": config.state_in or "",
                             "seqscore.state_out": config.state_out})
            output.close(metadata)
        publish_check(state.stats)
        writer.commit()
        if work.table is not None:
            work.table.commit()
        for output in work.outputs if work.table is None else ():
            output.sink.commit(output.rows)
    except BaseException:
        writer.abort()
        for output in work.outputs:
            output.abort()
        raise
    record.keys_in_state_out = writer.rows
    record.keys_carried_unchanged = writer.rows - record.keys_scored
    record.state_out_fingerprint = writer.fingerprint
    if directory_mode:
        manifest = {"status": "succeeded", "created_at": utc_now(), "model_sha256": scorer.sha256,
                    "rows": sum(file.rows for file in files), "state": config.state_out,
                    "files": [{"path": relative, "rows": file.rows}
                              for (_, _, relative), file in zip(pairs, files)]}
        write_small_file(storage.join(config.output, SUCCESS_FILE),
                         (json.dumps(manifest, indent=2) + "\n").encode())
    return [(output.input, output.location, output.rows, output.invalid) for output in work.outputs]
