"""python -m export --onnx: importing a sequence model made elsewhere, wrapping, checks, scoring.

The source models are built here with onnx.helper, as torch.onnx.export lays out nn.LSTM /
nn.GRU: an embedding Gather (or a MatMul over one-hot floats), the fused recurrence over
(time, batch, features), a linear head. No TensorFlow or PyTorch is needed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CliResult, assert_refused, run_export, run_score
from onnx import TensorProto, helper, numpy_helper

from score.errors import ModelError
from score.model import load
from score.monitor import Profile
from score.spec import Spec

X_VALUES = (10, 11, 12, 13, 14)  # raw input values: five input classes
Y_VALUES = (0, 2, 4)  # raw output values: three output classes
MAX_LENGTH = 6
TOP_K = 3


@dataclass(frozen=True)
class Source:
    """How to build a source model."""

    cell: str = "LSTM"  # or 'GRU'
    time_major: bool = False  # input (time, batch) and output (time, batch, classes)
    one_hot: bool = False  # input float32 (batch, time, x classes) instead of int64 ids
    direction: str = "forward"  # or 'bidirectional'
    head: str = "logits"  # or 'softmax', 'sigmoid'
    x_classes: int = len(X_VALUES)
    y_classes: int = len(Y_VALUES)
    extra_input: bool = False  # a second required input (a lengths vector)
    state_outputs: bool = False  # the final h and c as further outputs, as PyTorch's (h_n, c_n)
    axis_names: tuple[str, str] = ("batch", "sequence")  # in batch-major order
    hidden: int = 4
    embedding: int = 3
    opset: int = 17
    seed: int = 0


def build(source: Source) -> onnx.ModelProto:
    """A small seeded recurrent model as torch.onnx.export would lay it out."""
    generator = np.random.default_rng(source.seed)

    def weight(*shape: int) -> np.ndarray:
        return generator.normal(0.0, 0.8, size=shape).astype(np.float32)

    gates = 4 if source.cell == "LSTM" else 3
    directions = 2 if source.direction == "bidirectional" else 1
    hidden = source.hidden
    batch_name, time_name = source.axis_names
    initializers = {
        "W": weight(directions, gates * hidden, source.embedding),
        "R": weight(directions, gates * hidden, hidden),
        "B": weight(directions, 2 * gates * hidden),
        "head_weight": weight(directions * hidden, source.y_classes),
        "head_bias": weight(source.y_classes),
        "flat_shape": np.array([0, 0, -1], np.int64),
    }
    nodes = []
    if source.one_hot:
        initializers["embedding"] = weight(source.x_classes, source.embedding)
        axes = [batch_name, time_name, source.x_classes]
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                [axes[1], axes[0], axes[2]] if source.time_major else axes)]
        nodes.append(helper.make_node("MatMul", ["input", "embedding"], ["embedded"]))
    else:
        initializers["embedding"] = weight(source.x_classes, source.embedding)
        axes = [time_name, batch_name] if source.time_major else [batch_name, time_name]
        inputs = [helper.make_tensor_value_info("input", TensorProto.INT64, axes)]
        nodes.append(helper.make_node("Gather", ["embedding", "input"], ["embedded"]))
    if source.extra_input:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, [batch_name]))
    # The recurrence runs time-major (ONNX's default layout), as PyTorch exports it.
    recurrent_input = "embedded"
    if not source.time_major:
        nodes.append(helper.make_node("Transpose", ["embedded"], ["embedded_tb"], perm=[1, 0, 2]))
        recurrent_input = "embedded_tb"
    nodes += [
        helper.make_node(source.cell, [recurrent_input, "W", "R", "B"],
                         ["Y", "h_n", "c_n"] if source.state_outputs else ["Y"], f"/rnn/{source.cell}",
                         hidden_size=hidden, direction=source.direction),
        helper.make_node("Transpose", ["Y"], ["Y_tbdh"], perm=[0, 2, 1, 3]),  # (time, batch, dirs, hidden)
        helper.make_node("Reshape", ["Y_tbdh", "flat_shape"], ["features"]),
        helper.make_node("MatMul", ["features", "head_weight"], ["scores"]),
        helper.make_node("Add", ["scores", "head_bias"], ["head"]),
    ]
    head = "head"
    if not source.time_major:
        nodes.append(helper.make_node("Transpose", ["head"], ["head_bt"], perm=[1, 0, 2]))
        head = "head_bt"
    if source.head == "softmax":
        nodes.append(helper.make_node("Softmax", [head], ["output"], axis=-1))
    elif source.head == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", [head], ["output"]))
    else:
        nodes.append(helper.make_node("Identity", [head], ["output"]))
    output_axes = ([time_name, batch_name] if source.time_major else [batch_name, time_name]) + [source.y_classes]
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, output_axes)]
    if source.state_outputs:
        outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, batch_name, hidden])
                    for name in ("h_n", "c_n")]
    graph = helper.make_graph(
        nodes, "source", inputs, outputs,
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", source.opset)],
                              producer_name="pytorch", producer_version="2.5.0")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_source(path, source: Source) -> str:
    onnx.save_model(build(source), str(path))
    return str(path)


def import_source(tmp_path, source: Source, *extra: str) -> tuple[CliResult, str]:
    """Import ``source`` into tmp_path/published/model.onnx; return the result and that path."""
    path = write_source(tmp_path / "source.onnx", source)
    output = tmp_path / "published" / "model.onnx"
    result = run_export("--onnx", path, "--x-values", "10..14", "--y-values", "0,2,4",
                        "--output", output, "--max-length", MAX_LENGTH, *extra)
    return result, str(output)


def ragged_rows(rows: int, seed: int, lengths: tuple[int, int]) -> list[list[int]]:
    generator = np.random.default_rng(seed)
    return [list(generator.choice(X_VALUES, size=int(generator.integers(lengths[0], lengths[1] + 1))))
            for _ in range(rows)]


def write_rows(path, rows: list[list[int]], **columns) -> str:
    table = pa.table({"id": np.arange(len(rows), dtype=np.int64),
                      "x": pa.array(rows, type=pa.list_(pa.int64())), **columns})
    pq.write_table(table, str(path))
    return str(path)


def source_by_hand(model: onnx.ModelProto, source: Source, row: list[int]) -> np.ndarray:
    """The source model on one raw row, run the plain way: (steps, y classes) probabilities."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    indices = np.searchsorted(X_VALUES, row)[None, :]
    feed = np.eye(source.x_classes, dtype=np.float32)[indices] if source.one_hot else indices.astype(np.int64)
    if source.time_major:
        feed = np.swapaxes(feed, 0, 1)
    output = session.run(["output"], {"input": feed})[0]
    if source.time_major:
        output = np.swapaxes(output, 0, 1)
    output = output[0]
    if source.head == "logits":
        exponentials = np.exp(output - output.max(axis=-1, keepdims=True))
        output = exponentials / exponentials.sum(axis=-1, keepdims=True)
    if source.head == "sigmoid":  # imported with --renormalize
        output = output / output.sum(axis=-1, keepdims=True)
    return output


def published_spec(path: str) -> Spec:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return Spec.from_json(session.get_modelmeta().custom_metadata_map["spec"])


def metadata(path: str) -> dict[str, str]:
    return dict(ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map)


def assert_scores_like_the_source(tmp_path, model_path: str, source: Source, rows: list[list[int]]):
    """`python -m score` on ``rows`` gives what the source, run by hand, gives: the same argmax
    and top-k classes (a stable descending sort, through Y_VALUES), probabilities within 1e-6."""
    data = write_rows(tmp_path / "rows.parquet", rows)
    scored = tmp_path / "scored.parquet"
    result = run_score(data, scored, "--model", model_path, "--top-k", TOP_K, "--quiet")
    assert result.code == 0, result.stderr
    out = pq.read_table(scored)
    y_values = np.asarray(Y_VALUES)
    model = build(source)
    for number, row in enumerate(rows):
        probabilities = source_by_hand(model, source, row)
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :TOP_K]
        assert out.column("y_pred")[number].as_py() == list(y_values[probabilities.argmax(-1)])
        assert out.column("top_k_values")[number].as_py() == y_values[order].tolist()
        scored_probabilities = np.asarray(out.column("top_k_probs")[number].as_py(), np.float32)
        np.testing.assert_allclose(scored_probabilities, np.take_along_axis(probabilities, order, -1), atol=1e-6)
    return result


# Imported models, scored ------------------------------------------------------------------------
CAUSAL = [
    pytest.param(Source(), 1, id="lstm_batch_major_ids"),
    pytest.param(Source(time_major=True, axis_names=("batch", "seq")), 1, id="lstm_time_major_ids"),
    pytest.param(Source(cell="GRU"), 0, id="gru_batch_major_ids"),
    pytest.param(Source(cell="GRU", time_major=True, axis_names=("N", "time")), 0, id="gru_time_major_ids"),
    pytest.param(Source(one_hot=True), 1, id="lstm_one_hot_float"),
    pytest.param(Source(head="softmax", time_major=True, axis_names=("b", "steps")), 1, id="lstm_softmax_out"),
    # Below opset 13 the graph gets no heads or states; the scorer takes numpy's top-k for it.
    pytest.param(Source(opset=11), 0, id="lstm_opset_11"),
    pytest.param(Source(state_outputs=True), 1, id="lstm_with_h_n_c_n_outputs"),
]


@pytest.mark.parametrize(("source", "states"), CAUSAL)
def test_a_causal_model_is_imported_variable_length_and_scores_like_the_source(tmp_path, source, states):
    result, model_path = import_source(tmp_path, source)
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    spec = published_spec(model_path)
    assert (spec.x_values, spec.y_values, spec.min_len, spec.max_len) == (X_VALUES, Y_VALUES, 1, MAX_LENGTH)
    assert len(spec.states) == states  # a GRU's state is not carried: scored without prefix sharing
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    assert report["checks"]["causality"]["causal"] is True
    assert report["wrapping"]["input_time_major"] == source.time_major
    assert report["wrapping"]["output_time_major"] == source.time_major
    assert report["wrapping"]["output"].startswith("logits" if source.head == "logits" else "probabilities")
    assert report["wrapping"]["dropped_outputs"] == (["h_n", "c_n"] if source.state_outputs else [])
    assert report["checks"]["passed"] is True
    assert report["checks"]["random"]["max_abs_difference"] <= 1e-5
    assert ("state_carry" in report["checks"]) == bool(states)
    # Rows of every length, with repeated prefixes (shared in scoring where states are exposed).
    rows = ragged_rows(24, seed=1, lengths=(1, MAX_LENGTH)) + [[10, 11, 12], [10, 11, 12, 13], [10, 11]]
    scored = assert_scores_like_the_source(tmp_path, model_path, source, rows)
    assert scored.stderr == no_baseline_line(model_path)  # imported without --reference


def test_a_bidirectional_model_is_found_non_causal_and_scored_at_one_fixed_length(tmp_path):
    source = Source(direction="bidirectional")
    result, model_path = import_source(tmp_path, source)
    assert result.code == 0, result.stderr
    spec = published_spec(model_path)
    assert (spec.variable_length, spec.seq_len, spec.states, spec.causal) == (False, MAX_LENGTH, (), False)
    assert load(model_path).shares_prefixes is False
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    causality = report["checks"]["causality"]
    assert causality["causal"] is False
    assert causality["later_steps_changed_max_abs_difference"] > 1e-3
    assert report["scoring_interface"]["states_withheld"] == "LSTM layer 0 (/rnn/LSTM) runs bidirectional"
    assert report["length"] == ("not causal (it reads later steps): a fixed-length model of exactly 6 "
                                "steps (--max-length), as a shorter row would change every step's output")
    assert result.stdout.splitlines()[2].startswith(
        "not causal (changing later steps moves earlier outputs by up to ")
    assert result.stdout.splitlines()[2].endswith("): scored at exactly 6 steps")
    assert_scores_like_the_source(tmp_path, model_path, source, ragged_rows(12, seed=2, lengths=(MAX_LENGTH, MAX_LENGTH)))


def test_a_fixed_time_axis_stays_fixed_and_withholds_the_states(tmp_path):
    source = Source(axis_names=("batch", 4))  # type: ignore[arg-type]  (a fixed size, as without dynamic_axes)
    result, model_path = import_source(tmp_path, source)
    assert result.code == 0, result.stderr
    spec = published_spec(model_path)
    assert (spec.variable_length, spec.seq_len, spec.states) == (False, 4, ())
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    assert report["scoring_interface"]["states_withheld"] == (
        "the source's time axis is fixed at 4 steps, so a prefix cannot run alone")
    assert_scores_like_the_source(tmp_path, model_path, source, ragged_rows(10, seed=3, lengths=(4, 4)))


def test_a_wrong_time_axis_is_refused_as_rows_that_are_not_independent(tmp_path):
    source = Source(time_major=True, axis_names=("b", "t"))  # names that say nothing: axis 1 assumed
    result, _ = import_source(tmp_path, source)
    assert result.code == 78
    [line] = result.lines
    assert line.startswith(f"error: --onnx {tmp_path / 'source.onnx'}: changing one row of a batch "
                           f"changes the other rows' outputs by up to ")
    assert line.endswith(": axis 1 of input 'input' is not its time axis (pass --time-axis 0), or the "
                         "model mixes the rows of a batch, which scoring cannot take")
    assert_refused(result, 78, line, tmp_path / "published")


def test_the_time_axis_flag_overrides_the_axis_names(tmp_path):
    source = Source(time_major=True, axis_names=("b", "t"))  # names that say nothing
    result, model_path = import_source(tmp_path, source, "--time-axis", "0")
    assert result.code == 0, result.stderr
    assert_scores_like_the_source(tmp_path, model_path, source, ragged_rows(10, seed=4, lengths=(1, MAX_LENGTH)))


# Provenance, reference rows and the baseline ----------------------------------------------------
def test_the_report_and_metadata_record_where_the_model_came_from(tmp_path):
    import hashlib

    result, model_path = import_source(tmp_path, Source())
    assert result.code == 0, result.stderr
    source_bytes = (tmp_path / "source.onnx").read_bytes()
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    expected = {
        "path": str(tmp_path / "source.onnx"),
        "sha256": hashlib.sha256(source_bytes).hexdigest(),
        "producer_name": "pytorch",
        "producer_version": "2.5.0",
        "ir_version": 8,
        "opsets": {"ai.onnx": 17},
        "doc_string": None,
    }
    assert report["source"] == expected
    assert json.loads(metadata(model_path)["source"]) == expected
    published = (tmp_path / "published" / "model.onnx").read_bytes()
    assert report["sha256"] == hashlib.sha256(published).hexdigest()
    assert (tmp_path / "published" / "model.onnx.sha256").read_text() == (
        f"{report['sha256']}  model.onnx\n")
    assert report["baseline"] is None and "baseline" not in metadata(model_path)
    assert re.fullmatch(
        rf"imported {re.escape(expected['path'])} \(pytorch 2\.5\.0, sha256 {expected['sha256'][:16]}\.\.\.\): "
        r"class indices cast from x, logits, softmax over the last axis added\n"
        r"verified against the source \(random: 256 rows, max \|diff\| \S+\)\n"
        r"causal: scored at any length 1\.\.6\n"
        r"exposed the state of 1 LSTM layer\(s\); resumed runs match whole runs \(random: split after "
        r"steps 1\.\.5, max \|diff\| \S+\)\n"
        r"no drift baseline \(no --reference\): the scoring job will not monitor drift\n"
        rf"wrote {re.escape(model_path)} \({len(published)} bytes, sha256 {report['sha256'][:16]}\.\.\.\)\n",
        result.stdout,
    )


def test_reference_rows_are_checked_and_give_the_drift_baseline(tmp_path):
    rows = ragged_rows(40, seed=5, lengths=(1, MAX_LENGTH))
    reference = write_rows(tmp_path / "reference.parquet", rows)
    result, model_path = import_source(tmp_path, Source(), "--reference", reference)
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    assert report["checks"]["reference"]["rows"] == 40
    assert report["checks"]["reference"]["max_abs_difference"] <= 1e-5
    # The baseline counts the reference inputs and the source's predictions, real steps only.
    spec = published_spec(model_path)
    expected = Profile.empty(spec)
    model = build(Source())
    for row in rows:
        probabilities = source_by_hand(model, Source(), row)
        indices = np.searchsorted(X_VALUES, row)[None, :]
        expected.add(indices, probabilities.argmax(-1)[None, :], probabilities.max(-1)[None, :])
    baseline = json.loads(metadata(model_path)["baseline"])
    assert baseline == expected.to_dict()
    assert "quality" not in baseline and report["baseline"] == "from --reference"  # no y column
    # Scoring the reference rows themselves drifts nowhere.
    summary = tmp_path / "summary.json"
    scored = run_score(reference, tmp_path / "scored.parquet", "--model", model_path, "--quiet",
                       "--summary", summary)
    assert scored.code == 0, scored.stderr
    drift = json.loads(summary.read_text())["drift"]
    assert drift["has_baseline"] is True
    assert max(value for value in drift["input_psi"] if value is not None) < 1e-9


def plain_quality(probabilities: np.ndarray, truth: np.ndarray, bins: int = 15) -> dict:
    """Accuracy, ECE and bins the textbook way over flat steps: (steps, classes) probabilities
    and each step's true class; bins of equal width over the top-1 probability (1.0 in the last)."""
    confidence = probabilities.max(axis=-1).astype(np.float64)
    correct = probabilities.argmax(axis=-1) == truth
    which = np.minimum(np.floor(confidence * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        table.append({"low": b / bins, "high": (b + 1) / bins, "steps": int(inside.sum()),
                      "mean_confidence": confidence[inside].mean() if inside.any() else None,
                      "accuracy": correct[inside].mean() if inside.any() else None})
    ece = sum(entry["steps"] / truth.size * abs(entry["accuracy"] - entry["mean_confidence"])
              for entry in table if entry["steps"])
    return {"steps": truth.size, "accuracy": correct.mean(), "ece": ece,
            "mean_confidence": confidence.mean(), "bins": table}


LABELLED = [
    pytest.param(Source(), (1, MAX_LENGTH), id="causal_rows_of_any_length"),
    pytest.param(Source(direction="bidirectional"), (MAX_LENGTH, MAX_LENGTH), id="not_causal_fixed_length"),
]


@pytest.mark.parametrize(("source", "lengths"), LABELLED)
def test_reference_labels_give_the_baseline_accuracy_and_calibration(tmp_path, source, lengths):
    rows = ragged_rows(40, seed=5, lengths=lengths)
    generator = np.random.default_rng(7)
    labels = [list(generator.choice(Y_VALUES, size=len(row))) for row in rows]
    reference = write_rows(tmp_path / "reference.parquet", rows, y=pa.array(labels, pa.list_(pa.int64())))
    result, model_path = import_source(tmp_path, source, "--reference", reference)
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    assert report["baseline"] == "from --reference (with labels: accuracy and calibration)"
    baseline = load(model_path).metadata["baseline"]
    quality = json.loads(baseline)["quality"]
    # The source's own probabilities on each reference row, run by onnxruntime.
    model = build(source)
    probabilities = np.concatenate([source_by_hand(model, source, row) for row in rows])
    truth = np.searchsorted(Y_VALUES, np.concatenate(labels))
    expected = plain_quality(probabilities, truth)
    assert quality["steps"] == expected["steps"] == sum(len(row) for row in rows)
    assert quality["accuracy"] == expected["accuracy"]
    assert quality["ece"] == pytest.approx(expected["ece"], abs=1e-6)
    assert quality["mean_confidence"] == pytest.approx(expected["mean_confidence"], abs=1e-6)
    assert quality["bins"] == [pytest.approx(entry, abs=1e-6) for entry in expected["bins"]]
    # The drift baseline beside it is the one a reference without labels gives.
    assert Profile.from_dict(json.loads(baseline)).to_dict() == {
        key: value for key, value in json.loads(baseline).items() if key != "quality"}


def test_a_model_without_a_baseline_scores_and_its_summary_says_so(tmp_path):
    result, model_path = import_source(tmp_path, Source())
    assert result.code == 0, result.stderr
    data = write_rows(tmp_path / "rows.parquet", ragged_rows(5, seed=6, lengths=(1, MAX_LENGTH)))
    summary = tmp_path / "summary.json"
    scored = run_score(data, tmp_path / "scored.parquet", "--model", model_path, "--quiet", "--summary", summary)
    # Said once, also under --quiet: nobody should believe a drift check ran.
    assert (scored.code, scored.stderr) == (0, no_baseline_line(model_path))
    written = json.loads(summary.read_text())
    assert written["drift"]["has_baseline"] is False
    assert written["warnings"] == [no_baseline_line(model_path)[len("warning: "):-1]]


def no_baseline_line(model_path) -> str:
    """The one line python -m score writes after scoring with a model that has no baseline."""
    return (f"warning: the model {model_path} carries no training baseline: drift is not "
            f"monitored (export or import it with --reference to add one)\n")


# Refusals: one line, the documented exit code, nothing published -------------------------------
def test_a_parity_failure_is_exit_70_with_the_figures_in_the_failed_report(tmp_path, monkeypatch):
    import export.source_checks

    monkeypatch.setattr(export.source_checks, "PARITY_TOLERANCE", -1.0)  # no difference passes
    result, _ = import_source(tmp_path, Source())
    failed = refused_with_the_failed_report(tmp_path, result, "random: max |p_published - p_source| = ")
    assert (failed["published"], failed["checks"]["passed"]) == (False, False)


def refused_with_the_failed_report(tmp_path, result, failure: str) -> dict:
    """Exit 70 with one line whose first failure starts with ``failure``, and nothing but
    export_report.failed.json in the output folder; return that report."""
    assert result.code == 70
    [line] = result.lines
    assert line.startswith(f"error: the wrapped model does not match the source, nothing published: {failure}")
    published = tmp_path / "published"
    assert sorted(path.name for path in published.iterdir()) == ["export_report.failed.json"]
    return json.loads((published / "export_report.failed.json").read_text())


# --renormalize ---------------------------------------------------------------------------------
RENORMALIZED = ("renormalised scores: sigmoid outputs divided by their sum per step; "
                "not calibrated probabilities")


@pytest.mark.parametrize("source", [
    pytest.param(Source(head="sigmoid"), id="reduce_sum_axes_input"),
    pytest.param(Source(head="sigmoid", opset=11), id="reduce_sum_axes_attribute_opset_11"),
])
def test_sigmoid_outputs_with_renormalize_are_divided_by_their_sum(tmp_path, source):
    result, model_path = import_source(tmp_path, source, "--renormalize")
    assert (result.code, result.stderr) == (0, "")
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    assert report["wrapping"]["renormalized"] is True
    assert report["wrapping"]["output"] == "scores in [0, 1], divided by their sum per step (--renormalize)"
    assert metadata(model_path)["probabilities"] == RENORMALIZED
    assert RENORMALIZED in onnx.load(model_path).doc_string
    ops = [node.op_type for node in onnx.load(model_path).graph.node]
    assert "ReduceSum" in ops and "Div" in ops
    assert_scores_like_the_source(tmp_path, model_path, source, ragged_rows(12, seed=7, lengths=(1, MAX_LENGTH)))


def test_renormalize_leaves_outputs_that_already_sum_to_one_alone(tmp_path):
    result, model_path = import_source(tmp_path, Source(head="softmax"), "--renormalize")
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    assert (report["wrapping"]["renormalized"], report["wrapping"]["output"]) == (False, "probabilities, kept")
    assert "probabilities" not in metadata(model_path)


def test_renormalize_refuses_steps_whose_scores_sum_to_zero(tmp_path):
    model = build(Source(head="sigmoid"))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "zeros"))
    model.graph.node[-1].CopyFrom(helper.make_node("Mul", ["head_bt", "zeros"], ["output"]))
    onnx.save_model(model, str(tmp_path / "source.onnx"))
    result = run_export("--onnx", tmp_path / "source.onnx", "--x-values", "10..14", "--y-values", "0,2,4",
                        "--output", tmp_path / "published" / "model.onnx", "--renormalize")
    assert_refused(result, 78,
                   f"error: --onnx {tmp_path / 'source.onnx'}: --renormalize, but at 80 of 80 probed steps "
                   f"every output is 0, so their sum is 0 and dividing by it is undefined; export the "
                   f"model's logits instead (then pass --outputs logits)", tmp_path / "published")



def test_two_required_inputs_are_refused(tmp_path):
    result, _ = import_source(tmp_path, Source(extra_input=True))
    assert_refused(result, 78,
                   f"error: --onnx {tmp_path / 'source.onnx'}: the model has 2 required inputs (input, "
                   f"lengths); expected one, the sequence (an initial state or a length must have a "
                   f"default, or be left out)", tmp_path / "published")


def test_sigmoid_outputs_are_refused_as_not_a_distribution(tmp_path):
    result, _ = import_source(tmp_path, Source(head="sigmoid"))
    assert result.code == 78
    [line] = result.lines
    assert line.startswith(f"error: --onnx {tmp_path / 'source.onnx'}: the outputs lie in [0, 1] but a "
                           f"step's outputs sum to between ")
    assert line.endswith(
        "not 1: they are independent per-class scores (a sigmoid), not a distribution over classes, "
        "so argmax would still name the top class but the probabilities would not be comparable "
        "across steps; export logits or a softmax, pass --renormalize to divide them by their sum per "
        "step (scores, not calibrated probabilities), or, if these are logits, pass --outputs logits")
    assert_refused(result, 78, line, tmp_path / "published")


@pytest.mark.parametrize(("source", "flags", "line"), [
    pytest.param(Source(y_classes=4), ("--y-values", "0,2,4"),
                 "output 'output' has 4 classes but --y-values lists 3 values", id="output_classes"),
    pytest.param(Source(one_hot=True, x_classes=6), ("--x-values", "10..14"),
                 "input 'input' is one-hot over 6 classes but --x-values lists 5 values", id="one_hot_depth"),
])
def test_a_class_count_that_does_not_match_the_value_sets_is_refused(tmp_path, source, flags, line):
    result, _ = import_source(tmp_path, source, *flags)
    assert_refused(result, 78, f"error: --onnx {tmp_path / 'source.onnx'}: {line}", tmp_path / "published")


def test_logits_declared_as_probabilities_are_refused(tmp_path):
    result, _ = import_source(tmp_path, Source(), "--outputs", "probabilities")
    assert result.code == 78
    [line] = result.lines
    assert line.startswith(f"error: --onnx {tmp_path / 'source.onnx'}: --outputs probabilities, but the "
                           f"outputs range over [")
    assert line.endswith("]; pass --outputs logits if they are logits")
    assert_refused(result, 78, line, tmp_path / "published")


def test_a_reference_value_outside_the_x_values_is_exit_65(tmp_path):
    reference = write_rows(tmp_path / "reference.parquet", [[10, 11], [10, 99, 12]])
    result, _ = import_source(tmp_path, Source(), "--reference", reference)
    assert result.code == 65
    assert result.lines == [f"error: --reference {reference}: row 1: x[1] = 99 is not one of the model's "
                            f"input values (10..14)"]
    assert not (tmp_path / "published").exists()


GOOD_ROWS = [[10, 11], [12], [13, 14, 10], [11, 12, 13], [14]]
GOOD_LABELS = [[0, 2], [4], [2, 2, 0], [4, 0, 2], [0]]


def with_label_row(number: int, row) -> list:
    return [row if index == number else labels for index, labels in enumerate(GOOD_LABELS)]


BAD_LABELS = [
    pytest.param(pa.array(with_label_row(3, [4, 0]), pa.list_(pa.int64())),
                 "row 3: y has 2 labels but x has 3 steps; expected one label per step", id="short_row"),
    pytest.param(pa.array(with_label_row(3, [4, 0, 2, 2]), pa.list_(pa.int64())),
                 "row 3: y has 4 labels but x has 3 steps; expected one label per step", id="long_row"),
    pytest.param(pa.array(with_label_row(2, [2, 3, 0]), pa.list_(pa.int64())),
                 "row 2: y[1] = 3 is not one of the model's y values (0, 2, 4)", id="unknown_value"),
    pytest.param(pa.array(with_label_row(2, [2, 2, 2 ** 64 - 1]), pa.list_(pa.uint64())),
                 f"row 2: y[2] = {2 ** 64 - 1} is not one of the model's y values (0, 2, 4)",
                 id="unknown_uint64_value"),
    pytest.param(pa.array(with_label_row(1, [None]), pa.list_(pa.int64())),
                 "row 1: y[0] is null; expected one of the model's y values (0, 2, 4)", id="null_label"),
    pytest.param(pa.array(with_label_row(4, None), pa.list_(pa.int64())),
                 "row 4: y is null; expected one label per step of x", id="null_row"),
    pytest.param(pa.array(with_label_row(3, [4, 0]), pa.list_(pa.int64())).cast(pa.list_(pa.int8())),
                 "row 3: y has 2 labels but x has 3 steps; expected one label per step", id="int8_short_row"),
    pytest.param(pa.array([[float(v) for v in row] for row in GOOD_LABELS], pa.list_(pa.float64())),
                 "column 'y' is list<element: double>; expected a list of integers (list, large_list or "
                 "fixed_size_list of int8..int64 or uint8..uint64); floating-point values are refused "
                 "rather than truncated: cast them to integers", id="floats"),
    pytest.param(pa.array(["0,2", "4", "2,2,0", "4,0,2", "0"]),
                 "column 'y' is string; expected a list of integers (list, large_list or "
                 "fixed_size_list of int8..int64 or uint8..uint64)", id="strings"),
]


@pytest.mark.parametrize(("labels", "detail"), BAD_LABELS)
def test_a_bad_reference_y_column_is_exit_65(tmp_path, labels, detail):
    reference = write_rows(tmp_path / "reference.parquet", GOOD_ROWS, y=labels)
    result, _ = import_source(tmp_path, Source(), "--reference", reference)
    assert_refused(result, 65, f"error: --reference {reference}: {detail}", tmp_path / "published")


def test_good_reference_labels_of_any_integer_list_type_are_taken(tmp_path):
    labels = pa.array(GOOD_LABELS, pa.large_list(pa.uint8()))
    reference = write_rows(tmp_path / "reference.parquet", GOOD_ROWS, y=labels)
    result, model_path = import_source(tmp_path, Source(), "--reference", reference)
    assert result.code == 0, result.stderr
    assert json.loads(metadata(model_path)["baseline"])["quality"]["steps"] == 10


def test_a_custom_operator_domain_is_refused(tmp_path):
    model = build(Source())
    model.graph.node[-1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    onnx.save_model(model, str(tmp_path / "source.onnx"))
    result = run_export("--onnx", tmp_path / "source.onnx", "--x-values", "10..14", "--y-values", "0,2,4",
                        "--output", tmp_path / "published" / "model.onnx")
    assert_refused(result, 78,
                   f"error: --onnx {tmp_path / 'source.onnx'}: the model uses operator domain(s) "
                   f"com.example, which onnxruntime does not ship; only (default), ai.onnx, ai.onnx.ml, "
                   f"com.microsoft are allowed", tmp_path / "published")


def test_an_input_without_a_time_axis_is_refused(tmp_path):
    model = build(Source())
    del model.graph.input[0].type.tensor_type.shape.dim[1]
    onnx.save_model(model, str(tmp_path / "source.onnx"))
    result = run_export("--onnx", tmp_path / "source.onnx", "--x-values", "10..14", "--y-values", "0,2,4",
                        "--output", tmp_path / "published" / "model.onnx")
    assert_refused(result, 78,
                   f"error: --onnx {tmp_path / 'source.onnx'}: input 'input' has rank 1, so no time "
                   f"axis; expected (batch, time) class indices or (batch, time, classes) one-hot floats", tmp_path / "published")


def test_a_missing_source_is_exit_66(tmp_path):
    result = run_export("--onnx", tmp_path / "absent.onnx", "--x-values", "10..14", "--y-values", "0,2,4",
                        "--output", tmp_path / "published" / "model.onnx")
    assert_refused(result, 66, f"error: --onnx {tmp_path / 'absent.onnx'}: not found", tmp_path / "published")


@pytest.mark.parametrize(("flags", "message"), [
    pytest.param(("--y-values", "0,2,4"), "--onnx needs --x-values", id="no_x_values"),
    pytest.param(("--x-values", "10..14", "--y-values", "0,2,4", "--quantize", "int8"),
                 "--quantize: only with --artifacts (an imported model keeps its own opset)", id="quantize"),
    pytest.param(("--x-values", "10..14", "--y-values", "0,2,4", "--artifacts", "artifacts"),
                 "argument --artifacts: not allowed with argument --onnx", id="both_modes"),
    pytest.param(("--x-values", "10..14", "--y-values", "0,2,4", "--keras", "model.keras"),
                 "argument --keras: not allowed with argument --onnx", id="onnx_and_keras"),
    pytest.param(("--x-values", "10..14", "--y-values", "0,2,4", "--outputs", "logits", "--renormalize"),
                 "--renormalize: not with --outputs logits (logits get a softmax)", id="renormalize_logits"),
])
def test_import_usage_errors_are_exit_2(tmp_path, flags, message):
    result = run_export("--onnx", write_source(tmp_path / "source.onnx", Source()),
                        "--output", tmp_path / "published" / "model.onnx", *flags)
    assert result.code == 2
    assert not (tmp_path / "published").exists()
    assert result.lines == [f"python -m export: error: {message} (see --help)"]


def test_import_flags_without_onnx_are_exit_2():
    result = run_export("--x-values", "0..3")
    assert result.code == 2
    assert result.lines == ["python -m export: error: --x-values: only with --onnx or --keras (see --help)"]


# --keras: a Keras file made elsewhere, converted with tf2onnx ---------------------------------
KERAS_X = "0..10"  # the question's model: 11 input classes, one-hot
KERAS_Y = "0..24"  # 25 output classes


def question_model(activation: str = "softmax"):
    """The question's model, untrained and seeded: one-hot (batch, 4, 11) -> 4 stacked LSTM(24)
    -> a Dense(25) per step."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 11))
    hidden = inputs
    for _ in range(4):
        hidden = keras.layers.LSTM(24, return_sequences=True, use_cudnn=False)(hidden)
    # Wide initial weights: an untrained head's classes are then far from tied.
    head = keras.layers.Dense(25, activation=activation,
                              kernel_initializer=keras.initializers.RandomNormal(stddev=50.0, seed=1))
    return keras.Model(inputs, head(hidden))


def ids_model(mask: str | None = None):
    """Integer ids (batch, time) with a dynamic time axis -> Embedding -> LSTM -> softmax."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((None,), dtype="int32")
    hidden = keras.layers.Embedding(len(X_VALUES), 3, mask_zero=mask == "mask_zero")(inputs)
    if mask == "masking":
        hidden = keras.layers.Masking()(hidden)
    hidden = keras.layers.LSTM(4, return_sequences=True, use_cudnn=False)(hidden)
    return keras.Model(inputs, keras.layers.Dense(len(Y_VALUES), activation="softmax")(hidden))


def import_keras(tmp_path, model, suffix: str, x_values: str, y_values: str, *extra: str) -> tuple[CliResult, str]:
    path = tmp_path / f"source.{suffix}"
    model.save(str(path))
    output = tmp_path / "published" / "model.onnx"
    result = run_export("--keras", path, "--x-values", x_values, "--y-values", y_values, "--output", output,
                        *extra)
    return result, str(output)


def assert_scores_like_keras(tmp_path, model_path: str, model, renormalized: bool = False) -> None:
    """`python -m score` on 40 random rows gives Keras predict's argmax and top-k (a stable
    descending sort) mapped to the y values, probabilities within 1e-5 (another runtime)."""
    from conftest import write_x

    x = np.random.default_rng(8).integers(0, 11, size=(40, 4))
    data = write_x(tmp_path / "rows.parquet", x)
    result = run_score(data, tmp_path / "scored.parquet", "--model", model_path, "--top-k", TOP_K, "--quiet")
    assert result.code == 0, result.stderr
    out = pq.read_table(tmp_path / "scored.parquet")
    probabilities = model.predict(np.eye(11, dtype=np.float32)[x], verbose=0)
    if renormalized:
        probabilities = probabilities / probabilities.sum(axis=-1, keepdims=True)
    order = np.argsort(-probabilities, axis=-1, kind="stable")[..., :TOP_K]
    assert out.column("y_pred").to_pylist() == probabilities.argmax(-1).tolist()  # y values 0..24
    assert out.column("top_k_values").to_pylist() == order.tolist()
    np.testing.assert_allclose(np.asarray(out.column("top_k_probs").to_pylist(), np.float32),
                               np.take_along_axis(probabilities, order, -1), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["keras", "h5"])
def test_the_questions_keras_model_is_imported_and_scores_like_keras_predict(tmp_path, suffix):
    import hashlib

    model = question_model()
    result, model_path = import_keras(tmp_path, model, suffix, KERAS_X, KERAS_Y)
    assert result.code == 0, result.stderr
    spec = published_spec(model_path)
    assert (spec.x_values, spec.y_values, spec.seq_len, spec.variable_length) == (
        tuple(range(11)), tuple(range(25)), 4, False)
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    source = report["source"]
    assert source["framework"] == "keras"
    assert source["sha256"] == hashlib.sha256((tmp_path / f"source.{suffix}").read_bytes()).hexdigest()
    assert {"keras_version", "tensorflow_version", "tf2onnx_version"} <= set(source)
    assert json.loads(metadata(model_path)["source"]) == source
    assert report["wrapping"]["input"] == "one-hot (depth 11) from x"
    keras_check = report["checks"]["keras"]
    assert keras_check["passed"] is True and keras_check["random"]["max_abs_difference"] <= 1e-5
    assert result.stdout.splitlines()[0].startswith(f"imported {tmp_path / f'source.{suffix}'} (keras ")
    assert result.stdout.splitlines()[2].startswith("verified the conversion against Keras predict (random: ")
    assert_scores_like_keras(tmp_path, model_path, model)


@pytest.mark.slow
def test_keras_sigmoid_outputs_are_refused_and_accepted_with_renormalize(tmp_path):
    model = question_model("sigmoid")
    result, _ = import_keras(tmp_path, model, "keras", KERAS_X, KERAS_Y)
    assert result.code == 78
    [line] = result.lines
    assert line.startswith(f"error: --keras {tmp_path / 'source.keras'}: the outputs lie in [0, 1] but ")
    assert "pass --renormalize to divide them by their sum per step" in line
    assert not (tmp_path / "published").exists()
    result, model_path = import_keras(tmp_path, model, "keras", KERAS_X, KERAS_Y, "--renormalize")
    assert result.code == 0, result.stderr
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    assert report["wrapping"]["renormalized"] is True
    assert report["checks"]["keras"]["passed"] is True
    assert metadata(model_path)["probabilities"] == RENORMALIZED
    assert_scores_like_keras(tmp_path, model_path, model, renormalized=True)


@pytest.mark.slow
def test_a_keras_model_with_a_dynamic_time_axis_is_variable_length_and_checked_on_reference_rows(tmp_path):
    reference = write_rows(tmp_path / "reference.parquet", ragged_rows(30, seed=9, lengths=(1, MAX_LENGTH)))
    result, model_path = import_keras(tmp_path, ids_model(), "keras", "10..14", "0,2,4",
                                      "--max-length", MAX_LENGTH, "--reference", reference)
    assert result.code == 0, result.stderr
    spec = published_spec(model_path)
    assert (spec.min_len, spec.max_len, len(spec.states)) == (1, MAX_LENGTH, 1)
    checks = json.loads((tmp_path / "published" / "export_report.json").read_text())["checks"]
    assert checks["keras"]["reference"]["rows"] == 30
    assert checks["keras"]["reference"]["max_abs_difference"] <= 1e-5
    assert checks["state_carry"]["passed"] is True


@pytest.mark.slow
def test_a_keras_conversion_that_differs_from_keras_is_exit_70(tmp_path, monkeypatch):
    import export.source_checks

    monkeypatch.setattr(export.source_checks, "KERAS_TOLERANCE", -1.0)  # no difference passes
    result, _ = import_keras(tmp_path, ids_model(), "keras", "10..14", "0,2,4", "--max-length", MAX_LENGTH)
    failed = refused_with_the_failed_report(tmp_path, result, "keras random: max |p_onnx - p_keras| = ")
    assert failed["checks"]["keras"]["passed"] is False


@pytest.mark.slow
@pytest.mark.parametrize("mask", ["mask_zero", "masking"])
def test_a_masked_keras_model_is_refused_as_a_loop(tmp_path, mask):
    result, _ = import_keras(tmp_path, ids_model(mask), "keras", "10..14", "0,2,4")
    assert_refused(result, 78,
                   f"error: --keras {tmp_path / 'source.keras'}: tf2onnx turned the recurrence into Loop "
                   f"instead of the fused LSTM/GRU op, as it does for a mask (a Masking layer or "
                   f"Embedding(mask_zero=True)) or recurrent dropout; onnxruntime would run it step by "
                   f"step. Remove the mask (scoring never pads a row's real steps) and save the model again", tmp_path / "published")


@pytest.mark.slow
def test_a_keras_model_with_an_unknown_custom_layer_is_refused(tmp_path):
    import keras

    class Doubled(keras.layers.Layer):  # local: Keras cannot find it again by name
        def call(self, inputs):
            return inputs * 2.0

    inputs = keras.Input((None,), dtype="int32")
    hidden = Doubled()(keras.layers.Embedding(len(X_VALUES), 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(len(Y_VALUES), activation="softmax")(hidden))
    result, _ = import_keras(tmp_path, model, "keras", "10..14", "0,2,4")
    assert_refused(result, 78,
                   f"error: --keras {tmp_path / 'source.keras'}: Keras cannot deserialize a custom layer or "
                   f"object without its code (Could not locate class 'Doubled'); export the model to ONNX "
                   f"where its code is importable, and pass --onnx", tmp_path / "published")


def test_keras_usage_errors_are_exit_2(tmp_path):
    result = run_export("--keras", tmp_path / "model.keras", "--x-values", "0..3", "--y-values", "0..2",
                        "--time-axis", "0")
    assert result.code == 2
    assert result.lines == ["python -m export: error: --time-axis: only with --onnx (a Keras model is "
                            "batch-major: its time axis is 1) (see --help)"]
    result = run_export("--keras", tmp_path / "model.keras", "--y-values", "0..2")
    assert result.lines == ["python -m export: error: --keras needs --x-values (see --help)"]


def test_a_missing_keras_file_is_exit_66(tmp_path):
    result = run_export("--keras", tmp_path / "absent.keras", "--x-values", "0..3", "--y-values", "0..2",
                        "--output", tmp_path / "published" / "model.onnx")
    assert_refused(result, 66, f"error: --keras {tmp_path / 'absent.keras'}: not found", tmp_path / "published")


def test_a_spec_that_is_not_causal_takes_one_length_and_no_state():
    assert Spec.from_json(Spec((0, 1), (0, 1), 4, causal=False).to_json()).causal is False
    assert "causal" not in Spec((0, 1), (0, 1), 4).to_json()  # older scorers read it unchanged
    with pytest.raises(ModelError, match="not causal"):
        Spec((0, 1), (0, 1), 4, min_len=1, causal=False)
    with pytest.raises(ModelError, match="expected true or false"):
        Spec.from_json('{"x_values": [0], "y_values": [0], "seq_len": 2, "causal": "no"}')


@pytest.mark.parametrize(("head", "calibrated"), [("sigmoid", False), ("softmax", True)])
def test_the_estimated_accuracy_of_renormalised_scores_is_labelled_uncalibrated(tmp_path, head, calibrated):
    result, model_path = import_source(tmp_path, Source(head=head), "--renormalize")
    assert result.code == 0, result.stderr
    rows = ragged_rows(40, seed=3, lengths=(1, MAX_LENGTH))
    data, summary = write_rows(tmp_path / "rows.parquet", rows), tmp_path / "summary.json"
    assert run_score(data, tmp_path / "scored.parquet", "--model", model_path, "--summary", summary,
                     "--quiet").code == 0
    found = json.loads(summary.read_text())
    estimate = found["estimated_accuracy"]
    source = onnx.load(tmp_path / "source.onnx")
    top1 = np.concatenate([source_by_hand(source, Source(head=head), row).max(axis=-1) for row in rows])
    assert estimate["value"] == pytest.approx(float(top1.mean()), abs=1e-6)
    assert estimate["calibrated"] is calibrated
    assert estimate["assumes"].startswith("nothing: top_k_probs are renormalised scores" if not calibrated
                                          else "the model is as calibrated")
    assert found["baseline_quality"] == "none"  # imported without a labelled --reference
