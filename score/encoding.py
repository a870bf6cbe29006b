"""The encoding contract: raw integer values <-> class indices, and validation of sequences.

Training and scoring both go through this module, so they can never encode differently. Every
function here is vectorised over whole batches: no Python loop over rows, steps or values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from score.errors import InvalidRow
from score.sequences import RaggedSequences, RawSequences
from score.spec import Spec

# Why a row cannot be scored. 0 means valid; the order is the order in which they are checked.
VALID = 0
NULL_ROW = 1
WRONG_LENGTH = 2
NULL_ELEMENT = 3
UNKNOWN_VALUE = 4
NON_FINITE_OUTPUT = 5
TOO_LONG = 6  # variable-length models: longer than the longest training length (or --max-length)
EMPTY_SEQUENCE = 7  # variable-length models: an empty list
NULL_KEY = 8  # runs with --key: the row's key is null
DUPLICATE_KEY = 9  # runs with --key: the key has another row in the same run's input
LABEL_LENGTH = 10  # runs with --labels: not one label per step of the row's sequence
UNKNOWN_LABEL = 11  # runs with --labels: a label is not one of the model's y values
NULL_LABEL = 12  # runs with --labels: the label list or one of its labels is null
REASONS = {
    NULL_ROW: "null_row",
    WRONG_LENGTH: "wrong_length",
    NULL_ELEMENT: "null_element",
    UNKNOWN_VALUE: "unknown_value",
    NON_FINITE_OUTPUT: "non_finite_output",
    TOO_LONG: "too_long",
    EMPTY_SEQUENCE: "empty_sequence",
    NULL_KEY: "null_key",
    DUPLICATE_KEY: "duplicate_key",
    LABEL_LENGTH: "label_length",
    UNKNOWN_LABEL: "unknown_label",
    NULL_LABEL: "null_label",
}
KEY_REASONS = frozenset({NULL_KEY, DUPLICATE_KEY})
LABEL_REASONS = frozenset({LABEL_LENGTH, UNKNOWN_LABEL, NULL_LABEL})


def reasons_for(spec: Spec, keyed: bool = False, labelled: bool = False) -> dict[int, str]:
    """The reasons a row can fail for this model: a length is wrong for a fixed-length model,
    too long or empty for a variable-length one; a key is null or repeated only with --key;
    labels are wrong only with --labels."""
    excluded = {TOO_LONG, EMPTY_SEQUENCE} if not spec.variable_length else {WRONG_LENGTH}
    if not keyed:
        excluded |= KEY_REASONS
    if not labelled:
        excluded |= LABEL_REASONS
    return {code: name for code, name in REASONS.items() if code not in excluded}


# A lookup table is the fastest encoder; beyond this span of raw values use a binary search.
_MAX_TABLE_SPAN = 1 << 20


@dataclass
class Encoded:
    """Class indices for every row, and why each invalid row is invalid."""

    indices: np.ndarray  # (rows, seq_len) class indices; 0 in invalid rows
    reasons: np.ndarray  # (rows,) int8, VALID or one of REASONS
    positions: np.ndarray  # (rows,) int64: first offending position (element-level reasons)

    @property
    def valid(self) -> np.ndarray:
        return self.reasons == VALID


@dataclass
class EncodedRagged:
    """Class indices of every gathered element, and why each invalid row is invalid."""

    indices: np.ndarray  # (elements,) class indices, aligned with RaggedSequences.values
    reasons: np.ndarray  # (rows,) int8, VALID or one of REASONS
    positions: np.ndarray  # (rows,) int64: first offending position (element-level reasons)

    @property
    def valid(self) -> np.ndarray:
        return self.reasons == VALID


class Encoder:
    """Maps raw values to class indices and back, for one spec. Built once, used per batch."""

    def __init__(self, spec: Spec, index_dtype: np.dtype | type = np.int64) -> None:
        self.spec = spec
        self.index_dtype = np.dtype(index_dtype)
        self.x_values = np.asarray(spec.x_values, dtype=np.int64)
        self.y_values = np.asarray(spec.y_values, dtype=np.int64)
        self.x_min = int(self.x_values[0])
        self.x_max = int(self.x_values[-1])
        span = self.x_max - self.x_min + 1
        self._table = None
        if span <= _MAX_TABLE_SPAN:
            self._table = np.full(span, -1, dtype=np.int64)
            self._table[self.x_values - self.x_min] = np.arange(len(self.x_values))
        self._x_description = spec.describe_x()
        self._y_encoder: Encoder | None = None

    # Raw values -> class indices -------------------------------------------------------------
    def _lookup(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class index of each value and whether it is one of the model's x values."""
        if values.dtype == object:
            in_range = np.vectorize(lambda v: self.x_min <= v <= self.x_max, otypes=[bool])(values)
        else:
            info = np.iinfo(values.dtype)
            low, high = max(self.x_min, info.min), min(self.x_max, info.max)
            if low > high:
                return np.zeros(values.shape, np.int64), np.zeros(values.shape, bool)
            in_range = (values >= values.dtype.type(low)) & (values <= values.dtype.type(high))
        clipped = np.where(in_range, values, self.x_min if values.dtype == object else values.dtype.type(low))
        clipped = clipped.astype(np.int64)
        if self._table is not None:
            indices = self._table[clipped - self.x_min]
        else:
            # Search the raw values: shifting by x_min overflows int64 for a very wide value set.
            position = np.searchsorted(self.x_values, clipped)
            position = np.minimum(position, len(self.x_values) - 1)
            indices = np.where(self.x_values[position] == clipped, position, -1)
        known = in_range & (indices >= 0)
        return np.where(known, indices, 0), known

    def lookup_y(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class index of each raw y value (labels) and whether it is one of the model's y values."""
        if self._y_encoder is None:
            y_spec = Spec(self.spec.y_values, self.spec.y_values, self.spec.seq_len)
            self._y_encoder = Encoder(y_spec, self.index_dtype)
        return self._y_encoder._lookup(values)

    def encode(self, raw: RawSequences, seq_len: int | None = None) -> Encoded:
        """Validate and encode; invalid rows get index 0 and a reason. Rows must have
        ``seq_len`` steps (default: the spec's; the wide layout of a variable-length model
        passes its number of columns)."""
        seq_len = self.spec.seq_len if seq_len is None else seq_len
        rows = raw.values.shape[0]
        indices, known = self._lookup(raw.values)
        reasons = np.zeros(rows, dtype=np.int8)
        positions = np.zeros(rows, dtype=np.int64)
        unknown = ~known & ~raw.element_null
        row_unknown = unknown.any(axis=1)
        row_element_null = raw.element_null.any(axis=1)
        wrong_length = raw.lengths != seq_len

        # Assign in reverse order of precedence so that the first problem in a row wins.
        reasons[row_unknown] = UNKNOWN_VALUE
        positions[row_unknown] = unknown[row_unknown].argmax(axis=1)
        reasons[row_element_null] = NULL_ELEMENT
        positions[row_element_null] = raw.element_null[row_element_null].argmax(axis=1)
        reasons[wrong_length] = WRONG_LENGTH
        reasons[raw.row_null] = NULL_ROW
        element_level = (reasons == NULL_ELEMENT) | (reasons == UNKNOWN_VALUE)
        positions[~element_level] = 0
        indices = np.where((reasons == VALID)[:, None], indices, 0).astype(self.index_dtype)
        return Encoded(indices=indices, reasons=reasons, positions=positions)

    def encode_ragged(self, raw: RaggedSequences) -> EncodedRagged:
        """Validate and encode sequences of any length: empty, too long, null element, unknown."""
        rows = raw.rows
        indices, known = self._lookup(raw.values)
        bad = ~known if raw.element_null is None else ~known & ~raw.element_null
        row_of = np.repeat(np.arange(rows, dtype=np.int64), raw.gathered_lengths)
        reasons = np.zeros(rows, dtype=np.int8)
        positions = np.zeros(rows, dtype=np.int64)

        # Assign in reverse order of precedence so that the first problem in a row wins; the
        # first offending element of a row is the first of its row in the flat order.
        for code, flags in ((UNKNOWN_VALUE, bad), (NULL_ELEMENT, raw.element_null)):
            if flags is None or not flags.any():
                continue
            where = np.flatnonzero(flags)
            offending_rows, first = np.unique(row_of[where], return_index=True)
            reasons[offending_rows] = code
            positions[offending_rows] = where[first] - raw.offsets[offending_rows]
        reasons[raw.lengths > raw.limit] = TOO_LONG
        reasons[~raw.row_null & (raw.lengths == 0)] = EMPTY_SEQUENCE
        reasons[raw.row_null] = NULL_ROW
        element_level = (reasons == NULL_ELEMENT) | (reasons == UNKNOWN_VALUE)
        positions[~element_level] = 0
        invalid_steps = np.repeat(reasons != VALID, raw.gathered_lengths)
        indices = np.where(invalid_steps, 0, indices).astype(self.index_dtype)
        return EncodedRagged(indices=indices, reasons=reasons, positions=positions)

    def encode_ragged_strict(self, raw: RaggedSequences) -> np.ndarray:
        """Encode sequences of any length, raising InvalidRow for the first invalid row."""
        encoded = self.encode_ragged(raw)
        self.raise_first_invalid(raw, encoded)
        return encoded.indices

    def encode_strict(self, raw: RawSequences) -> np.ndarray:
        """Encode, raising InvalidRow for the first invalid row."""
        encoded = self.encode(raw)
        self.raise_first_invalid(raw, encoded)
        return encoded.indices

    # Messages ---------------------------------------------------------------------------------
    def raise_first_invalid(self, raw: RawSequences | RaggedSequences,
                            encoded: Encoded | EncodedRagged) -> None:
        bad = np.flatnonzero(encoded.reasons)
        if bad.size:
            row = int(bad[0])
            message = self.messages(raw, encoded, np.array([row]))[0].as_py()
            raise InvalidRow(row, REASONS[int(encoded.reasons[row])], message)

    def messages(self, raw: RawSequences | RaggedSequences, encoded: Encoded | EncodedRagged,
                 rows: np.ndarray) -> pa.StringArray:
        """One message per requested (invalid) row, built column-wise by Arrow kernels."""
        if rows.size == 0:
            return pa.array([], pa.string())
        reasons = encoded.reasons[rows]
        positions = encoded.positions[rows]
        if isinstance(raw, RaggedSequences):
            labels = pc.binary_join_element_wise(
                raw.column, "[", pa.array(positions).cast(pa.string()), "]", "")
            element_level = (reasons == NULL_ELEMENT) | (reasons == UNKNOWN_VALUE)
            where = np.where(element_level, raw.offsets[rows] + positions, 0)
            picked = raw.values[where] if raw.values.size else np.zeros(rows.size, raw.values.dtype)
        else:
            labels = pa.array(raw.labels, pa.string()).take(pa.array(positions))
            picked = raw.values[rows, positions]
        if picked.dtype == object:
            value_text = pa.array([str(v) for v in picked], pa.string())
        else:
            value_text = pa.array(picked).cast(pa.string())
        length_text = pa.array(raw.lengths[rows]).cast(pa.string())
        seq_len = self.spec.seq_len

        def join(*parts: pa.Array | str) -> pa.Array:
            return pc.binary_join_element_wise(*parts, "")

        def constant(text: str) -> pa.Array:
            return pa.array(np.full(rows.size, text, dtype=object), pa.string())

        unknown = join(labels, " = ", value_text,
                       f" is not one of the model's input values ({self._x_description})")
        element_null = join(labels, " is null")
        wrong_length = join(
            f"{raw.column} has ", length_text, f" values; the model takes sequences of {seq_len}"
        )
        limit = getattr(raw, "limit", seq_len)
        if limit == seq_len:
            longest = (f" values; the model takes at most {seq_len} (its longest training "
                       f"length; --max-length raises the limit for a run)")
        else:
            longest = f" values; this run takes at most {limit} (--max-length {limit})"
        too_long = join(f"{raw.column} has ", length_text, longest)
        empty = constant(f"{raw.column} is an empty list; the model takes sequences of 1..{limit} values")
        null_row = constant(f"{raw.column} is null")
        non_finite = constant("the model's output is NaN or infinite for this row")
        null_key = constant("the key is null")
        duplicate_key = constant("the key has another row in this run's input")
        codes = [code for code in REASONS if code not in LABEL_REASONS]  # score.labels says those
        choices = pa.StructArray.from_arrays(
            [pa.array(reasons == code) for code in codes],
            names=[REASONS[code] for code in codes],
        )
        return pc.case_when(choices, null_row, wrong_length, element_null, unknown, non_finite,
                            too_long, empty, null_key, duplicate_key)

    # Class indices -> raw values -----------------------------------------------------------
    def decode_y(self, indices: np.ndarray) -> np.ndarray:
        return self.y_values[indices]

    def encode_y(self, raw: RawSequences) -> np.ndarray:
        """Encode target sequences (training): every value must be one of the y values."""
        y_spec = Spec(self.spec.y_values, self.spec.y_values, self.spec.seq_len)
        return Encoder(y_spec, self.index_dtype).encode_strict(raw)

    def encode_y_ragged(self, raw: RaggedSequences) -> np.ndarray:
        """Encode target sequences of any length (training), flat like ``raw.values``."""
        y_spec = Spec(self.spec.y_values, self.spec.y_values, self.spec.seq_len, min_len=1)
        return Encoder(y_spec, self.index_dtype).encode_ragged_strict(raw)
