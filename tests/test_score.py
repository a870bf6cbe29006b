"""The scoring core and the Parquet job: exact against a plain reference, every writer, every layout."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURE_MODEL, list_array, random_x, reference, run_score, write_x
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from score.core import ScoreOptions, score_batch, score_batch_with_stats, top_k

X_DESCRIPTION = "0..10"


def batch_of(x: np.ndarray, value_type: pa.DataType = pa.int64()) -> pa.RecordBatch:
    return pa.record_batch({"id": pa.array(np.arange(len(x))), "x": list_array(x, value_type)})


def as_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.array(column.to_pylist())


def assert_matches_reference(out: pa.Table | pa.RecordBatch, ref, rows: slice | np.ndarray = slice(None)):
    assert (as_numpy(out.column("y_pred"))[rows] == ref.y_pred).all()
    assert (as_numpy(out.column("top_k_values"))[rows] == ref.top_values).all()
    probabilities = as_numpy(out.column("top_k_probs"))[rows]
    assert np.abs(probabilities - ref.top_probs).max() <= 1e-6


# The core ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 25], ids=["k1", "k3", "k_all"])
@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no_dedup"])
def test_core_equals_plain_reference_on_large_random_input(scorer, model_path, k, dedup):
    x = random_x(40_000, seed=k)
    out = score_batch(scorer, batch_of(x), ScoreOptions(top_k=k, dedup=dedup))
    assert_matches_reference(out, reference(model_path, x, top_k=k))
    assert out.column("error").null_count == len(x)
    assert out.schema.names == ["id", "x", "y_pred", "top_k_values", "top_k_probs", "error"]


def test_dedup_scores_each_distinct_sequence_once(scorer):
    x = np.repeat(random_x(50, seed=3), 20, axis=0)
    _, stats = score_batch_with_stats(scorer, batch_of(x), ScoreOptions())
    assert stats.distinct_rows == len(np.unique(x, axis=0))
    _, stats = score_batch_with_stats(scorer, batch_of(x), ScoreOptions(dedup=False))
    assert stats.distinct_rows == len(x)


def test_top_k_breaks_ties_by_lower_class_index_like_a_stable_sort():
    rng = np.random.default_rng(0)
    # Few distinct levels make ties everywhere, including across the k-th place.
    probabilities = rng.integers(0, 4, size=(500, 4, 9)).astype(np.float32) / 10
    for k in range(1, 10):
        expected = np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]
        assert (top_k(probabilities, k) == expected).all(), k


def test_input_columns_pass_through_unchanged_and_in_order(scorer):
    x = random_x(100)
    batch = pa.record_batch({
        "note": pa.array([f"row {i}" for i in range(100)]),
        "x": list_array(x, pa.uint8()),
        "nested": pa.array([{"a": i, "b": [i, i]} for i in range(100)]),
        "when": pa.array(np.arange(100).astype("datetime64[ms]")),
    })
    out = score_batch(scorer, batch, ScoreOptions())
    assert out.schema.names[:4] == ["note", "x", "nested", "when"]
    for name in batch.schema.names:
        assert out.column(name).equals(batch.column(name))
        assert out.schema.field(name).type == batch.schema.field(name).type


# Invalid rows, property-based ----------------------------------------------------------------------
def expected_error(row: list | None) -> str | None:
    """The message a plain reading of the contract gives for one row, or None if it is valid."""
    if row is None:
        return "x is null"
    if len(row) != 4:
        return f"x has {len(row)} values; the model takes sequences of 4"
    for position, value in enumerate(row):
        if value is None:
            return f"x[{position}] is null"
    for position, value in enumerate(row):
        if not 0 <= value <= 10:
            return f"x[{position}] = {value} is not one of the model's input values ({X_DESCRIPTION})"
    return None


valid_row = st.lists(st.integers(0, 10), min_size=4, max_size=4)
any_row = st.one_of(
    valid_row,
    st.none(),
    st.lists(st.integers(0, 10), min_size=0, max_size=7),
    st.lists(st.one_of(st.none(), st.integers(-128, 127)), min_size=4, max_size=4),
)
integer_types = st.sampled_from([pa.int8(), pa.int16(), pa.int32(), pa.int64()])
list_types = st.sampled_from(["list", "large_list"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(any_row, min_size=1, max_size=60), value_type=integer_types, kind=list_types)
def test_mixed_valid_and_invalid_rows_under_null_policy(scorer, model_path, rows, value_type, kind):
    list_type = pa.list_(value_type) if kind == "list" else pa.large_list(value_type)
    batch = pa.record_batch({"x": pa.array(rows, list_type)})
    out = score_batch(scorer, batch, ScoreOptions(on_invalid="null"))
    assert out.num_rows == len(rows)
    errors = out.column("error").to_pylist()
    assert errors == [expected_error(row) for row in rows]
    valid = np.array([error is None for error in errors])
    y_pred = out.column("y_pred").to_pylist()
    assert all((prediction is None) == (not ok) for prediction, ok in zip(y_pred, valid))
    if valid.any():
        x = np.array([row for row, ok in zip(rows, valid) if ok], dtype=np.int64)
        valid_out = out.filter(pa.array(valid))
        assert_matches_reference(valid_out, reference(model_path, x))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(any_row, min_size=1, max_size=40))
def test_error_policy_stops_at_the_first_invalid_row(scorer, rows):
    from score.errors import InvalidRow

    batch = pa.record_batch({"x": pa.array(rows, pa.list_(pa.int64()))})
    messages = [expected_error(row) for row in rows]
    first_bad = next((i for i, message in enumerate(messages) if message), None)
    if first_bad is None:
        assert score_batch(scorer, batch, ScoreOptions()).num_rows == len(rows)
        return
    with pytest.raises(InvalidRow) as caught:
        score_batch(scorer, batch, ScoreOptions())
    assert caught.value.row == first_bad
    assert caught.value.detail == messages[first_bad]


# Parquet writers and layouts ---------------------------------------------------------------------------
INTEGER_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]


def list_variants():
    for value_type in INTEGER_TYPES:
        for kind in ("list", "large_list", "fixed_size_list"):
            yield pytest.param(kind, value_type, id=f"{kind}_{value_type}")


def typed_list(x: np.ndarray, kind: str, value_type: pa.DataType) -> pa.Array:
    values = pa.array(x.reshape(-1)).cast(value_type)
    if kind == "fixed_size_list":
        return pa.FixedSizeListArray.from_arrays(values, x.shape[1])
    offsets = np.arange(len(x) + 1) * x.shape[1]
    if kind == "large_list":
        return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


@pytest.mark.parametrize("kind,value_type", list(list_variants()))
def test_pyarrow_list_types_and_integer_widths(tmp_path, model_path, kind, value_type):
    x = random_x(300, seed=5)
    pq.write_table(pa.table({"x": typed_list(x, kind, value_type)}), tmp_path / "in.parquet")
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path, "--quiet")
    assert result.code == 0, result.stderr
    assert_matches_reference(pq.read_table(tmp_path / "out.parquet"), reference(model_path, x))


@pytest.mark.parametrize("where", ["values", "whole_column"])
def test_dictionary_encoded_sequences(scorer, model_path, where):
    # Parquet readers hand back plain integers (dictionary pages are decoded), but Arrow data
    # from Spark or an IPC stream can carry dictionary arrays: the core takes both forms.
    x = random_x(500, seed=9)
    if where == "values":
        values = pa.array(x.reshape(-1)).dictionary_encode()
        column = pa.ListArray.from_arrays(pa.array(np.arange(501, dtype=np.int32) * 4), values)
    else:
        unique, inverse = np.unique(x, axis=0, return_inverse=True)
        column = pa.DictionaryArray.from_arrays(pa.array(inverse.reshape(-1), pa.int32()), list_array(unique))
    out = score_batch(scorer, pa.record_batch({"x": column}), ScoreOptions())
    assert_matches_reference(out, reference(model_path, x))


@pytest.mark.parametrize("codec", ["NONE", "SNAPPY", "GZIP", "ZSTD", "BROTLI", "LZ4"])
@pytest.mark.parametrize("row_group_size", [1, 7, 100_000], ids=["rg1", "rg7", "rg_big"])
def test_codecs_and_row_group_sizes(tmp_path, model_path, codec, row_group_size):
    x = random_x(60, seed=2)
    table = pa.table({"id": np.arange(60), "x": list_array(x)})
    pq.write_table(table, tmp_path / "in.parquet", compression=codec, row_group_size=row_group_size)
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path,
                       "--batch-size", "16", "--quiet")
    assert result.code == 0, result.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.column("id").to_pylist() == list(range(60))
    assert_matches_reference(out, reference(model_path, x))


@pytest.mark.parametrize("compliant", [True, False], ids=["element_naming", "legacy_item_naming"])
def test_list_nesting_of_different_writers(tmp_path, model_path, compliant):
    # Compliant 3-level lists name the leaf 'element' (pyarrow >= 13, Spark, DuckDB); older
    # pyarrow and parquet-mr call it 'item' or 'array'. The reader must not care.
    x = random_x(80, seed=6)
    pq.write_table(pa.table({"x": list_array(x, pa.int32())}), tmp_path / "in.parquet",
                   use_compliant_nested_type=compliant)
    leaf = pq.ParquetFile(tmp_path / "in.parquet").schema.column(0).path
    assert leaf == ("x.list.element" if compliant else "x.list.item")
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path, "--quiet")
    assert result.code == 0, result.stderr
    assert_matches_reference(pq.read_table(tmp_path / "out.parquet"), reference(model_path, x))


def test_zero_row_file(tmp_path, model_path):
    pq.write_table(pa.table({"x": pa.array([], pa.list_(pa.int64()))}), tmp_path / "in.parquet")
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path, "--quiet")
    assert result.code == 0, result.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.num_rows == 0
    assert out.schema.names == ["x", "y_pred", "top_k_values", "top_k_probs", "error"]


def test_pandas_written_input_and_read_back(tmp_path, model_path):
    pandas = pytest.importorskip("pandas")
    x = random_x(400, seed=11)
    frame = pandas.DataFrame({"id": range(400), "x": [list(row) for row in x]})
    frame.to_parquet(tmp_path / "in.parquet")
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path, "--quiet")
    assert result.code == 0, result.stderr
    back = pandas.read_parquet(tmp_path / "out.parquet")
    assert list(back.columns) == ["id", "x", "y_pred", "top_k_values", "top_k_probs", "error"]
    ref = reference(model_path, x)
    assert (np.stack(back["y_pred"].to_numpy()) == ref.y_pred).all()
    assert back["error"].isna().all()


def test_polars_written_input_and_read_back(tmp_path, model_path):
    polars = pytest.importorskip("polars")
    x = random_x(400, seed=12)
    polars.DataFrame({"id": range(400), "x": x.tolist()}).write_parquet(tmp_path / "in.parquet")
    assert pa.types.is_large_list(pq.read_schema(tmp_path / "in.parquet").field("x").type)
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path, "--quiet")
    assert result.code == 0, result.stderr
    back = polars.read_parquet(tmp_path / "out.parquet")
    ref = reference(model_path, x)
    assert (np.array(back["y_pred"].to_list()) == ref.y_pred).all()
    assert (np.array(back["top_k_values"].to_list()) == ref.top_values).all()


def test_duckdb_written_input_and_read_back(tmp_path, model_path):
    duckdb = pytest.importorskip("duckdb")
    source = tmp_path / "in.parquet"
    connection = duckdb.connect()
    connection.execute(
        "CREATE TABLE t AS SELECT i AS id, "
        "[(i * 7) % 11, (i * 3) % 11, (i * 5) % 11, i % 11]::TINYINT[] AS x FROM range(500) r(i)"
    )
    connection.execute(f"COPY t TO '{source}' (FORMAT PARQUET)")
    x = np.array([[(i * 7) % 11, (i * 3) % 11, (i * 5) % 11, i % 11] for i in range(500)])
    result = run_score(source, tmp_path / "out.parquet", "--model", model_path, "--quiet")
    assert result.code == 0, result.stderr
    rows = connection.execute(
        f"SELECT id, y_pred, top_k_values FROM read_parquet('{tmp_path / 'out.parquet'}') ORDER BY id"
    ).fetchall()
    ref = reference(model_path, x)
    assert [list(row[1]) for row in rows] == ref.y_pred.tolist()
    assert [[list(k) for k in row[2]] for row in rows] == ref.top_values.tolist()


def test_wide_layout_one_column_per_step(tmp_path, model_path):
    x = random_x(300, seed=13)
    table = pa.table({"id": np.arange(300), **{f"s{t}": pa.array(x[:, t]).cast(pa.int16()) for t in range(4)}})
    pq.write_table(table, tmp_path / "in.parquet")
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path,
                       "--input-columns", "s0,s1,s2,s3", "--quiet")
    assert result.code == 0, result.stderr
    assert_matches_reference(pq.read_table(tmp_path / "out.parquet"), reference(model_path, x))


def test_wide_layout_names_the_offending_column(tmp_path, model_path):
    x = random_x(10, seed=13)
    x[4, 2] = 42
    table = pa.table({f"s{t}": pa.array(x[:, t]) for t in range(4)})
    pq.write_table(table, tmp_path / "in.parquet")
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path,
                       "--input-columns", "s0,s1,s2,s3")
    assert result.code == 65
    assert result.lines == [
        f"error: {tmp_path / 'in.parquet'}: row 4: s2 = 42 is not one of the model's input values (0..10)"
    ]
    assert not (tmp_path / "out.parquet").exists()


def test_input_column_override(tmp_path, model_path):
    x = random_x(50, seed=14)
    pq.write_table(pa.table({"sequence": list_array(x)}), tmp_path / "in.parquet")
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path,
                       "--input-column", "sequence", "--quiet")
    assert result.code == 0, result.stderr
    assert_matches_reference(pq.read_table(tmp_path / "out.parquet"), reference(model_path, x))


# The job ------------------------------------------------------------------------------------------------
def test_rows_in_equal_rows_out_across_batches_with_invalid_rows(tmp_path, model_path):
    x = random_x(1000, seed=15)
    rows = [list(map(int, row)) for row in x]
    for bad in (0, 17, 499, 999):
        rows[bad] = [1, 2, 99, 3]
    rows[250] = None
    pq.write_table(pa.table({"id": np.arange(1000), "x": pa.array(rows, pa.list_(pa.int32()))}), tmp_path / "in.parquet")
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", model_path,
                       "--on-invalid", "null", "--batch-size", "64", "--summary", tmp_path / "s.json", "--quiet")
    assert result.code == 0, result.stderr
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.num_rows == 1000 and out.column("id").to_pylist() == list(range(1000))
    errors = out.column("error").to_pylist()
    assert [i for i, error in enumerate(errors) if error] == [0, 17, 250, 499, 999]
    assert errors[17] == "x[2] = 99 is not one of the model's input values (0..10)"
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["rows_in"] == summary["rows_out"] == 1000
    assert summary["rows_invalid"] == 5
    assert summary["invalid_by_reason"] == {"null_row": 1, "wrong_length": 0, "null_element": 0,
                                            "unknown_value": 4, "non_finite_output": 0}
    good = np.array([error is None for error in errors])
    assert_matches_reference(out.filter(pa.array(good)), reference(model_path, x[good]))


def test_first_invalid_row_is_reported_with_its_global_row_number(tmp_path, model_path):
    x = random_x(1000, seed=16)
    x[777, 1] = 13
    source = write_x(tmp_path / "input.parquet", x)
    result = run_score(source, tmp_path / "out.parquet", "--model", model_path, "--batch-size", "100")
    assert result.code == 65
    assert result.lines == [
        f"error: {source}: row 777: x[1] = 13 is not one of the model's input values (0..10)"
    ]
    assert list(tmp_path.iterdir()) == [tmp_path / "input.parquet"]


def test_output_metadata(tmp_path, model_path, scorer):
    source = write_x(tmp_path / "in.parquet", random_x(20))
    assert run_score(source, tmp_path / "out.parquet", "--model", model_path, "--top-k", "2", "--quiet").code == 0
    metadata = {k.decode(): v.decode() for k, v in pq.read_metadata(tmp_path / "out.parquet").metadata.items()}
    assert metadata["seqscore.model_sha256"] == scorer.sha256
    assert metadata["seqscore.model_version"] == scorer.version
    assert json.loads(metadata["seqscore.spec"]) == json.loads(scorer.spec.to_json())
    assert metadata["seqscore.top_k"] == "2"
    assert metadata["seqscore.input"] == source
    assert metadata["seqscore.rows_in"] == "20"
    assert metadata["seqscore.rows_invalid"] == "0"
    assert metadata["seqscore.scorer_version"]
    assert metadata["seqscore.created_at"].endswith("+00:00")


def test_summary_distributions(tmp_path, model_path):
    x = random_x(500, seed=17)
    source = write_x(tmp_path / "in.parquet", x)
    result = run_score(source, tmp_path / "out.parquet", "--model", model_path, "--summary", tmp_path / "s.json", "--quiet")
    assert result.code == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["status"] == "succeeded" and summary["exit_code"] == 0 and summary["error"] is None
    for step in range(4):
        values, counts = np.unique(x[:, step], return_counts=True)
        assert summary["input_value_histogram"][step] == {str(v): int(c) for v, c in zip(values, counts)}
        predicted = reference(model_path, x).y_pred[:, step]
        values, counts = np.unique(predicted, return_counts=True)
        assert summary["predicted_class_distribution"][step] == {str(v): int(c) for v, c in zip(values, counts)}
    assert summary["model"]["sha256"] and summary["rows_per_second"] > 0


def test_directory_mode(tmp_path, model_path):
    source = tmp_path / "in"
    (source / "day=1").mkdir(parents=True)
    (source / "_temporary").mkdir()
    x1, x2 = random_x(30, seed=1), random_x(40, seed=2)
    write_x(source / "a.parquet", x1)
    write_x(source / "day=1" / "b.parquet", x2)
    write_x(source / "_temporary" / "ignored.parquet", x1)
    (source / ".hidden.parquet").write_bytes(b"not parquet")
    (source / "_SUCCESS").write_text("")
    (source / "notes.txt").write_text("not parquet")
    output = tmp_path / "out"
    result = run_score(source, output, "--model", model_path)
    assert result.code == 0, result.stderr
    assert sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file()) == [
        "_SUCCESS", "a.parquet", "day=1/b.parquet"]
    manifest = json.loads((output / "_SUCCESS").read_text())
    assert manifest["files"] == [{"path": "a.parquet", "rows": 30}, {"path": "day=1/b.parquet", "rows": 40}]
    assert manifest["rows"] == 70
    assert_matches_reference(pq.read_table(output / "day=1" / "b.parquet"), reference(model_path, x2))
    assert len(result.lines) == 2 and all(line.startswith("scored ") for line in result.lines)


def test_directory_mode_failure_leaves_no_success_marker(tmp_path, model_path):
    source = tmp_path / "in"
    source.mkdir()
    write_x(source / "a.parquet", random_x(10))
    bad = random_x(10)
    bad[3, 0] = -1
    write_x(source / "b.parquet", bad)
    output = tmp_path / "out"
    output.mkdir()
    (output / "_SUCCESS").write_text("{}")  # from an earlier run
    result = run_score(source, output, "--model", model_path, "--quiet")
    assert result.code == 65
    assert result.lines == [f"error: {source / 'b.parquet'}: row 3: x[0] = -1 is not one of the model's input values (0..10)"]
    assert not (output / "_SUCCESS").exists()
    assert not (output / "b.parquet").exists()
    assert [p.name for p in output.iterdir()] == ["a.parquet"]


def test_model_from_environment(tmp_path, model_path, monkeypatch):
    source = write_x(tmp_path / "in.parquet", random_x(5))
    monkeypatch.setenv("SCORE_MODEL", model_path)
    assert run_score(source, tmp_path / "out.parquet", "--quiet").code == 0
    monkeypatch.setenv("SCORE_MODEL", str(tmp_path / "nope.onnx"))
    result = run_score(source, tmp_path / "out2.parquet")
    assert result.code == 78
    assert result.lines == [f"error: {tmp_path / 'nope.onnx'}: model not found; run `make export`, or pass --model / set SCORE_MODEL"]


# Top-k inside onnxruntime, and the run's result cache ------------------------------------------------
def tie_model(path, probabilities: np.ndarray) -> str:
    """An ONNX model that returns ``probabilities`` (1, T, C) for every row, whatever its input,
    with the top-k heads the export writes."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from export.graph import add_scoring_interface

    steps, classes = probabilities.shape[1:]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["xf", "axis"], ["xu"]),
             helper.make_node("Mul", ["xu", "zeros"], ["m"]),
             helper.make_node("Add", ["m", "table"], ["probabilities"])]
    initializers = [numpy_helper.from_array(np.array([2], dtype=np.int64), "axis"),
                    numpy_helper.from_array(np.zeros((1, 1, classes), dtype=np.float32), "zeros"),
                    numpy_helper.from_array(probabilities.astype(np.float32), "table")]
    graph = helper.make_graph(
        nodes, "ties", [helper.make_tensor_value_info("x", TensorProto.INT32, ["batch", "time"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", "time", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    add_scoring_interface(model)  # no LSTM, so no states: the heads only
    spec = {"x_values": list(range(11)), "y_values": list(range(classes)), "seq_len": steps, "input_column": "x"}
    helper.set_model_props(model, {"spec": json.dumps(spec)})
    onnx.save_model(model, str(path))
    return str(path)


def test_top_k_in_onnxruntime_breaks_ties_like_a_stable_sort(tmp_path):
    from score.model import load

    rng = np.random.default_rng(1)
    table = rng.integers(0, 4, size=(1, 6, 9)).astype(np.float32) / 10  # ties across the k-th place
    scorer = load(tie_model(tmp_path / "ties.onnx", table))
    assert scorer.graph_top_k
    x = random_x(30, seed=2)[:, :1].repeat(6, axis=1)
    for k in range(1, 10):
        out = score_batch(scorer, batch_of(x), ScoreOptions(top_k=k))
        expected = np.argsort(-table[0], axis=-1, kind="stable")[:, :k]
        assert (as_numpy(out.column("top_k_values")) == expected[None]).all(), k
        assert (as_numpy(out.column("top_k_probs")) == np.take_along_axis(table[0], expected, -1)[None]).all()


def test_a_model_from_before_the_heads_is_scored_with_numpy_as_before():
    from score.model import load

    # A file exported before the export wrote the heads: scored with numpy's top-k, as the
    # plain reference does (the scorer no longer adds the heads at load time).
    model_path = str(FIXTURE_MODEL.parent / "model_v1.onnx")
    plain = load(model_path)
    assert not plain.graph_top_k
    x = random_x(5000, seed=9)
    for k in (1, 3, 25):
        out = score_batch(plain, batch_of(x), ScoreOptions(top_k=k, dedup=False))
        assert_matches_reference(out, reference(model_path, x, top_k=k))


def test_the_run_cache_scores_a_sequence_once_across_batches_and_files(tmp_path, model_path):
    low_variety = [random_x(3000, seed=seed, high=2) for seed in (11, 12)]  # 3**4 = 81 sequences
    (tmp_path / "in").mkdir()
    for number, x in enumerate(low_variety):
        write_x(tmp_path / "in" / f"part-{number}.parquet", x)
    summary = tmp_path / "summary.json"
    result = run_score(tmp_path / "in", tmp_path / "out", "--model", model_path, "--batch-size", "256",
                       "--summary", summary, "--quiet")
    assert result.code == 0, result.stderr  # with drift warnings: values 0..2 only
    every_row = np.concatenate(low_variety)
    assert json.loads(summary.read_text())["distinct_sequences_scored"] == len(np.unique(every_row, axis=0))
    for number, x in enumerate(low_variety):
        assert_matches_reference(pq.read_table(tmp_path / "out" / f"part-{number}.parquet"), reference(model_path, x))


def test_the_run_cache_stays_within_its_bound_and_steps_aside_when_rows_do_not_repeat(scorer, model_path):
    from score.core import ResultCache

    entry_bytes = 8 + 4 * 3 * (2 + 4)
    cache = ResultCache(steps=4, k=3, classes=25, max_bytes=100 * entry_bytes)
    assert cache.capacity == 100
    x = random_x(2000, seed=13)  # ~2000 distinct sequences: far more than the cache holds
    for start in range(0, len(x), 250):
        rows = x[start : start + 250]
        out, stats = score_batch_with_stats(scorer, batch_of(rows), ScoreOptions(), cache)
        assert_matches_reference(out, reference(model_path, rows))
        assert cache.keys.size <= 100
        assert (np.diff(cache.keys) > 0).all()
    assert not cache.enabled  # full, and serving almost nothing
    assert cache.keys.size == 0  # its memory is let go
    repeat = x[:250]
    out, stats = score_batch_with_stats(scorer, batch_of(repeat), ScoreOptions(), cache)
    assert stats.distinct_rows == len(np.unique(repeat, axis=0))  # no longer consulted
    assert_matches_reference(out, reference(model_path, repeat))


def test_the_run_cache_never_keeps_a_non_finite_result(tmp_path):
    from score.core import ResultCache
    from score.model import load

    table = np.full((1, 4, 25), np.nan, dtype=np.float32)
    scorer = load(tie_model(tmp_path / "nan.onnx", np.where(np.arange(4)[None, :, None] < 3, 0.04, table)))
    # Every output step but the last is finite: every row is broken, none may be cached.
    cache = ResultCache(steps=4, k=3, classes=25)
    x = random_x(50, seed=14)
    out, stats = score_batch_with_stats(scorer, batch_of(x), ScoreOptions(on_invalid="null"), cache)
    assert cache.keys.size == 0
    assert out.column("y_pred").null_count == 50
