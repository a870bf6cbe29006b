"""The encoding contract: raw integer values <-> class indices, and validation of sequences.

Training and scoring both go through this module, so they can never encode differently. Every
function here is vectorised over whole batches: no Python loop over rows, steps or values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from score.errors import InvalidInput, InvalidRow
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
REASONS = {
    NULL_ROW: "null_row",
    WRONG_LENGTH: "wrong_length",
    NULL_ELEMENT: "null_element",
    UNKNOWN_VALUE: "unknown_value",
    NON_FINITE_OUTPUT: "non_finite_output",
    TOO_LONG: "too_long",
    EMPTY_SEQUENCE: "empty_sequence",
}



def reasons_for(spec: Spec) -> dict[int, str]:
    """The reasons a row can fail for this model: a length is wrong for a fixed-length model,
    too long or empty for a variable-length one."""
    excluded = {TOO_LONG, EMPTY_SEQUENCE} if not spec.variable_length else {WRONG_LENGTH}
    return {code: name for code, name in REASONS.items() if code not in excluded}


# A lookup table is the fastest encoder; beyond this span of raw values use a binary search.
_MAX_TABLE_SPAN = 1 << 20


def integer_list_value_type(data_type: pa.DataType) -> pa.DataType | None:
    """The integer element type of a list-like column, or None if it is not one."""
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    if not (
        pa.types.is_list(data_type)
        or pa.types.is_large_list(data_type)
        or pa.types.is_fixed_size_list(data_type)
        or _is_list_view(data_type)
    ):
        return None
    value_type = data_type.value_type
    if pa.types.is_dictionary(value_type):
        value_type = value_type.value_type
    return value_type if pa.types.is_integer(value_type) else None


def integer_column_type(data_type: pa.DataType) -> pa.DataType | None:
    """The integer type of a plain (wide-layout) column, or None if it is not one."""
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return data_type if pa.types.is_integer(data_type) else None


def _is_list_view(data_type: pa.DataType) -> bool:
    checker = getattr(pa.types, "is_list_view", None)
    large_checker = getattr(pa.types, "is_large_list_view", None)
    return bool(
        (checker and checker(data_type)) or (large_checker and large_checker(data_type))
    )


@dataclass
class RawSequences:
    """Sequences as rectangular numpy arrays, before encoding.

    ``values`` keeps the column's own integer type so that a message can quote the value
    exactly as it was written (an unsigned 64-bit value is never wrapped).
    """

    values: np.ndarray  # (rows, seq_len), the column's integer dtype; 0 where not usable
    row_null: np.ndarray  # (rows,) bool: the whole sequence is null
    lengths: np.ndarray  # (rows,) int64: number of elements in each sequence
    element_null: np.ndarray  # (rows, seq_len) bool: this element is null
    labels: tuple[str, ...]  # how a message names each position: x[0].. or the wide columns
    column: str  # the column (or columns) named in messages


@dataclass
class Encoded:
    """Class indices for every row, and why each invalid row is invalid."""

    indices: np.ndarray  # (rows, seq_len) class indices; 0 in invalid rows
    reasons: np.ndarray  # (rows,) int8, VALID or one of REASONS
    positions: np.ndarray  # (rows,) int64: first offending position (element-level reasons)

    @property
    def valid(self) -> np.ndarray:
        return self.reasons == VALID


def _int_numpy(array: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-copy view of an integer array's values, and its null mask (None if no nulls)."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary.take(array.indices)
    dtype = np.dtype(str(array.type))  # 'int8' .. 'uint64'; to_pandas_dtype() would import pandas
    buffer = array.buffers()[1]
    if buffer is None or len(array) == 0:
        values = np.zeros(len(array), dtype=dtype)
    else:
        values = np.frombuffer(buffer, dtype=dtype, count=array.offset + len(array))
        values = values[array.offset :]
    nulls = None
    if array.null_count:
        nulls = array.is_null().to_numpy(zero_copy_only=False)
    return values, nulls


def _row_nulls(array: pa.Array) -> np.ndarray:
    if array.null_count:
        return array.is_null().to_numpy(zero_copy_only=False)
    return np.zeros(len(array), dtype=bool)


def sequences_from_list(array: pa.Array | pa.ChunkedArray, seq_len: int, column: str) -> RawSequences:
    """Read a list / large_list / fixed_size_list column of integers into RawSequences."""
    array = _plain_list(array)
    rows = len(array)
    row_null = _row_nulls(array)
    offsets, lengths = _list_offsets(array, row_null)
    child_values, child_nulls = _int_numpy(array.values)

    usable = ~row_null & (lengths == seq_len)
    if rows and usable.all() and offsets[-1] - offsets[0] == rows * seq_len:
        # The common case: every row has the right length and they lie back to back.
        start, stop = int(offsets[0]), int(offsets[-1])
        values = child_values[start:stop].reshape(rows, seq_len)
        element_null = (
            child_nulls[start:stop].reshape(rows, seq_len)
            if child_nulls is not None
            else np.zeros((rows, seq_len), dtype=bool)
        )
    else:
        gather = offsets[:-1, None] + np.arange(seq_len, dtype=np.int64)
        gather = np.where(usable[:, None], gather, 0)
        if child_values.size:
            values = np.where(usable[:, None], child_values[gather], 0).astype(child_values.dtype)
        else:
            values = np.zeros((rows, seq_len), dtype=child_values.dtype)
        if child_nulls is not None and child_values.size:
            element_null = child_nulls[gather] & usable[:, None]
        else:
            element_null = np.zeros((rows, seq_len), dtype=bool)
    labels = tuple(f"{column}[{t}]" for t in range(seq_len))
    return RawSequences(values, row_null, lengths, element_null, labels, column)


def sequences_from_columns(arrays: list[pa.Array], columns: list[str]) -> RawSequences:
    """Read the wide layout (one integer column per step) into RawSequences."""
    parts = []
    nulls = []
    for array in arrays:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        values, value_nulls = _int_numpy(array)
        parts.append(values)
        nulls.append(value_nulls if value_nulls is not None else np.zeros(len(values), bool))
    dtype = np.result_type(*[part.dtype for part in parts])
    if dtype == np.float64:  # mixing uint64 with signed types: keep exact values as objects
        dtype = np.dtype(object)
    values = np.stack([part.astype(dtype, copy=False) for part in parts], axis=1)
    element_null = np.stack(nulls, axis=1)
    rows = values.shape[0]
    values = np.where(element_null, np.zeros((), dtype=dtype), values).astype(dtype)
    return RawSequences(
        values=values,
        row_null=np.zeros(rows, dtype=bool),
        lengths=np.full(rows, len(columns), dtype=np.int64),
        element_null=element_null,
        labels=tuple(columns),
        column=",".join(columns),
    )


@dataclass
class RaggedSequences:
    """Sequences of any length, flat: the elements of every gathered row back to back.

    A row is gathered when it is not null and has 1..``limit`` elements; any other row has no
    elements here (``offsets`` gives it none), so a row far longer than the limit is refused
    from its length alone and never copied.
    """

    values: np.ndarray  # (elements,) the column's integer dtype
    element_null: np.ndarray | None  # (elements,) bool, None when no element is null
    offsets: np.ndarray  # (rows + 1,) int64: row i is values[offsets[i]:offsets[i + 1]]
    lengths: np.ndarray  # (rows,) int64: each row's own number of elements (0 for a null row)
    row_null: np.ndarray  # (rows,) bool: the whole sequence is null
    column: str  # the column named in messages
    limit: int  # the longest row gathered

    @property
    def rows(self) -> int:
        return self.lengths.size

    @property
    def gathered_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _list_offsets(array: pa.Array, row_null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element offsets (rows + 1, into the child values) and lengths (0 for a null row) of a
    list-like array."""
    rows = len(array)
    if pa.types.is_fixed_size_list(array.type):
        size = array.type.list_size
        offsets = (np.arange(rows + 1, dtype=np.int64) + array.offset) * size
    else:
        offset_dtype = np.int64 if pa.types.is_large_list(array.type) else np.int32
        offsets = np.frombuffer(
            array.buffers()[1], dtype=offset_dtype, count=array.offset + rows + 1
        )[array.offset :].astype(np.int64, copy=False)
    lengths = np.where(row_null, 0, np.diff(offsets)).astype(np.int64, copy=False)
    return offsets, lengths


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """(rows + 1,) int64 offsets of rows of the given lengths laid back to back."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _plain_list(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous list or large_list (or fixed_size_list) array, dictionaries decoded."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary.take(array.indices)
    if _is_list_view(array.type):
        array = array.cast(pa.large_list(array.type.value_type))
    return array


def segment_gather(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat positions of the segments [start, start + length), one after the other."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts.astype(np.int64) - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def as_items(array: np.ndarray) -> np.ndarray:
    """A C-contiguous (n, ...) array as n opaque items of one row's bytes each (a view).

    Fancy indexing moves such an item with one copy instead of an index loop over its
    values: gathering and scattering the (steps, k) top-k rows this way is 2-3x faster.
    """
    if not array.flags.c_contiguous:
        raise ValueError("as_items needs a C-contiguous array")
    row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    return array.reshape(array.shape[0], -1).view(np.dtype((np.void, row_bytes))).reshape(-1)


def take_items(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] for a C-contiguous array, each row moved as one item (as_items)."""
    return as_items(array)[rows].view(array.dtype).reshape((rows.size, *array.shape[1:]))


def ragged_from_list(array: pa.Array | pa.ChunkedArray, column: str, limit: int) -> RaggedSequences:
    """Read a list column of integers of any length; rows longer than ``limit`` are not read."""
    array = _plain_list(array)
    row_null = _row_nulls(array)
    source_offsets, lengths = _list_offsets(array, row_null)
    gathered = ~row_null & (lengths >= 1) & (lengths <= limit)
    counts = np.where(gathered, lengths, 0)
    offsets = offsets_from_lengths(counts)
    child_values, child_nulls = _int_numpy(array.values)
    start, stop = int(source_offsets[0]), int(source_offsets[-1])
    if gathered.all() and stop - start == offsets[-1]:
        # The common case: every row is read, back to back: a view, no copy.
        values = child_values[start:stop]
        element_null = child_nulls[start:stop] if child_nulls is not None else None
    else:
        positions = segment_gather(source_offsets[:-1], counts)
        values = child_values[positions]
        element_null = child_nulls[positions] if child_nulls is not None else None
    if element_null is not None and not element_null.any():
        element_null = None
    return RaggedSequences(values, element_null, offsets, lengths, row_null, column, int(limit))


def to_padded(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, width: int,
              fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a flat ragged array (steps, ...) as a (len(rows), width, ...) array, right-padded
    with ``fill``, and the (len(rows), width) mask of real steps. Every row must fit."""
    lengths = offsets[rows + 1] - offsets[rows]
    mask = np.arange(width) < lengths[:, None]
    matrix = np.full((rows.size, width) + flat.shape[1:], fill, dtype=flat.dtype)
    matrix[mask] = flat[segment_gather(offsets[rows], lengths)]
    return matrix, mask


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
        choices = pa.StructArray.from_arrays(
            [pa.array(reasons == code) for code in REASONS],
            names=[REASONS[code] for code in REASONS],
        )
        return pc.case_when(choices, null_row, wrong_length, element_null, unknown, non_finite,
                            too_long, empty)

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


def column_type_error(column: str, data_type: pa.DataType, layout: str) -> InvalidInput:
    """The refusal for a column whose type cannot hold integer sequences."""
    expected = (
        "a list of integers (list, large_list or fixed_size_list of int8..int64 or uint8..uint64)"
        if layout == "list"
        else "an integer column"
    )
    hint = ""
    value_type = getattr(data_type, "value_type", data_type)
    if pa.types.is_floating(value_type) or pa.types.is_decimal(value_type):
        hint = "; floating-point values are refused rather than truncated: cast them to integers"
    return InvalidInput(f"column {column!r} is {data_type}; expected {expected}{hint}")
