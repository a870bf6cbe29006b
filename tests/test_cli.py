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


@pytest.fixture(scope="module")
def ragged_run(tmp_path_factory) -> dict:
    """ragged_summary's run, scored once for the tests that only draw it."""
    return ragged_summary(tmp_path_factory.mktemp("ragged_run"))


def test_report_counts_the_rows_behind_each_step(tmp_path):
    drift = ragged_summary(tmp_path)["drift"]
    rows = drift["step_rows"]
    assert len(rows) == len(drift["steps_checked"]) == 32
    assert rows == sorted(rows, reverse=True)  # fewer rows reach each later step
    assert drift["steps_checked"] == [count >= drift["minimum_rows"] for count in rows]
    assert not drift["steps_checked"][-1]


def test_report_draws_a_ragged_run_legibly(ragged_run, tmp_path):
    pytest.importorskip("matplotlib")
    from score.report import MAX_STEPS_SHOWN

    assert "estimated_accuracy" in ragged_run  # every run: the accuracy row below the drift
    code, (width, height) = draw(ragged_run, tmp_path)
    assert code == 0
    assert MAX_STEPS_SHOWN <= 5
    assert 1000 < width <= 2400 and 700 < height <= 2000
    assert np.isclose(width / height, 2200 / 1880, atol=0.3)


def calibration_bins(steps: int, gap: float) -> list[dict]:
    """15 confidence bins as the summary writes them: none below 0.2, more steps in each higher
    bin, accuracy ``gap`` below the mean confidence."""
    counts = np.round(np.geomspace(1, 400, 15) / 1800 * steps).astype(int)
    counts[:3] = 0
    bins = []
    for index, count in enumerate(counts.tolist()):
        low, high = index / 15, (index + 1) / 15
        confidence = (low + high) / 2 if count else None
        bins.append({"low": low, "high": high, "steps": count, "mean_confidence": confidence,
                     "accuracy": max(0.0, confidence - gap) if count else None})
    return bins


TEST_SPLIT = {"steps": 20000, "accuracy": 0.905, "ece": 0.012, "mean_confidence": 0.915,
              "bins": calibration_bins(20000, 0.01)}
ESTIMATE = {"value": 0.912, "steps": 52000, "calibrated": True,
            "assumes": "the model is as calibrated on this data as on its test split (compare "
                       "baseline_quality)"}
UNCALIBRATED = {**ESTIMATE, "calibrated": False,
                "assumes": "nothing: top_k_probs are renormalised scores, not probabilities, so "
                           "their mean is not an accuracy (uncalibrated)"}
QUALITY = {
    "labels": "y", "steps": 50000, "rows": 2000, "accuracy": 0.874,
    "top_k_accuracy": [0.874, 0.95, 0.98], "sequence_accuracy": 0.21, "log_loss": 0.41,
    "estimated_accuracy": 0.912, "ece": 0.038, "bins": calibration_bins(50000, 0.04),
    "accuracy_by_position": [{"position": position, "steps": 2000 - 60 * position,
                              "accuracy": 0.9 - 0.1 * 0.7 ** position} for position in range(32)],
    "accuracy_by_length": {"1": {"rows": 60, "steps": 60, "accuracy": 0.8},
                           "32": {"rows": 70, "steps": 2240, "accuracy": 0.9}},
    "top_confusions": [{"true": 3, "predicted": 4, "count": 210}, {"true": 7, "predicted": 1, "count": 95}],
}
NO_LABELLED_STEPS = {
    **QUALITY, "steps": 0, "rows": 0, "accuracy": None, "top_k_accuracy": [None, None, None],
    "sequence_accuracy": None, "log_loss": None, "estimated_accuracy": None, "ece": None,
    "bins": calibration_bins(0, 0.0), "accuracy_by_position": [], "accuracy_by_length": {},
    "top_confusions": [],
}
ACCURACY_KEYS = ("estimated_accuracy", "baseline_quality", "quality")


def with_accuracy(summary: dict, **keys) -> dict:
    """A copy of ``summary`` without the accuracy keys, then with ``keys``."""
    copy = json.loads(json.dumps(summary))
    for key in ACCURACY_KEYS:
        copy.pop(key, None)
    return {**copy, **keys}


def draw(summary: dict, folder, name: str = "report") -> tuple[int, tuple[int, int] | None]:
    """Write ``summary`` and draw it with score.report's main: its exit code and the PNG's size."""
    from score.report import main as report_main

    source, picture = folder / f"{name}.json", folder / f"{name}.png"
    source.write_text(json.dumps(summary))
    code = report_main([str(source), str(picture)])
    if not picture.exists():
        return code, None
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return code, (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))


def test_report_reliability_title_gives_ece_accuracy_and_estimate():
    from score.report import reliability_title

    assert reliability_title(QUALITY, calibrated=True) == (
        "calibration over 50,000 labelled steps: ECE 0.038\n"
        "accuracy 87.40%, estimated accuracy 91.20%")
    assert reliability_title(QUALITY, calibrated=False).endswith(
        "estimated accuracy 91.20% (uncalibrated)")
    assert reliability_title(NO_LABELLED_STEPS, calibrated=True) == (
        "calibration over 0 labelled steps: ECE n/a\naccuracy n/a, estimated accuracy n/a")


def test_report_estimate_panel_names_its_bars_and_what_they_are_compared_with():
    from score.report import estimate_bars, estimate_title

    assert estimate_bars(ESTIMATE, TEST_SPLIT) == [
        ("this run: estimated accuracy", 0.912), ("test split: accuracy", 0.905),
        ("test split: mean confidence", 0.915)]
    assert estimate_bars(UNCALIBRATED, None) == [
        ("this run: estimated accuracy (uncalibrated)", 0.912)]
    assert estimate_title(ESTIMATE, TEST_SPLIT) == (
        "estimated accuracy: mean top-1 probability over 52,000 steps\n"
        "against the test split at training (20,000 labelled steps)")
    assert estimate_title(UNCALIBRATED, None) == (
        "estimated accuracy: mean top-1 probability over 52,000 steps (uncalibrated: "
        "renormalised scores, not probabilities)")


def test_report_says_baseline_quality_none_where_the_model_carries_none():
    from score.report import NO_BASELINE_QUALITY

    assert NO_BASELINE_QUALITY.startswith("baseline quality: none\n")


@pytest.mark.parametrize("keys,row", [
    pytest.param({}, None, id="old_summary"),
    pytest.param({"estimated_accuracy": ESTIMATE, "baseline_quality": "none"}, "estimate",
                 id="estimate"),
    pytest.param({"estimated_accuracy": ESTIMATE, "baseline_quality": TEST_SPLIT,
                  "quality": QUALITY}, "quality", id="labelled"),
    pytest.param({"quality": QUALITY}, "quality", id="labelled_without_the_other_keys"),
])
def test_report_accuracy_row_follows_the_summary_keys(keys, row):
    from score.report import accuracy_row

    assert accuracy_row({"rows_in": 10, **keys}) == row


@pytest.mark.parametrize("keys", [
    pytest.param({"estimated_accuracy": ESTIMATE, "baseline_quality": TEST_SPLIT,
                  "quality": QUALITY}, id="labelled_against_the_test_split"),
    pytest.param({"estimated_accuracy": UNCALIBRATED, "baseline_quality": "none",
                  "quality": QUALITY}, id="labelled_uncalibrated_no_baseline_quality"),
    pytest.param({"estimated_accuracy": {**ESTIMATE, "value": None, "steps": 0},
                  "baseline_quality": "none", "quality": NO_LABELLED_STEPS},
                 id="labelled_with_no_labelled_step"),
    pytest.param({"estimated_accuracy": ESTIMATE, "baseline_quality": TEST_SPLIT},
                 id="estimate_against_the_test_split"),
    pytest.param({"estimated_accuracy": UNCALIBRATED, "baseline_quality": "none"},
                 id="estimate_uncalibrated_no_baseline_quality"),
])
def test_report_draws_accuracy_in_a_row_below_the_drift(ragged_run, tmp_path, keys):
    pytest.importorskip("matplotlib")
    code, old_size = draw(with_accuracy(ragged_run), tmp_path, "old")
    assert code == 0
    code, size = draw(with_accuracy(ragged_run, **keys), tmp_path)
    assert code == 0
    assert size[0] == old_size[0] and old_size[1] < size[1] <= 2000  # one more row, still legible


def test_report_of_an_old_summary_is_the_size_it_always_was(ragged_run, tmp_path):
    pytest.importorskip("matplotlib")
    from score.report import DPI, MAX_STEPS_SHOWN, PANEL_INCHES

    code, size = draw(with_accuracy(ragged_run), tmp_path)
    assert code == 0
    # Five step columns; three drift rows and the length histogram; an inch for the title.
    assert MAX_STEPS_SHOWN == 5
    assert size == (round(5 * PANEL_INCHES[0] * DPI), round((4 * PANEL_INCHES[1] + 1) * DPI))


def without_drift_baseline(summary: dict) -> dict:
    """``summary`` as a model with no training baseline writes it."""
    copy = json.loads(json.dumps(summary))
    copy["drift"].update(has_baseline=False, baseline_profile=None)
    return copy


def test_report_draws_a_labelled_run_without_a_drift_baseline(ragged_run, tmp_path):
    pytest.importorskip("matplotlib")
    summary = with_accuracy(without_drift_baseline(ragged_run), estimated_accuracy=ESTIMATE,
                            baseline_quality=TEST_SPLIT, quality=QUALITY)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    result = run_module("score.report", tmp_path / "summary.json", tmp_path / "report.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {tmp_path / 'report.png'}\n"
    data = (tmp_path / "report.png").read_bytes()
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 1000 < width <= 1400 and 400 < height <= 700  # the accuracy row alone


@pytest.mark.parametrize("keys", [
    pytest.param({}, id="old_summary"),
    pytest.param({"estimated_accuracy": ESTIMATE, "baseline_quality": TEST_SPLIT},
                 id="estimate_without_labels"),
])
def test_report_refuses_a_run_without_a_drift_baseline_or_labels(ragged_run, tmp_path, capsys, keys):
    pytest.importorskip("matplotlib")
    code, size = draw(with_accuracy(without_drift_baseline(ragged_run), **keys), tmp_path)
    assert (code, size) == (65, None)
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'report.json'}: the summary has no baseline comparison (the model "
        "carries no training baseline, or the run failed before scoring)\n")
