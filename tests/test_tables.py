"""Table formats on top of Parquet (score.tables): a Delta Lake, Iceberg or Hudi table's folder,
whose files include ones the table no longer has, is refused (exit 65, one line, nothing
written) by the local job and by Spark, never read as loose Parquet files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FIXTURE_MODEL, assert_refused, random_x, run_score, write_x

from score import tables
from score.errors import InvalidInput

SNAPSHOT = ("This version cannot read the table itself; score a snapshot exported to plain "
            "Parquet (the table's live rows, for example with Spark, DuckDB or Polars), not the "
            "table's folder")


def delta_table(folder: Path) -> Path:
    """A Delta Lake table's layout after an overwrite: two data files, one of them dead, and
    the log that says so."""
    folder.mkdir(parents=True)
    write_x(folder / "part-00000-old.snappy.parquet", random_x(100, seed=1))
    write_x(folder / "part-00000-new.snappy.parquet", random_x(100, seed=2))
    log = folder / "_delta_log"
    log.mkdir()
    (log / "00000000000000000000.json").write_text(
        json.dumps({"add": {"path": "part-00000-old.snappy.parquet", "dataChange": True}}) + "\n")
    (log / "00000000000000000001.json").write_text(
        json.dumps({"remove": {"path": "part-00000-old.snappy.parquet", "dataChange": True}}) + "\n"
        + json.dumps({"add": {"path": "part-00000-new.snappy.parquet", "dataChange": True}}) + "\n")
    return folder


def iceberg_table(folder: Path) -> Path:
    (folder / "data").mkdir(parents=True)
    write_x(folder / "data" / "00000-0-data.parquet", random_x(50, seed=3))
    (folder / "metadata").mkdir()
    (folder / "metadata" / "v1.metadata.json").write_text(json.dumps({"format-version": 2}))
    (folder / "metadata" / "snap-1-manifest-list.avro").write_bytes(b"Obj\x01")
    return folder


def hudi_table(folder: Path) -> Path:
    (folder / "2026" / "12").mkdir(parents=True)
    write_x(folder / "2026" / "12" / "file-1_0-1-0_20261203.parquet", random_x(50, seed=4))
    (folder / ".hoodie").mkdir()
    (folder / ".hoodie" / "hoodie.properties").write_text("hoodie.table.name=events\n")
    return folder


LAYOUTS = [
    pytest.param(delta_table, "is a Delta Lake table (_delta_log/ at its root)", id="delta"),
    pytest.param(iceberg_table, "is an Apache Iceberg table (metadata/*.metadata.json at its root)",
                 id="iceberg"),
    pytest.param(hudi_table, "is an Apache Hudi table (.hoodie/ at its root)", id="hudi"),
]


EXTRA = ("Reading its live rows needs the delta extra (pip install -e '.[delta]'); or score a "
         "snapshot exported to plain Parquet (the table's live rows, for example with Spark, "
         "DuckDB or Polars), not the table's folder")


@pytest.mark.parametrize(("make", "what"), LAYOUTS)
def test_a_tables_folder_is_refused_and_nothing_is_written(tmp_path, monkeypatch, make, what):
    """Without a reader for the format (a Delta table's: the delta extra, absent here)."""
    from score import delta

    monkeypatch.setattr(delta, "available", lambda: False)
    table, out = make(tmp_path / "events"), tmp_path / "scored"
    result = run_score(table, out, "--model", FIXTURE_MODEL, "--quiet")
    todo = EXTRA if make is delta_table else SNAPSHOT
    assert_refused(result, 65, f"error: {table}: {what}, not plain Parquet files: a table's folder "
                               f"also holds files the table no longer has, so it is never read as "
                               f"loose Parquet. {todo}", out)


def test_a_folder_holding_a_table_is_refused_too(tmp_path):
    """Two tables under one folder: their dead files would be read just the same."""
    folder, out = tmp_path / "lake", tmp_path / "scored"
    delta_table(folder / "clicks")
    folder.joinpath("views").mkdir()
    write_x(folder / "views" / "part-0.parquet", random_x(10, seed=5))
    result = run_score(folder, out, "--model", FIXTURE_MODEL, "--quiet")
    assert_refused(result, 65, f"error: {folder}: holds a Delta Lake table in clicks/ "
                               f"(clicks/_delta_log/), not plain Parquet files: a table's folder also "
                               f"holds files the table no longer has, so it is never read as loose "
                               f"Parquet. Score each table by its own folder, or score a snapshot "
                               f"exported to plain Parquet (the table's live rows, for example with "
                               f"Spark, DuckDB or Polars), not the table's folder", out)


def test_a_keyed_run_refuses_a_table_as_its_input_too(tmp_path):
    table, out = hudi_table(tmp_path / "events"), tmp_path / "scored"
    result = run_score(table, out, "--model", FIXTURE_MODEL, "--key", "id", "--state-out",
                       tmp_path / "state", "--quiet")
    assert result.code == 65 and "is an Apache Hudi table" in result.lines[0], result.stderr
    assert not out.exists() and not (tmp_path / "state").exists()


@pytest.mark.parametrize("relatives", [
    pytest.param(["part-0.parquet", "metadata/notes.json", "metadata/"], id="a_metadata_folder_without_iceberg_metadata"),
    pytest.param(["part-0.parquet", "x/metadata/v1.metadata.json.bak"], id="not_a_metadata_json"),
    pytest.param(["part-0.parquet", "_delta_log.parquet", "hoodie/"], id="names_alike"),
])
def test_plain_folders_are_not_mistaken_for_tables(relatives):
    assert tables.format_of(relatives) is None
    tables.check_not_a_table("in", relatives)


def test_a_plain_folder_with_hidden_files_is_still_scored(tmp_path):
    folder, out = tmp_path / "plain", tmp_path / "scored"
    folder.mkdir()
    write_x(folder / "part-0.parquet", random_x(20, seed=6))
    (folder / "_committed_123").write_text("{}")
    (folder / "metadata").mkdir()
    (folder / "metadata" / "schema.json").write_text("{}")
    assert run_score(folder, out, "--model", FIXTURE_MODEL, "--quiet").code == 0
    assert (out / "part-0.parquet").exists()


def test_the_refusal_is_a_named_error_with_exit_65():
    with pytest.raises(InvalidInput) as raised:
        tables.check_not_a_table("s3://lake/events", ["_delta_log/", "_delta_log/0.json", "a.parquet"])
    assert raised.value.exit_code == 65
    assert str(raised.value).startswith("s3://lake/events: is a Delta Lake table (_delta_log/ at its root)")
