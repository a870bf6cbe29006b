"""Is the model still right: --labels, the quality figures, the estimated accuracy and the floors.

Every figure is checked against a plain numpy reference computed from onnxruntime's full
probabilities on the same rows (no seqscore code), with the issue's bin rule: fixed-length and
ragged rows, invalid rows mixed in, several record batches.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURE_MODEL as MODEL
from conftest import RAGGED_MODEL, assert_refused, read_json, run_score
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BINS = 15


# The reference ---------------------------------------------------------------------------------
def full_probabilities(model_path: str, rows: list[list[int]]) -> tuple[list[np.ndarray], dict]:
    """Each row's (steps, classes) probabilities: onnxruntime, rows of one length at a time."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    spec = json.loads(session.get_modelmeta().custom_metadata_map["spec"])
    x_values = np.asarray(spec["x_values"])
    out: list[np.ndarray | None] = [None] * len(rows)
    for length in sorted({len(row) for row in rows}):
        chosen = [i for i, row in enumerate(rows) if len(row) == length]
        indices = np.searchsorted(x_values, np.asarray([rows[i] for i in chosen])).astype(np.int32)
        probabilities = session.run(["probabilities"], {"x": indices})[0]
        for slot, i in enumerate(chosen):
            out[i] = probabilities[slot]
    return out, spec


def reference_quality(probabilities: list[np.ndarray], labels: list[list[int]], spec: dict, top_k: int,
                      positions: list[np.ndarray] | None = None, lengths: list[int] | None = None) -> dict:
    """The figures the issue defines, the plain way, over valid rows (their full probabilities)."""
    y_values = np.asarray(spec["y_values"])
    seq_len = spec["seq_len"]
    truth = np.concatenate([np.searchsorted(y_values, row) for row in labels])
    full = np.concatenate(probabilities).astype(np.float64)
    order = np.argsort(-full, axis=1, kind="stable")
    rank = np.argmax(order == truth[:, None], axis=1)
    correct = rank == 0
    confidence = full.max(axis=1)
    label_p = full[np.arange(truth.size), truth]
    bins = np.minimum(np.floor(confidence * BINS).astype(int), BINS - 1)
    ece = sum((bins == b).sum() / truth.size * abs(correct[bins == b].mean() - confidence[bins == b].mean())
              for b in range(BINS) if (bins == b).any())
    row_of = np.repeat(np.arange(len(labels)), [len(row) for row in labels])
    position = (np.concatenate(positions) if positions is not None
                else np.concatenate([np.arange(len(row)) for row in labels]))
    length = np.asarray(lengths if lengths is not None else [len(row) for row in labels])
    bucket = np.minimum(length, seq_len + 1)
    names = {b: (str(b) if b <= seq_len else f">{seq_len}") for b in set(bucket.tolist())}
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(y_values[truth[~correct]], y_values[order[~correct, 0]]):
        pairs[(int(t), int(p))] = pairs.get((int(t), int(p)), 0) + 1
    return {
        "steps": int(truth.size), "rows": len(labels),
        "accuracy": correct.mean(),
        "top_k_accuracy": [(rank < k).mean() for k in range(1, top_k + 1)],
        "sequence_accuracy": np.mean([correct[row_of == r].all() for r in range(len(labels))]),
        "log_loss": -np.log(np.maximum(label_p, 1e-12)).mean(),
        "estimated_accuracy": confidence.mean(),
        "ece": ece,
        "bins": [(int((bins == b).sum()), confidence[bins == b].mean() if (bins == b).any() else None,
                  correct[bins == b].mean() if (bins == b).any() else None) for b in range(BINS)],
        "accuracy_by_position": [(p, int((position == p).sum()), correct[position == p].mean())
                                 for p in range(64) if (position == p).any()],
        "accuracy_by_length": {names[b]: (int((bucket == b).sum()), int((bucket[row_of] == b).sum()),
                                          correct[bucket[row_of] == b].mean()) for b in sorted(names)},
        "top_confusions": sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:10],
        "label_prob": label_p, "correct": correct,
    }


def assert_quality(found: dict, expected: dict) -> None:
    """Counts and ratios of counts within 1e-9, the others within 1e-6."""
    assert (found["steps"], found["rows"]) == (expected["steps"], expected["rows"])
    for name in ("accuracy", "sequence_accuracy"):
        assert found[name] == pytest.approx(expected[name], abs=1e-9), name
    assert found["top_k_accuracy"] == pytest.approx(expected["top_k_accuracy"], abs=1e-9)
    for name in ("log_loss", "estimated_accuracy", "ece"):
        assert found[name] == pytest.approx(expected[name], abs=1e-6), name
    for found_bin, (steps, confidence, accuracy) in zip(found["bins"], expected["bins"], strict=True):
        assert found_bin["steps"] == steps
        if steps:
            assert found_bin["mean_confidence"] == pytest.approx(confidence, abs=1e-6)
            assert found_bin["accuracy"] == pytest.approx(accuracy, abs=1e-9)
        else:
            assert found_bin["mean_confidence"] is None and found_bin["accuracy"] is None
    assert [(p["position"], p["steps"]) for p in found["accuracy_by_position"]] == [
        (p, n) for p, n, _ in expected["accuracy_by_position"]]
    assert [p["accuracy"] for p in found["accuracy_by_position"]] == pytest.approx(
        [a for _, _, a in expected["accuracy_by_position"]], abs=1e-9)
    assert {name: (v["rows"], v["steps"]) for name, v in found["accuracy_by_length"].items()} == {
        name: (rows, steps) for name, (rows, steps, _) in expected["accuracy_by_length"].items()}
    for name, (_, _, accuracy) in expected["accuracy_by_length"].items():
        assert found["accuracy_by_length"][name]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert [(c["true"], c["predicted"], c["count"]) for c in found["top_confusions"]] == [
        (t, p, n) for (t, p), n in expected["top_confusions"]]


def list_column(rows: list[list[int] | None], value_type=pa.int64()) -> pa.Array:
    return pa.array(rows, pa.list_(value_type))


def noisy_labels(rows: list[list[int]], seed: int, noise: float = 0.3) -> list[list[int]]:
    """The default rule (y_t = x_0 + ... + x_t mod 25), a share of steps replaced at random."""
    generator = np.random.default_rng(seed)
    labels = []
    for row in rows:
        y = np.cumsum(row) % 25
        flip = generator.random(len(row)) < noise
        labels.append(np.where(flip, generator.integers(0, 25, len(row)), y).tolist())
    return labels


# The core, batch by batch -----------------------------------------------------------------------
@st.composite
def labelled_batches(draw):
    """Rows of the default model with labels (some wrong, some unusable), cut into batches."""
    rows = draw(st.integers(1, 40))
    x = draw(st.lists(st.lists(st.integers(0, 10), min_size=4, max_size=4), min_size=rows, max_size=rows))
    good = st.lists(st.integers(0, 24), min_size=4, max_size=4)
    bad = st.one_of(st.none(), st.lists(st.integers(0, 24), min_size=0, max_size=6),
                    st.lists(st.one_of(st.integers(-3, 30), st.none()), min_size=4, max_size=4))
    y = draw(st.lists(st.one_of(good, good, good, bad), min_size=rows, max_size=rows))
    cuts = sorted(draw(st.sets(st.integers(1, max(rows - 1, 1)), max_size=3)) - {rows})
    return x, y, cuts, draw(st.integers(1, 5))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(labelled_batches())
def test_the_core_merged_over_batches_equals_the_plain_reference(scorer, case):
    from score.core import ScoreOptions, empty_stats, new_cache, score_batch_with_stats

    x, y, cuts, top_k = case
    table = pa.table({"x": list_column(x), "y": list_column(y)})
    options = ScoreOptions(top_k=top_k, on_invalid="null", labels="y")
    stats, cache, scored = empty_stats(scorer), new_cache(scorer, options), []
    for start, stop in zip([0, *cuts], [*cuts, len(x)]):
        batch = table.slice(start, stop - start).combine_chunks().to_batches()[0]
        out, batch_stats = score_batch_with_stats(scorer, batch, options, cache)
        stats.merge(batch_stats)
        scored.append(out)
    valid = [i for i, labels in enumerate(y)
             if labels is not None and len(labels) == 4 and all(v is not None and 0 <= v <= 24 for v in labels)]
    assert int(stats.reason_counts[0]) == len(valid)
    if not valid:
        assert stats.quality is None or stats.quality.steps == 0
        return
    probabilities, spec = full_probabilities(MODEL, [x[i] for i in valid])
    expected = reference_quality(probabilities, [y[i] for i in valid], spec, top_k)
    assert_quality({"labels": "y", **stats.quality.figures(scorer.spec.y_values)}, expected)
    label_prob = pa.concat_tables([pa.Table.from_batches([b]) for b in scored]).column("label_prob").to_pylist()
    np.testing.assert_allclose(np.concatenate([label_prob[i] for i in valid]), expected["label_prob"], atol=1e-6)


# Fixed-length rows ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixed_case(tmp_path_factory):
    """3,000 rows of the default model, equal rows with other labels, and each invalid kind."""
    generator = np.random.default_rng(7)
    x = generator.integers(0, 11, size=(3000, 4)).tolist()
    x[100:200] = x[0:100]  # equal sequences, other labels: de-duplication must keep rows apart
    y = noisy_labels(x, seed=8)
    bad = {5: "unknown_value", 17: "label_length", 29: "unknown_label", 41: "null_label",
           53: "null_label", 65: "null_row", 1001: "label_length", 2999: "unknown_label"}
    x[5] = [1, 2, 11, 3]
    y[17] = y[17][:3]
    y[29] = [1, 2, 30, 4]
    y[41] = None
    y[53] = [1, None, 3, 4]
    x[65] = None
    y[1001] = y[1001] + [0]
    y[2999] = [-1, 0, 0, 0]
    folder = tmp_path_factory.mktemp("fixed")
    path = folder / "in.parquet"
    pq.write_table(pa.table({"x": list_column(x), "y": list_column(y)}), path)
    valid = [i for i in range(len(x)) if i not in bad]
    probabilities, spec = full_probabilities(MODEL, [x[i] for i in valid])
    return path, x, y, bad, valid, probabilities, spec


@pytest.mark.parametrize("top_k", [1, 3])
def test_fixed_rows_every_figure_equals_the_plain_reference(fixed_case, tmp_path, top_k):
    path, x, y, bad, valid, probabilities, spec = fixed_case
    out, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    result = run_score(path, out, "--model", MODEL, "--labels", "y", "--on-invalid", "null",
                       "--batch-size", "700", "--top-k", top_k, "--summary", summary, "--quiet")
    assert result.code == 0, result.stderr
    expected = reference_quality(probabilities, [y[i] for i in valid], spec, top_k)
    found = read_json(summary)
    assert found["quality"]["labels"] == "y"
    assert_quality(found["quality"], expected)
    reasons = found["invalid_by_reason"]
    assert (reasons["label_length"], reasons["unknown_label"], reasons["null_label"],
            reasons["unknown_value"], reasons["null_row"]) == (2, 2, 2, 1, 1)
    assert found["estimated_accuracy"]["value"] == pytest.approx(expected["estimated_accuracy"], abs=1e-6)
    assert found["estimated_accuracy"]["steps"] == expected["steps"]

    table = pq.read_table(out)
    assert table.column_names == ["x", "y", "y_pred", "top_k_values", "top_k_probs", "error",
                                  "label_prob", "correct"]
    label_prob = table.column("label_prob").to_pylist()
    correct = table.column("correct").to_pylist()
    assert [label_prob[i] for i in bad] == [None] * len(bad)
    assert [correct[i] for i in bad] == [None] * len(bad)
    found_prob = np.concatenate([label_prob[i] for i in valid])
    np.testing.assert_allclose(found_prob, expected["label_prob"], atol=1e-6)
    assert np.concatenate([correct[i] for i in valid]).tolist() == expected["correct"].tolist()
    assert len(table.column("top_k_values")[0].as_py()[0]) == top_k


def test_invalid_label_rows_say_why_in_the_error_column(fixed_case, tmp_path):
    path, *_ = fixed_case
    out = tmp_path / "out.parquet"
    assert run_score(path, out, "--model", MODEL, "--labels", "y", "--on-invalid", "null", "--quiet").code == 0
    errors = pq.read_table(out).column("error").to_pylist()
    assert errors[17] == "y has 3 labels but x has 4 steps; expected one label per step"
    assert errors[29] == "y[2] = 30 is not one of the model's y values (0..24)"
    assert errors[41] == "y is null; expected one label per step of x"
    assert errors[53] == "y[1] is null"
    assert errors[1001] == "y has 5 labels but x has 4 steps; expected one label per step"
    assert errors[2999] == "y[0] = -1 is not one of the model's y values (0..24)"
    assert errors[5] == "x[2] = 11 is not one of the model's input values (0..10)"  # the sequence first


@pytest.mark.parametrize(("labels", "line"), [
    pytest.param([[1, 2, 3]], "row 0: y has 3 labels but x has 4 steps; expected one label per step", id="label_length"),
    pytest.param([[1, 2, 3, 99]], "row 0: y[3] = 99 is not one of the model's y values (0..24)", id="unknown_label"),
    pytest.param([None], "row 0: y is null; expected one label per step of x", id="null_label_row"),
    pytest.param([[1, None, 3, 4]], "row 0: y[1] is null", id="null_label_element"),
])
def test_a_bad_label_stops_the_run_with_one_line(tmp_path, labels, line):
    path, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    x = [[1, 2, 3, 4]] * 3
    y = [[1, 3, 6, 10], [1, 3, 6, 10]] + labels
    pq.write_table(pa.table({"x": list_column(x), "y": list_column(y)}), path)
    result = run_score(path, out, "--model", MODEL, "--labels", "y", "--quiet")
    assert_refused(result, 65, f"error: {path}: {line.replace('row 0', 'row 2')}", out)


@pytest.mark.parametrize(("column", "line"), [
    pytest.param("label", "--labels column 'label' not found (the file has: x, y)", id="missing"),
    pytest.param("y", "--labels: column 'y' is string; expected a list of integers (list, large_list or "
                      "fixed_size_list of int8..int64 or uint8..uint64)", id="not_a_list"),
    pytest.param("x", "--labels 'x' names the sequence column; name the column of true y values (one "
                      "per step)", id="the_sequence_column"),
])
def test_a_labels_column_that_cannot_hold_labels_is_refused_before_scoring(tmp_path, column, line):
    path, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"x": list_column([[1, 2, 3, 4]]), "y": pa.array(["1 3 6 10"])}), path)
    result = run_score(path, out, "--model", MODEL, "--labels", column, "--quiet")
    assert_refused(result, 65, f"error: {path}: {line}", out)


def test_a_list_of_floats_is_refused_as_labels(tmp_path):
    path, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"x": list_column([[1, 2, 3, 4]]),
                             "y": pa.array([[1.0, 2.0, 3.0, 4.0]], pa.list_(pa.float64()))}), path)
    result = run_score(path, out, "--model", MODEL, "--labels", "y", "--quiet")
    assert result.code == 65 and "floating-point values are refused" in result.lines[0], result.stderr
    assert not out.exists()


def test_without_labels_the_output_is_unchanged_and_accuracy_is_estimated(fixed_case, tmp_path):
    path, x, y, bad, valid, probabilities, spec = fixed_case
    out, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    assert run_score(path, out, "--model", MODEL, "--on-invalid", "null", "--summary", summary,
                     "--quiet").code == 0
    assert pq.read_table(out).column_names == ["x", "y", "y_pred", "top_k_values", "top_k_probs", "error"]
    found = read_json(summary)
    assert "quality" not in found
    assert "label_length" not in found["invalid_by_reason"]
    # Rows invalid for their labels are valid without --labels: every row with a valid sequence.
    scored = [i for i in range(len(x)) if bad.get(i) not in ("unknown_value", "null_row")]
    all_probabilities, _ = full_probabilities(MODEL, [x[i] for i in scored])
    top1 = np.concatenate([p.max(axis=1) for p in all_probabilities])
    estimate = found["estimated_accuracy"]
    assert estimate["value"] == pytest.approx(float(top1.mean()), abs=1e-6)
    assert (estimate["steps"], estimate["calibrated"]) == (top1.size, True)


# Rows of any length ---------------------------------------------------------------------------
def test_ragged_rows_every_figure_equals_the_plain_reference(tmp_path):
    generator = np.random.default_rng(3)
    lengths = generator.integers(1, 33, size=1500)
    x = [generator.integers(0, 11, size=n).tolist() for n in lengths]
    x[10:60] = [row[:5] for row in x[0:50]]  # shared beginnings (the prefix tree) and repeats
    x[60:80] = x[10:30]
    y = noisy_labels(x, seed=4, noise=0.2)
    bad = {3: "too_long", 7: "empty_sequence", 9: "label_length", 11: "null_label"}
    x[3] = list(range(11)) * 4
    y[3] = [0] * 44
    x[7], y[7] = [], []
    y[9] = y[9] + [1]
    y[11] = None
    path, out, summary = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "s.json"
    pq.write_table(pa.table({"x": list_column(x), "y": list_column(y)}), path)
    result = run_score(path, out, "--model", RAGGED_MODEL, "--labels", "y", "--on-invalid", "null",
                       "--batch-size", "400", "--summary", summary, "--quiet")
    assert result.code == 0, result.stderr
    valid = [i for i in range(len(x)) if i not in bad]
    probabilities, spec = full_probabilities(RAGGED_MODEL, [x[i] for i in valid])
    expected = reference_quality(probabilities, [y[i] for i in valid], spec, 3)
    found = read_json(summary)
    assert_quality(found["quality"], expected)
    assert ">32" not in found["quality"]["accuracy_by_length"]
    table = pq.read_table(out)
    found_prob = np.concatenate([table.column("label_prob")[i].as_py() for i in valid])
    np.testing.assert_allclose(found_prob, expected["label_prob"], atol=1e-6)


def test_a_keyed_chain_measures_each_new_step_against_the_whole_history(tmp_path):
    """With --key a row holds only new steps; its figures are those of the whole history's
    steps it adds (positions and length buckets counted in the history)."""
    generator = np.random.default_rng(5)
    first = [generator.integers(0, 11, size=n).tolist() for n in generator.integers(1, 12, 300)]
    second = [generator.integers(0, 11, size=n).tolist() for n in generator.integers(1, 12, 300)]
    whole = [a + b for a, b in zip(first, second)]
    labels = noisy_labels(whole, seed=6, noise=0.25)
    keys = np.arange(300)
    day1, day2 = tmp_path / "day1.parquet", tmp_path / "day2.parquet"
    pq.write_table(pa.table({"k": keys, "x": list_column(first),
                             "y": list_column([row[: len(a)] for row, a in zip(labels, first)])}), day1)
    order = generator.permutation(300)  # the second day in another order
    pq.write_table(pa.table({"k": keys[order], "x": list_column([second[i] for i in order]),
                             "y": list_column([labels[i][len(first[i]):] for i in order])}), day2)
    run = ("--model", RAGGED_MODEL, "--labels", "y", "--key", "k", "--quiet")
    assert run_score(day1, tmp_path / "o1.parquet", *run, "--state-out", tmp_path / "s1").code == 0
    result = run_score(day2, tmp_path / "o2.parquet", *run, "--state-in", tmp_path / "s1",
                       "--state-out", tmp_path / "s2", "--summary", tmp_path / "summary.json")
    assert result.code == 0, result.stderr
    probabilities, spec = full_probabilities(RAGGED_MODEL, [whole[i] for i in order])
    new = [p[len(first[i]):] for p, i in zip(probabilities, order)]
    expected = reference_quality(new, [labels[i][len(first[i]):] for i in order], spec, 3,
                                 positions=[np.arange(len(first[i]), len(whole[i])) for i in order],
                                 lengths=[len(whole[i]) for i in order])
    assert_quality(read_json(tmp_path / "summary.json")["quality"], expected)


# The floors ------------------------------------------------------------------------------------
def test_min_accuracy_needs_labels(tmp_path):
    path, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"x": list_column([[1, 2, 3, 4]])}), path)
    result = run_score(path, out, "--model", MODEL, "--min-accuracy", "0.9", "--quiet")
    assert_refused(result, 2, "error: --min-accuracy needs --labels COL: accuracy is measured against "
                              "labels (use --min-estimated-accuracy without them)", out)


def default_rows(rows: int, seed: int, shift: int = 0) -> pa.Table:
    """Rows of the embedded default's rule; ``shift`` moves every label on (another rule)."""
    x = np.random.default_rng(seed).integers(0, 11, size=(rows, 4))
    y = (np.cumsum(x, axis=1) + shift) % 25
    return pa.table({"x": list_column(x.tolist()), "y": list_column(y.tolist())})


def test_labels_of_a_shifted_rule_drop_the_accuracy_and_the_floor_refuses_to_publish(tmp_path):
    right, shifted = tmp_path / "right.parquet", tmp_path / "shifted.parquet"
    pq.write_table(default_rows(2000, 1), right)
    pq.write_table(default_rows(2000, 1, shift=1), shifted)
    out, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    passed = run_score(right, out, "--model", MODEL, "--labels", "y", "--min-accuracy", "0.9",
                       "--summary", summary, "--quiet")
    assert passed.code == 0 and out.exists(), passed.stderr
    accuracy = read_json(summary)["quality"]["accuracy"]
    assert accuracy > 0.9
    out.unlink()
    refused = run_score(shifted, out, "--model", MODEL, "--labels", "y", "--min-accuracy", "0.9",
                        "--summary", summary, "--quiet")
    found = read_json(summary)
    measured = found["quality"]["accuracy"]
    assert measured < 0.2
    assert_refused(refused, 65, f"error: {shifted}: accuracy {measured:.4f} over 8000 labelled steps is "
                                f"below --min-accuracy 0.9; nothing was published", out)
    assert (found["status"], found["exit_code"]) == ("failed", 65)
    assert found["error"] == refused.lines[0].removeprefix("error: ")
    # The estimate does not see the shift: the model is as confident as before.
    assert found["quality"]["estimated_accuracy"] == pytest.approx(
        read_json(summary)["estimated_accuracy"]["value"], abs=1e-12)


def test_min_estimated_accuracy_refuses_to_publish_below_the_floor(tmp_path):
    path, out, summary = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "summary.json"
    pq.write_table(default_rows(500, 2), path)
    assert run_score(path, out, "--model", MODEL, "--summary", summary, "--quiet").code == 0
    estimate = read_json(summary)["estimated_accuracy"]["value"]
    out.unlink()
    floor = round(estimate + 0.001, 4)
    refused = run_score(path, out, "--model", MODEL, "--min-estimated-accuracy", str(floor),
                        "--summary", summary, "--quiet")
    assert_refused(refused, 65, f"error: {path}: estimated accuracy {estimate:.4f} (mean top-1 "
                                f"probability over 2000 steps) is below --min-estimated-accuracy "
                                f"{floor:g}; nothing was published", out)
    assert read_json(summary)["estimated_accuracy"]["value"] == pytest.approx(estimate, abs=1e-12)
    lower = run_score(path, out, "--model", MODEL, "--min-estimated-accuracy", str(round(estimate - 0.001, 4)),
                      "--quiet")
    assert lower.code == 0 and out.exists()


def test_a_floor_with_nothing_to_measure_is_not_met(tmp_path):
    path, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({"x": list_column([[1, 2, 3, 4]]), "y": list_column([[1, 2, 3]])}), path)
    result = run_score(path, out, "--model", MODEL, "--labels", "y", "--on-invalid", "null",
                       "--min-accuracy", "0.5", "--quiet")
    assert_refused(result, 65, f"error: {path}: no valid labelled step to measure accuracy on; "
                               f"--min-accuracy 0.5 is not met; nothing was published", out)


def test_a_model_without_baseline_quality_says_none(tmp_path):
    path, out, summary = tmp_path / "in.parquet", tmp_path / "out.parquet", tmp_path / "summary.json"
    pq.write_table(default_rows(50, 3), path)
    assert run_score(path, out, "--model", MODEL, "--summary", summary, "--quiet").code == 0
    assert read_json(summary)["baseline_quality"] == "none"  # the fixture predates it


# A model trained on the embedded default ------------------------------------------------------
@pytest.fixture(scope="module")
def default_model(tmp_path_factory):
    """A small model fitted on the embedded default (one LSTM layer of 32 units, 20 epochs: the
    default task's accuracy, calibrated as `make train`'s), exported as the job loads it."""
    from conftest import run_export, run_train

    artifacts = tmp_path_factory.mktemp("default") / "artifacts"
    trained = run_train("--artifacts", artifacts, "--layers", "1", "--units", "32", "--epochs", "20",
                        "--learning-rate", "0.01", "--quiet")
    assert trained.code == 0, trained.stderr
    exported = run_export("--artifacts", artifacts, "--output", artifacts / "model.onnx")
    assert exported.code == 0, exported.stderr
    return artifacts


@pytest.mark.slow
def test_on_the_default_test_split_the_estimate_is_within_001_of_the_measured_accuracy(default_model, tmp_path):
    model, split = default_model / "model.onnx", default_model / "test.parquet"
    out, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    result = run_score(split, out, "--model", model, "--labels", "y", "--summary", summary, "--quiet")
    assert result.code == 0, result.stderr
    found = read_json(summary)
    quality = found["quality"]
    assert quality["steps"] == 4000
    assert abs(quality["estimated_accuracy"] - quality["accuracy"]) <= 0.01
    assert found["estimated_accuracy"]["value"] == pytest.approx(quality["estimated_accuracy"], abs=1e-12)
    # The same rows training measured: the test split's quality travels in the model.
    baseline = found["baseline_quality"]
    assert baseline["steps"] == 4000
    assert baseline["accuracy"] == pytest.approx(quality["accuracy"], abs=1 / 4000)
    assert baseline["ece"] == pytest.approx(quality["ece"], abs=1e-4)
    assert read_json(default_model / "metrics.json")["ece"] == baseline["ece"]


@pytest.mark.slow
def test_on_the_default_test_split_labels_of_a_shifted_rule_are_refused_by_the_floor(default_model, tmp_path):
    table = pq.read_table(default_model / "test.parquet")
    shifted = pa.array([[(value + 1) % 25 for value in row] for row in table.column("y").to_pylist()],
                       pa.list_(pa.int64()))
    path = tmp_path / "shifted.parquet"
    pq.write_table(table.set_column(1, "y", shifted), path)
    out, summary = tmp_path / "out.parquet", tmp_path / "summary.json"
    result = run_score(path, out, "--model", default_model / "model.onnx", "--labels", "y",
                       "--min-accuracy", "0.9", "--summary", summary, "--quiet")
    quality = read_json(summary)["quality"]
    assert quality["accuracy"] < 0.1 < quality["estimated_accuracy"] - 0.5  # confident, and wrong
    assert_refused(result, 65, f"error: {path}: accuracy {quality['accuracy']:.4f} over 4000 labelled "
                               f"steps is below --min-accuracy 0.9; nothing was published", out)
