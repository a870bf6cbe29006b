"""Delta Lake INPUT (score.delta): the job reads a table's live snapshot through delta-rs,
never the dead files an overwrite, a delete or a compaction leaves in its folder; --input-version
reads an older version; what delta-rs cannot read exactly is refused with one line (65).

Tables are made here with `deltalake` itself (the `delta` extra, which make setup installs)."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
    read_json,
    run_score,
)

deltalake = pytest.importorskip("deltalake")

SCORED = ["y_pred", "top_k_values", "top_k_probs", "error"]


def events(rows: int, seed: int, **columns) -> pa.Table:
    x = np.random.default_rng(seed).integers(0, 11, size=(rows, 4))
    ids = np.arange(rows, dtype=np.int64) + 1000 * seed
    return pa.table({"id": ids, "x": pa.array(x.tolist(), pa.list_(pa.int64())), **columns})


@pytest.fixture
def churned(tmp_path) -> Path:
    """A table written (v0), overwritten (v1), appended to (v2), deleted from (v3) and
    compacted (v4): its folder holds the files of every version, most of them dead."""
    path = tmp_path / "events"
    deltalake.write_deltalake(path, events(100, 1))
    deltalake.write_deltalake(path, events(100, 2), mode="overwrite")
    deltalake.write_deltalake(path, events(50, 3), mode="append")
    deltalake.DeltaTable(path).delete("id < 2010")
    deltalake.DeltaTable(path).optimize.compact()
    return path


def score_plain(table: pa.Table, tmp_path: Path, *flags: str) -> pa.Table:
    """What the job gives for the same rows written as one plain Parquet file."""
    plain, out = tmp_path / "plain.parquet", tmp_path / "plain-scored.parquet"
    pq.write_table(table, plain)
    result = run_score(plain, out, *flags, "--quiet")
    assert result.code == 0, result.stderr
    return pq.read_table(out)


def assert_same_rows(found: pa.Table, expected: pa.Table, key: str = "id") -> None:
    found, expected = found.sort_by(key), expected.sort_by(key)
    assert found.column_names == expected.column_names
    for name in found.column_names:
        assert found.column(name).to_pylist() == expected.column(name).to_pylist(), name


def test_the_live_snapshot_is_scored_never_the_dead_files(churned, tmp_path):
    parquet_files = list(churned.glob("*.parquet"))
    assert len(parquet_files) >= 5  # the folder holds every version's files
    out, summary = tmp_path / "scored.parquet", tmp_path / "summary.json"
    result = run_score(churned, out, "--model", FIXTURE_MODEL, "--summary", summary, "--quiet")
    assert result.code == 0, result.stderr
    snapshot = delta_rows(churned)
    assert snapshot.num_rows == 140
    found = pq.read_table(out)
    assert found.num_rows == 140
    assert_same_rows(found, score_plain(snapshot, tmp_path, "--model", str(FIXTURE_MODEL)))
    table = read_json(summary)["input_table"]
    assert table == {"format": "delta", "location": str(churned), "version": 4, "latest_version": 4,
                     "files": len(deltalake.DeltaTable(churned).file_uris()), "rows": 140}


def test_partition_columns_pass_through_like_any_other(tmp_path):
    path = tmp_path / "by_day"
    deltalake.write_deltalake(path, events(30, 1, day=["2026-12-01"] * 30), partition_by=["day"])
    deltalake.write_deltalake(path, events(20, 2, day=["2026-12-02"] * 20), partition_by=["day"], mode="append")
    out = tmp_path / "scored.parquet"
    result = run_score(path, out, "--model", FIXTURE_MODEL, "--quiet")
    assert result.code == 0, result.stderr
    snapshot = delta_rows(path)
    found = pq.read_table(out)
    assert set(found.column("day").to_pylist()) == {"2026-12-01", "2026-12-02"}
    assert_same_rows(found, score_plain(snapshot.select(found.column_names[:3]), tmp_path,
                                        "--model", str(FIXTURE_MODEL)))


def test_input_version_reads_the_table_as_it_was(churned, tmp_path):
    out = tmp_path / "v1.parquet"
    result = run_score(churned, out, "--model", FIXTURE_MODEL, "--input-version", "1", "--quiet")
    assert result.code == 0, result.stderr
    version_1 = delta_rows(churned, version=1)
    assert_same_rows(pq.read_table(out), score_plain(version_1, tmp_path, "--model", str(FIXTURE_MODEL)))


def test_input_version_past_the_latest_is_refused_naming_the_latest(churned, tmp_path):
    out = tmp_path / "scored.parquet"
    result = run_score(churned, out, "--model", FIXTURE_MODEL, "--input-version", "9", "--quiet")
    assert_refused(result, 65, f"error: {churned}: --input-version 9 is past the table's latest "
                               f"version, 4", out)


def test_input_version_on_plain_parquet_is_a_usage_error(tmp_path):
    plain, out = tmp_path / "plain.parquet", tmp_path / "scored.parquet"
    pq.write_table(events(5, 1), plain)
    result = run_score(plain, out, "--model", FIXTURE_MODEL, "--input-version", "0", "--quiet")
    assert_refused(result, 2, f"error: --input-version: {plain} is not a Delta Lake table (no "
                              f"_delta_log/ in it); time travel reads a table's earlier version", out)


def test_a_corrupt_commit_is_refused(churned, tmp_path):
    (churned / "_delta_log" / "00000000000000000004.json").write_text("{not json")
    out = tmp_path / "scored.parquet"
    result = run_score(churned, out, "--model", FIXTURE_MODEL, "--quiet")
    assert result.code == 65 and len(result.lines) == 1, result.stderr
    assert result.lines[0].startswith(f"error: {churned}: the table's _delta_log cannot be read (Json error")
    assert not out.exists()


def test_a_missing_commit_is_refused(churned, tmp_path):
    (churned / "_delta_log" / "00000000000000000002.json").unlink()
    out = tmp_path / "scored.parquet"
    result = run_score(churned, out, "--model", FIXTURE_MODEL, "--quiet")
    assert_refused(result, 65, f"error: {churned}: the table's _delta_log cannot be read (a commit "
                               f"file is missing before 00000000000000000001.json)", out)


def test_deletion_vectors_are_refused_never_scored_with_deleted_rows(tmp_path):
    path = tmp_path / "with_dv"
    deltalake.write_deltalake(path, events(40, 1), configuration={"delta.enableDeletionVectors": "true"})
    out = tmp_path / "scored.parquet"
    result = run_score(path, out, "--model", FIXTURE_MODEL, "--quiet")
    assert result.code == 65, result.stderr
    assert result.lines[0].startswith(f"error: {path}: the table uses reader feature(s) ")
    assert "deletionVectors" in result.lines[0]
    assert result.lines[0].endswith(", which this reader does not read exactly; nothing was scored")
    assert not out.exists()


def test_output_must_be_a_file_for_a_table(churned, tmp_path):
    (tmp_path / "out").mkdir()
    result = run_score(churned, tmp_path / "out", "--model", FIXTURE_MODEL, "--quiet")
    assert (result.code, result.lines) == (73, [f"error: {tmp_path / 'out'}: is a directory; INPUT is a "
                                                f"Delta Lake table, so OUTPUT must be a file path"])


def test_without_the_extra_a_table_is_refused_with_the_install_command(churned, tmp_path, monkeypatch):
    from score import delta

    monkeypatch.setattr(delta, "available", lambda: False)
    out = tmp_path / "scored.parquet"
    result = run_score(churned, out, "--model", FIXTURE_MODEL, "--quiet")
    assert_refused(result, 65, f"error: {churned}: is a Delta Lake table (_delta_log/ at its root), not "
                               f"plain Parquet files: a table's folder also holds files the table no "
                               f"longer has, so it is never read as loose Parquet. Reading its live rows "
                               f"needs the delta extra (pip install -e '.[delta]'); or score a snapshot "
                               f"exported to plain Parquet (the table's live rows, for example with "
                               f"Spark, DuckDB or Polars), not the table's folder", out)


def test_labels_and_a_keyed_chain_take_a_table_too(tmp_path):
    """--labels reads the table's label column; --key continues each key's history from a
    table's snapshot as from a Parquet file."""
    rng = np.random.default_rng(4)
    rows = [rng.integers(0, 11, int(n)).tolist() for n in rng.integers(1, 9, 60)]
    labels = [(np.cumsum(row) % 25).tolist() for row in rows]
    table = pa.table({"user": [f"u{i:02d}" for i in range(60)], "x": pa.array(rows, pa.list_(pa.int64())),
                      "y": pa.array(labels, pa.list_(pa.int64()))})
    path = tmp_path / "days"
    deltalake.write_deltalake(path, table.slice(0, 30))
    deltalake.write_deltalake(path, table.slice(30), mode="append")
    flags = ("--model", str(RAGGED_MODEL), "--labels", "y", "--key", "user", "--quiet")
    from_table = run_score(path, tmp_path / "t.parquet", *flags, "--state-out", tmp_path / "ts",
                           "--summary", tmp_path / "t.json")
    assert from_table.code == 0, from_table.stderr
    plain = tmp_path / "plain.parquet"
    pq.write_table(delta_rows(path), plain)
    from_file = run_score(plain, tmp_path / "p.parquet", *flags, "--state-out", tmp_path / "ps",
                          "--summary", tmp_path / "p.json")
    assert from_file.code == 0, from_file.stderr
    assert_same_rows(pq.read_table(tmp_path / "t.parquet"), pq.read_table(tmp_path / "p.parquet"), "user")
    assert read_json(tmp_path / "t.json")["quality"] == read_json(tmp_path / "p.json")["quality"]
    for name in ("user", "steps", "initial_h_0", "initial_c_0"):
        assert (pq.read_table(tmp_path / "ts").column(name).to_pylist()
                == pq.read_table(tmp_path / "ps").column(name).to_pylist()), name
    assert read_json(tmp_path / "t.json")["input_table"]["version"] == 1


def test_a_table_in_a_folder_of_tables_is_refused(churned, tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    shutil.move(str(churned), lake / "events")
    out = tmp_path / "scored"
    result = run_score(lake, out, "--model", FIXTURE_MODEL, "--quiet")
    assert result.code == 65 and "holds a Delta Lake table in events/" in result.lines[0], result.stderr
    assert "Score each table by its own folder" in result.lines[0]


def test_the_scoring_process_never_imports_delta_rs(churned, tmp_path):
    """The log is replayed in a child: the job over a table holds no delta-rs runtime."""
    code = ("import sys; from score.__main__ import main; "
            f"code = main([{str(churned)!r}, {str(tmp_path / 'out.parquet')!r}, '--model', "
            f"{str(FIXTURE_MODEL)!r}, '--quiet']); "
            "assert code == 0, code; assert 'deltalake' not in sys.modules, 'imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 140
