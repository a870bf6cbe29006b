"""--output-format delta (score.delta_output): the scored rows as a Delta Lake table, committed
once at the end; --mode for a table that exists; --txn-id for exactly-once appends; nothing
committed by a run that fails, is refused or is killed."""

from __future__ import annotations

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
    FIXTURE_MODEL,
    RAGGED_MODEL,
    ROOT,
    assert_refused,
    delta_rows,
    random_x,
    read_json,
    run_score,
    write_x,
)

deltalake = pytest.importorskip("deltalake")

TABLE = ("--model", str(FIXTURE_MODEL), "--output-format", "delta", "--quiet")


def version(table: Path) -> int:
    return deltalake.DeltaTable(table).version()


def rows_of(table: Path) -> pa.Table:
    return delta_rows(table)


@pytest.fixture
def day(tmp_path) -> Path:
    return Path(write_x(tmp_path / "day.parquet", random_x(500, seed=1)))


def test_a_new_table_holds_what_the_parquet_output_holds(day, tmp_path):
    table, plain = tmp_path / "scores", tmp_path / "plain.parquet"
    result = run_score(day, table, *TABLE, "--summary", tmp_path / "s.json")
    assert (result.code, result.stderr) == (0, "")
    assert run_score(day, plain, "--model", FIXTURE_MODEL, "--quiet").code == 0
    expected = pq.read_table(plain)
    found = rows_of(table).sort_by("id")
    assert found.column_names == expected.column_names
    for name in expected.column_names:
        assert found.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert read_json(tmp_path / "s.json")["output_table"] == {
        "format": "delta", "location": str(table), "version": 0, "committed": True, "mode": "create",
        "transaction": None}


def test_polars_and_duckdb_read_the_table(day, tmp_path):
    import duckdb
    import polars as pl

    table = tmp_path / "scores"
    assert run_score(day, table, *TABLE).code == 0
    frame = pl.read_delta(str(table))
    assert frame.shape == (500, 6)
    assert frame["y_pred"].list.len().to_list() == [4] * 500
    connection = duckdb.connect()  # DuckDB's delta extension is a download: it takes the table's Arrow
    connection.register("scores", delta_rows(table))
    assert connection.sql("select count(*), sum(len(y_pred)) from scores").fetchall() == [(500, 2000)]


def test_a_retried_append_with_the_same_transaction_adds_nothing(day, tmp_path):
    table = tmp_path / "scores"
    assert run_score(day, table, *TABLE, "--txn-id", "daily:20261202").code == 0
    first = run_score(day, table, *TABLE, "--mode", "append", "--txn-id", "daily:20261203")
    assert (first.code, first.stderr) == (0, "")
    assert (version(table), rows_of(table).num_rows) == (1, 1000)
    retried = run_score(day, table, *TABLE, "--mode", "append", "--txn-id", "daily:20261203",
                        "--summary", tmp_path / "s.json")
    assert retried.code == 0
    assert retried.lines == [f"warning: {table}: transaction daily:20261203 is already committed "
                             f"(table version 1); nothing was published"]
    assert (version(table), rows_of(table).num_rows) == (1, 1000)
    assert read_json(tmp_path / "s.json")["output_table"]["already_committed"] is True
    assert deltalake.DeltaTable(table).transaction_version("daily") == 20261203


def test_a_transaction_below_the_recorded_one_is_refused_naming_both(day, tmp_path):
    table = tmp_path / "scores"
    assert run_score(day, table, *TABLE, "--txn-id", "daily:5").code == 0
    result = run_score(day, table, *TABLE, "--mode", "append", "--txn-id", "daily:4")
    assert_refused(result, 65, f"error: {table}: --txn-id daily:4: the table has recorded version 5 "
                               f"for daily, later than 4; versions of one application only increase")
    assert version(table) == 0


@pytest.mark.parametrize(("flags", "line"), [
    pytest.param(["--output-format", "delta", "--txn-id", "daily"],
                 "error: --txn-id 'daily': expected APP:VERSION, an application id and a non-negative "
                 "integer (for example daily-scores:20261203)", id="malformed_txn"),
    pytest.param(["--mode", "append"], "error: --mode applies to a Delta Lake OUTPUT: add --output-format "
                                       "delta", id="mode_without_delta"),
    pytest.param(["--txn-id", "daily:1"], "error: --txn-id applies to a Delta Lake OUTPUT: add "
                                          "--output-format delta", id="txn_without_delta"),
])
def test_flags_that_cannot_work_are_usage_errors(day, tmp_path, flags, line):
    table = tmp_path / "scores"
    result = run_score(day, table, "--model", FIXTURE_MODEL, "--quiet", *flags)
    assert_refused(result, 2, line, table)


def test_an_existing_table_needs_a_mode(day, tmp_path):
    table = tmp_path / "scores"
    assert run_score(day, table, *TABLE).code == 0
    result = run_score(day, table, *TABLE)
    assert_refused(result, 2, f"error: {table}: is a Delta Lake table already; say --mode append or "
                              f"--mode overwrite (neither is safe to guess)")
    assert version(table) == 0


def test_without_the_extra_delta_output_is_a_usage_error(day, tmp_path, monkeypatch):
    from score import delta

    monkeypatch.setattr(delta, "available", lambda: False)
    result = run_score(day, tmp_path / "scores", *TABLE)
    assert_refused(result, 2, "error: --output-format delta needs the delta extra: pip install -e "
                              "'.[delta]'", tmp_path / "scores")


def test_an_append_of_another_schema_is_refused_naming_the_columns(day, tmp_path):
    table = tmp_path / "scores"
    assert run_score(day, table, *TABLE).code == 0
    other = write_x(tmp_path / "other.parquet", random_x(10, seed=2), region=pa.array(["eu"] * 10))
    result = run_score(other, table, *TABLE, "--mode", "append")
    assert_refused(result, 65, f"error: {table}: --mode append: the output's schema differs from the "
                               f"table's: this run's column(s) region are not in the table; nothing "
                               f"was committed")
    assert version(table) == 0


def test_overwrite_replaces_the_rows_in_one_commit(day, tmp_path):
    table = tmp_path / "scores"
    assert run_score(day, table, *TABLE).code == 0
    other = write_x(tmp_path / "other.parquet", random_x(7, seed=3), region=pa.array(["eu"] * 7))
    result = run_score(other, table, *TABLE, "--mode", "overwrite")
    assert (result.code, result.stderr) == (0, "")
    assert (version(table), rows_of(table).num_rows) == (1, 7)
    assert "region" in rows_of(table).column_names
    assert delta_rows(table, version=0).num_rows == 500  # time travel


@pytest.mark.parametrize("new", [True, False], ids=["new_table", "existing_table"])
def test_a_failed_run_commits_nothing(tmp_path, new):
    table = tmp_path / "scores"
    good = write_x(tmp_path / "good.parquet", random_x(100, seed=4))
    if not new:
        assert run_score(good, table, *TABLE).code == 0
    x = random_x(70_000, seed=5)
    x[69_000, 2] = 99  # an invalid row in the second batch: the first was already written
    bad = write_x(tmp_path / "bad.parquet", x)
    result = run_score(bad, table, *TABLE, *([] if new else ["--mode", "append"]), "--batch-size", "65536")
    assert result.code == 65, result.stderr
    assert result.lines == [f"error: {bad}: row 69000: x[2] = 99 is not one of the model's input "
                            f"values (0..10)"]
    if new:
        assert not table.exists()  # the files written before the invalid row were removed
    else:
        assert (version(table), rows_of(table).num_rows) == (0, 100)
        assert sorted(path.name for path in table.glob("*.parquet")) == \
            sorted(uri.rsplit("/", 1)[-1] for uri in deltalake.DeltaTable(table).file_uris())  # none left but the live


def test_a_floor_not_met_commits_nothing(day, tmp_path):
    table = tmp_path / "scores"
    result = run_score(day, table, *TABLE, "--min-estimated-accuracy", "1.0", "--summary", tmp_path / "s.json")
    assert result.code == 65, result.stderr
    assert "is below --min-estimated-accuracy 1; nothing was published" in result.lines[-1]
    assert not table.exists()
    summary = read_json(tmp_path / "s.json")
    assert summary["status"] == "failed" and "output_table" not in summary


def test_a_delta_table_in_and_a_delta_table_out(tmp_path):
    source = tmp_path / "events"
    deltalake.write_deltalake(source, pa.table({"x": pa.array(random_x(40, seed=6).tolist(), pa.list_(pa.int64()))}))
    deltalake.write_deltalake(source, pa.table({"x": pa.array(random_x(30, seed=7).tolist(), pa.list_(pa.int64()))}),
                              mode="overwrite")
    table = tmp_path / "scores"
    result = run_score(source, table, *TABLE, "--summary", tmp_path / "s.json")
    assert (result.code, result.stderr) == (0, "")
    assert rows_of(table).num_rows == 30
    summary = read_json(tmp_path / "s.json")
    assert (summary["input_table"]["version"], summary["output_table"]["version"]) == (1, 0)


@pytest.mark.slow
def test_a_sigkill_during_the_write_leaves_the_tables_version_unchanged(tmp_path):
    table = tmp_path / "scores"
    small = write_x(tmp_path / "small.parquet", random_x(100, seed=8))
    assert run_score(small, table, *TABLE).code == 0
    rows = 3_000_000
    x = np.random.default_rng(9).integers(0, 11, size=(rows, 4))
    big = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": np.arange(rows), "x": pa.FixedSizeListArray.from_arrays(
        pa.array(x.reshape(-1)), 4).cast(pa.list_(pa.int64()))}), big)
    log = sorted((table / "_delta_log").iterdir())
    process = subprocess.Popen([sys.executable, "-m", "score", str(big), str(table), *TABLE, "--mode", "append",
                                "--txn-id", "daily:1"], cwd=ROOT, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            path.stat().st_mtime > big.stat().st_mtime for path in table.glob("*.parquet")
            if path.stat().st_size > 0 and path.name not in {p.name for p in log}):
        if process.poll() is not None:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed mid-write"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert sorted((table / "_delta_log").iterdir()) == log  # no commit
    assert version(table) == 0
    assert deltalake.DeltaTable(table).transaction_version("daily") is None
    assert rows_of(table).num_rows == 100


def test_columns_are_written_in_a_type_the_table_keeps_without_losing_a_value(tmp_path):
    x = random_x(20, seed=10)
    day = write_x(tmp_path / "day.parquet", x, code=pa.array(np.arange(200, 220), pa.uint8()),
                  seen=pa.array(np.arange(20) * 10**9, pa.timestamp("ns")))
    table = tmp_path / "scores"
    assert run_score(day, table, *TABLE).code == 0
    found = rows_of(table).sort_by("id")
    assert found.schema.field("code").type == pa.int16()  # Delta has no uint8; int8 would wrap 200
    assert found.column("code").to_pylist() == list(range(200, 220))
    assert found.column("seen").cast(pa.int64()).to_pylist() == [second * 10**6 for second in range(20)]
    assert [path.name for path in table.glob("*.parquet")] == \
        [uri.rsplit("/", 1)[-1] for uri in deltalake.DeltaTable(table).file_uris()]


def test_a_column_no_delta_type_holds_is_refused_before_scoring(tmp_path):
    day = write_x(tmp_path / "day.parquet", random_x(5, seed=11),
                  wait=pa.array([1, 2, 3, 4, 5], pa.duration("s")))
    table = tmp_path / "scores"
    assert_refused(run_score(day, table, *TABLE), 65,
                   f"error: {table}: column wait is of type duration[s], which a Delta Lake table "
                   f"cannot hold (duration[s]); drop or cast it")
    assert not table.exists()


@pytest.mark.parametrize("arrow_type", [
    pytest.param(pa.uint8(), id="uint8"), pytest.param(pa.uint64(), id="uint64"),
    pytest.param(pa.list_(pa.uint16(), 4), id="fixed_size_list_uint16"),
    pytest.param(pa.large_list(pa.int32()), id="large_list"),
    pytest.param(pa.dictionary(pa.int8(), pa.large_string()), id="dictionary"),
    pytest.param(pa.timestamp("ns", tz="Europe/Paris"), id="timestamp_tz"),
    pytest.param(pa.struct([("a", pa.float16()), ("b", pa.date64())]), id="struct"),
    pytest.param(pa.map_(pa.string(), pa.list_(pa.int64())), id="map"),
    pytest.param(pa.decimal128(12, 3), id="decimal"),
])
def test_delta_rs_keeps_each_type_the_job_writes_as_it_is(arrow_type):
    from score.delta_types import delta_type

    written = pa.schema([("c", delta_type(arrow_type))])
    assert pa.schema(deltalake.Schema.from_arrow(written).to_arrow()) == written


# --key with a Delta Lake OUTPUT ---------------------------------------------------------------
def keyed_day(path: Path, keys: list, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = [rng.integers(0, 11, int(rng.integers(1, 7))).tolist() for _ in keys]
    pq.write_table(pa.table({"user": keys, "x": pa.array(rows, pa.list_(pa.int64()))}), path)
    return path


def keyed_run(day: Path, output: Path, state_out: Path, state_in: Path | None, *extra):
    return run_score(day, output, "--model", RAGGED_MODEL, "--key", "user", "--state-out", state_out,
                     "--quiet", *(["--state-in", state_in] if state_in else []), *extra)


def test_a_chain_of_keyed_runs_appends_to_a_table_what_the_parquet_chain_writes(tmp_path):
    days = [keyed_day(tmp_path / "day0.parquet", [f"u{i}" for i in range(8)], 0),
            keyed_day(tmp_path / "day1.parquet", [f"u{i}" for i in range(4, 12)][::-1], 1)]
    table = tmp_path / "scores"
    for index, day in enumerate(days):
        previous = tmp_path / f"plain-state{index - 1}" if index else None
        assert keyed_run(day, tmp_path / f"plain{index}.parquet", tmp_path / f"plain-state{index}",
                         previous).code == 0
        previous = tmp_path / f"state{index - 1}" if index else None
        extra = ("--output-format", "delta", "--txn-id", f"daily:{index}",
                 *(("--mode", "append") if index else ()), "--summary", tmp_path / "s.json")
        result = keyed_run(day, table, tmp_path / f"state{index}", previous, *extra)
        assert (result.code, result.stderr) == (0, "")
        assert pq.read_table(tmp_path / f"state{index}").equals(pq.read_table(tmp_path / f"plain-state{index}"))
        summary = read_json(tmp_path / "s.json")
        assert (summary["output_table"]["version"], summary["keys_scored"]) == (index, 8)
    expected = pa.concat_tables([pq.read_table(tmp_path / f"plain{index}.parquet") for index in range(2)])
    found = rows_of(table)
    assert found.num_rows == expected.num_rows == 16
    key = [("steps_before", "ascending"), ("user", "ascending")]
    expected, found = expected.sort_by(key), found.sort_by(key)
    for name in ("user", "x", "y_pred", "top_k_values", "top_k_probs", "error", "steps_before"):
        assert found.column(name).to_pylist() == expected.column(name).to_pylist(), name


def test_a_retried_keyed_append_publishes_nothing_when_its_state_is_there(tmp_path):
    day = keyed_day(tmp_path / "day.parquet", ["a", "b", "c"], 2)
    table, state = tmp_path / "scores", tmp_path / "state"
    flags = ("--output-format", "delta", "--txn-id", "daily:7")
    assert keyed_run(day, table, state, None, *flags).code == 0
    before = (state / "_SUCCESS").read_text()
    retried = keyed_run(day, table, state, None, *flags, "--mode", "append")
    assert (retried.code, retried.lines) == (0, [f"warning: {table}: transaction daily:7 is already "
                                                 f"committed (table version 0); nothing was published"])
    assert (version(table), (state / "_SUCCESS").read_text()) == (0, before)
    elsewhere = keyed_run(day, table, tmp_path / "other-state", None, *flags, "--mode", "append")
    assert_refused(elsewhere, 65, f"error: {table}: transaction daily:7 is already committed (table "
                                  f"version 0), but --state-out {tmp_path / 'other-state'} holds no "
                                  f"state: the run that committed it wrote its state elsewhere; give "
                                  f"that run's --state-out, or a new --txn-id VERSION", tmp_path / "other-state")


def test_a_failed_keyed_run_commits_nothing_and_publishes_no_state(tmp_path):
    table, state = tmp_path / "scores", tmp_path / "state"
    assert keyed_run(keyed_day(tmp_path / "day0.parquet", ["a", "b"], 3), table, state, None,
                     "--output-format", "delta").code == 0
    repeated = keyed_day(tmp_path / "day1.parquet", ["a", "c", "a"], 4)
    result = keyed_run(repeated, table, tmp_path / "state1", state, "--output-format", "delta", "--mode", "append")
    assert result.code == 65 and "'a'" in result.lines[-1], result.stderr
    assert version(table) == 0 and not (tmp_path / "state1").exists()
    assert sorted(path.name for path in table.glob("*.parquet")) == \
        sorted(uri.rsplit("/", 1)[-1] for uri in deltalake.DeltaTable(table).file_uris())
