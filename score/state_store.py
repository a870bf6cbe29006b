"""The state dataset: each key's LSTM state, carried from one scheduled run to the next.

One row per key, in ascending key order: the key, the steps the key has consumed so far, and
one fixed-size float32 list per state tensor (h and c of each layer, as Scorer.state_units()).
The job merge-joins it against its own keys in ascending order (StateCursor), so neither side is
ever held whole. The part file's footer says which model wrote it and what it was computed from,
and a fingerprint over all of that chains one run's state to the next.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from score import inputs, storage
from score.errors import InputMissing, InvalidInput, SeqscoreError, UsageError

STATE_FORMAT = 1
PART_NAME = "part-00000.parquet"  # the file the local job writes inside the state folder
MANIFEST = "_SUCCESS"  # JSON manifest written after the part file(s)
# Entries per chunk the reader yields and per row group the writer writes: 4 MB of state for
# the benchmark's model (2 layers x (h, c) x 64 units of float32 per key). A chunk is copied a
# few times on its way from the reader to the writer: against a state of 100,000 keys the job's
# peak RSS was 498 MB with chunks of 16,384 entries, 330 MB with 4,096 and 300 MB with 2,048,
# in about the same time.
ROWS_PER_CHUNK = 4_096
STEPS = "steps"
META = "seqscore."


@dataclass(frozen=True)
class StateLayout:
    """The columns of a state dataset for one model and one key column."""

    key: str  # the key column's name
    key_type: pa.DataType  # the input key column's type: an integer type, string or large_string
    tensors: tuple[tuple[str, int], ...]  # (column, units) in Scorer.state_units() order
    model_sha256: str  # the model that computed the states; another model cannot resume them

    def __post_init__(self) -> None:
        if self.key in (STEPS, *(name for name, _ in self.tensors)):
            raise UsageError(f"--key {self.key}: the state dataset has its own column of that "
                             f"name; rename the key column")

    @classmethod
    def for_model(cls, scorer, key: str, key_type: pa.DataType) -> StateLayout:
        tensors = tuple((name, state.units) for state in scorer.spec.states
                        for name in (state.initial_h, state.initial_c))
        assert [units for _, units in tensors] == scorer.state_units()
        return cls(key, key_type, tensors, scorer.sha256)

    def schema(self) -> pa.Schema:
        fields = [pa.field(self.key, self.key_type, nullable=False),
                  pa.field(STEPS, pa.int64(), nullable=False)]
        fields += [pa.field(name, pa.list_(pa.float32(), units), nullable=False)
                   for name, units in self.tensors]
        return pa.schema(fields)

    def empty(self) -> StateChunk:
        return StateChunk(np.empty(0, _key_dtype(self.key_type)), np.empty(0, np.int64),
                          [np.empty((0, units), np.float32) for _, units in self.tensors])


@dataclass
class StateChunk:
    """Entries of the state in ascending key order."""

    keys: np.ndarray  # int64 (signed keys), uint64 (unsigned) or an object array of str
    steps: np.ndarray  # (n,) int64: the steps each key has consumed in every run so far
    states: list[np.ndarray]  # one (n, units) float32 C-contiguous array per tensor, layout order

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray | slice) -> StateChunk:
        """The given rows (a slice gives views, an index array copies)."""
        return StateChunk(self.keys[rows], self.steps[rows],
                          [np.ascontiguousarray(state[rows]) for state in self.states])

    @staticmethod
    def concat(chunks: list[StateChunk], layout: StateLayout) -> StateChunk:
        chunks = [chunk for chunk in chunks if len(chunk)]
        if len(chunks) <= 1:
            return chunks[0] if chunks else layout.empty()
        return StateChunk(np.concatenate([chunk.keys for chunk in chunks]),
                          np.concatenate([chunk.steps for chunk in chunks]),
                          [np.concatenate([chunk.states[index] for chunk in chunks])
                           for index in range(len(layout.tensors))])


def _key_dtype(key_type: pa.DataType) -> np.dtype:
    if pa.types.is_unsigned_integer(key_type):
        return np.dtype(np.uint64)
    return np.dtype(np.int64 if pa.types.is_integer(key_type) else object)


def key_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Sortable numpy keys of an Arrow key column (dictionary decoded); nulls are not allowed."""
    if isinstance(array, pa.ChunkedArray):
        # Each chunk on its own: the chunks of a dictionary column may have different dictionaries.
        parts = [key_numpy(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.empty(0, _key_dtype(_decoded(array.type)))
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    assert array.null_count == 0, "callers remove null keys first"
    values = array.to_numpy(zero_copy_only=False)
    return values.astype(_key_dtype(array.type), copy=False)


def key_arrow(keys: np.ndarray, key_type: pa.DataType) -> pa.Array:
    """The inverse of key_numpy, for writing: numpy keys back to an Arrow array of key_type."""
    if pa.types.is_integer(key_type):
        return pa.array(keys).cast(key_type)  # a safe cast: a key out of range raises
    return pa.array(keys, type=key_type)


def _decoded(data_type: pa.DataType) -> pa.DataType:
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def check_key_type(data_type: pa.DataType, column: str, location: str) -> pa.DataType:
    """The key column's type, dictionary decoded, if it can be a key (integers, strings)."""
    data_type = _decoded(data_type)
    if pa.types.is_integer(data_type) or data_type in (pa.string(), pa.large_string()):
        return data_type
    raise InvalidInput(f"{location}: key column {column!r} is {data_type}; expected an integer "
                       f"or string column")


def named(flag: str, error: SeqscoreError) -> SeqscoreError:
    """The same error, its message starting with the flag it concerns."""
    named = type(error).__new__(type(error))  # not __init__: some take other arguments
    named.__dict__.update(error.__dict__)
    named.args = (f"{flag} {error}",)
    return named


@contextlib.contextmanager
def _opened(location: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file of the state, closed on leaving, its source included."""
    try:
        parquet_file = inputs.open_parquet(location)
    except SeqscoreError as error:
        raise named("--state-in", error) from None
    try:
        yield parquet_file
    finally:
        parquet_file.close(force=True)  # without force, a source opened by us stays open


def _part_files(location: str) -> list[str]:
    """The part files of a state folder in name order, or the one file given."""
    try:
        if storage.kind(location) == "file":
            return [location]
        entries = storage.list_parquet(location)
    except InputMissing:
        raise InputMissing(f"--state-in {location}: not found; omit --state-in to start from "
                           f"the zero state, or pass the folder a run wrote with --state-out") from None
    except SeqscoreError as error:
        raise named("--state-in", error) from None
    if not entries:
        raise InputMissing(f"--state-in {location}: no *.parquet part file in this folder; "
                           f"expected the folder a run wrote with --state-out")
    return [entry.location for entry in entries]


def _check_metadata(location: str, metadata: dict[bytes, bytes], layout: StateLayout) -> None:
    found = metadata.get(b"seqscore.model_sha256")
    if found is None:
        raise InvalidInput(f"--state-in {location}: not a seqscore state (no seqscore.model_sha256 "
                           f"in its metadata); pass the folder a run wrote with --state-out")
    state_format = metadata.get(b"seqscore.state_format", b"").decode(errors="replace")
    if state_format != str(STATE_FORMAT):
        raise InvalidInput(f"--state-in {location}: state format {state_format!r}; this seqscore "
                           f"reads format {STATE_FORMAT}")
    if found.decode(errors="replace") != layout.model_sha256:
        raise InvalidInput(
            f"--state-in {location}: written by the model with sha256 {found.decode(errors='replace')}, "
            f"but this run's model has sha256 {layout.model_sha256}; omit --state-in to start "
            f"over from the zero state")


def _check_schema(location: str, schema: pa.Schema, layout: StateLayout) -> None:
    for name in (layout.key, STEPS, *(name for name, _ in layout.tensors)):
        if name not in schema.names:
            raise InvalidInput(f"--state-in {location}: no column {name!r}; the file has "
                               f"{', '.join(map(repr, schema.names))}")
    key_type = _decoded(schema.field(layout.key).type)
    strings = (pa.string(), pa.large_string())  # the same keys; Spark writes string whatever it read
    if key_type != layout.key_type and not (key_type in strings and layout.key_type in strings):
        raise InvalidInput(f"--state-in {location}: key column {layout.key!r} is {key_type}, but "
                           f"the input's key column is {layout.key_type}; use the same key type")
    if not pa.types.is_integer(schema.field(STEPS).type):
        raise InvalidInput(f"--state-in {location}: column {STEPS!r} is "
                           f"{schema.field(STEPS).type}; expected an integer column")
    for name, units in layout.tensors:
        found = schema.field(name).type
        fixed = pa.types.is_fixed_size_list(found) and found.list_size == units
        if not ((fixed or pa.types.is_list(found)) and found.value_type == pa.float32()):
            raise InvalidInput(f"--state-in {location}: column {name!r} is {found}; expected "
                               f"fixed_size_list<float>[{units}], the width of this model's state")


def _first_null(array: pa.Array) -> int | None:
    if not array.null_count:
        return None
    return int(np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False))[0])


class StateReader:
    """Streams a state dataset written by StateWriter (or by Spark: several part files),
    validating it as it goes."""

    def __init__(self, location: str, layout: StateLayout) -> None:
        self.location = location
        self.layout = layout
        self.files = _part_files(location)
        self.columns = [layout.key, STEPS, *(name for name, _ in layout.tensors)]
        self._rows = 0
        self._fingerprint = ""
        # Every footer is checked before any entry is read; the files are reopened to stream.
        for index, file in enumerate(self.files):
            with _opened(file) as parquet_file:
                metadata = parquet_file.metadata.metadata or {}
                _check_metadata(file, metadata, layout)
                _check_schema(file, parquet_file.schema_arrow, layout)
                self._rows += parquet_file.metadata.num_rows
            if index == 0:
                self._fingerprint = metadata.get(b"seqscore.fingerprint", b"").decode(errors="replace")
        # A state of several parts (Spark's) has its fingerprint in its manifest only.
        self._fingerprint = _manifest_fingerprint(location) or self._fingerprint

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def rows(self) -> int:
        return self._rows

    def chunks(self) -> Iterator[StateChunk]:
        """Chunks of at most ROWS_PER_CHUNK entries, checked to ascend across files."""
        previous = None  # the last key yielded, whichever file it came from
        for file in self.files:
            row = 0  # of the file's first entry in this batch
            for batch in self._batches(file):
                chunk = self._chunk(file, batch, row)
                if len(chunk):
                    _check_order(file, chunk.keys, row, previous)
                    previous = chunk.keys[-1]
                    yield chunk
                row += batch.num_rows

    def _batches(self, file: str) -> Iterator[pa.RecordBatch]:
        with _opened(file) as parquet_file:
            try:  # only the reader's own failures: the caller's are not thrown in here
                yield from parquet_file.iter_batches(batch_size=ROWS_PER_CHUNK, columns=self.columns)
            except Exception as error:  # noqa: BLE001  (read_failure classifies every reader failure)
                raise named("--state-in", inputs.read_failure(file, error)) from None

    def _chunk(self, file: str, batch: pa.RecordBatch, row: int) -> StateChunk:
        for name in self.columns:
            null = _first_null(batch.column(name))
            if null is not None:
                raise InvalidInput(f"--state-in {file}: row {row + null}: {name!r} is null; a "
                                   f"state holds a key, its steps and every state tensor")
        # uint64 counts beyond int64 wrap negative here and are refused with the negative ones.
        steps = batch.column(STEPS).to_numpy().astype(np.int64, copy=False)
        negative = np.flatnonzero(steps < 0)
        if len(negative):
            raise InvalidInput(f"--state-in {file}: row {row + negative[0]}: {STEPS!r} is "
                               f"{batch.column(STEPS)[int(negative[0])]}; expected a count >= 0")
        states = [_tensor(file, batch.column(name), name, units, row)
                  for name, units in self.layout.tensors]
        return StateChunk(key_numpy(batch.column(self.layout.key)), steps, states)


def _tensor(file: str, column: pa.Array, name: str, units: int, row: int) -> np.ndarray:
    """A (rows, units) float32 array of a fixed-size or plain list<float> column without nulls."""
    if pa.types.is_list(column.type):
        lengths = pc.list_value_length(column).to_numpy()
        wrong = np.flatnonzero(lengths != units)
        if len(wrong):
            raise InvalidInput(f"--state-in {file}: row {row + wrong[0]}: {name!r} holds "
                               f"{lengths[wrong[0]]} values; expected {units}, the width of this "
                               f"model's state")
    values = column.flatten()
    null = _first_null(values)
    if null is not None:
        raise InvalidInput(f"--state-in {file}: row {row + null // units}: {name!r} holds a "
                           f"null value; a state holds every value of each tensor")
    return np.ascontiguousarray(values.to_numpy(zero_copy_only=False).reshape(len(column), units))


def _check_order(file: str, keys: np.ndarray, row: int, previous) -> None:
    """Keys strictly ascending within the chunk and after the previous chunk's last key."""
    if previous is not None:
        keys = np.concatenate([np.array([previous], keys.dtype), keys])
        row -= 1  # of the previous key, now first
    wrong = np.flatnonzero(keys[1:] <= keys[:-1])
    if len(wrong):
        key, before = (value.item() if isinstance(value, np.generic) else value
                       for value in (keys[wrong[0] + 1], keys[wrong[0]]))
        raise InvalidInput(f"--state-in {file}: row {row + wrong[0] + 1}: key {key!r} is not "
                           f"after key {before!r}; a state holds each key once, in ascending order")


class StateCursor:
    """Merge-join helper: walks a StateReader's chunks in key order."""

    def __init__(self, chunks: Iterator[StateChunk] | None, layout: StateLayout) -> None:
        self.chunks = iter(chunks if chunks is not None else ())  # None: no --state-in
        self.layout = layout
        self.pending = layout.empty()  # the current reader chunk's entries not yet returned

    def until(self, last_key, limit: int | None = None) -> StateChunk:
        """Every entry not yet returned with key <= last_key, in order (may be empty); at most
        ``limit`` of them, the others left for the next call."""
        taken, count = [], 0
        while True:
            stop = int(np.searchsorted(self.pending.keys, last_key, side="right"))
            if limit is not None:
                stop = min(stop, limit - count)
            taken.append(self.pending.take(slice(0, stop)))
            self.pending = self.pending.take(slice(stop, None))
            count += stop
            if limit is not None and count >= limit:
                return StateChunk.concat(taken, self.layout)
            following = None if len(self.pending) else next(self.chunks, None)
            if following is None:  # the next key is beyond last_key, or there is none
                return StateChunk.concat(taken, self.layout)
            self.pending = following

    def rest(self) -> Iterator[StateChunk]:
        """Every remaining entry, chunk by chunk."""
        pending, self.pending = self.pending, self.layout.empty()
        if len(pending):
            yield pending
        yield from self.chunks


def _manifest_fingerprint(location: str) -> str:
    """The fingerprint the state folder's manifest records, or "" (no manifest, or a file)."""
    try:
        if storage.kind(location) != "directory":
            return ""
        text = storage.read_bytes(storage.join(location, MANIFEST))
        payload = json.loads(text)
    except (SeqscoreError, ValueError):
        return ""
    value = payload.get("seqscore.fingerprint") if isinstance(payload, dict) else None
    return value if isinstance(value, str) else ""
