"""The scoring core: a pure function from one Arrow record batch to one scored record batch.

No file access and no globals: the Parquet job, Spark's mapInArrow, the benchmark and the tests
all call :func:`score_batch` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from score.encoding import (
    NON_FINITE_OUTPUT,
    REASONS,
    VALID,
    Encoded,
    RawSequences,
    column_type_error,
    integer_column_type,
    integer_list_value_type,
    sequences_from_columns,
    sequences_from_list,
)
from score.errors import InvalidInput, InvalidRow, UsageError
from score.model import Scorer
from score.monitor import Profile

OUTPUT_COLUMNS = ("y_pred", "top_k_values", "top_k_probs", "error")
ON_INVALID = ("error", "null")
_EXTENSION_KEY = b"ARROW:extension:name"
# Beyond this many possible distinct sequences a row key would not fit in an int64.
_MAX_KEY_SPACE = 1 << 62


@dataclass(frozen=True)
class ScoreOptions:
    """How one batch is scored."""

    top_k: int = 3  # how many of the most likely classes to report per step
    on_invalid: str = "error"  # 'error': stop at the first invalid row; 'null': keep it, say why
    input_column: str | None = None  # list column with the sequences; None: the spec's column
    input_columns: tuple[str, ...] | None = None  # wide layout: one integer column per step
    dedup: bool = True  # score each distinct sequence of a batch once (the model is deterministic)
    low_confidence: float = 0.5  # a step whose top-1 probability is below this is low-confidence

    def validate(self, scorer: Scorer) -> None:
        classes = scorer.spec.y_classes
        if not 1 <= self.top_k <= classes:
            raise UsageError(f"--top-k {self.top_k}: expected 1 <= K <= {classes} (the model's classes)")
        if self.on_invalid not in ON_INVALID:
            raise UsageError(f"--on-invalid {self.on_invalid}: expected one of {', '.join(ON_INVALID)}")
        if self.input_columns is not None and len(self.input_columns) != scorer.spec.seq_len:
            raise UsageError(
                f"--input-columns names {len(self.input_columns)} column(s); the model takes "
                f"sequences of {scorer.spec.seq_len}, one column per step"
            )
        if not 0.0 <= self.low_confidence <= 1.0:
            raise UsageError(f"--low-confidence {self.low_confidence}: expected a probability in [0, 1]")

    def column(self, scorer: Scorer) -> str:
        return self.input_column or scorer.spec.input_column


@dataclass
class BatchStats:
    """What a batch contributed to the run's summary."""

    rows: int
    reason_counts: np.ndarray  # (len(REASONS) + 1,) rows per reason, index 0 = valid
    profile: Profile
    low_confidence_steps: int = 0
    scored_steps: int = 0
    distinct_rows: int = 0  # sequences actually run through the model

    def merge(self, other: BatchStats) -> None:
        self.rows += other.rows
        self.reason_counts += other.reason_counts
        self.profile.merge(other.profile)
        self.low_confidence_steps += other.low_confidence_steps
        self.scored_steps += other.scored_steps
        self.distinct_rows += other.distinct_rows


def empty_stats(scorer: Scorer) -> BatchStats:
    return BatchStats(0, np.zeros(len(REASONS) + 1, dtype=np.int64), Profile.empty(scorer.spec))


# Schemas --------------------------------------------------------------------------------------
def output_fields(top_k: int) -> list[pa.Field]:
    del top_k  # K is a property of the data (list lengths), recorded in the file metadata
    return [
        pa.field("y_pred", pa.list_(pa.int64())),
        pa.field("top_k_values", pa.list_(pa.list_(pa.int64()))),
        pa.field("top_k_probs", pa.list_(pa.list_(pa.float32()))),
        pa.field("error", pa.string()),
    ]


def _extension_field(data_type: pa.DataType, field_: pa.Field) -> bool:
    if isinstance(data_type, pa.BaseExtensionType):
        return True
    if field_.metadata and _EXTENSION_KEY in field_.metadata:
        return True
    for index in range(data_type.num_fields):
        child = data_type.field(index)
        if _extension_field(child.type, child):
            return True
    if pa.types.is_dictionary(data_type):
        return isinstance(data_type.value_type, pa.BaseExtensionType)
    return False


def check_input_schema(schema: pa.Schema, scorer: Scorer, options: ScoreOptions) -> None:
    """Refuse, before reading any rows, a file the model cannot score."""
    for field_ in schema:
        if _extension_field(field_.type, field_):
            raise InvalidInput(
                f"column {field_.name!r} carries Arrow extension-type metadata, which is refused "
                f"(never deserialised); write plain Arrow types"
            )
    for name in OUTPUT_COLUMNS:
        if name in schema.names:
            raise InvalidInput(
                f"the input already has a column named {name!r}, which the output adds; "
                f"rename or drop it"
            )
    if options.input_columns is not None:
        for name in options.input_columns:
            _require_column(schema, name, "--input-columns")
            data_type = schema.field(name).type
            if integer_column_type(data_type) is None:
                raise column_type_error(name, data_type, "wide")
        return
    name = options.column(scorer)
    _require_column(schema, name, "--input-column")
    data_type = schema.field(name).type
    if integer_list_value_type(data_type) is None:
        raise column_type_error(name, data_type, "list")


def _require_column(schema: pa.Schema, name: str, flag: str) -> None:
    if schema.get_field_index(name) < 0:
        if schema.names.count(name) > 1:
            raise InvalidInput(f"column {name!r} appears more than once in the input")
        found = ", ".join(schema.names) or "none"
        raise InvalidInput(
            f"column {name!r} not found (the file has: {found}); name the sequence column "
            f"with {flag}"
        )


def output_schema(input_schema: pa.Schema, options: ScoreOptions) -> pa.Schema:
    return pa.schema(list(input_schema) + output_fields(options.top_k), metadata=input_schema.metadata)


# Scoring ---------------------------------------------------------------------------------------
def read_sequences(batch: pa.RecordBatch, scorer: Scorer, options: ScoreOptions) -> RawSequences:
    if options.input_columns is not None:
        arrays = [batch.column(name) for name in options.input_columns]
        return sequences_from_columns(arrays, list(options.input_columns))
    name = options.column(scorer)
    return sequences_from_list(batch.column(name), scorer.spec.seq_len, name)


def distinct_rows(indices: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The distinct sequences' keys and first row numbers, and which of them every row equals.

    A row's key is its class indices read as a number in base ``classes``. None when a key
    would not fit in an int64 (very long sequences, which rarely repeat).
    """
    rows, steps = indices.shape
    if rows < 1 or classes**steps > _MAX_KEY_SPACE:
        return None
    weights = classes ** np.arange(steps, dtype=np.int64)
    keys = indices.astype(np.int64) @ weights
    unique_keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return unique_keys, first, inverse.reshape(-1)


class ResultCache:
    """Top-k results of the sequences already scored in a run, looked up by sequence key.

    The model is deterministic, so a sequence seen in an earlier batch needs no second run:
    on data like the default (11**4 possible sequences) every batch after the first is served
    from here. Memory is bounded by ``max_bytes``: once full the cache stops growing. A cache
    that already holds results but serves under MIN_HIT_RATE of a batch switches itself off and
    lets its memory go: data that does not repeat would only pay for look-ups and inserts.
    """

    MIN_HIT_RATE = 0.05

    def __init__(self, steps: int, k: int, classes: int, max_bytes: int = 32 << 20) -> None:
        self.index_dtype = np.int16 if classes <= np.iinfo(np.int16).max else np.int32
        entry_bytes = 8 + steps * k * (np.dtype(self.index_dtype).itemsize + 4)
        self.capacity = max_bytes // entry_bytes
        self.keys = np.empty(0, dtype=np.int64)  # sorted
        self.best = np.empty((0, steps, k), dtype=self.index_dtype)
        self.probabilities = np.empty((0, steps, k), dtype=np.float32)
        self.enabled = self.capacity > 0

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key: whether it is cached, and where."""
        if not self.enabled or self.keys.size == 0:
            return np.zeros(keys.size, dtype=bool), np.zeros(keys.size, dtype=np.intp)
        slot = np.searchsorted(self.keys, keys).clip(max=self.keys.size - 1)
        return self.keys[slot] == keys, slot

    def get(self, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.best[slot].astype(np.intp), self.probabilities[slot]

    def add(self, keys: np.ndarray, best: np.ndarray, probabilities: np.ndarray) -> None:
        """Remember new results (keys not cached yet), as many as there is room for."""
        room = self.capacity - self.keys.size
        if not self.enabled or room <= 0 or keys.size == 0:
            return
        keys, best, probabilities = keys[:room], best[:room], probabilities[:room]
        merged = np.concatenate([self.keys, keys])
        order = np.argsort(merged, kind="stable")
        self.keys = merged[order]
        self.best = np.concatenate([self.best, best.astype(self.index_dtype)])[order]
        self.probabilities = np.concatenate([self.probabilities, probabilities])[order]

    def settle(self, hit_rate: float) -> None:
        """After a look-up: a cache that held results but served under MIN_HIT_RATE switches off."""
        if self.enabled and self.keys.size and hit_rate < self.MIN_HIT_RATE:
            self.enabled = False
            self.keys = self.keys[:0]
            self.best = self.best[:0]
            self.probabilities = self.probabilities[:0]


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Class indices of the k largest probabilities per step, best first.

    Ties go to the lower class index, exactly as a stable descending sort would order them:
    k passes of argmax (which returns the first of equal values), each hiding the class it
    found. 3x faster than argpartition and a sort of K over 25 classes. ``probabilities`` is
    changed during the call and restored before it returns.
    """
    classes = probabilities.shape[-1]
    if k >= classes:
        return np.argsort(-probabilities, axis=-1, kind="stable")
    flat = probabilities.reshape(-1, classes)
    rows = np.arange(flat.shape[0])
    best = np.empty((flat.shape[0], k), dtype=np.intp)
    taken = np.empty((flat.shape[0], k), dtype=flat.dtype)
    for rank in range(k):
        best[:, rank] = flat.argmax(axis=1)
        taken[:, rank] = flat[rows, best[:, rank]]
        flat[rows, best[:, rank]] = -np.inf  # probabilities are >= 0: never the max again
    for rank in range(k):
        flat[rows, best[:, rank]] = taken[:, rank]
    return best.reshape(probabilities.shape[:-1] + (k,))


def _list_array(values: np.ndarray, valid: np.ndarray, length: int) -> pa.Array:
    """A list array with ``length`` items per valid row and null (empty) invalid rows."""
    counts = np.where(valid, length, 0).astype(np.int64)
    offsets = np.zeros(valid.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise UsageError("--batch-size is too large for one list array; use a smaller one")
    mask = None if valid.all() else pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values, mask=mask)


def _nested_list_array(values: np.ndarray, valid: np.ndarray, steps: int, k: int) -> pa.Array:
    """A list (steps) of lists (k) per valid row, from a flat (valid rows * steps * k) buffer."""
    inner_rows = int(valid.sum()) * steps
    inner_offsets = pa.array((np.arange(inner_rows + 1, dtype=np.int64) * k).astype(np.int32))
    inner = pa.ListArray.from_arrays(inner_offsets, pa.array(values.reshape(-1)))
    return _list_array(inner, valid, steps)


def _error_column(raw: RawSequences, encoded: Encoded, scorer: Scorer) -> pa.Array:
    rows = encoded.reasons.size
    bad = np.flatnonzero(encoded.reasons)
    if bad.size == 0:
        return pa.nulls(rows, pa.string())
    messages = scorer.encoder.messages(raw, encoded, bad)
    slot = np.full(rows, bad.size, dtype=np.int64)
    slot[bad] = np.arange(bad.size)
    with_null = pa.concat_arrays([messages, pa.nulls(1, pa.string())])
    return with_null.take(pa.array(slot))


def _infer(
    scorer: Scorer, rows: np.ndarray, keys: np.ndarray | None, k: int, cache: ResultCache | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Top-k classes and probabilities of ``rows``, whether each is finite, and how many ran.

    Rows found in ``cache`` (by key) skip the model; the finite results of the others join it.
    """
    steps, classes = scorer.spec.seq_len, scorer.spec.y_classes
    use_cache = cache is not None and cache.enabled and keys is not None
    hit, slot = cache.lookup(keys) if use_cache else (np.zeros(rows.shape[0], dtype=bool), None)
    hits = int(hit.sum())
    run = np.flatnonzero(~hit) if hits else None
    model_input = np.ascontiguousarray(rows if run is None else rows[run])
    if scorer.graph_top_k:  # top-k inside onnxruntime; non-finite rows are dropped by the caller
        finite, best_probabilities, best = scorer.predict_top_k(model_input, k)
    else:
        probabilities = (scorer.predict(model_input) if model_input.shape[0]
                         else np.zeros((0, steps, classes), dtype=np.float32))
        finite = np.isfinite(probabilities).all(axis=(1, 2))
        best = top_k(probabilities, k)
        best_probabilities = np.take_along_axis(probabilities, best, axis=-1)
    if hits:  # put the cached and the computed rows together, in row order
        cached_best, cached_probabilities = cache.get(slot[hit])
        merged_best = np.empty((rows.shape[0], steps, k), dtype=best.dtype)
        merged_probabilities = np.empty((rows.shape[0], steps, k), dtype=np.float32)
        merged_finite = np.ones(rows.shape[0], dtype=bool)
        merged_best[hit], merged_probabilities[hit] = cached_best, cached_probabilities
        merged_best[run], merged_probabilities[run], merged_finite[run] = best, best_probabilities, finite
    if use_cache:
        cache.settle(hits / rows.shape[0] if rows.shape[0] else 1.0)
        ran_keys = keys if run is None else keys[run]
        cache.add(ran_keys[finite], best[finite], best_probabilities[finite])
    if hits:
        return merged_best, merged_probabilities, merged_finite, model_input.shape[0]
    return best, best_probabilities, finite, model_input.shape[0]


def score_batch_with_stats(
    scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions, cache: ResultCache | None = None
) -> tuple[pa.RecordBatch, BatchStats]:
    """Score one batch; also return its counts for the run summary and drift monitoring.

    Steps: 1. read and encode the sequences; 2. stop at the first invalid row, or mark it;
    3. run each distinct valid sequence through the model once; 4. refuse non-finite output;
    5. top-k and decode; 6. assemble the output columns after the input columns.
    """
    spec = scorer.spec
    steps, k = spec.seq_len, options.top_k

    # 1-2. Read, validate, encode.
    raw = read_sequences(batch, scorer, options)
    encoded = scorer.encoder.encode(raw)
    if options.on_invalid == "error":
        scorer.encoder.raise_first_invalid(raw, encoded)
    valid_rows = np.flatnonzero(encoded.reasons == VALID)
    indices = encoded.indices[valid_rows]

    # 3. Inference on distinct sequences only (and only those the run's cache has not seen);
    # results are scattered back to every row by `inverse`.
    groups = distinct_rows(indices, spec.x_classes) if options.dedup else None
    if groups is None:
        keys, inverse, distinct_input = None, None, indices
    else:
        keys, first, inverse = groups
        distinct_input = indices[first]
    best, best_probabilities, finite, model_rows = _infer(scorer, distinct_input, keys, k, cache)

    # 4. NaN or infinity in the output fails the row, never reaches the file.
    if not finite.all():
        row_finite = finite[inverse] if inverse is not None else finite
        broken = valid_rows[~row_finite]
        if options.on_invalid == "error":
            raise InvalidRow(int(broken[0]), REASONS[NON_FINITE_OUTPUT],
                             "the model's output is NaN or infinite for this row")
        encoded.reasons[broken] = NON_FINITE_OUTPUT
        valid_rows = valid_rows[row_finite]
        indices = indices[row_finite]
        if inverse is not None:
            inverse = inverse[row_finite]
        else:
            best, best_probabilities = best[row_finite], best_probabilities[row_finite]

    # 5. Scatter the distinct rows' top-k to every row.
    if inverse is not None:
        best = best[inverse]
        best_probabilities = best_probabilities[inverse]
    valid = encoded.reasons == VALID
    top_values = scorer.encoder.decode_y(best)

    # 6. Assemble.
    columns = [
        _list_array(pa.array(top_values[..., 0].reshape(-1)), valid, steps),
        _nested_list_array(top_values, valid, steps, k),
        _nested_list_array(best_probabilities.astype(np.float32, copy=False), valid, steps, k),
        _error_column(raw, encoded, scorer),
    ]
    schema = output_schema(batch.schema, options)
    scored = pa.RecordBatch.from_arrays(list(batch.columns) + columns, schema=schema)

    confidence = best_probabilities[..., 0]
    stats = empty_stats(scorer)
    stats.rows = batch.num_rows
    stats.reason_counts = np.bincount(encoded.reasons, minlength=len(REASONS) + 1).astype(np.int64)
    stats.profile.add(indices, best[..., 0], confidence)
    stats.low_confidence_steps = int((confidence < options.low_confidence).sum())
    stats.scored_steps = int(confidence.size)
    stats.distinct_rows = int(model_rows)
    return scored, stats


def score_batch(scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions) -> pa.RecordBatch:
    """Score one record batch: every input column, then y_pred, top_k_values, top_k_probs, error."""
    return score_batch_with_stats(scorer, batch, options)[0]


__all__ = [
    "OUTPUT_COLUMNS",
    "BatchStats",
    "ResultCache",
    "ScoreOptions",
    "check_input_schema",
    "output_fields",
    "output_schema",
    "score_batch",
    "score_batch_with_stats",
    "top_k",
]
