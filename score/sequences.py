"""Reading Arrow columns of integer sequences into numpy: a list column (fixed-length or
ragged) or the wide layout (one integer column per step), and the column types that can hold
them.

Values keep the column's own integer type here; score.encoding validates and encodes them.
Every function is vectorised over whole batches: no Python loop over rows, steps or values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from score.arrays import offsets_from_lengths, segment_gather
from score.errors import InvalidInput


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


def _plain_list(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous list or large_list (or fixed_size_list) array, dictionaries decoded."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary.take(array.indices)
    if _is_list_view(array.type):
        array = array.cast(pa.large_list(array.type.value_type))
    return array


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
