"""The training stage: artifacts, metrics, learning other rules, determinism, bad input, atomicity.

Models here are tiny (one LSTM layer of 8-16 units, a few epochs); the tests that fit one are
marked slow. The full default run (>= 0.99 test token accuracy in under 120 s) is a manual check:
`time python -m train --artifacts /tmp/x --quiet`.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import (
    ROOT,
    CliResult,
    list_array,
    read_json,
    run_export,
    run_module,
    run_train,
    small_default,
)

from score.encoding import Encoder
from score.monitor import CONFIDENCE_BINS, Profile
from score.sequences import sequences_from_list
from score.spec import Spec
from train import data

ARTIFACT_NAMES = {
    "model.keras", "spec.json", "test.parquet", "metrics.json", "training_curves.png", "baseline.json",
}
TINY = ["--layers", "1", "--units", "8", "--quiet"]


def assert_same_artifacts(first, second) -> None:
    """Two runs of the same seed and data: the same metrics (but wall time) and artifacts."""
    first_metrics, second_metrics = read_json(first / "metrics.json"), read_json(second / "metrics.json")
    first_metrics.pop("wall_seconds")
    second_metrics.pop("wall_seconds")
    assert first_metrics == second_metrics
    for name in ("spec.json", "baseline.json", "test.parquet"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name



def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    """Hidden staging or previous-version folders a run left beside the artifacts."""
    return sorted(name for name in os.listdir(parent) if name.startswith("."))


@pytest.fixture
def previous(tmp_path) -> Path:
    """An artifacts folder from an earlier run (stand-in bytes: only their survival matters)."""
    folder = tmp_path / "artifacts"
    folder.mkdir()
    for name in sorted(ARTIFACT_NAMES):
        (folder / name).write_bytes(f"previous {name}\n".encode() + os.urandom(16))
    return folder



def write_xy(path: Path, x, y, x_type=None, y_type=None, **extra) -> str:
    """A Parquet file with x and y list columns from Python rows or matrices."""
    def column(values, value_type):
        if isinstance(values, pa.Array):
            return values
        if isinstance(values, np.ndarray):
            return list_array(values, value_type or pa.int64())
        return pa.array(values, pa.list_(value_type or pa.int64()))

    pq.write_table(pa.table({"x": column(x, x_type), "y": column(y, y_type), **extra}), str(path))
    return str(path)


def held_out_accuracy(artifacts: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Token accuracy of the saved model on rows it never saw, decoded to raw y values."""
    import keras

    model = keras.saving.load_model(str(artifacts / "model.keras"))
    spec = Spec.from_dict(read_json(artifacts / "spec.json"))
    encoder = Encoder(spec, np.int32)
    indices = encoder.encode_strict(sequences_from_list(list_array(x), spec.seq_len, "x"))
    predicted = encoder.decode_y(model.predict(indices, verbose=0).argmax(axis=-1))
    return float((predicted == y).mean())


# One tiny fit on the embedded default, shared by the read-only tests -------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, CliResult]:
    artifacts = tmp_path_factory.mktemp("train") / "artifacts"
    result = run_train("--artifacts", artifacts, *TINY, "--epochs", "2")
    assert result.code == 0, result.stderr
    return artifacts, result


@pytest.mark.slow
def test_artifacts_are_all_there_and_nothing_else(trained):
    artifacts, result = trained
    assert {path.name for path in artifacts.iterdir()} == ARTIFACT_NAMES
    assert leftovers(artifacts.parent) == []
    assert result.stderr == ""
    assert re.fullmatch(
        r"test token accuracy 0\.\d{4} \(per step: (\d\.\d{4}, ){3}\d\.\d{4}\); whole sequence "
        r"0\.\d{4}; top-3 0\.\d{4}; majority-class baseline 0\.0803; ECE 0\.\d{4}\n"
        rf"2 epochs \(best [12]\) in \d+\.\d s; artifacts in {re.escape(str(artifacts))}\n",
        result.stdout,
    )


@pytest.mark.slow
def test_spec_json_describes_the_default(trained):
    artifacts, _ = trained
    assert read_json(artifacts / "spec.json") == {
        "x_values": list(range(11)),
        "y_values": list(range(25)),
        "seq_len": 4,
        "input_column": "x",
        "target_column": "y",
        "format": 1,
    }


@pytest.mark.slow
def test_metrics_json_has_every_figure(trained):
    artifacts, _ = trained
    metrics = read_json(artifacts / "metrics.json")
    assert metrics["test_rows"] == 1000
    assert metrics["rows"] == {"train": 8000, "validation": 1000, "test": 1000}
    assert len(metrics["token_accuracy_per_step"]) == 4
    assert metrics["token_accuracy"] == pytest.approx(np.mean(metrics["token_accuracy_per_step"]))
    assert metrics["top1_accuracy"] == pytest.approx(metrics["token_accuracy"])
    assert metrics["top1_accuracy"] <= metrics["top2_accuracy"] <= metrics["top3_accuracy"] <= 1
    assert 0 <= metrics["sequence_accuracy"] <= min(metrics["token_accuracy_per_step"])
    # Step 0 is x_0 mod 25: the identity, learnt at once. The baseline is far below.
    assert metrics["token_accuracy_per_step"][0] > 0.9
    assert metrics["majority_baseline_accuracy"] == pytest.approx(majority_baseline_of_default())
    assert metrics["ece"] == read_json(artifacts / "baseline.json")["quality"]["ece"]
    assert 0 < metrics["ece"] < 1
    assert metrics["epochs_run"] == 2 and metrics["best_epoch"] in (1, 2)
    assert 0 < metrics["wall_seconds"] < 300
    assert metrics["data_fingerprint"] == data.default_dataset().fingerprint()
    assert metrics["data_source"] == "the embedded default"
    assert metrics["config"] == {
        "lstm_layers": 1, "units": 8, "epochs": 2, "batch_size": 32, "learning_rate": 0.005,
        "patience": 5, "seed": 0, "validation_fraction": 0.1, "test_fraction": 0.1,
    }


@pytest.mark.slow
def test_metrics_are_those_of_the_saved_model_on_the_saved_test_split(trained):
    artifacts, _ = trained
    test = pq.read_table(artifacts / "test.parquet")
    assert test.column_names == ["x", "y"] and test.num_rows == 1000
    x = np.array(test.column("x").to_pylist())
    y = np.array(test.column("y").to_pylist())
    np.testing.assert_array_equal(y, np.cumsum(x, axis=1) % 25)  # rows of the default rule
    metrics = read_json(artifacts / "metrics.json")
    assert held_out_accuracy(artifacts, x, y) == pytest.approx(metrics["token_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_model_keras_has_the_requested_shape(trained):
    import keras

    model = keras.saving.load_model(str(trained[0] / "model.keras"))
    lstms = [layer for layer in model.layers if isinstance(layer, keras.layers.LSTM)]
    assert [layer.units for layer in lstms] == [8]
    assert model.output_shape == (None, None, 25)
    assert model.layers[-1].activation.__name__ == "softmax"


@pytest.mark.slow
def test_baseline_json_is_a_profile_of_the_data_and_test_predictions(trained):
    artifacts, _ = trained
    payload = read_json(artifacts / "baseline.json")
    profile = Profile.from_dict(payload)
    assert payload["confidence_bins"] == CONFIDENCE_BINS
    assert profile.input_counts.shape == (4, 11)
    assert profile.prediction_counts.shape == (4, 25)
    assert profile.confidence_counts.shape == (4, CONFIDENCE_BINS)
    assert profile.input_counts.sum(axis=1).tolist() == [10_000] * 4  # every row's inputs
    assert profile.prediction_counts.sum(axis=1).tolist() == [1000] * 4  # the test split's
    assert profile.confidence_counts.sum(axis=1).tolist() == [1000] * 4


def plain_quality(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> dict:
    """Accuracy and ECE the textbook way over flat steps: (steps, classes) probabilities and
    each step's true class; ECE = sum over bins of (steps in bin / steps) x |accuracy - mean
    confidence|, bins of equal width over the top-1 probability (1.0 in the last)."""
    confidence = probabilities.max(axis=-1).astype(np.float64)
    correct = probabilities.argmax(axis=-1) == truth
    which = np.minimum(np.floor(confidence * bins).astype(int), bins - 1)
    steps = np.array([(which == b).sum() for b in range(bins)])
    ece = sum(steps[b] / truth.size * abs(correct[which == b].mean() - confidence[which == b].mean())
              for b in range(bins) if steps[b])
    return {"steps": truth.size, "accuracy": correct.mean(), "ece": ece, "bin_steps": steps.tolist()}


def keras_test_split(artifacts: Path) -> tuple[np.ndarray, np.ndarray]:
    """The saved model's probabilities on the saved test split and its true classes, real steps
    only, flat; ragged rows padded with 0 as training pads them (the model is causal), and
    predicted in one batch as training predicts them, so the figures match to the last bit."""
    import keras

    spec = Spec.from_dict(read_json(artifacts / "spec.json"))
    test = pq.read_table(artifacts / "test.parquet")
    x_rows, y_rows = test.column("x").to_pylist(), test.column("y").to_pylist()
    lengths = np.array([len(row) for row in x_rows])
    mask = np.arange(spec.max_len) < lengths[:, None]
    x, y = np.zeros(mask.shape, np.int32), np.zeros(mask.shape, np.int64)
    x[mask] = np.searchsorted(spec.x_values, np.concatenate(x_rows))
    y[mask] = np.searchsorted(spec.y_values, np.concatenate(y_rows))
    model = keras.saving.load_model(str(artifacts / "model.keras"))
    return model.predict(x, batch_size=4096, verbose=0)[mask], y[mask]


def assert_quality(quality: dict, probabilities: np.ndarray, truth: np.ndarray) -> None:
    expected = plain_quality(probabilities, truth)
    assert quality["steps"] == expected["steps"]
    assert quality["accuracy"] == expected["accuracy"]
    assert quality["ece"] == pytest.approx(expected["ece"], abs=1e-9)
    assert quality["mean_confidence"] == pytest.approx(
        probabilities.max(axis=-1).astype(np.float64).mean(), abs=1e-9)
    assert [(entry["low"], entry["high"]) for entry in quality["bins"]] == [
        pytest.approx((b / 15, (b + 1) / 15)) for b in range(15)]
    assert [entry["steps"] for entry in quality["bins"]] == expected["bin_steps"]
    assert sum(entry["steps"] for entry in quality["bins"]) == truth.size


@pytest.mark.slow
def test_the_exported_model_carries_the_test_splits_accuracy_and_calibration(trained, tmp_path):
    from score.model import baseline, load

    artifacts, _ = trained
    output = tmp_path / "model.onnx"
    result = run_export("--artifacts", artifacts, "--output", output)
    assert result.code == 0, result.stderr
    quality = baseline(load(str(output)))["quality"]
    assert quality == read_json(artifacts / "baseline.json")["quality"]  # unchanged on the way
    probabilities, truth = keras_test_split(artifacts)
    assert truth.size == 4000  # 1000 rows of 4 steps
    assert_quality(quality, probabilities, truth)
    assert quality["accuracy"] == read_json(artifacts / "metrics.json")["token_accuracy"]


@pytest.mark.slow
def test_training_curves_png(trained):
    picture = (trained[0] / "training_curves.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n") and len(picture) > 10_000


def majority_baseline_of_default() -> float:
    """Predict each step's most common training-split class: the floor a model must beat."""
    dataset = data.default_dataset()
    parts = data.split(len(dataset.y), seed=0)
    train_y, test_y = dataset.y[parts.train], dataset.y[parts.test]
    majority = [np.bincount(train_y[:, t]).argmax() for t in range(4)]
    return float((test_y == np.array(majority)).mean())


# Determinism ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_same_seed_and_data_give_identical_metrics(trained, tmp_path):
    first, _ = trained
    second = tmp_path / "again"
    assert run_train("--artifacts", second, *TINY, "--epochs", "2").code == 0
    assert_same_artifacts(first, second)


# Learning a different rule from the user's own files ------------------------------------------------
def modular_rule(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x over the value set 10, 20, ..., 70 (6 steps); y_t = (3 k_t + t) mod 7 where x_t = 10 k_t + 10."""
    k = np.random.default_rng(seed).integers(0, 7, size=(rows, 6))
    return 10 * k + 10, (3 * k + np.arange(6)) % 7


def running_max_rule(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x over 0..9 (5 steps); y_t = max(x_0, ..., x_t): it needs the past."""
    x = np.random.default_rng(seed).integers(0, 10, size=(rows, 5))
    return x, np.maximum.accumulate(x, axis=1)


LEARN = ["--layers", "1", "--units", "16", "--epochs", "8", "--learning-rate", "0.01", "--quiet"]


@pytest.mark.slow
def test_learns_another_rule_from_a_parquet_file_with_its_own_value_sets(tmp_path):
    x, y = modular_rule(2000, seed=1)
    source = write_xy(tmp_path / "mine.parquet", x.astype(np.uint8), y.astype(np.int16),
                      pa.uint8(), pa.int16())
    artifacts = tmp_path / "artifacts"
    result = run_train("--data", source, "--x-values", "10,20,30,40,50,60,70",
                       "--artifacts", artifacts, *LEARN)
    assert result.code == 0, result.stderr

    spec = read_json(artifacts / "spec.json")
    assert spec["x_values"] == [10, 20, 30, 40, 50, 60, 70] and spec["y_values"] == list(range(7))
    assert spec["seq_len"] == 6
    metrics = read_json(artifacts / "metrics.json")
    assert metrics["data_source"] == source
    assert metrics["data_fingerprint"] == data.Dataset(x, y, "").fingerprint()
    assert metrics["token_accuracy"] >= 0.9
    assert metrics["token_accuracy"] >= metrics["majority_baseline_accuracy"] + 0.5
    fresh_x, fresh_y = modular_rule(500, seed=99)  # rows drawn apart from the training file
    assert held_out_accuracy(artifacts, fresh_x, fresh_y) >= 0.9


@pytest.mark.slow
def test_learns_another_rule_from_text_files(tmp_path):
    x, y = running_max_rule(2000, seed=2)
    x_path, y_path = tmp_path / "X.txt", tmp_path / "Y.txt"
    x_path.write_text("\n".join(" ".join(map(str, row)) for row in x) + "\n")
    y_path.write_text("\n".join(" ".join(map(str, row)) for row in y) + "\n")
    artifacts = tmp_path / "artifacts"
    result = run_train("--x", x_path, "--y", y_path, "--artifacts", artifacts, *LEARN)
    assert result.code == 0, result.stderr

    metrics = read_json(artifacts / "metrics.json")
    assert metrics["data_source"] == f"{x_path} + {y_path}"
    assert metrics["token_accuracy"] >= 0.9
    assert metrics["token_accuracy"] >= metrics["majority_baseline_accuracy"] + 0.5
    fresh_x, fresh_y = running_max_rule(500, seed=98)
    assert held_out_accuracy(artifacts, fresh_x, fresh_y) >= 0.9


# Bad input: one line naming the file, the column and the row; the exit code; nothing touched -----
GOOD_X = [[1, 2, 3, 4]] * 12
GOOD_Y = [[2, 3, 4, 5]] * 12


def with_row(rows: list, number: int, row) -> list:
    rows = list(rows)
    rows[number] = row
    return rows


def parquet_case(x, y, x_type=None, y_type=None, **extra):
    return lambda folder: write_xy(folder / "bad.parquet", x, y, x_type, y_type, **extra)


def empty_file(folder: Path) -> str:
    (folder / "bad.parquet").write_bytes(b"")
    return str(folder / "bad.parquet")


def not_parquet(folder: Path) -> str:
    (folder / "bad.parquet").write_text("x,y\n1,2\n")
    return str(folder / "bad.parquet")


def without_y(folder: Path) -> str:
    table = pa.table({"x": pa.array(GOOD_X, pa.list_(pa.int64())), "id": list(range(12))})
    pq.write_table(table, str(folder / "bad.parquet"))
    return str(folder / "bad.parquet")


def zero_rows(folder: Path) -> str:
    empty = pa.array([], pa.list_(pa.int64()))
    pq.write_table(pa.table({"x": empty, "y": empty}), str(folder / "bad.parquet"))
    return str(folder / "bad.parquet")


FLOAT_REFUSAL = (
    "column 'x' is list<element: double>; expected a list of integers (list, large_list or "
    "fixed_size_list of int8..int64 or uint8..uint64); floating-point values are refused rather "
    "than truncated: cast them to integers"
)
PARQUET_CASES = [
    pytest.param(parquet_case(GOOD_X, with_row(GOOD_Y, 2, [1, 2, 3])),
                 "column 'y', row 2: x has 4 values but y has 3", id="y_shorter_than_x"),
    pytest.param(parquet_case(with_row(GOOD_X, 5, [1, 2, 3, 4, 5]), GOOD_Y),
                 "column 'y', row 5: x has 5 values but y has 4", id="x_longer_than_y"),
    pytest.param(parquet_case(with_row(GOOD_X, 7, [1, 2, 3, 4, 5]), with_row(GOOD_Y, 7, [1, 2, 3, 4])),
                 "column 'y', row 7: x has 5 values but y has 4", id="ragged_rows_mismatch"),
    pytest.param(parquet_case(with_row(GOOD_X, 3, None), GOOD_Y),
                 "column 'x', row 3: x is null", id="null_x_row"),
    pytest.param(parquet_case(GOOD_X, with_row(GOOD_Y, 7, None)),
                 "column 'y', row 7: y is null", id="null_y_row"),
    pytest.param(parquet_case([None] * 12, GOOD_Y),
                 "column 'x', row 0: x is null", id="every_x_null"),
    pytest.param(parquet_case(with_row(GOOD_X, 4, [1, 2, None, 4]), GOOD_Y),
                 "column 'x', row 4: x[2] is null", id="null_x_element"),
    pytest.param(parquet_case(GOOD_X, with_row(GOOD_Y, 9, [None, 1, 1, 1])),
                 "column 'y', row 9: y[0] is null", id="null_y_element"),
    pytest.param(parquet_case(with_row(GOOD_X, 1, []), GOOD_Y),
                 "column 'x', row 1: x is an empty list; expected a sequence of at least one value",
                 id="empty_sequence"),
    pytest.param(parquet_case(GOOD_X, with_row(GOOD_Y, 4, [])),
                 "column 'y', row 4: y is an empty list; expected a sequence of at least one value",
                 id="empty_y_sequence"),
    pytest.param(parquet_case([[1.0, 2.0, 3.0, 4.0]] * 12, GOOD_Y, pa.float64()),
                 FLOAT_REFUSAL, id="float_column"),
    pytest.param(parquet_case(pa.array([1] * 12), GOOD_Y),
                 "column 'x' is int64; expected a list of integers (list, large_list or "
                 "fixed_size_list of int8..int64 or uint8..uint64)", id="not_a_list"),
    pytest.param(parquet_case([["a"] * 4] * 12, GOOD_Y, pa.string()),
                 "column 'x' is list<element: string>; expected a list of integers (list, "
                 "large_list or fixed_size_list of int8..int64 or uint8..uint64)", id="strings"),
    pytest.param(without_y, "column 'y' not found (the file has: x, id)", id="missing_column"),
    pytest.param(empty_file, "the file is empty (0 bytes); expected a Parquet file", id="empty_file"),
    pytest.param(not_parquet, None, id="not_parquet"),
    pytest.param(zero_rows, "the file has no rows", id="zero_rows"),
    pytest.param(parquet_case(GOOD_X[:5], GOOD_Y[:5]),
                 "only 5 rows: the 80%/10%/10% split needs at least one row in each part; "
                 "provide at least 10 rows", id="too_few_rows"),
]


@pytest.mark.parametrize("make,detail", PARQUET_CASES)
def test_bad_parquet_is_refused_with_one_line_and_the_artifacts_untouched(
    tmp_path, previous, make, detail
):
    source = make(tmp_path)
    before = snapshot(previous)
    result = run_train("--data", source, "--artifacts", previous, *TINY)
    assert result.code == 65
    if detail is None:  # Arrow's own words follow; the shape of the line is what matters
        assert len(result.lines) == 1
        assert result.lines[0].startswith(f"error: {source}: not a readable Parquet file (Parquet ")
    else:
        assert result.lines == [f"error: {source}: {detail}"]
    assert result.stdout == ""
    assert snapshot(previous) == before
    assert leftovers(tmp_path) == []


def test_value_outside_the_given_value_set(tmp_path, previous):
    source = write_xy(tmp_path / "d.parquet", with_row(GOOD_X, 6, [1, 2, 9, 4]), GOOD_Y)
    result = run_train("--data", source, "--x-values", "1..4", "--artifacts", previous, *TINY)
    assert (result.code, result.lines) == (
        65, [f"error: {source}: column 'x', row 6: x[2] = 9 is not in --x-values 1..4"]
    )


def text_files(folder: Path, x_text: str, y_text: str) -> tuple[str, str]:
    (folder / "X.txt").write_text(x_text)
    (folder / "Y.txt").write_text(y_text)
    return str(folder / "X.txt"), str(folder / "Y.txt")


GOOD_TEXT = "1 2 3 4\n" * 12
TEXT_CASES = [
    pytest.param("1 2 3 4\n1 2 3 4\n1 2\n" + GOOD_TEXT, "1 2 3 4\n" * 15, "Y.txt",
                 "line 3: 4 values but {x} line 3 has 2; x and y sequences must have the same "
                 "length", id="ragged_line_y_not"),
    pytest.param("1 2 3 4\n\n" + GOOD_TEXT, "1 2 3 4\n" * 14, "X.txt",
                 "line 2 is empty; expected a sequence", id="empty_line"),
    pytest.param("1 2 3 4\n1 2.5 3 4\n" + GOOD_TEXT, GOOD_TEXT, "X.txt",
                 "line 2: '2.5' is not an integer; expected whitespace-separated integers",
                 id="non_integer_token"),
    pytest.param(GOOD_TEXT, "1 2 3 4\n" * 11 + "1 2 x 4\n", "Y.txt",
                 "line 12: 'x' is not an integer; expected whitespace-separated integers",
                 id="non_integer_in_y"),
    pytest.param("", GOOD_TEXT, "X.txt", "the file is empty; expected one sequence per line",
                 id="empty_file"),
    pytest.param("\n\n", GOOD_TEXT, "X.txt", "the file is empty; expected one sequence per line",
                 id="blank_lines_only"),
    pytest.param("1 2\n" * 5, "1 2\n" * 5, None,
                 "only 5 rows: the 80%/10%/10% split needs at least one row in each part; "
                 "provide at least 10 rows", id="too_few_rows"),
]


@pytest.mark.parametrize("x_text,y_text,named,detail", TEXT_CASES)
def test_bad_text_is_refused_with_one_line_and_the_artifacts_untouched(
    tmp_path, previous, x_text, y_text, named, detail
):
    x_path, y_path = text_files(tmp_path, x_text, y_text)
    before = snapshot(previous)
    result = run_train("--x", x_path, "--y", y_path, "--artifacts", previous, *TINY)
    source = {"X.txt": x_path, "Y.txt": y_path, None: f"{x_path} + {y_path}"}[named]
    detail = detail.replace("{x}", x_path)
    assert (result.code, result.lines, result.stdout) == (65, [f"error: {source}: {detail}"], "")
    assert snapshot(previous) == before


def test_text_files_of_different_lengths(tmp_path, previous):
    x_path, y_path = text_files(tmp_path, GOOD_TEXT, "1 2 3 4\n" * 11)
    result = run_train("--x", x_path, "--y", y_path, "--artifacts", previous, *TINY)
    assert (result.code, result.lines) == (
        65, [f"error: {x_path} has 12 lines but {y_path} has 11; expected one y line for each x line"]
    )


def test_text_files_of_different_widths(tmp_path, previous):
    x_path, y_path = text_files(tmp_path, GOOD_TEXT, "1 2 3\n" * 12)
    result = run_train("--x", x_path, "--y", y_path, "--artifacts", previous, *TINY)
    assert (result.code, result.lines) == (
        65, [(f"error: {y_path}: line 1: 3 values but {x_path} line 1 has 4; "
              f"x and y sequences must have the same length")]
    )


@pytest.mark.parametrize("flag", ["--data", "--x"])
def test_missing_file_exits_66(tmp_path, previous, flag):
    absent = tmp_path / "absent"
    args = ["--data", absent] if flag == "--data" else ["--x", absent, "--y", absent]
    before = snapshot(previous)
    result = run_train(*args, "--artifacts", previous, *TINY)
    assert (result.code, result.lines) == (66, [f"error: {absent}: no such file"])
    assert snapshot(previous) == before


@pytest.mark.parametrize(
    "args,line",
    [
        pytest.param(["--data", "d.parquet", "--x", "X.txt", "--y", "Y.txt"],
                     "error: give either --data or --x/--y, not both", id="data_and_text"),
        pytest.param(["--x", "X.txt"],
                     "error: --x and --y go together: one file of inputs, one of targets", id="x_alone"),
        pytest.param(["--epochs", "0"],
                     "python -m train: error: argument --epochs: 0 is not a positive integer (see --help)",
                     id="zero_epochs"),
        pytest.param(["--x-values", "10..1"],
                     "python -m train: error: argument --x-values: '10..1' is not a value set; "
                     "expected a range like 0..10 or a list like 1,2,5 (see --help)", id="bad_value_set"),
        pytest.param(["--layers", "two"],
                     "python -m train: error: argument --layers: 'two' is not an integer (see --help)",
                     id="not_an_integer"),
    ],
)
def test_usage_errors_exit_2(previous, args, line):
    before = snapshot(previous)
    result = run_train(*args, "--artifacts", previous)
    assert result.code == 2
    assert result.lines == [line]  # one line: schedulers keep the last one
    assert snapshot(previous) == before


def test_write_default(tmp_path):
    path = tmp_path / "default.parquet"
    result = run_train("--write-default", path)
    assert (result.code, result.stdout) == (0, f"wrote 10000 rows of the embedded default to {path}\n")
    assert data.read_parquet(str(path)).fingerprint() == data.default_dataset().fingerprint()


def test_write_default_to_a_path_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    path = tmp_path / "file" / "default.parquet"
    result = run_train("--write-default", path)
    assert (result.code, result.stdout) == (73, "")
    assert result.lines == [f"error: {path}: cannot write the dataset ([Errno 17] File exists: "
                            f"'{tmp_path / 'file'}')"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_default_with_another_seed_draws_fresh_rows(tmp_path):
    path = tmp_path / "fresh.parquet"
    result = run_train("--write-default", path, "--seed", "1")
    assert (result.code, result.stdout) == (0, f"wrote 10000 rows of the embedded default (seed 1) to {path}\n")
    fresh = data.read_parquet(str(path)).fingerprint()
    assert fresh == data.example_dataset("default", seed=1).fingerprint()
    assert fresh != data.default_dataset().fingerprint()


# Atomicity: a failing run leaves the previous artifacts byte for byte, and no staging folder ----------

@pytest.mark.slow
def test_exception_while_saving_leaves_the_previous_artifacts(tmp_path, previous, monkeypatch):
    import train.core

    def broken_plot(history, path):
        raise RuntimeError("injected failure while saving")

    monkeypatch.setattr(train.core, "plot_curves", broken_plot)
    before = snapshot(previous)
    config = train.core.TrainConfig(artifacts=str(previous), lstm_layers=1, units=8, epochs=1, verbose=0)
    with pytest.raises(RuntimeError, match="injected failure"):
        train.core.train(config, data.read_parquet(small_default(tmp_path / "small.parquet", 300)))
    assert snapshot(previous) == before
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_disk_full_while_saving_exits_73_and_leaves_the_previous_artifacts(tmp_path, previous, monkeypatch):
    import train.core

    def full(path, payload, indent=2):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(train.core, "_write_json", full)
    before = snapshot(previous)
    result = run_train("--data", small_default(tmp_path / "small.parquet", 300), "--artifacts", previous, *TINY, "--epochs", "1")
    assert result.code == 73
    assert len(result.lines) == 1
    assert result.lines[0].startswith(f"error: {previous}: cannot write the artifacts ([Errno 28] ")
    assert snapshot(previous) == before
    assert leftovers(tmp_path) == []


def test_interrupt_exits_130_and_leaves_the_previous_artifacts(tmp_path, previous, monkeypatch):
    import train.model

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train.model, "build_model", interrupted)
    before = snapshot(previous)
    result = run_train("--data", small_default(tmp_path / "small.parquet", 300), "--artifacts", previous, *TINY)
    assert (result.code, result.lines) == (
        130, ["error: interrupted; the previous artifacts are unchanged"]
    )
    assert snapshot(previous) == before
    assert leftovers(tmp_path) == []


def test_publish_puts_the_previous_folder_back_if_the_final_rename_fails(tmp_path, previous, monkeypatch):
    from score.atomic import replace_directory

    staging = tmp_path / ".artifacts.tmp-x"
    staging.mkdir()
    (staging / "model.keras").write_bytes(b"new")
    before = snapshot(previous)
    real_replace = os.replace

    def failing_replace(source, target):
        if os.fspath(source) == str(staging):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        replace_directory(str(staging), str(previous))
    assert snapshot(previous) == before
    assert leftovers(tmp_path) == [".artifacts.tmp-x"]  # the caller removes its staging folder


def test_publish_replaces_the_previous_folder(tmp_path, previous):
    from score.atomic import replace_directory

    staging = tmp_path / ".artifacts.tmp-y"
    staging.mkdir()
    (staging / "model.keras").write_bytes(b"new")
    replace_directory(str(staging), str(previous))
    assert snapshot(previous) == {"model.keras": b"new"}
    assert leftovers(tmp_path) == []


# In a subprocess: real exit codes, nothing but the report on the terminal, a plain Keras session ----
@pytest.mark.slow
def test_subprocess_training_prints_only_the_report(tmp_path):
    source = small_default(tmp_path / "small.parquet", 300)
    artifacts = tmp_path / "artifacts"
    # Two epochs: TensorFlow used to log a C++ error from the second epoch on.
    result = run_module("train", "--data", source, "--artifacts", artifacts, *TINY, "--epochs", "2")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.startswith("test token accuracy ")
    assert result.stdout.endswith(f"artifacts in {artifacts}\n")


def test_subprocess_bad_data_exits_65_with_one_line(tmp_path):
    source = write_xy(tmp_path / "d.parquet", GOOD_X, with_row(GOOD_Y, 3, [1, None, 1, 1]))
    result = run_module("train", "--data", source, "--artifacts", tmp_path / "artifacts", *TINY)
    assert result.returncode == 65
    assert result.stderr == f"error: {source}: column 'y', row 3: y[1] is null\n"
    assert result.stdout == ""
    assert not (tmp_path / "artifacts").exists()


PLAIN_SESSION = """
import sys
import numpy as np
import train
import keras
model = keras.saving.load_model(sys.argv[1])
probabilities = model.predict(np.array([[0, 1, 2, 3]], dtype="int32"), verbose=0)
print(probabilities.shape, round(float(probabilities.sum()), 3))
"""


@pytest.mark.slow
def test_model_keras_loads_in_a_plain_session_after_import_train(trained):
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_SESSION, str(trained[0] / "model.keras")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "(1, 4, 25) 4.0\n"


@pytest.mark.slow
def test_copying_the_artifacts_folder_keeps_it_loadable(trained, tmp_path):
    """The artifacts are self-contained: nothing refers to the folder they were written to."""
    import keras

    copy = tmp_path / "moved"
    shutil.copytree(trained[0], copy)
    model = keras.saving.load_model(str(copy / "model.keras"))
    assert model.output_shape == (None, None, 25)


# Ragged data: rows of different lengths --------------------------------------------------------------
def test_length_buckets_cover_every_length_once():
    from train.core import length_buckets

    assert length_buckets(32) == [(1, 4), (5, 8), (9, 12), (13, 16), (17, 20), (21, 24), (25, 28),
                                  (29, 32)]
    assert length_buckets(5) == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]
    assert length_buckets(250)[-1] == (225, 250)


def test_bucket_batches_pad_little_and_are_seeded():
    from train.core import bucket_batches, padding_overhead

    lengths = np.random.default_rng(0).integers(1, 33, size=800)
    batches = bucket_batches(lengths, 32, np.random.default_rng(5))
    assert sorted(np.concatenate(batches).tolist()) == list(range(800))  # every row once
    assert padding_overhead(lengths, batches) <= 0.10
    again = bucket_batches(lengths, 32, np.random.default_rng(5))
    assert all((a == b).all() for a, b in zip(batches, again))
    # Without buckets (padding every batch of a shuffled order to its longest row) it is ~80%.
    shuffled = np.random.default_rng(5).permutation(800)
    plain = [shuffled[i : i + 32] for i in range(0, 800, 32)]
    assert padding_overhead(lengths, plain) > 0.5


def test_evaluate_counts_real_steps_only():
    from train.core import evaluate

    targets = np.array([[1, 2, 0], [3, 0, 0]])
    mask = np.array([[True, True, False], [True, False, False]])
    predicted = np.array([[1, 2, 4], [0, 4, 4]])  # right on the first row, wrong on the second
    probabilities = np.eye(5)[predicted]
    metrics = evaluate(probabilities, targets, targets, mask, mask)
    assert metrics["token_accuracy"] == pytest.approx(2 / 3)
    assert metrics["token_accuracy_per_step"] == [0.5, 1.0, None]  # no row reaches step 2
    assert metrics["sequence_accuracy"] == 0.5
    assert metrics["token_accuracy_by_length"] == {"1": 0.0, "2": 1.0}
    assert metrics["test_rows_by_length"] == {"1": 1, "2": 1}


def small_ragged(folder: Path, rows: int = 800) -> str:
    path = str(folder / "ragged.parquet")
    data.write_parquet(data.ragged_dataset(rows=rows), path)
    return path


@pytest.fixture(scope="module")
def trained_ragged(tmp_path_factory) -> tuple[Path, CliResult, str]:
    folder = tmp_path_factory.mktemp("ragged")
    source = small_ragged(folder)
    artifacts = folder / "artifacts"
    result = run_train("--data", source, "--artifacts", artifacts, "--layers", "1", "--units", "16",
                       "--epochs", "2", "--quiet")
    assert result.code == 0, result.stderr
    return artifacts, result, source


@pytest.mark.slow
def test_ragged_training_gives_a_variable_length_spec(trained_ragged):
    artifacts, result, source = trained_ragged
    lengths = data.read_parquet(source).lengths
    spec = Spec.from_dict(read_json(artifacts / "spec.json"))
    assert spec.variable_length and (spec.min_len, spec.max_len) == (1, 32) == (
        int(lengths.min()), int(lengths.max()))
    assert read_json(artifacts / "spec.json")["format"] == 2
    assert re.fullmatch(
        r"test token accuracy 0\.\d{4} \(32 steps, per step 0\.\d{4} to [01]\.\d{4}\); whole sequence "
        r"0\.\d{4}; top-3 0\.\d{4}; majority-class baseline 0\.\d{4}; ECE 0\.\d{4}\n"
        rf"2 epochs \(best [12]\) in \d+\.\d s; lengths 1\.\.32, padding overhead \d\.\d%; "
        rf"artifacts in {re.escape(str(artifacts))}\n",
        result.stdout,
    )


@pytest.mark.slow
def test_ragged_metrics_by_length_and_padding_overhead(trained_ragged):
    artifacts, _, source = trained_ragged
    metrics = read_json(artifacts / "metrics.json")
    assert (metrics["min_len"], metrics["max_len"]) == (1, 32)
    assert 0 <= metrics["padding_overhead"] <= 0.10
    assert list(metrics["token_accuracy_by_length"]) == [
        "1-4", "5-8", "9-12", "13-16", "17-20", "21-24", "25-28", "29-32"]
    assert sum(metrics["test_rows_by_length"].values()) == metrics["test_rows"] == 80
    assert len(metrics["token_accuracy_per_step"]) == 32
    # Accuracy on real steps only, recomputed from the saved model on the saved test split.
    test = pq.read_table(artifacts / "test.parquet")
    x_rows, y_rows = test.column("x").to_pylist(), test.column("y").to_pylist()
    assert [len(row) for row in x_rows] == [len(row) for row in y_rows]
    assert len({len(row) for row in x_rows}) > 10  # the ragged rows, at their own lengths
    import keras

    model = keras.saving.load_model(str(artifacts / "model.keras"))
    correct = [
        (model.predict(np.array([x], dtype=np.int32), verbose=0)[0].argmax(-1) == y)
        for x, y in zip(x_rows, y_rows)
    ]
    flat = np.concatenate(correct)
    assert flat.mean() == pytest.approx(metrics["token_accuracy"], abs=1e-9)
    early = np.concatenate([c for c, x in zip(correct, x_rows) if len(x) <= 4])
    assert early.mean() == pytest.approx(metrics["token_accuracy_by_length"]["1-4"], abs=1e-9)


@pytest.mark.slow
def test_ragged_baseline_counts_real_steps_and_lengths(trained_ragged):
    artifacts, _, source = trained_ragged
    dataset = data.read_parquet(source)
    profile = Profile.from_dict(read_json(artifacts / "baseline.json"))
    assert profile.input_counts.shape == (32, 11)
    assert profile.input_counts.sum() == dataset.lengths.sum()  # no padding step counted
    assert profile.input_counts.sum(axis=1).tolist() == [
        int((dataset.lengths > t).sum()) for t in range(32)]
    assert profile.length_counts.tolist()[:32] == np.bincount(dataset.lengths, minlength=33)[1:].tolist()
    test_lengths = [len(row) for row in pq.read_table(artifacts / "test.parquet").column("x").to_pylist()]
    assert profile.prediction_counts.sum() == sum(test_lengths)


@pytest.mark.slow
def test_ragged_baseline_quality_counts_real_steps_only(trained_ragged):
    artifacts, _, _ = trained_ragged
    quality = read_json(artifacts / "baseline.json")["quality"]
    probabilities, truth = keras_test_split(artifacts)
    test_lengths = [len(row) for row in pq.read_table(artifacts / "test.parquet").column("x").to_pylist()]
    assert truth.size == sum(test_lengths)  # no padding step counted
    assert_quality(quality, probabilities, truth)


@pytest.mark.slow
def test_ragged_training_is_deterministic(trained_ragged, tmp_path):
    first, _, source = trained_ragged
    second = tmp_path / "again"
    result = run_train("--data", source, "--artifacts", second, "--layers", "1", "--units", "16",
                       "--epochs", "2", "--quiet")
    assert result.code == 0, result.stderr
    assert_same_artifacts(first, second)


def test_write_default_ragged_example(tmp_path):
    path = tmp_path / "ragged.parquet"
    result = run_train("--write-default", path, "--example", "ragged")
    assert (result.code, result.stdout) == (
        0, f"wrote 10000 rows of the embedded ragged example to {path}\n")
    assert data.read_parquet(str(path)).fingerprint() == data.ragged_dataset().fingerprint()


def test_example_does_not_go_with_a_file(previous):
    result = run_train("--example", "ragged", "--data", "d.parquet", "--artifacts", previous)
    assert (result.code, result.lines) == (
        2, ["error: --example chooses an embedded dataset: not with --data or --x/--y"])
