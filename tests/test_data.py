"""Training data readers: Parquet from every common writer and layout, the text form, value sets.

These call train.data directly; the command line's messages and exit codes for bad data are in
test_train.py.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from score.errors import InputMissing, InvalidInput
from train import data

X = np.array([[1, 2, 3], [4, 5, 6], [0, 9, 7], [3, 3, 3]], dtype=np.int64)
Y = (X * 2) % 11
INTEGER_TYPES = [
    pa.int8(), pa.int16(), pa.int32(), pa.int64(),
    pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64(),
]


def sequence_array(values: np.ndarray, kind: str, value_type: pa.DataType) -> pa.Array:
    """list / large_list / fixed_size_list array of value_type from a (rows, steps) matrix."""
    rows, steps = values.shape
    flat = pa.array(values.reshape(-1)).cast(value_type)
    if kind == "fixed_size_list":
        return pa.FixedSizeListArray.from_arrays(flat, steps)
    offsets = np.arange(rows + 1) * steps
    if kind == "large_list":
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), flat)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), flat)


def write(path, x_column: pa.Array, y_column: pa.Array, **options) -> str:
    pq.write_table(pa.table({"x": x_column, "y": y_column}), str(path), **options)
    return str(path)


def assert_read_back(path: str, x: np.ndarray = X, y: np.ndarray = Y) -> data.Dataset:
    dataset = data.read_parquet(path)
    assert dataset.x.dtype == np.int64 and dataset.y.dtype == np.int64
    np.testing.assert_array_equal(dataset.x, x)
    np.testing.assert_array_equal(dataset.y, y)
    assert dataset.source == path and dataset.seq_len == x.shape[1]
    return dataset


# Parquet: layouts, widths, encodings -------------------------------------------------------------
@pytest.mark.parametrize("value_type", INTEGER_TYPES, ids=str)
@pytest.mark.parametrize("kind", ["list", "large_list", "fixed_size_list"])
def test_list_layouts_and_integer_widths(tmp_path, kind, value_type):
    path = write(
        tmp_path / "d.parquet",
        sequence_array(X, kind, value_type),
        sequence_array(Y, kind, value_type),
    )
    assert_read_back(path)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"use_dictionary": True}, id="parquet_dictionary_pages"),
        pytest.param({"use_dictionary": False}, id="plain_pages"),
        pytest.param({"use_compliant_nested_type": False}, id="legacy_item_naming"),
        pytest.param({"row_group_size": 1, "compression": "zstd"}, id="one_row_per_group_zstd"),
    ],
)
def test_parquet_writer_options(tmp_path, options):
    path = write(
        tmp_path / "d.parquet",
        sequence_array(X, "list", pa.int32()),
        sequence_array(Y, "list", pa.int32()),
        **options,
    )
    assert_read_back(path)


def test_legacy_item_naming_is_what_older_spark_and_hive_write(tmp_path):
    path = write(
        tmp_path / "d.parquet",
        sequence_array(X, "list", pa.int32()),
        sequence_array(Y, "list", pa.int32()),
        use_compliant_nested_type=False,
    )
    assert re.search(r"optional int32 (field_id=-1 )?item;", str(pq.ParquetFile(path).schema))
    assert_read_back(path)


def test_arrow_dictionary_encoded_values(tmp_path):
    def dictionary_list(values: np.ndarray) -> pa.Array:
        flat = pa.array(values.reshape(-1)).dictionary_encode()
        offsets = pa.array(np.arange(values.shape[0] + 1) * values.shape[1], pa.int32())
        return pa.ListArray.from_arrays(offsets, flat)

    assert_read_back(write(tmp_path / "d.parquet", dictionary_list(X), dictionary_list(Y)))


def test_pandas_written(tmp_path):
    pandas = pytest.importorskip("pandas")
    path = str(tmp_path / "d.parquet")
    pandas.DataFrame({"x": list(X), "y": list(Y.astype(np.uint8)), "id": range(4)}).to_parquet(path)
    assert_read_back(path)


def test_polars_written_list_and_array_columns(tmp_path):
    polars = pytest.importorskip("polars")
    path = str(tmp_path / "d.parquet")
    frame = polars.DataFrame(
        {"x": X.tolist(), "y": Y.tolist()},
        schema={"x": polars.List(polars.UInt16), "y": polars.Array(polars.Int16, 3)},
    )
    frame.write_parquet(path)
    assert_read_back(path)


def test_duckdb_copy_to_parquet(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = str(tmp_path / "d.parquet")
    rows = ", ".join(f"({x.tolist()}, {y.tolist()}, {i})" for i, (x, y) in enumerate(zip(X, Y)))
    duckdb.sql(
        f"COPY (SELECT x::TINYINT[] AS x, y::UBIGINT[] AS y FROM (VALUES {rows}) t(x, y, i) "
        f"ORDER BY i) TO '{path}' (FORMAT parquet)"
    )
    assert_read_back(path)


def test_other_columns_and_their_order_do_not_matter(tmp_path):
    path = str(tmp_path / "d.parquet")
    table = pa.table({"y": sequence_array(Y, "list", pa.int64()), "note": ["a", "b", "c", "d"],
                      "x": sequence_array(X, "list", pa.int64())})
    pq.write_table(table, path)
    assert_read_back(path)


def test_unsigned_values_above_int64_are_refused_with_the_exact_value(tmp_path):
    y = Y.astype(np.uint64)
    y[2, 1] = np.uint64(2**64 - 1)
    path = write(
        tmp_path / "d.parquet", sequence_array(X, "list", pa.uint64()), sequence_array(y, "list", pa.uint64())
    )
    with pytest.raises(InvalidInput) as caught:
        data.read_parquet(path)
    assert str(caught.value) == (
        f"{path}: column 'y', row 2: y[1] = {2**64 - 1} does not fit in a signed 64-bit integer"
    )


def test_the_first_offending_row_wins_across_columns(tmp_path):
    x = pa.array([[1, 2], [1, 2], [1, 2], [1, None]], pa.list_(pa.int64()))
    y = pa.array([[1, 2], [1, 2], None, [1, 2]], pa.list_(pa.int64()))
    path = write(tmp_path / "d.parquet", x, y)
    with pytest.raises(InvalidInput, match=r"column 'y', row 2: y is null$"):
        data.read_parquet(path)


def test_missing_parquet_file_is_input_missing(tmp_path):
    with pytest.raises(InputMissing, match="no such file"):
        data.read_parquet(str(tmp_path / "absent.parquet"))


# Text ----------------------------------------------------------------------------------------------
def test_text_files_whitespace_separated(tmp_path):
    x_path, y_path = tmp_path / "X.txt", tmp_path / "Y.txt"
    x_path.write_text("1 2 3\n4\t5  6\n 0 9 7\n3 3 3\n\n\n")  # tabs, extra spaces, trailing blanks
    y_path.write_text("\n".join(" ".join(map(str, row)) for row in Y) + "\n")
    dataset = data.read_text(str(x_path), str(y_path))
    np.testing.assert_array_equal(dataset.x, X)
    np.testing.assert_array_equal(dataset.y, Y)
    assert dataset.source == f"{x_path} + {y_path}"


def test_text_negative_values_and_no_final_newline(tmp_path):
    x_path, y_path = tmp_path / "X.txt", tmp_path / "Y.txt"
    x_path.write_text("-1 2\n3 -4")
    y_path.write_text("0 1\n1 0")
    assert data.read_text(str(x_path), str(y_path)).x.tolist() == [[-1, 2], [3, -4]]


def test_text_value_too_large_names_the_line(tmp_path):
    x_path, y_path = tmp_path / "X.txt", tmp_path / "Y.txt"
    x_path.write_text(f"1 2\n3 {2**70}\n")
    y_path.write_text("0 1\n1 0\n")
    with pytest.raises(InvalidInput) as caught:
        data.read_text(str(x_path), str(y_path))
    assert str(caught.value) == f"{x_path}: line 2: {2**70} does not fit in a signed 64-bit integer"


def test_text_binary_file_is_refused(tmp_path):
    x_path = tmp_path / "X.txt"
    x_path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(InvalidInput, match="not a UTF-8 text file"):
        data.read_text(str(x_path), str(x_path))


# The embedded default, the fingerprint, value sets, the split --------------------------------------
def test_embedded_default_follows_its_rule():
    dataset = data.default_dataset(rows=500)
    assert dataset.x.shape == (500, 4) and dataset.source == "the embedded default"
    assert dataset.x.min() >= 0 and dataset.x.max() <= 10
    np.testing.assert_array_equal(dataset.y, np.cumsum(dataset.x, axis=1) % 25)


def test_write_parquet_makes_the_folder(tmp_path):
    path = tmp_path / "data" / "fresh.parquet"
    data.write_parquet(data.default_dataset(rows=5), str(path))
    assert pq.read_table(path).num_rows == 5


def test_write_default_round_trips(tmp_path):
    path = str(tmp_path / "default.parquet")
    data.write_parquet(data.default_dataset(rows=50), path)
    assert data.read_parquet(path).fingerprint() == data.default_dataset(rows=50).fingerprint()


@pytest.mark.parametrize("name", data.EXAMPLES)
def test_another_seed_draws_fresh_rows_by_the_same_rule(name):
    embedded, fresh = data.example_dataset(name), data.example_dataset(name, seed=1)
    assert embedded.fingerprint() == data.example_dataset(name, seed=0).fingerprint()  # the default
    assert fresh.fingerprint() != embedded.fingerprint()
    assert fresh.source == f"{embedded.source} (seed 1)"
    assert fresh.x.shape == embedded.x.shape
    mask = fresh.mask
    np.testing.assert_array_equal(fresh.y, np.where(mask, np.cumsum(fresh.x, axis=1) % 25, 0))
    assert set(fresh.x[mask].tolist()) == set(range(11))


def test_fingerprint_depends_on_values_and_shape_only():
    dataset = data.default_dataset(rows=100)
    same = data.Dataset(dataset.x.astype(np.int32), dataset.y.copy(), "elsewhere")
    assert same.fingerprint() == dataset.fingerprint()
    changed_y = dataset.y.copy()
    changed_y[50, 2] += 1
    assert data.Dataset(dataset.x, changed_y, "").fingerprint() != dataset.fingerprint()
    reshaped = data.Dataset(dataset.x.reshape(200, 2), dataset.y.reshape(200, 2), "")
    assert reshaped.fingerprint() != dataset.fingerprint()


def test_value_sets_default_to_the_full_range():
    dataset = data.Dataset(np.array([[2, 5], [3, 2]]), np.array([[-1, 1], [1, 1]]), "d")
    spec = data.infer_spec(dataset)
    assert spec.x_values == (2, 3, 4, 5) and spec.y_values == (-1, 0, 1) and spec.seq_len == 2


def test_given_value_sets_are_kept_and_checked():
    dataset = data.Dataset(np.array([[1, 5], [3, 1]]), np.array([[0, 1], [1, 1]]), "d.parquet")
    spec = data.infer_spec(dataset, x_values=(1, 3, 5, 7), y_values=(0, 1, 2))
    assert spec.x_values == (1, 3, 5, 7) and spec.y_values == (0, 1, 2)
    with pytest.raises(InvalidInput) as caught:
        data.infer_spec(dataset, x_values=(1, 5))
    assert str(caught.value) == "d.parquet: column 'x', row 1: x[0] = 3 is not in --x-values 1, 5"


def test_a_huge_inferred_range_asks_for_the_value_set():
    dataset = data.Dataset(np.array([[1, 2]]), np.array([[0, 1_000_000]]), "d.parquet")
    with pytest.raises(InvalidInput) as caught:
        data.infer_spec(dataset)
    assert str(caught.value) == (
        "d.parquet: column 'y' spans 0..1000000, 1000001 classes as a full range (more than "
        "10000); list the values that occur with --y-values, e.g. 1,20,300"
    )
    assert data.infer_spec(dataset, y_values=(0, 1_000_000)).y_classes == 2


def test_split_is_seeded_disjoint_and_complete():
    parts = data.split(1000, seed=3)
    assert (parts.train.size, parts.validation.size, parts.test.size) == (800, 100, 100)
    everything = np.concatenate([parts.train, parts.validation, parts.test])
    assert sorted(everything.tolist()) == list(range(1000))
    again = data.split(1000, seed=3)
    assert again.test.tolist() == parts.test.tolist()
    assert data.split(1000, seed=4).test.tolist() != parts.test.tolist()


@pytest.mark.parametrize("rows", [1, 2, 5])
def test_split_needs_a_row_in_each_part(rows):
    with pytest.raises(InvalidInput, match=f"only {rows} rows: .* provide at least 10 rows"):
        data.split(rows, seed=0)
    assert data.split(6, seed=0).test.size == 1  # the smallest that works: 4/1/1


# Ragged data: rows of different lengths -------------------------------------------------------------
RAGGED_X = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [0, 1]]
RAGGED_Y = [[2, 4, 6], [8], [10, 1, 3, 5, 7], [0, 2]]


def ragged_array(rows: list, kind: str, value_type: pa.DataType = pa.int64()) -> pa.Array:
    list_type = pa.large_list(value_type) if kind == "large_list" else pa.list_(value_type)
    return pa.array(rows, list_type)


def assert_ragged(dataset: data.Dataset, x: list = RAGGED_X, y: list = RAGGED_Y) -> None:
    lengths = [len(row) for row in x]
    assert dataset.variable_length and dataset.lengths.tolist() == lengths
    assert dataset.x.shape == dataset.y.shape == (len(x), max(lengths))
    mask = dataset.mask
    assert [row[m].tolist() for row, m in zip(dataset.x, mask)] == x
    assert [row[m].tolist() for row, m in zip(dataset.y, mask)] == y
    assert (dataset.x[~mask] == 0).all() and (dataset.y[~mask] == 0).all()  # padding


@pytest.mark.parametrize("value_type", [pa.int8(), pa.uint16(), pa.int64()], ids=str)
@pytest.mark.parametrize("kind", ["list", "large_list"])
def test_ragged_parquet_from_pyarrow(tmp_path, kind, value_type):
    path = write(tmp_path / "d.parquet", ragged_array(RAGGED_X, kind, value_type),
                 ragged_array(RAGGED_Y, kind, value_type))
    dataset = data.read_parquet(path)
    assert_ragged(dataset)
    assert dataset.seq_len == 5 and dataset.source == path


def test_ragged_parquet_with_x_and_y_in_different_list_types(tmp_path):
    path = write(tmp_path / "d.parquet", ragged_array(RAGGED_X, "large_list", pa.uint8()),
                 ragged_array(RAGGED_Y, "list", pa.int32()))
    assert_ragged(data.read_parquet(path))


def test_rows_of_one_length_stay_a_fixed_length_dataset(tmp_path):
    path = write(tmp_path / "d.parquet", ragged_array(X.tolist(), "large_list"),
                 ragged_array(Y.tolist(), "list"))
    dataset = assert_read_back(path)
    assert dataset.lengths is None and not dataset.variable_length
    assert data.infer_spec(dataset).min_len is None


@pytest.mark.parametrize(
    "x,y,detail",
    [
        pytest.param(RAGGED_X, [[2, 4, 6], [8], [10, 1, 3, 5], [0, 2]],
                     "column 'y', row 2: x has 5 values but y has 4", id="y_shorter"),
        pytest.param([[1, 2, 3], [4], [5, 6], [0, 1]], RAGGED_Y,
                     "column 'y', row 2: x has 2 values but y has 5", id="y_longer"),
        pytest.param([[1, 2, 3], [], [5], [0]], [[1, 2, 3], [], [5], [0]],
                     "column 'x', row 1: x is an empty list; expected a sequence of at least one "
                     "value", id="empty_x"),
        pytest.param(RAGGED_X, [[2, 4, 6], [8], [10, 1, None, 5, 7], [0, 2]],
                     "column 'y', row 2: y[2] is null", id="null_element_in_a_long_row"),
    ],
)
def test_ragged_problems_name_the_row_and_both_lengths(tmp_path, x, y, detail):
    path = write(tmp_path / "d.parquet", ragged_array(x, "list"), ragged_array(y, "list"))
    with pytest.raises(InvalidInput) as caught:
        data.read_parquet(path)
    assert str(caught.value) == f"{path}: {detail}"


def test_ragged_spec_records_the_shortest_and_longest_lengths(tmp_path):
    path = write(tmp_path / "d.parquet", ragged_array(RAGGED_X, "list"), ragged_array(RAGGED_Y, "list"))
    spec = data.infer_spec(data.read_parquet(path))
    assert (spec.variable_length, spec.min_len, spec.max_len, spec.seq_len) == (True, 1, 5, 5)
    assert spec.x_values == tuple(range(10)) and spec.y_values == tuple(range(11))


def test_padding_is_not_a_value():
    """The padding 0 neither widens an inferred value set nor breaks a given one."""
    dataset = data.Dataset(np.array([[5, 6], [7, 0]]), np.array([[1, 2], [3, 0]]), "d",
                           np.array([2, 1]))
    spec = data.infer_spec(dataset, y_values=(1, 2, 3))
    assert spec.x_values == (5, 6, 7) and spec.y_values == (1, 2, 3)


def test_ragged_text_files(tmp_path):
    x_path, y_path = tmp_path / "X.txt", tmp_path / "Y.txt"
    x_path.write_text("\n".join(" ".join(map(str, row)) for row in RAGGED_X) + "\n\n")
    y_path.write_text("\n".join(" ".join(map(str, row)) for row in RAGGED_Y) + "\n")
    dataset = data.read_text(str(x_path), str(y_path))
    assert_ragged(dataset)
    assert dataset.source == f"{x_path} + {y_path}"


def test_ragged_text_line_lengths_must_match(tmp_path):
    x_path, y_path = tmp_path / "X.txt", tmp_path / "Y.txt"
    x_path.write_text("1 2 3\n4\n5 6\n")
    y_path.write_text("1 2 3\n4\n5 6 7\n")
    with pytest.raises(InvalidInput) as caught:
        data.read_text(str(x_path), str(y_path))
    assert str(caught.value) == (
        f"{y_path}: line 3: 3 values but {x_path} line 3 has 2; x and y sequences must have the "
        f"same length"
    )


def test_ragged_fingerprint_depends_on_real_values_and_lengths_only():
    dataset = data.ragged_dataset(rows=50)
    repadded = data.Dataset(np.where(dataset.mask, dataset.x, 7), dataset.y, "", dataset.lengths)
    assert repadded.fingerprint() == dataset.fingerprint()
    wider = data.Dataset(np.pad(dataset.x, ((0, 0), (0, 3))), np.pad(dataset.y, ((0, 0), (0, 3))),
                         "", dataset.lengths)
    assert wider.fingerprint() == dataset.fingerprint()
    changed = dataset.y.copy()
    changed[0, 0] += 1
    assert data.Dataset(dataset.x, changed, "", dataset.lengths).fingerprint() != dataset.fingerprint()


def test_ragged_example_follows_the_default_rule():
    dataset = data.ragged_dataset(rows=2000)
    assert dataset.source == "the embedded ragged example" and dataset.x.shape == (2000, 32)
    assert set(dataset.lengths.tolist()) == set(range(1, 33))  # every length 1..32
    real = dataset.x[dataset.mask]
    assert real.min() == 0 and real.max() == 10
    np.testing.assert_array_equal(np.where(dataset.mask, np.cumsum(dataset.x, axis=1) % 25, 0),
                                  dataset.y)
    assert data.ragged_dataset(rows=2000).fingerprint() == dataset.fingerprint()  # seeded


def test_ragged_write_round_trips(tmp_path):
    path = str(tmp_path / "ragged.parquet")
    dataset = data.ragged_dataset(rows=300)
    data.write_parquet(dataset, path)
    assert pq.read_table(path).column("x").to_pylist()[0] == dataset.x[0, : dataset.lengths[0]].tolist()
    assert data.read_parquet(path).fingerprint() == dataset.fingerprint()
