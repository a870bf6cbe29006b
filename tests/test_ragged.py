"""Rows of any length with a variable-length model: exact against each row run alone, every writer."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RAGGED_MODEL, run_score

from score.core import ScoreOptions, new_cache, score_batch_with_stats
from score.ragged import key_length, length_chunks, row_keys
from score.sequences import ragged_from_list


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(RAGGED_MODEL), providers=["CPUExecutionProvider"])


def random_rows(count: int, seed: int, longest: int, shortest: int = 1) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 11, length).tolist() for length in rng.integers(shortest, longest + 1, count)]


def alone(session: ort.InferenceSession, rows: list[list[int]], k: int = 3) -> list[tuple]:
    """The plain reference: each row run alone at its own length, argmax and a stable sort."""
    spec = json.loads(session.get_modelmeta().custom_metadata_map["spec"])
    x_values, y_values = np.asarray(spec["x_values"]), np.asarray(spec["y_values"])
    results = []
    for row in rows:
        indices = np.searchsorted(x_values, np.asarray(row))[None, :].astype(np.int32)
        probabilities = session.run(["probabilities"], {"x": indices})[0][0]
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
        results.append((y_values[probabilities.argmax(axis=-1)].tolist(), y_values[order].tolist(),
                        np.take_along_axis(probabilities, order, axis=-1)))
    return results


def assert_equals_alone(out: pa.Table | pa.RecordBatch, expected: list[tuple], rows: list[int] | None = None):
    rows = range(len(expected)) if rows is None else rows
    y_pred = out.column("y_pred").to_pylist()
    top_values = out.column("top_k_values").to_pylist()
    top_probs = out.column("top_k_probs").to_pylist()
    for row, (want_pred, want_values, want_probs) in zip(rows, expected):
        assert y_pred[row] == want_pred, row
        assert top_values[row] == want_values, row
        assert np.abs(np.asarray(top_probs[row]) - want_probs).max() <= 1e-6, row


def ragged_batch(rows: list, value_type: pa.DataType = pa.int64()) -> pa.RecordBatch:
    return pa.record_batch({"id": pa.array(np.arange(len(rows))), "x": pa.array(rows, pa.list_(value_type))})


# The spec ------------------------------------------------------------------------------------------
def test_the_fixture_is_a_variable_length_model(ragged_scorer):
    spec = ragged_scorer.spec
    assert spec.variable_length and spec.min_len < spec.max_len
    assert json.loads(spec.to_json())["format"] == 2


# The core ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no_dedup"])
@pytest.mark.parametrize("k", [1, 3], ids=["k1", "k3"])
def test_core_equals_each_row_run_alone(ragged_scorer, session, dedup, k):
    longest = ragged_scorer.spec.max_len
    rows = random_rows(3000, seed=k, longest=longest)
    rows += [rows[0], rows[1][:1], rows[2] + [0] * (longest - len(rows[2]))]  # repeats and look-alikes
    out, stats = score_batch_with_stats(ragged_scorer, ragged_batch(rows), ScoreOptions(top_k=k, dedup=dedup))
    assert_equals_alone(out, alone(session, rows, k))
    assert [len(p) for p in out.column("y_pred").to_pylist()] == [len(r) for r in rows]
    assert stats.scored_steps == sum(len(r) for r in rows)
    # Grouping by length keeps padding within 10% of the real steps.
    run = {tuple(r) for r in rows} if dedup else rows
    assert stats.steps_computed <= 1.10 * sum(len(r) for r in run)
    if dedup:  # rows too long for an int64 key are each run once, never merged
        keyed = [tuple(r) for r in rows if len(r) <= key_length(11)]
        assert stats.distinct_rows == len(set(keyed)) + (len(rows) - len(keyed))


def test_a_shorter_row_never_shares_a_key_with_its_zero_padded_copy(ragged_scorer):
    flat = np.array([1, 2, 1, 2, 0, 0, 0, 0], dtype=np.int32)  # [1, 2], [1, 2, 0], [0], [0, 0]
    offsets = np.array([0, 2, 5, 6, 8])
    keys = row_keys(flat, offsets, 11, key_length(11))
    assert len(set(keys.tolist())) == 4


def test_rows_longer_than_a_key_are_scored_without_one(ragged_scorer, session):
    longest = ragged_scorer.spec.max_len
    rows = random_rows(50, seed=4, longest=longest, shortest=longest)
    keys = row_keys(np.zeros(50 * longest, np.int32), np.arange(51) * longest, 11, 3)
    assert (keys == -1).all()
    options = ScoreOptions()
    cache = new_cache(ragged_scorer, options)
    first, _ = score_batch_with_stats(ragged_scorer, ragged_batch(rows + rows), options, cache)
    assert_equals_alone(first, alone(session, rows + rows))


@pytest.mark.parametrize("max_steps, min_rows", [(None, 1), (4096, 32)], ids=["rows", "steps"])
def test_length_chunks_pad_at_most_the_limit_and_cover_every_row(max_steps, min_rows):
    lengths = np.sort(np.random.default_rng(0).integers(1, 65, 5000))
    chunks = length_chunks(lengths, 1024, 0.10, max_steps, min_rows)
    assert chunks[0][0] == 0 and chunks[-1][1] == lengths.size
    assert all(stop == next_start for (_, stop), (next_start, _) in zip(chunks, chunks[1:]))
    padded = 0
    for start, stop in chunks:
        part = lengths[start:stop]
        assert stop - start <= 1024
        assert max_steps is None or part.max() * part.size <= max_steps
        if part.size > min_rows:
            assert part.max() * part.size - part.sum() <= 0.10 * part.sum()
        padded += part.max() * part.size
    assert padded <= 1.10 * lengths.sum()


def test_a_run_of_a_few_rare_lengths_may_pad_more():
    lengths = np.array([1, 5, 9, 20])
    assert length_chunks(lengths, 1024, 0.10) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert length_chunks(lengths, 1024, 0.10, 4096, 32) == [(0, 4)]
    assert length_chunks(lengths, 1024, 0.10, 40, 32) == [(0, 3), (3, 4)]  # 4 rows of 20: 80 steps


def test_the_run_cache_serves_a_second_batch_with_the_same_output(ragged_scorer):
    rows = random_rows(2000, seed=5, longest=6)
    options = ScoreOptions()
    cache = new_cache(ragged_scorer, options)
    first, first_stats = score_batch_with_stats(ragged_scorer, ragged_batch(rows), options, cache)
    second, second_stats = score_batch_with_stats(ragged_scorer, ragged_batch(rows), options, cache)
    assert first.equals(second)
    assert first_stats.distinct_rows > 0 and second_stats.distinct_rows == 0


@pytest.mark.parametrize("switches", [
    pytest.param({"dedup": False}, id="no_dedup"),
    pytest.param({"cache": False}, id="no_cache"),
    pytest.param({"share_prefixes": False}, id="no_prefix_sharing"),
    pytest.param({"dedup": False, "share_prefixes": False}, id="nothing_shared"),
])
def test_the_benchmark_switches_leave_the_output_as_it_is(ragged_scorer, switches):
    rows = random_rows(2000, seed=6, longest=8)
    batches = [ragged_batch(rows[:1200]), ragged_batch(rows[800:])]  # the second repeats rows
    plain = ScoreOptions()
    switched = ScoreOptions(**switches)
    plain_cache, switched_cache = new_cache(ragged_scorer, plain), new_cache(ragged_scorer, switched)
    assert (switched_cache is None) == (not switched.dedup or not switched.cache)
    for batch in batches:
        want, _ = score_batch_with_stats(ragged_scorer, batch, plain, plain_cache)
        got, _ = score_batch_with_stats(ragged_scorer, batch, switched, switched_cache)
        assert got.equals(want)


def test_invalid_rows_get_their_reason_and_the_rest_their_predictions(ragged_scorer, session):
    longest = ragged_scorer.spec.max_len
    good = random_rows(20, seed=6, longest=longest)
    rows = [good[0], [], None, [1] * (longest + 1), [1, None, 2], [3, 99], good[1]]
    out, stats = score_batch_with_stats(ragged_scorer, ragged_batch(rows), ScoreOptions(on_invalid="null"))
    assert out.column("error").to_pylist() == [
        None,
        f"x is an empty list; the model takes sequences of 1..{longest} values",
        "x is null",
        f"x has {longest + 1} values; the model takes at most {longest} (its longest training "
        f"length; --max-length raises the limit for a run)",
        "x[1] is null",
        "x[1] = 99 is not one of the model's input values (0..10)",
        None,
    ]
    assert out.column("y_pred").to_pylist()[1:6] == [None] * 5
    assert_equals_alone(out, alone(session, [good[0], good[1]]), rows=[0, 6])
    by_reason = dict(zip(["valid", "null_row", "wrong_length", "null_element", "unknown_value",
                          "non_finite_output", "too_long", "empty_sequence"], stats.reason_counts.tolist()))
    assert by_reason == {"valid": 2, "null_row": 1, "wrong_length": 0, "null_element": 1,
                         "unknown_value": 1, "non_finite_output": 0, "too_long": 1, "empty_sequence": 1}


def test_max_length_scores_longer_rows(ragged_scorer, session):
    longest = ragged_scorer.spec.max_len
    rows = random_rows(30, seed=7, longest=longest + 5, shortest=longest + 1)
    out, stats = score_batch_with_stats(ragged_scorer, ragged_batch(rows), ScoreOptions(max_length=longest + 5))
    assert_equals_alone(out, alone(session, rows))
    assert stats.profile.length_counts[-1] == 30  # beyond the trained length: its own bin


def test_a_million_element_row_is_refused_from_its_length_alone(ragged_scorer):
    huge = pa.array([[1, 2]] * 200 + [list(np.ones(1_000_000, dtype=np.int64))], pa.list_(pa.int64()))
    tracemalloc.start()
    raw = ragged_from_list(huge, "x", ragged_scorer.spec.max_len)
    out, _ = score_batch_with_stats(ragged_scorer, pa.record_batch({"x": huge}), ScoreOptions(on_invalid="null"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert raw.values.size == 400  # the long row is never copied
    assert peak < 4_000_000  # a padded (201, 1M) matrix would take over a gigabyte
    assert out.column("error").to_pylist()[-1].startswith("x has 1000000 values; the model takes at most")


# The job and its files -----------------------------------------------------------------------------
def ragged_file_rows(count: int = 1000, seed: int = 8) -> list[list[int]]:
    """Rows drawn like the fixture's training rows (lengths uniform over 1..max_len)."""
    from score.spec import Spec

    spec = Spec.from_json(ort.InferenceSession(str(RAGGED_MODEL)).get_modelmeta().custom_metadata_map["spec"])
    return random_rows(count, seed=seed, longest=spec.max_len)


def write_pyarrow(path, rows):
    pq.write_table(pa.table({"id": np.arange(len(rows)), "x": pa.array(rows, pa.list_(pa.int32()))}), path,
                   row_group_size=100)


def write_pyarrow_large_list(path, rows):
    pq.write_table(pa.table({"id": np.arange(len(rows)), "x": pa.array(rows, pa.large_list(pa.int16()))}), path)


def write_pandas(path, rows):
    pandas = pytest.importorskip("pandas")
    pandas.DataFrame({"id": range(len(rows)), "x": rows}).to_parquet(path)


def write_polars(path, rows):
    polars = pytest.importorskip("polars")
    polars.DataFrame({"id": range(len(rows)), "x": rows}).write_parquet(path)


def write_duckdb(path, rows):
    duckdb = pytest.importorskip("duckdb")
    connection = duckdb.connect()
    connection.register("source", pa.table({"id": np.arange(len(rows)), "x": pa.array(rows, pa.list_(pa.int8()))}))
    connection.execute(f"COPY (SELECT * FROM source) TO '{path}' (FORMAT PARQUET)")
    connection.close()


@pytest.mark.parametrize("writer", [
    pytest.param(write_pyarrow, id="pyarrow"),
    pytest.param(write_pyarrow_large_list, id="pyarrow_large_list"),
    pytest.param(write_pandas, id="pandas"),
    pytest.param(write_polars, id="polars"),
    pytest.param(write_duckdb, id="duckdb"),
])
def test_job_output_equals_each_row_alone_for_every_writer(tmp_path, session, writer):
    rows = ragged_file_rows()
    source = tmp_path / "in.parquet"
    writer(str(source), rows)
    result = run_score(source, tmp_path / "out.parquet", "--model", RAGGED_MODEL, "--quiet",
                       "--batch-size", "128", "--summary", tmp_path / "summary.json")
    assert (result.code, result.lines) == (0, [])
    out = pq.read_table(tmp_path / "out.parquet").sort_by("id")
    assert out.num_rows == len(rows)
    assert_equals_alone(out, alone(session, rows))
    summary = json.loads((tmp_path / "summary.json").read_text())
    lengths = np.bincount([len(r) for r in rows])
    assert summary["sequence_length_histogram"] == {str(n): int(c) for n, c in enumerate(lengths) if c}
    assert summary["steps_scored"] == sum(len(r) for r in rows)


def test_an_invalid_row_fails_the_job_naming_the_file_row_and_length(tmp_path, ragged_scorer):
    longest = ragged_scorer.spec.max_len
    rows = ragged_file_rows(300)
    rows[257] = [1] * (longest + 3)
    source, target = tmp_path / "in.parquet", tmp_path / "out.parquet"
    write_pyarrow(str(source), rows)
    result = run_score(source, target, "--model", RAGGED_MODEL, "--quiet", "--batch-size", "100")
    assert result.code == 65
    assert result.lines == [
        f"error: {source}: row 257: x has {longest + 3} values; the model takes at most {longest} "
        f"(its longest training length; --max-length raises the limit for a run)"]
    assert not target.exists() and list(tmp_path.iterdir()) == [source]


def test_an_empty_list_fails_the_job(tmp_path, ragged_scorer):
    rows = ragged_file_rows(50)
    rows[9] = []
    source, target = tmp_path / "in.parquet", tmp_path / "out.parquet"
    write_pyarrow(str(source), rows)
    result = run_score(source, target, "--model", RAGGED_MODEL, "--quiet")
    assert (result.code, result.lines) == (65, [
        f"error: {source}: row 9: x is an empty list; the model takes sequences of 1..{ragged_scorer.spec.max_len} values"])
    assert not target.exists()


def test_max_length_on_the_command_line(tmp_path, session, ragged_scorer):
    longest = ragged_scorer.spec.max_len
    rows = random_rows(40, seed=9, longest=longest + 4)
    source = tmp_path / "in.parquet"
    write_pyarrow(str(source), rows)
    result = run_score(source, tmp_path / "out.parquet", "--model", RAGGED_MODEL, "--quiet",
                       "--max-length", longest + 4)
    assert (result.code, result.lines) == (0, [
        f"warning: --max-length {longest + 4} is beyond the longest training length ({longest}): "
        f"predictions for steps past {longest} are extrapolation"])
    assert_equals_alone(pq.read_table(tmp_path / "out.parquet"), alone(session, rows))


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_length_must_be_positive(tmp_path, value):
    result = run_score(tmp_path / "in.parquet", tmp_path / "out.parquet", "--model", RAGGED_MODEL,
                       f"--max-length={value}")
    assert result.code == 2
    assert result.lines == [f"python -m score: error: argument --max-length: {value} is not a positive "
                            f"integer (see --help)"]


def test_max_length_is_refused_for_a_fixed_length_model(tmp_path, model_path):
    source = tmp_path / "in.parquet"
    write_pyarrow(str(source), [[1, 2, 3, 4]])
    result = run_score(source, tmp_path / "out.parquet", "--model", model_path, "--max-length", "9")
    assert result.code == 2
    assert result.lines == ["error: --max-length 9: the model takes sequences of exactly 4 (it was trained "
                            "on one length); the limit applies only to variable-length models"]


def test_the_wide_layout_stays_fixed_length(tmp_path, session, ragged_scorer):
    longest = ragged_scorer.spec.max_len
    rows = random_rows(60, seed=10, longest=3, shortest=3)
    source = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"s{t}": [row[t] for row in rows] for t in range(3)}), source)
    result = run_score(source, tmp_path / "out.parquet", "--model", RAGGED_MODEL, "--quiet",
                       "--input-columns", "s0,s1,s2")
    assert result.code == 0
    assert_equals_alone(pq.read_table(tmp_path / "out.parquet"), alone(session, rows))
    names = ",".join(f"s{t}" for t in range(longest + 1))
    result = run_score(source, tmp_path / "out2.parquet", "--model", RAGGED_MODEL, "--input-columns", names)
    assert result.code == 2
    assert result.lines == [
        f"error: --input-columns names {longest + 1} column(s); the model takes at most {longest} "
        f"steps. The wide layout is fixed-length (every row has one value per column): use a list "
        f"column for rows of any length"]


def test_length_drift_is_reported_and_gates_publishing(tmp_path, ragged_scorer):
    longest = ragged_scorer.spec.max_len
    rows = random_rows(3000, seed=11, longest=longest, shortest=longest)  # every row the longest
    source, target = tmp_path / "in.parquet", tmp_path / "out.parquet"
    write_pyarrow(str(source), rows)
    result = run_score(source, target, "--model", RAGGED_MODEL, "--quiet", "--max-psi", "5",
                       "--summary", tmp_path / "summary.json")
    summary = json.loads((tmp_path / "summary.json").read_text())
    psi = summary["drift"]["length_psi"]
    assert psi > 1.0
    assert result.code == 65
    assert result.lines[-1] == (f"error: {source}: drift in sequence lengths: PSI {psi:.3f} exceeds "
                                f"--max-psi 5; nothing was published")
    assert not target.exists()


def test_record_batches_of_rows_of_any_length_hold_a_bounded_number_of_steps(tmp_path, ragged_scorer):
    from score.job import DEFAULT_BATCH_SIZE, STEPS_PER_BATCH, JobConfig, batch_rows

    source = tmp_path / "long.parquet"
    write_pyarrow(str(source), [[1] * 32] * 3000)
    config = JobConfig(str(source), str(tmp_path / "out.parquet"))
    assert batch_rows(pq.ParquetFile(source), ragged_scorer, config) == STEPS_PER_BATCH // 32
    explicit = JobConfig(str(source), str(tmp_path / "out.parquet"), batch_size=100)
    assert batch_rows(pq.ParquetFile(source), ragged_scorer, explicit) == 100
    write_pyarrow(str(source), [[1]] * 3000)  # one step per row: the rows' cap
    assert batch_rows(pq.ParquetFile(source), ragged_scorer, config) == DEFAULT_BATCH_SIZE
