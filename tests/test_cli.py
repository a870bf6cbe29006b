"""The command lines as a whole: light imports, documented flags, the README's promises, and
the two helpers that read a scored run (score.preview, score.report)."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    RAGGED_MODEL,
    ROOT,
    parser_of,
    random_x,
    read_json,
    run_module,
    run_score,
    write_x,
)

README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
# Every command whose flags a user can pass: each must be documented in the README or docs/.
COMMANDS = ("score", "score.spark", "train", "export", "score.report", "score.preview", "bench",
            "bench.variant")
HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx", "pyspark", "matplotlib", "pandas", "polars")

MODULE_REPORT = """
import json, runpy, sys
sys.argv = {argv!r}
try:
    runpy.run_module("score", run_name="__main__")
except SystemExit as exit_:
    code = exit_.code
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported_modules(argv: list[str]) -> set[str]:
    result = run_module_code(MODULE_REPORT.format(argv=argv))
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


def run_module_code(code: str):
    import subprocess

    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_score_help_imports_no_tensorflow_keras_or_tf2onnx():
    modules = imported_modules(["score", "--help"])
    assert "argparse" in modules
    assert heavy(modules) == []


def test_a_whole_scoring_run_imports_only_the_light_runtime(tmp_path, model_path):
    source = write_x(tmp_path / "in.parquet", random_x(100))
    modules = imported_modules(["score", source, str(tmp_path / "out.parquet"), "--model", model_path, "--quiet"])
    assert "onnxruntime" in modules and "pyarrow.parquet" in modules
    assert heavy(modules) == []
    assert (tmp_path / "out.parquet").exists()


def test_score_help_runs_and_lists_exit_codes():
    result = run_module("score", "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and result.stderr == ""


def documented(flag: str, text: str) -> bool:
    """Whether the whole flag appears: `--x` is not documented by `--x-values`."""
    return re.search(re.escape(flag) + r"(?![\w-])", text) is not None


def test_documented_matches_whole_flags_only():
    assert not documented("--x", "--x-values 0..10 and --input-columns A,B")
    assert not documented("--input-column", "--input-columns A,B")
    assert documented("--x", "`--x X.txt --y Y.txt`") and documented("--top-k", "--top-k=3")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_line_flag_is_documented(command):
    text = README + "\n".join(DOCS.values())
    flags = [flag for action in parser_of(command)._actions for flag in action.option_strings
             if flag.startswith("--") and flag != "--help"]
    assert [flag for flag in flags if not documented(flag, text)] == []


def test_readme_quick_start_is_exactly_make_demo_and_make_test():
    first_block = re.search(r"```\n(.*?)```", README, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_readme_documents_every_exit_code():
    from score import errors

    codes = {value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    table = re.search(r"### Exit codes\n(.*?)\n\n", README, re.S).group(1)
    documented = {int(match) for match in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert codes == documented


def test_every_make_target_is_phony_and_described():
    makefile = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split())
    described = set(re.findall(r"^([a-zA-Z_-]+):.*## ", makefile, re.M))
    assert phony == described
    for target in ("setup", "train", "export", "score", "demo", "test", "clean", "bench", "fixture", "data"):
        assert target in described


@pytest.mark.parametrize("module,positional", [
    ("score", ["in.parquet", "out.parquet"]), ("train", []), ("export", []), ("score.report", ["s.json", "r.png"]),
])
def test_usage_errors_exit_2(module, positional):
    result = run_module(module, *positional, "--no-such-flag")
    assert result.returncode == 2
    assert "--no-such-flag" in result.stderr
    assert "Traceback" not in result.stderr


def test_preview_prints_the_first_rows(tmp_path, model_path, capsys):
    from score.preview import main as preview

    x = random_x(7, seed=3)
    source = write_x(tmp_path / "in.parquet", x)
    assert run_score_quiet(source, tmp_path / "out.parquet", model_path) == 0
    assert preview([str(tmp_path / "out.parquet"), "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"x={x[0].tolist()}  y_pred=")
    assert lines[0].count(";") == 3  # four steps


def run_score_quiet(source, output, model_path) -> int:
    from conftest import run_score

    return run_score(source, output, "--model", model_path, "--quiet").code


def test_preview_shows_a_long_row_by_its_first_and_last_steps(tmp_path, capsys):
    from score.preview import SHORT_ROW
    from score.preview import main as preview

    rows = [list(range(28)), [1, 2]]
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"x": [[value % 11 for value in row] for row in rows]}), source)
    assert run_score(source, tmp_path / "out.parquet", "--model", RAGGED_MODEL, "--quiet").code == 0
    assert preview([str(tmp_path / "out.parquet")]) == 0
    long_row, short_row = capsys.readouterr().out.splitlines()
    assert long_row.startswith("x=[0, 1, 2, ..., 4, 5] (28 steps)  y_pred=[")
    assert "step 0: " in long_row and "step 1: " in long_row and "step 27: " in long_row
    assert "step 2: " not in long_row and len(long_row) < 300
    assert short_row.startswith("x=[1, 2]  y_pred=[") and short_row.count(";") == 1
    assert SHORT_ROW >= 4  # the default model's rows print whole


# score.report ------------------------------------------------------------------------------
def test_report_verdict_says_drift_only_where_the_job_checked_the_step():
    from score.report import psi_label

    assert psi_label(0.379, checked=False, rows=33) == "not checked (33 rows)"
    assert psi_label(0.379, checked=False, rows=None) == "not checked"  # an older summary
    assert psi_label(0.379, checked=True, rows=5000) == "PSI 0.379 (drift)"
    assert psi_label(0.05, checked=True, rows=5000) == "PSI 0.050"
    assert psi_label(None, checked=True, rows=5000) == "PSI n/a"


def test_report_title_says_what_its_shares_are():
    from score.report import title

    drift = {"low_confidence_share": 0.000625, "invalid_share": 0.0, "low_confidence_threshold": 0.5,
             "checked": True}
    assert title({"input": "in.parquet", "rows_in": 10000}, drift) == (
        "in.parquet: 10,000 rows; 0.06% of steps low-confidence (top-1 probability < 0.5), "
        "0.00% of rows invalid")
    small = title({"input": "in.parquet", "rows_in": 40}, {**drift, "checked": False, "rows": 40,
                                                           "minimum_rows": 500})
    assert small.endswith("\ntoo few rows for the PSI to be acted on (40 of 500 needed)")


def ragged_summary(tmp_path) -> dict:
    """A run of the ragged fixture model on 2,000 fresh ragged rows: late steps are seen in
    fewer rows than the job needs to act on their PSI."""
    from train import data

    source = tmp_path / "ragged.parquet"
    data.write_parquet(data.ragged_dataset(rows=2000, seed=1), str(source))
    result = run_score(source, tmp_path / "out.parquet", "--model", RAGGED_MODEL, "--quiet",
                       "--summary", tmp_path / "summary.json")
    assert result.code == 0, result.stderr
    return read_json(tmp_path / "summary.json")


def test_report_counts_the_rows_behind_each_step(tmp_path):
    drift = ragged_summary(tmp_path)["drift"]
    rows = drift["step_rows"]
    assert len(rows) == len(drift["steps_checked"]) == 32
    assert rows == sorted(rows, reverse=True)  # fewer rows reach each later step
    assert drift["steps_checked"] == [count >= drift["minimum_rows"] for count in rows]
    assert not drift["steps_checked"][-1]


def test_report_draws_a_ragged_run_legibly(tmp_path):
    pytest.importorskip("matplotlib")
    from score.report import MAX_STEPS_SHOWN
    from score.report import main as report_main

    ragged_summary(tmp_path)
    picture = tmp_path / "report.png"
    assert report_main([str(tmp_path / "summary.json"), str(picture)]) == 0
    data = picture.read_bytes()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert MAX_STEPS_SHOWN <= 5
    assert 1000 < width <= 2400 and 700 < height <= 1500
    assert np.isclose(width / height, 2200 / 1420, atol=0.3)
