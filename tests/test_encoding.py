"""The encoding contract (score.encoding) that training and scoring share, the column readers
(score.sequences) and the array helpers (score.arrays).

Raw values <-> class indices, the four reasons a row is refused and their messages, every Arrow
list layout and integer width, and property tests against a plain Python reference.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from score.arrays import as_items, take_items
from score.encoding import (
    EMPTY_SEQUENCE,
    NULL_ELEMENT,
    NULL_ROW,
    REASONS,
    TOO_LONG,
    UNKNOWN_VALUE,
    VALID,
    WRONG_LENGTH,
    Encoder,
)
from score.errors import InvalidRow
from score.sequences import ragged_from_list, sequences_from_columns, sequences_from_list
from score.spec import Spec

SPEC = Spec(x_values=tuple(range(11)), y_values=tuple(range(25)), seq_len=4)
INTEGER_TYPES = [
    pa.int8(), pa.int16(), pa.int32(), pa.int64(),
    pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
]
UINT64_MAX = 2**64 - 1


INT64 = pa.int64()


def raw_list(rows: list, seq_len: int = 4, value_type: pa.DataType = INT64, column: str = "x"):
    """RawSequences from Python rows (None for a null row or element)."""
    return sequences_from_list(pa.array(rows, pa.list_(value_type)), seq_len, column)


def encode_one(spec: Spec, rows: list, value_type: pa.DataType = INT64):
    raw = raw_list(rows, spec.seq_len, value_type)
    encoder = Encoder(spec)
    encoded = encoder.encode(raw)
    invalid = np.flatnonzero(encoded.reasons)
    messages = encoder.messages(raw, encoded, invalid).to_pylist()
    return encoded, dict(zip(invalid.tolist(), messages, strict=True))


# Round trips ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "values",
    [
        pytest.param(tuple(range(11)), id="range_0_10"),
        pytest.param((-7, -3, 0, 4, 90), id="sparse_with_negatives"),
        pytest.param((0, 1 << 21, 1 << 40), id="wide_span_binary_search"),
        pytest.param((2**62, 2**62 + 1, 2**62 + 5), id="large_magnitudes"),
    ],
)
def test_encode_then_decode_returns_the_raw_values(values):
    spec = Spec(x_values=values, y_values=values, seq_len=3)
    x = np.random.default_rng(0).choice(np.asarray(values), size=(50, 3))
    encoder = Encoder(spec, np.int32)
    indices = encoder.encode_strict(raw_list(x.tolist(), 3))
    assert indices.dtype == np.int32
    assert indices.tolist() == [[values.index(v) for v in row] for row in x.tolist()]
    assert encoder.decode_y(indices).tolist() == x.tolist()


def test_decode_y_maps_class_indices_to_the_y_values():
    spec = Spec(x_values=(0, 1), y_values=(5, 10, 20), seq_len=2)
    assert Encoder(spec).decode_y(np.array([[0, 2], [1, 1]])).tolist() == [[5, 20], [10, 10]]


def test_encode_y_uses_the_y_value_set():
    spec = Spec(x_values=(0, 1), y_values=(5, 10, 20), seq_len=2)
    assert Encoder(spec).encode_y(raw_list([[20, 5]], 2)).tolist() == [[2, 0]]
    with pytest.raises(InvalidRow, match=r"row 0: x\[1\] = 7 is not one of"):
        Encoder(spec).encode_y(raw_list([[20, 7]], 2))


@pytest.mark.parametrize("value_type", INTEGER_TYPES, ids=str)
@pytest.mark.parametrize("kind", ["list", "large_list", "fixed_size_list"])
def test_every_list_layout_and_integer_width_encodes_alike(kind, value_type):
    rows = [[0, 1, 2, 10], [10, 9, 8, 7], [3, 3, 3, 3]]
    flat = pa.array(np.ravel(rows), value_type)
    if kind == "fixed_size_list":
        array = pa.FixedSizeListArray.from_arrays(flat, 4)
    elif kind == "large_list":
        array = pa.LargeListArray.from_arrays(pa.array([0, 4, 8, 12], pa.int64()), flat)
    else:
        array = pa.ListArray.from_arrays(pa.array([0, 4, 8, 12], pa.int32()), flat)
    indices = Encoder(SPEC).encode_strict(sequences_from_list(array, 4, "x"))
    assert indices.tolist() == rows


@pytest.mark.parametrize("where", ["values", "whole_column"])
def test_dictionary_encoded_sequences(where):
    rows = [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3]]
    if where == "values":
        flat = pa.array(np.ravel(rows)).dictionary_encode()
        array = pa.ListArray.from_arrays(pa.array([0, 4, 8, 12], pa.int32()), flat)
    else:
        dictionary = pa.array(rows[:2], pa.list_(pa.int64()))
        array = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()), dictionary)
    assert Encoder(SPEC).encode_strict(sequences_from_list(array, 4, "x")).tolist() == rows


def test_sliced_and_chunked_arrays_keep_their_rows():
    array = pa.array([[9, 9, 9, 9], [1, 2, 3, 4], None, [5, 6, 7, 8]], pa.list_(pa.int16()))
    chunked = pa.chunked_array([array.slice(1, 1), array.slice(3, 1)])
    assert Encoder(SPEC).encode_strict(sequences_from_list(chunked, 4, "x")).tolist() == [
        [1, 2, 3, 4],
        [5, 6, 7, 8],
    ]


def test_wide_layout_mixing_uint64_and_signed_columns_is_exact():
    arrays = [pa.array([1, UINT64_MAX], pa.uint64()), pa.array([-1, 2], pa.int64())]
    spec = Spec(x_values=(-1, 1, 2), y_values=(0,), seq_len=2)
    raw = sequences_from_columns(arrays, ["x0", "x1"])
    encoder = Encoder(spec)
    encoded = encoder.encode(raw)
    assert encoded.reasons.tolist() == [VALID, UNKNOWN_VALUE]
    assert encoded.indices[0].tolist() == [1, 0]
    assert encoder.messages(raw, encoded, np.array([1])).to_pylist() == [
        f"x0 = {UINT64_MAX} is not one of the model's input values (-1, 1, 2)"
    ]


# Every refusal and its message -----------------------------------------------------------------
REFUSALS = [
    pytest.param([None], NULL_ROW, 0, "x is null", id="null_row"),
    pytest.param([[1, 2, 3]], WRONG_LENGTH, 0,
                 "x has 3 values; the model takes sequences of 4", id="too_short"),
    pytest.param([[1, 2, 3, 4, 5]], WRONG_LENGTH, 0,
                 "x has 5 values; the model takes sequences of 4", id="too_long"),
    pytest.param([[]], WRONG_LENGTH, 0,
                 "x has 0 values; the model takes sequences of 4", id="empty"),
    pytest.param([[1, None, 3, None]], NULL_ELEMENT, 1, "x[1] is null", id="null_element"),
    pytest.param([[1, 2, 11, 3]], UNKNOWN_VALUE, 2,
                 "x[2] = 11 is not one of the model's input values (0..10)", id="unknown_value"),
    pytest.param([[-1, 2, 3, 4]], UNKNOWN_VALUE, 0,
                 "x[0] = -1 is not one of the model's input values (0..10)", id="negative"),
    # Precedence: a null row, then the length, then a null element, then an unknown value.
    pytest.param([[99, None, 3]], WRONG_LENGTH, 0,
                 "x has 3 values; the model takes sequences of 4", id="length_before_elements"),
    pytest.param([[99, 2, None, 4]], NULL_ELEMENT, 2, "x[2] is null", id="null_before_unknown"),
]


@pytest.mark.parametrize("rows,reason,position,message", REFUSALS)
def test_each_refusal_has_its_reason_position_and_message(rows, reason, position, message):
    encoded, messages = encode_one(SPEC, [[0, 1, 2, 3], *rows])
    assert encoded.reasons.tolist() == [VALID, reason]
    assert int(encoded.positions[1]) == position
    assert encoded.indices[1].tolist() == [0, 0, 0, 0]  # invalid rows carry index 0
    assert messages == {1: message}


@pytest.mark.parametrize("rows,reason,position,message", REFUSALS)
def test_encode_strict_raises_for_the_first_invalid_row(rows, reason, position, message):
    raw = raw_list([[0, 1, 2, 3], *rows, None])
    with pytest.raises(InvalidRow) as caught:
        Encoder(SPEC).encode_strict(raw)
    assert (caught.value.row, caught.value.reason, caught.value.detail) == (1, REASONS[reason], message)
    assert str(caught.value) == f"row 1: {message}"


def test_uint64_above_int64_max_is_quoted_exactly_not_wrapped():
    encoded, messages = encode_one(SPEC, [[1, UINT64_MAX, 2, 3], [2**63, 0, 0, 0]], pa.uint64())
    assert encoded.reasons.tolist() == [UNKNOWN_VALUE, UNKNOWN_VALUE]
    assert messages == {
        0: f"x[1] = {UINT64_MAX} is not one of the model's input values (0..10)",
        1: f"x[0] = {2**63} is not one of the model's input values (0..10)",
    }


def test_value_set_beyond_a_narrow_integer_type_is_unknown_not_wrapped():
    spec = Spec(x_values=(300, 301), y_values=(0,), seq_len=2)
    encoded, messages = encode_one(spec, [[44, 45]], pa.int8())  # 300 wraps to 44 in int8
    assert encoded.reasons.tolist() == [UNKNOWN_VALUE]
    assert messages == {0: "x[0] = 44 is not one of the model's input values (300..301)"}


def test_fixed_size_list_with_null_rows():
    array = pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 3, 4, 5, 6, 7, 8], pa.uint8()), 4)
    array = pa.FixedSizeListArray.from_arrays(array.values, 4, mask=pa.array([False, True]))
    encoded = Encoder(SPEC).encode(sequences_from_list(array, 4, "x"))
    assert encoded.reasons.tolist() == [VALID, NULL_ROW]


def test_value_set_spanning_the_whole_int64_range():
    low, high = -(2**63), 2**63 - 1
    spec = Spec(x_values=(low, 0, high), y_values=(0,), seq_len=3)
    assert Encoder(spec).encode_strict(raw_list([[low, 0, high]], 3)).tolist() == [[0, 1, 2]]


# Property tests against a plain Python reference -------------------------------------------------
def describe(values: tuple[int, ...]) -> str:
    """How a message lists the model's values: a range when contiguous, else each value."""
    if len(values) > 1 and values[-1] - values[0] == len(values) - 1:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def reference_elements(row: list, values: tuple[int, ...]) -> tuple:
    """A row of an acceptable length: its first null or unknown element, else its indices."""
    if None in row:
        position = row.index(None)
        return NULL_ELEMENT, position, None, f"x[{position}] is null"
    if any(v not in values for v in row):
        position = next(i for i, v in enumerate(row) if v not in values)
        message = f"x[{position}] = {row[position]} is not one of the model's input values ({describe(values)})"
        return UNKNOWN_VALUE, position, None, message
    return VALID, 0, [values.index(v) for v in row], None


def reference_encode(rows: list, values: tuple[int, ...], seq_len: int) -> list[tuple]:
    """(reason, position, indices or None, message) per row, the obvious way."""
    results = []
    for row in rows:
        if row is None:
            results.append((NULL_ROW, 0, None, "x is null"))
        elif len(row) != seq_len:
            message = f"x has {len(row)} values; the model takes sequences of {seq_len}"
            results.append((WRONG_LENGTH, 0, None, message))
        else:
            results.append(reference_elements(row, values))
    return results


value_sets = st.one_of(
    st.lists(st.integers(-50, 50), min_size=1, max_size=12, unique=True),
    st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=6, unique=True),
).map(lambda values: tuple(sorted(values)))


@st.composite
def batches(draw):
    values = draw(value_sets)
    seq_len = draw(st.integers(1, 5))
    candidates = st.one_of(st.sampled_from(values), st.integers(-60, 60), st.none())
    valid_row = st.lists(st.sampled_from(values), min_size=seq_len, max_size=seq_len)
    any_row = st.lists(candidates, min_size=0, max_size=seq_len + 2)
    rows = draw(st.lists(st.one_of(valid_row, any_row, st.none()), min_size=1, max_size=30))
    return values, seq_len, rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_encoder_matches_the_plain_reference(batch):
    values, seq_len, rows = batch
    spec = Spec(x_values=values, y_values=values, seq_len=seq_len)
    raw = raw_list(rows, seq_len)
    encoder = Encoder(spec)
    encoded = encoder.encode(raw)
    expected = reference_encode(rows, values, seq_len)

    assert encoded.reasons.tolist() == [reason for reason, *_ in expected]
    invalid = np.flatnonzero(encoded.reasons)
    assert encoded.positions[invalid].tolist() == [expected[i][1] for i in invalid]
    assert encoder.messages(raw, encoded, invalid).to_pylist() == [expected[i][3] for i in invalid]
    for row, (reason, _, indices, _) in enumerate(expected):
        if reason == VALID:
            assert encoded.indices[row].tolist() == indices
            assert encoder.decode_y(encoded.indices[row]).tolist() == rows[row]
        else:
            assert not encoded.indices[row].any()


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(INTEGER_TYPES),
    st.lists(st.lists(st.integers(0, 10), min_size=4, max_size=4), min_size=1, max_size=20),
    st.integers(0, 2**64 - 1),
)
def test_any_integer_width_agrees_with_int64(value_type, rows, extra):
    """The same numbers in any width encode alike; a value the width cannot hold is refused."""
    as_int64 = Encoder(SPEC).encode(raw_list(rows))
    narrow = Encoder(SPEC).encode(raw_list(rows, value_type=value_type))
    assert narrow.indices.tolist() == as_int64.indices.tolist()
    assert narrow.reasons.tolist() == as_int64.reasons.tolist()

    info = np.iinfo(value_type.to_pandas_dtype())
    value = info.min + extra % (int(info.max) - int(info.min) + 1)
    encoded, messages = encode_one(SPEC, [[0, 0, value, 0]], value_type)
    if 0 <= value <= 10:
        assert encoded.reasons.tolist() == [VALID]
    else:
        assert messages == {0: f"x[2] = {value} is not one of the model's input values (0..10)"}


# Rows of any length ------------------------------------------------------------------------------
def reference_encode_ragged(rows: list, values: tuple[int, ...], limit: int) -> list[tuple]:
    """(reason, position, indices or None, message) per row of any length, the obvious way."""
    results = []
    for row in rows:
        if row is None:
            results.append((NULL_ROW, 0, None, "x is null"))
        elif not row:
            results.append((EMPTY_SEQUENCE, 0, None,
                            f"x is an empty list; the model takes sequences of 1..{limit} values"))
        elif len(row) > limit:
            results.append((TOO_LONG, 0, None,
                            f"x has {len(row)} values; the model takes at most {limit} (its longest "
                            f"training length; --max-length raises the limit for a run)"))
        else:
            results.append(reference_elements(row, values))
    return results


@st.composite
def ragged_batches(draw):
    values = draw(value_sets)
    limit = draw(st.integers(1, 6))
    candidates = st.one_of(st.sampled_from(values), st.integers(-60, 60), st.none())
    valid_row = st.lists(st.sampled_from(values), min_size=1, max_size=limit)
    any_row = st.lists(candidates, min_size=0, max_size=limit + 3)
    rows = draw(st.lists(st.one_of(valid_row, any_row, st.none()), min_size=1, max_size=30))
    sliced = draw(st.booleans())
    return values, limit, rows, sliced


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ragged_batches())
def test_ragged_encoder_matches_the_plain_reference(batch):
    values, limit, rows, sliced = batch
    spec = Spec(x_values=values, y_values=values, seq_len=limit, min_len=1)
    array = pa.array(([[values[0]]] + rows) if sliced else rows, pa.list_(INT64))
    if sliced:  # an array that does not start at its buffers' beginning, as record batches slice
        array = array.slice(1)
    raw = ragged_from_list(array, "x", limit)
    encoder = Encoder(spec)
    encoded = encoder.encode_ragged(raw)
    expected = reference_encode_ragged(rows, values, limit)

    assert encoded.reasons.tolist() == [reason for reason, *_ in expected]
    invalid = np.flatnonzero(encoded.reasons)
    assert encoded.positions[invalid].tolist() == [expected[i][1] for i in invalid]
    assert encoder.messages(raw, encoded, invalid).to_pylist() == [expected[i][3] for i in invalid]
    gathered = raw.values.size
    assert gathered == sum(len(row) for row in rows if row is not None and len(row) <= limit)
    for row, (reason, _, indices, _) in enumerate(expected):
        segment = encoded.indices[raw.offsets[row]:raw.offsets[row + 1]]
        if reason == VALID:
            assert segment.tolist() == indices
        else:
            assert not segment.any()


@pytest.mark.parametrize("shape", [(50, 3), (50, 4, 2), (50, 1)])
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.int64])
def test_rows_moved_as_items_equal_plain_fancy_indexing(shape, dtype):
    rng = np.random.default_rng(11)
    source = (rng.standard_normal(shape) * 1000).astype(dtype)
    rows = rng.integers(0, shape[0], 80)
    assert np.array_equal(take_items(source, rows), source[rows])
    target, plain = np.zeros_like(source), np.zeros_like(source)
    destination = rng.permutation(shape[0])[:30]
    as_items(target)[destination] = as_items(source)[rows[:30]]
    plain[destination] = source[rows[:30]]
    assert np.array_equal(target, plain)
    with pytest.raises(ValueError, match="C-contiguous"):
        as_items(source[:, ::-1] if len(shape) > 1 and shape[1] > 1 else source[::2])
