"""Drift monitoring: PSI against the training baseline, warnings, --max-psi, the report picture."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import random_x, run_score, write_x

from score import monitor


def test_psi_of_identical_distributions_is_zero():
    counts = np.array([[10, 20, 30], [5, 5, 0]])
    assert np.allclose(monitor.psi(counts, counts * 7), 0.0)


def test_psi_matches_the_textbook_formula():
    expected = np.array([[50, 30, 20]])
    actual = np.array([[20, 30, 50]])
    e, a = expected[0] / 100, actual[0] / 100
    by_hand = float(((a - e) * np.log(a / e)).sum())
    assert monitor.psi(expected, actual)[0] == pytest.approx(by_hand, rel=1e-12)
    assert by_hand == pytest.approx(0.5497, abs=1e-4)


def test_psi_floors_empty_bins_and_marks_empty_steps():
    values = monitor.psi(np.array([[10, 0], [0, 0]]), np.array([[5, 5], [3, 4]]))
    assert np.isfinite(values[0]) and values[0] > 0.2
    assert np.isnan(values[1])


def score_with_summary(tmp_path, model_path, x, *flags):
    source = write_x(tmp_path / "input.parquet", x)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path, "--summary", tmp_path / "summary.json",
                       "--quiet", *flags)
    return result, output, json.loads((tmp_path / "summary.json").read_text())


def test_profile_counts_of_full_rows_equal_plain_counts_per_step():
    rng = np.random.default_rng(12)
    steps, rows = 5, 300
    indices = rng.integers(0, 11, (rows, steps + 2))  # two steps past the profiled ones
    top1 = rng.integers(0, 25, (rows, steps + 2)).astype(np.int32)
    confidence = rng.random((rows, steps + 2), dtype=np.float32)
    profile = monitor.Profile(np.zeros((steps, 11), np.int64), np.zeros((steps, 25), np.int64),
                              np.zeros((steps, monitor.CONFIDENCE_BINS), np.int64), None)
    profile.add(indices, top1, confidence)
    bins = np.minimum((confidence * monitor.CONFIDENCE_BINS).astype(int), monitor.CONFIDENCE_BINS - 1)
    for step in range(steps):
        for counts, values in ((profile.input_counts, indices), (profile.prediction_counts, top1),
                               (profile.confidence_counts, bins)):
            assert counts[step].tolist() == [int((values[:, step] == value).sum())
                                             for value in range(counts.shape[1])]
    masked = monitor.Profile(np.zeros((steps, 11), np.int64), np.zeros((steps, 25), np.int64),
                             np.zeros((steps, monitor.CONFIDENCE_BINS), np.int64), None)
    masked.add(indices, top1, confidence, np.ones(indices.shape, dtype=bool))
    assert masked.to_dict() == profile.to_dict()


def test_data_drawn_like_training_has_psi_near_zero_and_no_warning(tmp_path, model_path):
    result, output, summary = score_with_summary(tmp_path, model_path, random_x(5000, seed=31))
    assert result.code == 0
    assert result.lines == []
    drift = summary["drift"]
    assert drift["has_baseline"] and drift["checked"]
    assert max(drift["input_psi"]) < 0.05
    assert max(drift["prediction_psi"]) < 0.1
    assert max(drift["confidence_psi"]) < 0.1
    assert drift["invalid_share"] == 0.0
    assert 0.0 <= drift["low_confidence_share"] < 0.05
    assert drift["low_confidence_threshold"] == 0.5


def test_shifted_inputs_warn_per_step(tmp_path, model_path):
    result, output, summary = score_with_summary(tmp_path, model_path, random_x(5000, seed=32, high=3))
    assert result.code == 0
    drift = summary["drift"]
    assert min(drift["input_psi"]) > 0.2
    warnings = [line for line in result.lines if line.startswith("warning: drift in input values")]
    assert [line.split(":")[1] for line in warnings] == [
        f" drift in input values at step {step}" for step in range(4)]
    for step, line in enumerate(warnings):
        assert line == (f"warning: drift in input values at step {step}: PSI {drift['input_psi'][step]:.3f} "
                        f"> 0.2 (the training baseline differs from this run)")
    assert output.exists()


def test_max_psi_fails_the_run_and_publishes_nothing(tmp_path, model_path):
    result, output, summary = score_with_summary(tmp_path, model_path, random_x(5000, seed=33, high=3),
                                                 "--max-psi", "0.2")
    assert result.code == 65
    errors = [line for line in result.lines if line.startswith("error:")]
    worst = max(summary["drift"]["input_psi"] + summary["drift"]["prediction_psi"])
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'input.parquet'}: drift in ")
    assert errors[0].endswith(f": PSI {worst:.3f} exceeds --max-psi 0.2; nothing was published")
    assert any(line.startswith("warning: drift in") for line in result.lines)
    assert not output.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    assert summary["status"] == "failed" and summary["exit_code"] == 65


def test_max_psi_passes_data_drawn_like_training(tmp_path, model_path):
    result, output, _ = score_with_summary(tmp_path, model_path, random_x(5000, seed=34), "--max-psi", "0.2")
    assert result.code == 0 and output.exists()


def test_too_few_rows_are_reported_but_not_acted_on(tmp_path, model_path):
    result, output, summary = score_with_summary(tmp_path, model_path, random_x(30, seed=35, high=3),
                                                 "--max-psi", "0.2")
    assert result.code == 0 and result.lines == []
    assert summary["drift"]["checked"] is False
    assert summary["drift"]["minimum_rows"] == 500
    assert min(summary["drift"]["input_psi"]) > 0.2


def test_invalid_and_low_confidence_shares(tmp_path, model_path):
    x = random_x(1000, seed=36)
    x[:100, 0] = 50
    result, _, summary = score_with_summary(tmp_path, model_path, x, "--on-invalid", "null",
                                            "--low-confidence", "1.0")
    assert result.code == 0
    assert summary["drift"]["invalid_share"] == 0.1
    assert summary["drift"]["low_confidence_share"] == 1.0  # every top-1 probability is below 1.0


def test_report_renders_a_png(tmp_path, model_path):
    pytest.importorskip("matplotlib")
    from score.report import main as report_main

    score_with_summary(tmp_path, model_path, random_x(2000, seed=37, high=5))
    picture = tmp_path / "report.png"
    assert report_main([str(tmp_path / "summary.json"), str(picture)]) == 0
    data = picture.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1000 and height > 700


def test_report_refuses_a_summary_without_baseline(tmp_path, capsys):
    from score.report import main as report_main

    (tmp_path / "summary.json").write_text(json.dumps({"status": "failed", "drift": None}))
    assert report_main([str(tmp_path / "summary.json"), str(tmp_path / "r.png")]) == 65
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'summary.json'}: the summary has no baseline")
    assert not (tmp_path / "r.png").exists()


# The summary file -------------------------------------------------------------------------------
@pytest.mark.parametrize(("batch_size", "bad_row", "rows_in"), [
    pytest.param(None, 1, 2, id="row_1_of_the_first_batch"),
    pytest.param(100, 250, 251, id="row_50_of_the_third_batch"),
])
def test_a_failed_run_counts_the_rows_read_up_to_the_invalid_one(tmp_path, model_path, batch_size,
                                                                  bad_row, rows_in):
    x = random_x(1000, seed=38)
    x[bad_row, 2] = 50
    flags = ("--batch-size", str(batch_size)) if batch_size else ()
    result, output, summary = score_with_summary(tmp_path, model_path, x, *flags)
    assert result.code == 65
    assert result.lines[-1].startswith(f"error: {tmp_path / 'input.parquet'}: row {bad_row}: ")
    assert (summary["rows_in"], summary["rows_out"], summary["rows_invalid"]) == (rows_in, 0, 0)
    assert not output.exists()


def test_the_summary_writes_lists_of_numbers_on_one_line_and_the_spec_as_its_fingerprint(tmp_path):
    import hashlib

    from conftest import RAGGED_MODEL

    from score.model import load

    rows = [list(range(1 + index % 32)) for index in range(640)]  # every length 1..32
    source = tmp_path / "input.parquet"
    pq.write_table(pa.table({"x": pa.array(rows, type=pa.list_(pa.int64()))}), str(source))
    result = run_score(source, tmp_path / "out.parquet", "--model", RAGGED_MODEL, "--quiet",
                       "--on-invalid", "null", "--summary", tmp_path / "summary.json")
    assert result.code == 0, result.stderr
    text = (tmp_path / "summary.json").read_text()
    summary = json.loads(text)
    spec = load(str(RAGGED_MODEL)).spec
    assert summary["spec"]["sha256"] == hashlib.sha256(spec.to_json().encode()).hexdigest()
    assert (summary["spec"]["x_values"], summary["spec"]["y_values"]) == (list(spec.x_values), list(spec.y_values))
    assert summary["spec"]["state_layers"] == len(spec.states)
    profile = summary["drift"]["profile"]["input_counts"]
    assert f"[{', '.join(str(count) for count in profile[0])}]" in text  # one line per step
    assert len(text.splitlines()) < 400  # 5,611 when every number had a line of its own


def test_the_summary_and_the_scored_file_say_what_the_scores_are(tmp_path, model_path):
    pytest.importorskip("onnx")
    from test_import import RENORMALIZED, Source, import_source, ragged_rows, write_rows

    _, output, summary = score_with_summary(tmp_path, model_path, random_x(50, seed=39))
    assert summary["probabilities"] == "softmax probabilities"
    assert pq.read_metadata(output).metadata[b"seqscore.probabilities"] == b"softmax probabilities"

    imported = tmp_path / "imported"
    imported.mkdir()
    result, renormalised_model = import_source(imported, Source(head="sigmoid"), "--renormalize")
    assert result.code == 0, result.stderr
    source = write_rows(imported / "input.parquet", ragged_rows(20, seed=7, lengths=(1, 6)))
    result = run_score(source, imported / "out.parquet", "--model", renormalised_model, "--quiet",
                       "--summary", imported / "summary.json")
    assert result.code == 0, result.stderr
    assert RENORMALIZED.startswith("renormalised scores: ")
    assert json.loads((imported / "summary.json").read_text())["probabilities"] == RENORMALIZED
    metadata = pq.read_metadata(imported / "out.parquet").metadata
    assert metadata[b"seqscore.probabilities"].decode() == RENORMALIZED


def test_reading_and_writing_in_the_scoring_thread_changes_nothing_but_the_threads(tmp_path, model_path):
    """JobConfig.threaded_io=False (a benchmark switch, through main's adjust) scores alike."""
    import dataclasses

    from score.__main__ import main

    source = write_x(tmp_path / "input.parquet", random_x(3000, seed=40))
    adjusted = []

    def serial(config):
        adjusted.append(config)
        return dataclasses.replace(config, threaded_io=False)

    flags = ["--model", model_path, "--quiet", "--batch-size", "512"]
    assert main([source, str(tmp_path / "threaded.parquet"), *flags]) == 0
    assert main([source, str(tmp_path / "serial.parquet"), *flags], adjust=serial) == 0
    assert [config.threaded_io for config in adjusted] == [True]
    threaded = pq.read_table(tmp_path / "threaded.parquet").replace_schema_metadata(None)
    assert pq.read_table(tmp_path / "serial.parquet").replace_schema_metadata(None).equals(threaded)
