"""The scoring core: a pure function from one Arrow record batch to one scored record batch.

No file access and no globals: the Parquet job, Spark's mapInArrow, the benchmark and the tests
all call :func:`score_batch` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from score import prefix, ragged
from score.encoding import (
    NON_FINITE_OUTPUT,
    REASONS,
    VALID,
    Encoded,
    RawSequences,
    column_type_error,
    integer_column_type,
    integer_list_value_type,
    offsets_from_lengths,
    ragged_from_list,
    segment_gather,
    sequences_from_columns,
    sequences_from_list,
    take_items,
    to_padded,
)
from score.errors import InvalidInput, InvalidRow, UsageError
from score.model import Scorer
from score.monitor import Profile
from score.topk import run_top_k, top_k

OUTPUT_COLUMNS = ("y_pred", "top_k_values", "top_k_probs", "error")
ON_INVALID = ("error", "null")
_EXTENSION_KEY = b"ARROW:extension:name"


@dataclass(frozen=True)
class ScoreOptions:
    """How one batch is scored."""

    top_k: int = 3  # how many of the most likely classes to report per step
    on_invalid: str = "error"  # 'error': stop at the first invalid row; 'null': keep it, say why
    input_column: str | None = None  # list column with the sequences; None: the spec's column
    input_columns: tuple[str, ...] | None = None  # wide layout: one integer column per step
    dedup: bool = True  # score each distinct sequence of a batch once (the model is deterministic)
    low_confidence: float = 0.5  # a step whose top-1 probability is below this is low-confidence
    max_length: int | None = None  # variable-length models: longest row scored (None: trained max)
    share_prefixes: bool = True  # compute each distinct prefix of a batch once (score.prefix)

    def validate(self, scorer: Scorer) -> None:
        spec = scorer.spec
        classes = spec.y_classes
        if not 1 <= self.top_k <= classes:
            raise UsageError(f"--top-k {self.top_k}: expected 1 <= K <= {classes} (the model's classes)")
        if self.on_invalid not in ON_INVALID:
            raise UsageError(f"--on-invalid {self.on_invalid}: expected one of {', '.join(ON_INVALID)}")
        if self.max_length is not None:
            if self.max_length < 1:
                raise UsageError(f"--max-length {self.max_length}: expected a positive integer")
            if not spec.variable_length:
                raise UsageError(
                    f"--max-length {self.max_length}: the model takes sequences of exactly "
                    f"{spec.seq_len} (it was trained on one length); the limit applies only to "
                    f"variable-length models"
                )
        if self.input_columns is not None:
            columns = len(self.input_columns)
            if not spec.variable_length and columns != spec.seq_len:
                raise UsageError(
                    f"--input-columns names {columns} column(s); the model takes sequences of "
                    f"{spec.seq_len}, one column per step (the wide layout is fixed-length)"
                )
            if spec.variable_length and columns > self.length_limit(scorer):
                raise UsageError(
                    f"--input-columns names {columns} column(s); the model takes at most "
                    f"{self.length_limit(scorer)} steps. The wide layout is fixed-length (every "
                    f"row has one value per column): use a list column for rows of any length"
                )
        if not 0.0 <= self.low_confidence <= 1.0:
            raise UsageError(f"--low-confidence {self.low_confidence}: expected a probability in [0, 1]")

    def column(self, scorer: Scorer) -> str:
        return self.input_column or scorer.spec.input_column

    def length_limit(self, scorer: Scorer) -> int:
        """The longest row this run scores: --max-length, else the longest training length."""
        return self.max_length or scorer.spec.seq_len

    def ragged(self, scorer: Scorer) -> bool:
        """Whether rows may have any length (a variable-length model over a list column)."""
        return scorer.spec.variable_length and self.input_columns is None


def length_warnings(scorer: Scorer, options: ScoreOptions) -> list[str]:
    """What the run should know about its length limit."""
    limit, trained = options.length_limit(scorer), scorer.spec.seq_len
    if scorer.spec.variable_length and limit > trained:
        return [f"--max-length {limit} is beyond the longest training length ({trained}): "
                f"predictions for steps past {trained} are extrapolation"]
    return []


@dataclass
class BatchStats:
    """What a batch contributed to the run's summary."""

    rows: int
    reason_counts: np.ndarray  # (len(REASONS) + 1,) rows per reason, index 0 = valid
    profile: Profile
    low_confidence_steps: int = 0
    scored_steps: int = 0
    distinct_rows: int = 0  # sequences actually run through the model
    steps_computed: int = 0  # steps the model ran, padding of rows of any length included

    def merge(self, other: BatchStats) -> None:
        self.rows += other.rows
        self.reason_counts += other.reason_counts
        self.profile.merge(other.profile)
        self.low_confidence_steps += other.low_confidence_steps
        self.scored_steps += other.scored_steps
        self.distinct_rows += other.distinct_rows
        self.steps_computed += other.steps_computed


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
    if rows < 1 or classes**steps > ragged.MAX_KEY_SPACE:
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


def _list_array(values: pa.Array, valid: np.ndarray, lengths: int | np.ndarray) -> pa.Array:
    """A list array with ``lengths`` items per valid row (one count, or one per row) and null
    (empty) invalid rows."""
    offsets = offsets_from_lengths(np.where(valid, lengths, 0))
    if offsets[-1] > np.iinfo(np.int32).max:
        raise UsageError("--batch-size is too large for one list array; use a smaller one")
    mask = None if valid.all() else pa.array(~valid)
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values, mask=mask)


def _nested_list_array(values: np.ndarray, valid: np.ndarray, lengths: int | np.ndarray, k: int) -> pa.Array:
    """A list (steps) of lists (k) per valid row, from a flat (valid steps * k) buffer."""
    inner_rows = values.size // k
    inner_offsets = pa.array((np.arange(inner_rows + 1, dtype=np.int64) * k).astype(np.int32))
    inner = pa.ListArray.from_arrays(inner_offsets, pa.array(values.reshape(-1)))
    return _list_array(inner, valid, lengths)


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


def _run_rows(scorer: Scorer, matrix: np.ndarray, k: int, share_prefixes: bool
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """run_top_k over rows of one length, sharing their common prefixes where that pays; also
    the steps the model computed."""
    rows, steps = matrix.shape
    if share_prefixes and scorer.shares_prefixes and rows > 1:
        best = np.empty((rows * steps, k), dtype=np.int32)
        probabilities = np.empty((rows * steps, k), dtype=np.float32)
        finite = np.empty(rows, dtype=bool)
        offsets = np.arange(rows + 1, dtype=np.int64) * steps
        ran = prefix.infer_shared(scorer, matrix.reshape(-1), offsets, np.arange(rows), k,
                                  best, probabilities, finite)
        if ran is not None:
            return finite, probabilities.reshape(rows, steps, k), best.reshape(rows, steps, k), ran
    finite, probabilities, best = run_top_k(scorer, matrix, k)
    return finite, probabilities, best, matrix.size


def _infer(
    scorer: Scorer, rows: np.ndarray, keys: np.ndarray | None, k: int, cache: ResultCache | None,
    share_prefixes: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Top-k classes and probabilities of ``rows``, whether each is finite, how many ran and
    how many steps the model computed.

    Rows found in ``cache`` (by key) skip the model; the finite results of the others join it.
    """
    steps = rows.shape[1]
    use_cache = cache is not None and cache.enabled and keys is not None
    hit, slot = cache.lookup(keys) if use_cache else (np.zeros(rows.shape[0], dtype=bool), None)
    hits = int(hit.sum())
    run = np.flatnonzero(~hit) if hits else None
    model_input = np.ascontiguousarray(rows if run is None else rows[run])
    # Top-k inside onnxruntime where it can; non-finite rows are dropped by the caller.
    finite, best_probabilities, best, computed = _run_rows(scorer, model_input, k, share_prefixes)
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
        return merged_best, merged_probabilities, merged_finite, model_input.shape[0], computed
    return best, best_probabilities, finite, model_input.shape[0], computed


def score_batch_with_stats(
    scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions, cache: ResultCache | None = None
) -> tuple[pa.RecordBatch, BatchStats]:
    """Score one batch; also return its counts for the run summary and drift monitoring.

    Steps: 1. read and encode the sequences; 2. stop at the first invalid row, or mark it;
    3. run each distinct valid sequence through the model once; 4. refuse non-finite output;
    5. top-k and decode; 6. assemble the output columns after the input columns.
    """
    if options.ragged(scorer):
        return _score_ragged(scorer, batch, options, cache)
    spec = scorer.spec
    k = options.top_k

    # 1-2. Read, validate, encode.
    raw = read_sequences(batch, scorer, options)
    steps = raw.values.shape[1]  # the spec's length; the wide layout's columns
    encoded = scorer.encoder.encode(raw, steps)
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
        if first.size == indices.shape[0]:  # no two rows alike: the rows as they are, no scatter
            keys, inverse, distinct_input = keys[inverse], None, indices
    best, best_probabilities, finite, model_rows, computed = _infer(
        scorer, distinct_input, keys, k, cache, options.share_prefixes)

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
    stats.steps_computed = int(computed)
    return scored, stats


def _score_ragged(
    scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions, cache: ResultCache | None
) -> tuple[pa.RecordBatch, BatchStats]:
    """score_batch_with_stats for rows of any length (a variable-length model).

    The same steps as for fixed-length rows, over flat arrays (score.ragged): rows are never
    padded to the batch's longest row, only in groups of similar length inside the model run.
    """
    spec, k = scorer.spec, options.top_k

    # 1-2. Read, validate, encode; rows over the limit are refused from their length alone.
    name = options.column(scorer)
    raw = ragged_from_list(batch.column(name), name, options.length_limit(scorer))
    encoded = scorer.encoder.encode_ragged(raw)
    if options.on_invalid == "error":
        scorer.encoder.raise_first_invalid(raw, encoded)
    valid_rows = np.flatnonzero(encoded.reasons == VALID)
    lengths = raw.gathered_lengths[valid_rows]
    offsets = offsets_from_lengths(lengths)
    if valid_rows.size == raw.rows:
        flat = encoded.indices
    else:
        flat = encoded.indices[segment_gather(raw.offsets[valid_rows], lengths)]

    # 3. Inference on distinct sequences only (the length is part of a sequence's key). Where
    # the prefix tree runs every row and no cache needs keys, equal rows share one path of the
    # tree and the keys are not made.
    merge_in_tree = (options.share_prefixes and scorer.shares_prefixes
                     and not (cache is not None and cache.enabled))
    keys = (ragged.row_keys(flat, offsets, spec.x_classes, ragged_key_length(scorer, options))
            if options.dedup and not merge_in_tree else None)
    first, inverse = ragged.distinct(keys) if keys is not None else (None, None)
    if first is not None and first.size < lengths.size:
        distinct_lengths = lengths[first]
        distinct_offsets = offsets_from_lengths(distinct_lengths)
        distinct_flat = flat[segment_gather(offsets[first], distinct_lengths)]
        distinct_keys = keys[first]
    else:  # no two rows alike (or no de-duplication): the rows as they are, nothing to scatter
        inverse, distinct_offsets, distinct_flat, distinct_keys = None, offsets, flat, keys
    best, best_probabilities, finite, model_rows, computed = _infer_ragged(
        scorer, distinct_flat, distinct_offsets, distinct_keys, k, cache, options.share_prefixes,
        merge_in_tree)

    # 4-5. Scatter each distinct row's top-k to every row equal to it; NaN or infinity fails the row.
    row_finite = finite[inverse] if inverse is not None else finite
    if inverse is not None:
        gather = segment_gather(distinct_offsets[inverse], lengths)
        best, best_probabilities = take_items(best, gather), take_items(best_probabilities, gather)
    if not row_finite.all():
        broken = valid_rows[~row_finite]
        if options.on_invalid == "error":
            raise InvalidRow(int(broken[0]), REASONS[NON_FINITE_OUTPUT],
                             "the model's output is NaN or infinite for this row")
        encoded.reasons[broken] = NON_FINITE_OUTPUT
        kept_steps = np.repeat(row_finite, lengths)
        flat, best, best_probabilities = flat[kept_steps], best[kept_steps], best_probabilities[kept_steps]
        valid_rows, lengths = valid_rows[row_finite], lengths[row_finite]
        offsets = offsets_from_lengths(lengths)
    valid = encoded.reasons == VALID
    row_lengths = np.zeros(raw.rows, dtype=np.int64)
    row_lengths[valid_rows] = lengths
    top_values = scorer.encoder.decode_y(best)

    # 6. Assemble: one value (and one list of K) per step of each row.
    columns = [
        _list_array(pa.array(top_values[:, 0]), valid, row_lengths),
        _nested_list_array(top_values, valid, row_lengths, k),
        _nested_list_array(best_probabilities.astype(np.float32, copy=False), valid, row_lengths, k),
        _error_column(raw, encoded, scorer),
    ]
    scored = pa.RecordBatch.from_arrays(list(batch.columns) + columns,
                                        schema=output_schema(batch.schema, options))

    confidence = best_probabilities[:, 0]
    positions = np.arange(flat.size, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    stats = empty_stats(scorer)
    stats.rows = batch.num_rows
    stats.reason_counts = np.bincount(encoded.reasons, minlength=len(REASONS) + 1).astype(np.int64)
    stats.profile.add_flat_inputs(positions, flat, lengths)
    stats.profile.add_flat_predictions(positions, best[:, 0], confidence)
    stats.low_confidence_steps = int((confidence < options.low_confidence).sum())
    stats.scored_steps = int(confidence.size)
    stats.distinct_rows = int(model_rows)
    stats.steps_computed = int(computed)
    return scored, stats


def ragged_key_length(scorer: Scorer, options: ScoreOptions) -> int:
    """The longest row of any length that gets a key (and a place in the run's cache)."""
    return min(ragged.key_length(scorer.spec.x_classes), options.length_limit(scorer))


def new_cache(scorer: Scorer, options: ScoreOptions) -> ResultCache | None:
    """The run's result cache, sized for the rows this model and these options key."""
    if not options.dedup:
        return None
    spec = scorer.spec
    if options.ragged(scorer):
        return ResultCache(ragged_key_length(scorer, options), options.top_k, spec.y_classes)
    steps = len(options.input_columns) if options.input_columns is not None else spec.seq_len
    return ResultCache(steps, options.top_k, spec.y_classes)


def _infer_ragged(
    scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, keys: np.ndarray | None, k: int,
    cache: ResultCache | None, share_prefixes: bool = True, merge_in_tree: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Top-k classes and probabilities of each step of flat rows, whether each row is finite,
    how many distinct rows ran and how many steps the model computed.

    Rows found in ``cache`` (by key) skip the model; the finite results of the others join it.
    ``merge_in_tree``: the rows were not de-duplicated; the prefix tree merges equal ones.
    """
    rows = offsets.size - 1
    lengths = np.diff(offsets)
    best = np.empty((flat.size, k), dtype=np.int32)  # class indices; half the bytes of intp
    probabilities = np.empty((flat.size, k), dtype=np.float32)
    finite = np.ones(rows, dtype=bool)
    use_cache = cache is not None and cache.enabled and keys is not None
    hit = np.zeros(rows, dtype=bool)
    if use_cache:
        found, slot = cache.lookup(keys)
        hit = found & (keys >= 0)
        if hit.any():
            cached_best, cached_probabilities = cache.get(slot[hit])
            mask = np.arange(cache.best.shape[1]) < lengths[hit][:, None]
            destination = segment_gather(offsets[:-1][hit], lengths[hit])
            best[destination] = cached_best[mask]
            probabilities[destination] = cached_probabilities[mask]
        cache.settle(float(hit.mean()) if rows else 1.0)
    run = np.flatnonzero(~hit)
    model_rows = int(run.size)
    if merge_in_tree:
        computed, model_rows = prefix.infer_merged(scorer, flat, offsets, run, k, best, probabilities, finite)
    else:
        computed = (prefix.infer_shared(scorer, flat, offsets, run, k, best, probabilities, finite)
                    if share_prefixes else None)
    if computed is None:  # nothing shared (or worth sharing): runs of similar length
        computed = ragged.infer(scorer, flat, offsets, run, k, best, probabilities, finite)
    if use_cache and cache.enabled:
        new = run[finite[run] & (keys[run] >= 0)]
        if new.size:
            width = cache.best.shape[1]
            padded_best, _ = to_padded(best, offsets, new, width)
            padded_probabilities, _ = to_padded(probabilities, offsets, new, width)
            cache.add(keys[new], padded_best, padded_probabilities)
    return best, probabilities, finite, model_rows, computed


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
