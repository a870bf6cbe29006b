"""Scale-out on Spark: the local job's batch function through mapInArrow, row for row the same.

One local[2] session serves the module; the command line runs in three subprocesses (its own
JVM each). Everything that starts a JVM is marked slow and skipped when `java` is not on PATH.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    RAGGED_MODEL,
    ROOT,
    list_array,
    needs_spark,
    random_x,
    run_module,
    run_score,
    run_spark_cli,
    write_x,
)

from score import monitor
from score import spark as scale  # imports no pyspark: the refusal tests need none
from score import summary as run_summary
from score.core import ScoreOptions, output_schema, score_batch
from score.errors import InvalidInput, ModelError
from score.model import load
from score.spark import session as spark_session

# mapInArrow builds a pandas_udf internally, and pyspark 4 warns about pandas 3 it never uses.
pytestmark = pytest.mark.filterwarnings(
    "ignore:PySpark does not yet fully support pandas:FutureWarning"
)


def sequences_with_invalid_rows(rows: int, seed: int) -> list:
    """Valid random sequences, with every kind of invalid row mixed in."""
    x = random_x(rows, seed=seed).tolist()
    rng = np.random.default_rng(seed + 100)
    for row in rng.choice(rows, size=rows // 10, replace=False):
        kind = row % 6
        if kind == 0:
            x[row][rng.integers(4)] = 11  # just past x_max
        elif kind == 1:
            x[row][rng.integers(4)] = -7
        elif kind == 2:
            x[row][rng.integers(4)] = None
        elif kind == 3:
            x[row] = x[row][:3]
        elif kind == 4:
            x[row] = x[row] + [1]
        else:
            x[row] = None
    return x


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Four Parquet files, 3,400 rows with globally unique ids and a pass-through column."""
    directory = tmp_path_factory.mktemp("spark") / "input"
    directory.mkdir()
    first_id = 0
    for part, rows in enumerate([1000, 900, 800, 700]):
        ids = np.arange(first_id, first_id + rows, dtype=np.int64)
        table = pa.table({
            "id": ids,
            "x": pa.array(sequences_with_invalid_rows(rows, seed=part), pa.list_(pa.int64())),
            "name": pa.array([f"row-{i}" for i in ids]),
        })
        pq.write_table(table, directory / f"part-{part}.parquet", row_group_size=300)
        first_id += rows
    return directory


def write_single_bad_row(directory: Path) -> tuple[Path, str]:
    """Two clean files and one with one bad row; returns the directory and the bad file."""
    directory.mkdir()
    for part in range(3):
        x = random_x(500, seed=10 + part)
        if part == 1:
            x[321, 2] = 99
        table = pa.table({"id": np.arange(500, dtype=np.int64) + 500 * part, "x": list_array(x)})
        pq.write_table(table, directory / f"part-{part}.parquet")
    return directory, str(directory / "part-1.parquet")


def sorted_by_id(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


# Row for row the local job ---------------------------------------------------------------
@pytest.mark.slow
@needs_spark
def test_spark_equals_the_local_job_row_for_row(spark, dataset, model_path, tmp_path):
    local_out, spark_out = tmp_path / "local", tmp_path / "spark"
    result = run_score(dataset, local_out, "--model", model_path, "--on-invalid", "null", "--quiet")
    assert result.code == 0, result.stderr

    config = scale.SparkJobConfig(str(dataset), str(spark_out), model_path,
                                  ScoreOptions(on_invalid="null"))
    state = scale.run(spark, config, load(model_path), scale.SparkRunState())

    assert (spark_out / "_SUCCESS").exists()
    assert len(list(spark_out.glob("part-*.parquet"))) >= 2
    local = sorted_by_id(pq.read_table(local_out))
    scored = sorted_by_id(pq.read_table(spark_out))
    assert scored.column_names == local.column_names
    assert scored.column("id").equals(local.column("id"))  # the join on id: the same rows
    invalid = local.column("error").null_count
    assert state.rows == local.num_rows == 3400
    assert state.rows_invalid == local.num_rows - invalid == 340
    # Spark names list items `element` where pyarrow says `item`; the values must be identical,
    # probabilities bit for bit: the same function on the same model, one row never depends on
    # the others in its batch.
    assert scored.cast(local.schema).equals(local)


@pytest.mark.slow
@needs_spark
def test_ragged_rows_written_by_spark_score_as_each_row_alone_and_as_the_local_job(spark, tmp_path):
    import onnxruntime as ort
    from test_ragged import alone, assert_equals_alone, random_rows

    rows = random_rows(1500, seed=21, longest=load(str(RAGGED_MODEL)).spec.max_len)
    rows[7], rows[900] = [], [1] * 40  # refused: empty_sequence and too_long
    source, spark_out = tmp_path / "in", tmp_path / "spark"
    frame = spark.createDataFrame([(index, row) for index, row in enumerate(rows)], "id long, x array<int>")
    frame.repartition(3).write.parquet(str(source))
    result = run_score(source, tmp_path / "local", "--model", RAGGED_MODEL, "--on-invalid", "null", "--quiet")
    assert result.code == 0, result.stderr

    config = scale.SparkJobConfig(str(source), str(spark_out), str(RAGGED_MODEL), ScoreOptions(on_invalid="null"))
    state = scale.run(spark, config, load(str(RAGGED_MODEL)), scale.SparkRunState())
    assert (state.rows, state.rows_invalid) == (1500, 2)
    local = sorted_by_id(pq.read_table(tmp_path / "local"))
    scored = sorted_by_id(pq.read_table(spark_out))
    assert scored.cast(local.schema).equals(local)
    valid = [index for index in range(len(rows)) if index not in (7, 900)]
    session = ort.InferenceSession(str(RAGGED_MODEL), providers=["CPUExecutionProvider"])
    assert_equals_alone(scored, alone(session, [rows[index] for index in valid]), rows=valid)
    assert scored.column("error").to_pylist()[7].startswith("x is an empty list")


@pytest.mark.slow
@needs_spark
def test_score_dataframe_declares_the_local_jobs_output_schema(spark, dataset, model_path):
    df = spark.read.parquet(str(dataset))
    scored = scale.score_dataframe(df, model_path, top_k=5, on_invalid="null")
    arrow = output_schema(pa.schema([("id", pa.int64()), ("x", pa.list_(pa.int64())),
                                     ("name", pa.string())]), ScoreOptions(top_k=5))
    assert scored.columns == arrow.names
    types = {f.name: f.dataType.simpleString() for f in scored.schema.fields}
    assert types["y_pred"] == "array<bigint>"
    assert types["top_k_values"] == "array<array<bigint>>"
    assert types["top_k_probs"] == "array<array<float>>"
    assert types["error"] == "string"
    row = scored.where("error IS NULL").first()
    assert len(row.top_k_values) == 4 and all(len(step) == 5 for step in row.top_k_values)


@pytest.mark.slow
@needs_spark
def test_the_wide_layout_matches_the_core(spark, scorer, model_path):
    rows = [(i, *[int(v) for v in step]) for i, step in enumerate(random_x(200, seed=7))]
    rows[5] = (5, 1, 2, 11, 4)  # out of range
    rows[9] = (9, 1, None, 3, 4)  # a null step
    columns = ("a", "b", "c", "d")
    df = spark.createDataFrame(rows, "id long, a long, b long, c long, d long")
    scored = scale.score_dataframe(df, model_path, top_k=2, on_invalid="null",
                                   input_columns=columns).collect()
    batch = pa.record_batch([pa.array(column, pa.int64()) for column in zip(*rows)],
                            names=["id", *columns])
    expected = score_batch(scorer, batch, ScoreOptions(top_k=2, on_invalid="null",
                                                       input_columns=columns))
    assert [row.asDict() for row in sorted(scored, key=lambda row: row.id)] == expected.to_pylist()


# Invalid rows under 'error' --------------------------------------------------------------
@pytest.mark.slow
@needs_spark
def test_the_first_invalid_row_fails_the_job_with_the_local_jobs_message(spark, model_path,
                                                                        tmp_path):
    directory, bad_file = write_single_bad_row(tmp_path / "input")
    local = run_score(directory, tmp_path / "local", "--model", model_path, "--quiet")
    assert local.code == 65
    config = scale.SparkJobConfig(str(directory), str(tmp_path / "spark"), model_path)
    with pytest.raises(InvalidInput) as raised:
        scale.run(spark, config, load(model_path))
    assert f"error: {raised.value}" == local.lines[-1]
    assert str(raised.value).startswith(f"{bad_file}: row 321: x[2] = 99 ")
    assert not (tmp_path / "spark" / "_SUCCESS").exists()


@pytest.mark.slow
@needs_spark
def test_rows_not_read_from_files_are_located_within_their_partition(spark, model_path):
    df = spark.createDataFrame([(1, [1, 2, 3, 4]), (2, [1, 2, 3, 4]), (3, [1, 2, 99, 4])],
                               "id long, x array<bigint>").coalesce(1)
    with pytest.raises(Exception) as raised:
        scale.score_dataframe(df, model_path).collect()
    error = scale.spark_error(raised.value)
    assert isinstance(error, InvalidInput)
    assert str(error) == (
        "partition 0: row 2 of the partition: "
        "x[2] = 99 is not one of the model's input values (0..10)"
    )


# The model on the executors -----------------------------------------------------------------------
def plan_for(spark, model: str, shipped: Path | None, sha256: str) -> scale.WorkerPlan:
    name = scale.ship_model(spark, str(shipped)) if shipped is not None else None
    return scale.WorkerPlan(model, name, sha256, threads=1, options=ScoreOptions(on_invalid="null"))


def score_with(spark, plan: scale.WorkerPlan):
    df = spark.createDataFrame([(1, [1, 2, 3, 4]), (2, [5, 6, 7, 8])], "id long, x array<bigint>")
    schema = scale.spark_output_schema(df.schema, plan.options)
    return df.mapInArrow(functools.partial(scale.score_partition, plan), schema).collect()


@pytest.mark.slow
@needs_spark
def test_executors_that_cannot_read_the_path_use_the_copy_shipped_by_spark_files(spark, model_path,
                                                                                 tmp_path):
    shipped = tmp_path / "shipped-model.onnx"  # a name no other test ships
    shutil.copyfile(model_path, shipped)
    missing = str(tmp_path / "not-on-this-executor.onnx")
    plan = plan_for(spark, missing, shipped, load(model_path).sha256)
    rows = score_with(spark, plan)
    assert [row.error for row in rows] == [None, None]
    assert rows[0].y_pred == [1, 3, 6, 10]


@pytest.mark.slow
@needs_spark
def test_an_executor_refuses_a_model_that_is_not_the_drivers(spark, model_path):
    plan = plan_for(spark, model_path, None, "0" * 64)
    with pytest.raises(Exception) as raised:
        score_with(spark, plan)
    error = scale.spark_error(raised.value)
    assert isinstance(error, ModelError) and error.exit_code == 78
    assert "cannot read the driver's model" in str(error) and "spark-submit --files" in str(error)


# The command line -------------------------------------------------------------------------
# For the JVMs the command line starts: no web UI, and the quick-starting JIT for a short run.
QUICK_JVM = {"PYSPARK_SUBMIT_ARGS": "--conf spark.ui.enabled=false "
                                    "--driver-java-options -XX:TieredStopAtLevel=1 pyspark-shell"}


@pytest.mark.slow
@needs_spark
def test_cli_invalid_row_exits_65_leaves_no_output_and_the_failing_run_still_writes_its_summary(
        model_path, tmp_path):
    directory, bad_file = write_single_bad_row(tmp_path / "input")
    output = tmp_path / "scored"
    result = run_module("score.spark", directory, output, "--model", model_path,
                        "--master", "local[2]", "--on-invalid", "error",
                        "--summary", tmp_path / "summary.json", env=QUICK_JVM)
    assert result.returncode == 65, result.stderr
    assert result.stdout == ""
    message = f"{bad_file}: row 321: x[2] = 99 is not one of the model's input values (0..10)"
    assert result.stderr.splitlines() == [f"error: {message}"]
    assert not output.exists()  # no _SUCCESS, no part files, not even the empty directory
    # A failing run still writes its summary: what the tasks that finished had scored.
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["exit_code"], summary["error"]) == ("failed", 65, message)
    assert summary["rows_out"] == 0
    assert summary["rows_in"] in (0, 500, 1000)  # whole clean files only, never the failed task's
    assert summary["rows_invalid"] == 0
    assert summary["spark"]["application_id"].startswith("local-")


@pytest.mark.slow
@needs_spark
def test_cli_null_keeps_every_row_and_commits_with_success(model_path, tmp_path):
    directory, _ = write_single_bad_row(tmp_path / "input")
    output = tmp_path / "scored"
    result = run_module("score.spark", directory, output, "--model", model_path,
                        "--master", "local[2]", "--on-invalid", "null", "--threads", "1",
                        env=QUICK_JVM)
    assert result.returncode == 0, result.stderr
    assert (output / "_SUCCESS").exists()
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"scored {directory} -> {output}: 1500 rows (1 invalid) in ")
    table = pq.read_table(output)
    assert table.num_rows == 1500 and table.column("error").null_count == 1499


@pytest.mark.slow
@needs_spark
def test_cli_sigterm_cancels_the_job_and_removes_its_output(model_path, tmp_path):
    directory = tmp_path / "input"
    directory.mkdir()
    table = pa.table({"id": np.arange(40_000, dtype=np.int64), "x": list_array(random_x(40_000))})
    pq.write_table(table, directory / "part-0.parquet")
    output = tmp_path / "scored"
    # One row per Arrow batch keeps the job running long enough to be interrupted.
    process = subprocess.Popen(
        [sys.executable, "-m", "score.spark", directory, output, "--model", model_path,
         "--master", "local[2]", "--batch-size", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **QUICK_JVM},
    )
    deadline = time.monotonic() + 120
    while not (output / "_temporary").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "the write never started"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert stderr.splitlines() == ["error: interrupted by SIGTERM; no output was published"]
    assert not output.exists()


# The run's summary and the --max-psi gate ---------------------------------------------------
# What differs between the two summaries by nature: where and when each ran, and the result
# cache, which Spark keeps per task (a partition's repeats are scored once, not the run's).
PER_RUN = {"output", "started_at", "finished_at", "seconds", "rows_per_second"}
PER_PARTITION = {"distinct_sequences_scored", "steps_computed"}


def spark_summary(spark, config: scale.SparkJobConfig, path: Path) -> dict:
    """Run the job on the module's session and write its summary as the command line does."""
    state = scale.run(spark, config, load(config.model), scale.SparkRunState())
    run_summary.write(str(path), scale.summary_of(config, state, 0, None))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def monitored_file(spark, tmp_path_factory, model_path) -> dict:
    """One file scored with --summary by the local job and by Spark (in several partitions)."""
    directory = tmp_path_factory.mktemp("monitored")
    rows = 5000
    table = pa.table({"id": np.arange(rows, dtype=np.int64),
                      "x": pa.array(sequences_with_invalid_rows(rows, seed=41), pa.list_(pa.int64()))})
    source = directory / "events.parquet"
    pq.write_table(table, source, row_group_size=500)
    flags = ("--on-invalid", "null", "--low-confidence", "0.8")
    result = run_score(source, directory / "local.parquet", "--model", model_path, *flags,
                       "--summary", directory / "local.json", "--quiet")
    assert result.code == 0, result.stderr
    options = ScoreOptions(on_invalid="null", low_confidence=0.8)
    config = scale.SparkJobConfig(str(source), str(directory / "spark"), model_path, options)
    # Splits of 8 kB: the file's ten row groups go to several tasks, whose stats must merge.
    spark.conf.set("spark.sql.files.maxPartitionBytes", "8192")
    try:
        partitions = spark.read.parquet(str(source)).rdd.getNumPartitions()
        summary = spark_summary(spark, config, directory / "spark.json")
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    return {"local": json.loads((directory / "local.json").read_text()), "spark": summary,
            "partitions": partitions, "path": directory / "spark.json"}


@pytest.mark.slow
@needs_spark
def test_the_spark_summary_of_a_file_equals_the_local_jobs_summary(spark, monitored_file):
    local, summary = monitored_file["local"], monitored_file["spark"]
    assert set(summary) - set(local) == {"spark"}
    assert set(local) - set(summary) == {"files"}
    assert summary["spark"] == {"master": "local[2]", "application_id": spark.sparkContext.applicationId,
                                "partitions": monitored_file["partitions"], "spark_version": spark.version}
    assert monitored_file["partitions"] >= 2
    # Every shared count and histogram, exactly: status, rows in, out and invalid, invalid rows
    # by reason, the per-step input and prediction histograms, lengths, the model's sha256...
    shared = set(local) - PER_RUN - PER_PARTITION - {"files", "drift", "estimated_accuracy"}
    assert {key: summary[key] for key in shared} == {key: local[key] for key in shared}
    # A sum of probabilities, added in another order: equal within 1e-9.
    estimate, local_estimate = summary["estimated_accuracy"], local["estimated_accuracy"]
    assert estimate["value"] == pytest.approx(local_estimate["value"], abs=1e-9)
    assert {**estimate, "value": None} == {**local_estimate, "value": None}
    assert summary["rows_in"] == summary["rows_out"] == 5000
    assert summary["rows_invalid"] == 500
    # ... and the drift: the same profiles and shares; the PSI figures within 1e-9.
    psi_keys = {"input_psi", "prediction_psi", "confidence_psi", "length_psi"}
    assert set(local["drift"]) >= psi_keys
    for key, value in local["drift"].items():
        if key in psi_keys:
            assert summary["drift"][key] == pytest.approx(value, abs=1e-9, nan_ok=True), key
        else:
            assert summary["drift"][key] == value, key
    # Each task de-duplicates its own rows: at least the local job's work, never more than a
    # run without de-duplication.
    valid = 5000 - 500
    assert local["distinct_sequences_scored"] <= summary["distinct_sequences_scored"] <= valid
    assert local["steps_computed"] <= summary["steps_computed"] <= valid * 4


@pytest.mark.slow
@needs_spark
def test_invalid_rows_under_on_invalid_null_are_reported_by_reason(spark, dataset, model_path,
                                                                  tmp_path):
    # The reason of every row, worked out here from the values, without seqscore.
    expected = {"null_row": 0, "wrong_length": 0, "null_element": 0, "unknown_value": 0,
                "non_finite_output": 0}
    for row in pq.read_table(dataset).column("x").to_pylist():
        if row is None:
            expected["null_row"] += 1
        elif len(row) != 4:
            expected["wrong_length"] += 1
        elif None in row:
            expected["null_element"] += 1
        elif not all(0 <= value <= 10 for value in row):
            expected["unknown_value"] += 1
    config = scale.SparkJobConfig(str(dataset), str(tmp_path / "scored"), model_path,
                                  ScoreOptions(on_invalid="null"))
    summary = spark_summary(spark, config, tmp_path / "summary.json")
    assert summary["invalid_by_reason"] == expected
    assert min(expected["null_row"], expected["wrong_length"], expected["null_element"],
               expected["unknown_value"]) > 0
    assert summary["rows_in"] == summary["rows_out"] == 3400
    assert summary["rows_invalid"] == sum(expected.values()) == 340
    assert summary["drift"]["invalid_share"] == 0.1


@pytest.mark.slow
@needs_spark
def test_drift_above_max_psi_exits_65_and_leaves_no_output(model_path, tmp_path):
    source = write_x(tmp_path / "drifted.parquet", random_x(5000, seed=33, high=3))
    output, summary_path = tmp_path / "scored", tmp_path / "summary.json"
    result = run_module("score.spark", source, output, "--model", model_path, "--master", "local[2]",
                        "--max-psi", "0.2", "--summary", summary_path, env=QUICK_JVM)
    assert result.returncode == 65, result.stderr
    summary = json.loads(summary_path.read_text())
    drift = summary["drift"]
    worst, where = monitor.max_psi(drift)
    message = (f"{source}: drift in {where}: PSI {worst:.3f} exceeds --max-psi 0.2; "
               f"nothing was published")
    lines = result.stderr.splitlines()
    assert lines[-1] == f"error: {message}"
    assert lines[:-1] == [f"warning: {line}" for line in monitor.drift_warnings(drift)]
    assert worst == max(drift["input_psi"] + drift["prediction_psi"]) > 0.2
    # Nothing published, and the staged dataset beside OUTPUT is gone too.
    assert not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["drifted.parquet", "summary.json"]
    assert (summary["status"], summary["exit_code"], summary["error"]) == ("failed", 65, message)
    assert (summary["rows_in"], summary["rows_out"]) == (5000, 0)
    assert summary["spark"]["master"] == "local[2]"
    assert summary["spark"]["application_id"].startswith("local-")


@pytest.mark.slow
@needs_spark
def test_score_report_draws_a_spark_summary(monitored_file, tmp_path):
    pytest.importorskip("matplotlib")
    from score.report import main as report_main

    picture = tmp_path / "report.png"
    assert report_main([str(monitored_file["path"]), str(picture)]) == 0
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1000 and height > 700


# Refusals before Spark starts (no JVM needed) ---------------------------------------------
def test_a_bad_model_exits_78_on_the_driver_before_spark_starts(tmp_path, monkeypatch):
    directory, _ = write_single_bad_row(tmp_path / "input")
    monkeypatch.setattr(spark_session, "start_session", lambda config: pytest.fail("Spark started"))
    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    code, lines = run_spark_cli(directory, tmp_path / "out", "--model", tmp_path / "broken.onnx")
    assert code == 78
    assert len(lines) == 1
    assert lines[0].startswith(f"error: {tmp_path / 'broken.onnx'}: not an ONNX model")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("make_output", "expected_code", "expected"),
    [
        pytest.param("exists", 73, "already exists", id="output_exists"),
        pytest.param("is_input", 2, "OUTPUT is INPUT", id="output_is_input"),
        pytest.param("inside_input", 2, "is inside INPUT", id="output_inside_input"),
        pytest.param("missing_input", 66, "no such file or directory", id="input_missing"),
    ],
)
def test_locations_are_refused_before_spark_starts(model_path, tmp_path, monkeypatch, make_output,
                                                   expected_code, expected):
    directory, _ = write_single_bad_row(tmp_path / "input")
    monkeypatch.setattr(spark_session, "start_session", lambda config: pytest.fail("Spark started"))
    output = {"exists": tmp_path, "is_input": directory, "inside_input": directory / "out",
              "missing_input": tmp_path / "out"}[make_output]
    source = tmp_path / "nothing-here" if make_output == "missing_input" else directory
    code, lines = run_spark_cli(source, output, "--model", model_path)
    assert code == expected_code
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]


def test_a_run_that_fails_before_spark_starts_still_writes_its_summary(tmp_path, monkeypatch):
    directory, _ = write_single_bad_row(tmp_path / "input")
    monkeypatch.setattr(spark_session, "start_session", lambda config: pytest.fail("Spark started"))
    missing = tmp_path / "missing.onnx"
    code, lines = run_spark_cli(directory, tmp_path / "out", "--model", missing,
                                "--summary", tmp_path / "summary.json")
    assert code == 78
    assert len(lines) == 1 and lines[0].startswith("error: ")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["exit_code"]) == ("failed", 78)
    assert f"error: {summary['error']}" == lines[0]
    assert (summary["rows_in"], summary["rows_out"]) == (0, 0)
    assert summary["spark"] == {"master": None, "application_id": None, "partitions": None,
                                "spark_version": None}
    assert "model" not in summary and "drift" not in summary  # nothing was loaded or scored
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        pytest.param("--low-confidence", "1.5", "1.5 is not a probability in [0, 1]",
                     id="low_confidence_above_1"),
        pytest.param("--max-psi", "-0.1", "-0.1 is negative", id="max_psi_negative"),
    ],
)
def test_monitoring_flags_are_checked_as_the_local_job_checks_them(tmp_path, capsys, flag, value,
                                                                  expected):
    with pytest.raises(SystemExit) as raised:
        scale.main([str(tmp_path / "in"), str(tmp_path / "out"), flag, value])
    assert raised.value.code == 2
    assert capsys.readouterr().err == (
        f"python -m score.spark: error: argument {flag}: {expected} (see --help)\n")


def test_the_staged_dataset_is_a_hidden_sibling_of_output():
    assert scale.staging_location("/data/scored/", "local-17") == "/data/.scored.seqscore-local-17.tmp"
    assert scale.staging_location("s3a://bucket/scored/dt=2024-06-01", "application_9_0001") == (
        "s3a://bucket/scored/.dt=2024-06-01.seqscore-application_9_0001.tmp")


def test_importing_score_spark_does_not_import_pyspark():
    result = run_module_code("import sys, score.spark; score.spark.parser(); "
                             "print(sorted(m for m in sys.modules if m.startswith('pyspark')))")
    assert result.stdout.strip() == "[]", result.stderr


def run_module_code(code: str):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


# Scheduled runs that remember (--key) ----------------------------------------------------------
def keyed_day(path: Path, keys: list, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, 11, int(rng.integers(1, 7))).tolist() for _ in keys]
    pq.write_table(pa.table({"user": keys, "x": pa.array(rows, pa.list_(pa.int64()))}), path)
    return path


@pytest.mark.slow
@needs_spark
def test_a_chain_of_keyed_runs_on_spark_equals_the_local_jobs(spark, tmp_path):
    """Three runs (keys new, skipping a run, back again), in Spark and locally, each from its
    own previous state: the same rows, steps_before, states and summary counts; and each
    reads the other's state."""
    from score.keyed_checks import KeyedRecord

    model = str(RAGGED_MODEL)
    days = [keyed_day(tmp_path / "day0.parquet", [f"u{i:02d}" for i in range(12)], 0),
            keyed_day(tmp_path / "day1.parquet", [f"u{i:02d}" for i in range(6, 20)][::-1], 1),
            keyed_day(tmp_path / "day2.parquet", [f"u{i:02d}" for i in (0, 1, 2, 15, 21, 22)], 2)]
    for index, day in enumerate(days):
        extra = ["--state-in", tmp_path / f"local-state{index - 1}"] if index else []
        result = run_score(day, tmp_path / f"local{index}.parquet", "--model", model, "--key", "user",
                           "--state-out", tmp_path / f"local-state{index}", "--quiet", *extra,
                           "--summary", tmp_path / f"local{index}.json")
        assert result.code == 0, result.stderr
        config = scale.SparkJobConfig(str(day), str(tmp_path / f"spark{index}"), model, key="user",
                                      state_in=str(tmp_path / f"spark-state{index - 1}") if index else None,
                                      state_out=str(tmp_path / f"spark-state{index}"))
        state = scale.run(spark, config, load(model), scale.SparkRunState(keyed=KeyedRecord()))
        local, remote = pq.read_table(tmp_path / f"local{index}.parquet"), pq.read_table(tmp_path / f"spark{index}")
        assert remote.column_names == local.column_names
        for name in ("user", "x", "y_pred", "top_k_values", "error", "steps_before"):
            assert remote.column(name).to_pylist() == local.column(name).to_pylist(), name
        np.testing.assert_allclose(np.array(remote.column("top_k_probs").combine_chunks().flatten().flatten()),
                                   np.array(local.column("top_k_probs").combine_chunks().flatten().flatten()),
                                   atol=1e-6, rtol=0)
        local_state = pq.read_table(tmp_path / f"local-state{index}")
        spark_state = pq.read_table(tmp_path / f"spark-state{index}")
        assert spark_state.column("user").to_pylist() == local_state.column("user").to_pylist()
        assert spark_state.column("steps").to_pylist() == local_state.column("steps").to_pylist()
        for name in ("initial_h_0", "initial_c_0"):
            np.testing.assert_allclose(np.array(spark_state.column(name).to_pylist()),
                                       np.array(local_state.column(name).to_pylist()), atol=1e-6, rtol=0)
        counts = json.loads((tmp_path / f"local{index}.json").read_text())
        assert state.keyed.to_dict()["keys_scored"] == counts["keys_scored"]
        for name in ("keys_in_state", "keys_new", "keys_carried_unchanged", "keys_in_state_out",
                     "steps_resumed"):
            assert getattr(state.keyed, name) == counts[name], name
        assert state.stats.rows == len(local)
    # Each reads the other's state: the local job from Spark's parts, Spark from the local file.
    result = run_score(days[2], tmp_path / "crossed.parquet", "--model", model, "--key", "user",
                       "--state-in", tmp_path / "spark-state1", "--state-out", tmp_path / "crossed-state",
                       "--quiet")
    assert result.code == 0, result.stderr
    assert pq.read_table(tmp_path / "crossed.parquet").equals(pq.read_table(tmp_path / "local2.parquet"))


@pytest.mark.slow
@needs_spark
def test_a_repeated_key_fails_a_spark_run_with_the_local_jobs_line(spark, tmp_path):
    from score.keyed_checks import KeyedRecord

    day = keyed_day(tmp_path / "day.parquet", ["a", "b", "c", "b"], 0)
    local = run_score(day, tmp_path / "local.parquet", "--model", RAGGED_MODEL, "--key", "user",
                      "--state-out", tmp_path / "local-state", "--quiet")
    assert local.code == 65
    config = scale.SparkJobConfig(str(day), str(tmp_path / "spark"), str(RAGGED_MODEL), key="user",
                                  state_out=str(tmp_path / "spark-state"))
    with pytest.raises(InvalidInput) as refused:
        scale.run(spark, config, load(str(RAGGED_MODEL)), scale.SparkRunState(keyed=KeyedRecord()))
    assert f"error: {refused.value}" == local.lines[0]
    assert not (tmp_path / "spark").exists() and not (tmp_path / "spark-state").exists()


@pytest.mark.parametrize("flags,code,line", [
    pytest.param(["--key", "user", "--state-out", "s3://bucket/state"], 2,
                 "--state-out s3://bucket/state: on Spark the state must be a path the driver and "
                 "every executor reach (a shared mount); URIs are for the local job", id="state_uri"),
    pytest.param(["--key", "user"], 2, "--key needs --state-out PATH (where the run writes every key's "
                 "state)", id="no_state_out"),
])
def test_spark_refuses_keyed_flags_before_spark_starts(tmp_path, flags, code, line):
    from conftest import run_main

    from score.spark.__main__ import main

    day = keyed_day(tmp_path / "day.parquet", ["a"], 0)
    result = run_main(main, day, tmp_path / "out", "--model", RAGGED_MODEL, *flags)
    assert result.code == code
    assert result.lines == [f"error: {line}"]


# --labels on Spark ---------------------------------------------------------------------------
@pytest.mark.slow
@needs_spark
def test_the_quality_figures_on_spark_equal_the_plain_reference_and_the_local_job(spark, tmp_path):
    from test_quality import assert_quality, full_probabilities, noisy_labels, reference_quality

    generator = np.random.default_rng(12)
    lengths = generator.integers(1, 33, size=2000)
    x = [generator.integers(0, 11, size=n).tolist() for n in lengths]
    x[100:200] = x[0:100]  # repeats with other labels
    y = noisy_labels(x, seed=13, noise=0.3)
    y[5], y[6], y[7] = y[5] + [1], [99] * len(y[6]), None
    table = pa.table({"id": np.arange(2000, dtype=np.int64), "x": pa.array(x, pa.list_(pa.int64())),
                      "y": pa.array(y, pa.list_(pa.int64()))})
    source = tmp_path / "labelled.parquet"
    pq.write_table(table, source, row_group_size=250)
    local = tmp_path / "local.json"
    result = run_score(source, tmp_path / "local.parquet", "--model", RAGGED_MODEL, "--labels", "y",
                       "--on-invalid", "null", "--summary", local, "--quiet")
    assert result.code == 0, result.stderr
    options = ScoreOptions(on_invalid="null", labels="y")
    config = scale.SparkJobConfig(str(source), str(tmp_path / "spark"), str(RAGGED_MODEL), options)
    spark.conf.set("spark.sql.files.maxPartitionBytes", "16384")  # several tasks to merge
    try:
        summary = spark_summary(spark, config, tmp_path / "spark.json")
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    valid = [i for i in range(2000) if i not in (5, 6, 7)]
    probabilities, spec = full_probabilities(RAGGED_MODEL, [x[i] for i in valid])
    expected = reference_quality(probabilities, [y[i] for i in valid], spec, 3)
    assert_quality(summary["quality"], expected)
    local_quality = json.loads(local.read_text())["quality"]
    assert {key: value for key, value in summary["quality"].items() if key not in ("log_loss", "ece",
            "estimated_accuracy", "bins")} == {key: value for key, value in local_quality.items()
                                               if key not in ("log_loss", "ece", "estimated_accuracy", "bins")}
    for key in ("log_loss", "ece", "estimated_accuracy"):
        assert summary["quality"][key] == pytest.approx(local_quality[key], abs=1e-9)
    reasons = summary["invalid_by_reason"]
    assert (reasons["label_length"], reasons["unknown_label"], reasons["null_label"]) == (1, 1, 1)
    scored = pq.read_table(tmp_path / "spark").sort_by("id")
    assert scored.column_names[-2:] == ["label_prob", "correct"]
    np.testing.assert_allclose(np.concatenate([scored.column("label_prob")[i].as_py() for i in valid]),
                               expected["label_prob"], atol=1e-6)


@pytest.mark.slow
@needs_spark
def test_min_accuracy_on_spark_exits_65_and_leaves_no_output(model_path, tmp_path):
    x = random_x(1000, seed=21)
    shifted = (np.cumsum(x, axis=1) + 1) % 25  # labels of another rule
    source = write_x(tmp_path / "shifted.parquet", x, y=list_array(shifted))
    output, summary_path = tmp_path / "scored", tmp_path / "summary.json"
    result = run_module("score.spark", source, output, "--model", model_path, "--master", "local[2]",
                        "--labels", "y", "--min-accuracy", "0.9", "--summary", summary_path, env=QUICK_JVM)
    assert result.returncode == 65, result.stderr
    summary = json.loads(summary_path.read_text())
    accuracy = summary["quality"]["accuracy"]
    message = (f"{source}: accuracy {accuracy:.4f} over 4000 labelled steps is below --min-accuracy "
               f"0.9; nothing was published")
    assert result.stderr.splitlines()[-1] == f"error: {message}"
    assert accuracy < 0.2
    assert not output.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shifted.parquet", "summary.json"]
    assert (summary["status"], summary["exit_code"], summary["error"]) == ("failed", 65, message)


@pytest.mark.slow
@needs_spark
def test_a_keyed_run_with_labels_on_spark_measures_what_the_local_job_measures(spark, tmp_path):
    from score.keyed_checks import KeyedRecord

    model = str(RAGGED_MODEL)
    rng = np.random.default_rng(31)
    days = []
    for index in range(2):
        keys = [f"u{i:02d}" for i in rng.permutation(30)[:20]]
        rows = [rng.integers(0, 11, int(rng.integers(1, 9))).tolist() for _ in keys]
        labels = [rng.integers(0, 25, len(row)).tolist() for row in rows]
        labels[3] = labels[3] + [0]  # label_length
        path = tmp_path / f"day{index}.parquet"
        pq.write_table(pa.table({"user": keys, "x": pa.array(rows, pa.list_(pa.int64())),
                                 "y": pa.array(labels, pa.list_(pa.int64()))}), path)
        days.append(path)
    options = ScoreOptions(on_invalid="null", labels="y")
    for index, day in enumerate(days):
        extra = ["--state-in", tmp_path / f"local-state{index - 1}"] if index else []
        result = run_score(day, tmp_path / f"local{index}.parquet", "--model", model, "--key", "user",
                           "--labels", "y", "--on-invalid", "null", "--state-out",
                           tmp_path / f"local-state{index}", "--quiet", *extra,
                           "--summary", tmp_path / f"local{index}.json")
        assert result.code == 0, result.stderr
        config = scale.SparkJobConfig(str(day), str(tmp_path / f"spark{index}"), model, options, key="user",
                                      state_in=str(tmp_path / f"spark-state{index - 1}") if index else None,
                                      state_out=str(tmp_path / f"spark-state{index}"))
        state = scale.run(spark, config, load(model), scale.SparkRunState(keyed=KeyedRecord()))
        summary = scale.summary_of(config, state, 0, None)
        local_summary = json.loads((tmp_path / f"local{index}.json").read_text())
        local, remote = pq.read_table(tmp_path / f"local{index}.parquet"), pq.read_table(tmp_path / f"spark{index}")
        assert remote.column("correct").to_pylist() == local.column("correct").to_pylist()
        assert remote.column("error").to_pylist() == local.column("error").to_pylist()
        np.testing.assert_allclose(np.concatenate([row for row in remote.column("label_prob").to_pylist() if row]),
                                   np.concatenate([row for row in local.column("label_prob").to_pylist() if row]),
                                   atol=1e-6)
        found, expected = summary["quality"], local_summary["quality"]
        for key in ("steps", "rows", "accuracy", "top_k_accuracy", "sequence_accuracy",
                    "accuracy_by_position", "accuracy_by_length", "top_confusions"):
            assert found[key] == expected[key], key
        for key in ("log_loss", "ece", "estimated_accuracy"):
            assert found[key] == pytest.approx(expected[key], abs=1e-9), key
        assert summary["invalid_by_reason"]["label_length"] == 1


# Table formats (score.tables) ------------------------------------------------------------------
@pytest.mark.parametrize("format_name", ["iceberg", "hudi"])
def test_a_tables_folder_is_refused_before_spark_starts(model_path, tmp_path, monkeypatch, format_name):
    import test_tables

    table = getattr(test_tables, f"{format_name}_table")(tmp_path / "events")
    monkeypatch.setattr(spark_session, "start_session", lambda config: pytest.fail("Spark started"))
    code, lines = run_spark_cli(table, tmp_path / "scored", "--model", model_path)
    assert code == 65 and len(lines) == 1
    assert lines[0].startswith(f"error: {table}: is ")
    assert lines == run_score(table, tmp_path / "local", "--model", model_path, "--quiet").lines
    assert not (tmp_path / "scored").exists()


@pytest.mark.slow
@needs_spark
def test_run_refuses_a_tables_folder_through_the_session(spark, model_path, tmp_path):
    """scale.run, as a notebook calls it, checks INPUT itself (the command line checks first)."""
    from test_tables import delta_table, hudi_table

    from score.spark.hadoop import table_format

    table = hudi_table(tmp_path / "events")
    config = scale.SparkJobConfig(str(table), str(tmp_path / "scored"), model_path)
    with pytest.raises(InvalidInput, match="is an Apache Hudi table"):
        scale.run(spark, config, load(model_path), scale.SparkRunState())
    assert not (tmp_path / "scored").exists()
    # A store's folder is looked at through Spark's Hadoop file system (here a file:// URI).
    assert table_format(spark, f"file://{table}") == (("an Apache Hudi table", ".hoodie/"), "")
    delta = delta_table(tmp_path / "delta")
    assert table_format(spark, f"file://{delta}") == (("a Delta Lake table", "_delta_log/"), "")
    assert table_format(spark, f"file://{tmp_path / 'delta' / '_delta_log'}") is None


# A Delta Lake INPUT on Spark ---------------------------------------------------------------------
@pytest.mark.slow
@needs_spark
def test_spark_reads_a_delta_tables_live_rows_as_the_local_job_does(spark, model_path, tmp_path):
    deltalake = pytest.importorskip("deltalake")
    from test_delta import events

    table = tmp_path / "events"
    deltalake.write_deltalake(table, events(100, 1, day=["d1"] * 100), partition_by=["day"])
    deltalake.write_deltalake(table, events(80, 2, day=["d2"] * 80), partition_by=["day"], mode="overwrite")
    deltalake.write_deltalake(table, events(40, 3, day=["d3"] * 40), partition_by=["day"], mode="append")
    deltalake.DeltaTable(table).delete("id < 2010")
    local = run_score(table, tmp_path / "local.parquet", "--model", model_path, "--quiet")
    assert local.code == 0, local.stderr
    config = scale.SparkJobConfig(str(table), str(tmp_path / "spark"), model_path)
    state = scale.run(spark, config, load(model_path), scale.SparkRunState())
    expected = pq.read_table(tmp_path / "local.parquet").sort_by("id")
    found = pq.read_table(tmp_path / "spark").sort_by("id")
    assert found.num_rows == expected.num_rows == 110  # 80 - 10 deleted + 40; never the dead 100
    assert found.column_names == expected.column_names
    for name in ("id", "x", "day", "y_pred", "top_k_values", "error"):
        assert found.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert state.input_table["version"] == 3
    older = scale.SparkJobConfig(str(table), str(tmp_path / "spark-v1"), model_path, input_version=1)
    scale.run(spark, older, load(model_path), scale.SparkRunState())
    assert pq.read_table(tmp_path / "spark-v1").num_rows == 80


@pytest.mark.slow
@needs_spark
def test_a_keyed_spark_run_over_a_delta_table_equals_the_local_jobs(spark, tmp_path):
    """--key over a Delta table's live rows (an overwrite left dead rows in the folder), from a
    state: the same rows, states and input fingerprint as the local job."""
    deltalake = pytest.importorskip("deltalake")
    from score.keyed_checks import KeyedRecord

    model = str(RAGGED_MODEL)
    first = keyed_day(tmp_path / "day0.parquet", [f"u{i:02d}" for i in range(10)], 0)
    assert run_score(first, tmp_path / "out0.parquet", "--model", model, "--key", "user", "--quiet",
                     "--state-out", tmp_path / "state0").code == 0
    table = tmp_path / "events"
    deltalake.write_deltalake(table, pq.read_table(keyed_day(tmp_path / "dead.parquet", ["u00", "u00"], 1)))
    deltalake.write_deltalake(table, pq.read_table(keyed_day(tmp_path / "day1.parquet",
                                                             [f"u{i:02d}" for i in range(5, 14)], 1)),
                              mode="overwrite")
    result = run_score(table, tmp_path / "local.parquet", "--model", model, "--key", "user", "--quiet",
                       "--state-in", tmp_path / "state0", "--state-out", tmp_path / "local-state")
    assert result.code == 0, result.stderr
    config = scale.SparkJobConfig(str(table), str(tmp_path / "spark"), model, key="user",
                                  state_in=str(tmp_path / "state0"), state_out=str(tmp_path / "spark-state"))
    state = scale.run(spark, config, load(model), scale.SparkRunState(keyed=KeyedRecord()))
    local, remote = (pq.read_table(tmp_path / "local.parquet").sort_by("user"),
                     pq.read_table(tmp_path / "spark").sort_by("user"))
    assert remote.num_rows == local.num_rows == 9  # the overwritten table's rows, never the dead ones
    for name in ("user", "x", "y_pred", "top_k_values", "steps_before"):
        assert remote.column(name).to_pylist() == local.column(name).to_pylist(), name
    local_state, spark_state = pq.read_table(tmp_path / "local-state"), pq.read_table(tmp_path / "spark-state")
    assert spark_state.column("steps").to_pylist() == local_state.column("steps").to_pylist()
    np.testing.assert_allclose(np.array(spark_state.column("initial_h_0").to_pylist()),
                               np.array(local_state.column("initial_h_0").to_pylist()), atol=1e-6, rtol=0)
    fingerprints = [json.loads((tmp_path / name / "_SUCCESS").read_text())["seqscore.input_fingerprint"]
                    for name in ("local-state", "spark-state")]
    assert fingerprints[0] == fingerprints[1] == state.keyed.input_fingerprint
    assert state.input_table["version"] == 1


def test_spark_input_version_on_plain_parquet_is_a_usage_error(model_path, tmp_path, monkeypatch):
    source = write_x(tmp_path / "plain.parquet", random_x(5))
    monkeypatch.setattr(spark_session, "start_session", lambda config: pytest.fail("Spark started"))
    code, lines = run_spark_cli(source, tmp_path / "scored", "--model", model_path, "--input-version", "0")
    assert (code, lines) == (2, [f"error: --input-version: {source} is not a Delta Lake table (no "
                                 f"_delta_log/ in it); time travel reads a table's earlier version"])
