"""A Delta Lake OUTPUT on Spark (score.spark.delta_write): the tasks write the files, the driver
commits them once after the floors; the same table, refusals and transactions as the local job.

Runs that score go through score.spark.run on the shared local[2] session (a JVM per run would
cost a minute here); the refusals and the already-committed retry go through the command line,
which must not start Spark for them.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from conftest import delta_rows, needs_spark, random_x, read_json, run_score, run_spark_cli, write_x

from score import spark as scale
from score.errors import InvalidInput
from score.model import load
from score.spark import delta_write
from score.spark import session as spark_session

deltalake = pytest.importorskip("deltalake")
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")


def spark_run(spark, source: Path, table: Path, model_path: str, **fields) -> scale.SparkRunState:
    """python -m score.spark SOURCE TABLE --output-format delta ..., as its main runs it."""
    config = scale.SparkJobConfig(str(source), str(table), model_path, output_format="delta", **fields)
    state = scale.SparkRunState()
    state.output_target = delta_write.check(config)
    return scale.run(spark, config, load(model_path), state)


def data_files(table: Path) -> list[str]:
    return sorted(path.name for path in table.glob("*.parquet"))


def live_files(table: Path) -> list[str]:
    return sorted(uri.rsplit("/", 1)[-1] for uri in deltalake.DeltaTable(table).file_uris())


@pytest.mark.slow
@needs_spark
def test_spark_writes_the_table_the_local_job_writes(spark, model_path, tmp_path):
    day = write_x(tmp_path / "day.parquet", random_x(900, seed=1))
    local, table = tmp_path / "local", tmp_path / "spark"
    assert run_score(day, local, "--model", model_path, "--output-format", "delta", "--quiet").code == 0
    state = spark_run(spark, Path(day), table, model_path)
    assert state.output_table == {"format": "delta", "location": str(table), "version": 0, "committed": True,
                                  "mode": "create", "transaction": None}
    expected = delta_rows(local).sort_by("id")
    found = delta_rows(table).sort_by("id")
    assert found.schema == expected.schema
    for name in expected.column_names:
        assert found.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert data_files(table) == live_files(table)  # every file a task wrote is in the commit
    assert state.rows == 900


@pytest.mark.slow
@needs_spark
def test_spark_appends_once_per_transaction_and_the_retry_does_not_start_spark(spark, model_path, tmp_path,
                                                                                monkeypatch):
    table = tmp_path / "scores"
    first = write_x(tmp_path / "first.parquet", random_x(100, seed=2))
    second = write_x(tmp_path / "second.parquet", random_x(60, seed=3))
    spark_run(spark, Path(first), table, model_path, txn_id="daily:1")
    state = spark_run(spark, Path(second), table, model_path, mode="append", txn_id="daily:2")
    assert state.output_table["version"] == 1
    table_now = deltalake.DeltaTable(table)
    assert (delta_rows(table_now).num_rows, table_now.transaction_version("daily")) == (160, 2)
    monkeypatch.setattr(spark_session, "start_session", lambda config: pytest.fail("Spark started"))
    code, lines = run_spark_cli(second, table, "--model", model_path, "--output-format", "delta", "--mode",
                                "append", "--txn-id", "daily:2", "--summary", tmp_path / "s.json")
    assert (code, lines) == (0, [f"warning: {table}: transaction daily:2 is already committed (table "
                                 f"version 1); nothing was published"])
    assert deltalake.DeltaTable(table).version() == 1
    assert read_json(tmp_path / "s.json")["output_table"]["already_committed"] is True
    code, lines = run_spark_cli(second, table, "--model", model_path, "--output-format", "delta", "--mode",
                                "append", "--txn-id", "daily:1")
    assert (code, lines) == (65, [f"error: {table}: --txn-id daily:1: the table has recorded version 2 for "
                                  f"daily, later than 1; versions of one application only increase"])


@pytest.mark.slow
@needs_spark
def test_a_failed_spark_run_commits_nothing_and_leaves_no_file(spark, model_path, tmp_path):
    table = tmp_path / "scores"
    spark_run(spark, Path(write_x(tmp_path / "good.parquet", random_x(50, seed=4))), table, model_path)
    x = random_x(3000, seed=5)
    x[2500, 1] = 99
    bad = write_x(tmp_path / "bad.parquet", x)
    with pytest.raises(InvalidInput, match=r"bad.parquet: row 2500: x\[1\] = 99 is not one of"):
        spark_run(spark, Path(bad), table, model_path, mode="append")
    assert deltalake.DeltaTable(table).version() == 0
    assert data_files(table) == live_files(table)
    day = write_x(tmp_path / "day.parquet", random_x(300, seed=6))
    with pytest.raises(InvalidInput, match="is below --min-estimated-accuracy 1; nothing was published"):
        spark_run(spark, Path(day), table, model_path, mode="append", min_estimated_accuracy=1.0)
    assert deltalake.DeltaTable(table).version() == 0
    assert data_files(table) == live_files(table)


@pytest.mark.slow
@needs_spark
def test_spark_refuses_an_append_of_another_schema_naming_the_columns(spark, model_path, tmp_path):
    table = tmp_path / "scores"
    spark_run(spark, Path(write_x(tmp_path / "a.parquet", random_x(20, seed=7))), table, model_path)
    other = write_x(tmp_path / "b.parquet", random_x(20, seed=8), region=pa.array(["eu"] * 20))
    with pytest.raises(InvalidInput) as refused:
        spark_run(spark, Path(other), table, model_path, mode="append")
    assert str(refused.value) == (f"{table}: --mode append: the output's schema differs from the table's: "
                                  f"this run's column(s) region are not in the table; nothing was committed")
    assert data_files(table) == live_files(table)


@pytest.mark.parametrize("flags, line", [
    pytest.param(("--mode", "append"), "error: --mode applies to a Delta Lake OUTPUT: add --output-format delta",
                 id="mode_without_delta"),
    pytest.param(("--output-format", "delta", "--txn-id", "daily"),
                 "error: --txn-id 'daily': expected APP:VERSION, an application id and a non-negative integer "
                 "(for example daily-scores:20261203)", id="malformed_txn"),
    pytest.param(("--output-format", "delta", "--key", "user", "--state-out", "state"),
                 "error: python -m score.spark --key with --output-format delta is not supported yet: write "
                 "the scored dataset, or run python -m score --key --output-format delta", id="with_key"),
])
def test_spark_table_flags_that_cannot_work_are_usage_errors(model_path, tmp_path, monkeypatch, flags, line):
    day = write_x(tmp_path / "day.parquet", random_x(5, seed=9))
    monkeypatch.setattr(spark_session, "start_session", lambda config: pytest.fail("Spark started"))
    assert run_spark_cli(day, tmp_path / "scores", "--model", model_path, *flags) == (2, [line])


def test_spark_needs_a_mode_for_a_table_that_exists(model_path, tmp_path, monkeypatch):
    day = write_x(tmp_path / "day.parquet", random_x(5, seed=10))
    table = tmp_path / "scores"
    assert run_score(day, table, "--model", model_path, "--output-format", "delta", "--quiet").code == 0
    monkeypatch.setattr(spark_session, "start_session", lambda config: pytest.fail("Spark started"))
    assert run_spark_cli(day, table, "--model", model_path, "--output-format", "delta") == (
        2, [f"error: {table}: is a Delta Lake table already; say --mode append or --mode overwrite "
            f"(neither is safe to guess)"])

