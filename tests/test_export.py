"""The export stage: a verified, self-describing model.onnx, or nothing published at all.

One tiny model of the default shape (2 LSTM layers of 64 units, one epoch on 2,000 rows) is
trained and exported once for the module; destructive tests work on copies of its folder.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import (
    FIXTURES,
    ROOT,
    CliResult,
    assert_refused,
    read_json,
    run_export,
    run_module,
    small_default,
)

from score.spec import Spec, StateTensors

HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx")


def fit(artifacts: Path, dataset_path: Path, *flags: str) -> None:
    from train.__main__ import main

    with redirect_stdout(io.StringIO()):
        code = main(["--data", str(dataset_path), "--artifacts", str(artifacts), "--epochs", "1",
                     "--quiet", *flags])
    assert code == 0



def published(folder: Path) -> dict[str, bytes]:
    """The published model, its checksum and its report: what a refusal must leave alone."""
    names = ("model.onnx", "model.onnx.sha256", "export_report.json")
    return {name: (folder / name).read_bytes() for name in names}


def split_indices(artifacts: Path) -> np.ndarray:
    """The saved test split's inputs as class indices (the default's x values are 0..10)."""
    return np.array(pq.read_table(artifacts / "test.parquet").column("x").to_pylist(), dtype=np.int32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, CliResult]:
    folder = tmp_path_factory.mktemp("export")
    artifacts = folder / "artifacts"
    fit(artifacts, small_default(folder / "small.parquet", 2000), "--preset", "default")
    result = run_export("--artifacts", artifacts)
    assert result.code == 0, result.stderr
    return artifacts, result


@pytest.fixture
def copy(exported, tmp_path) -> Path:
    """A private copy of the exported artifacts folder, for tests that break things."""
    target = tmp_path / "artifacts"
    shutil.copytree(exported[0], target)
    return target


# What a successful export writes ----------------------------------------------------------------
@pytest.mark.slow
def test_export_writes_the_model_its_checksum_and_its_report(exported):
    artifacts, result = exported
    model = artifacts / "model.onnx"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert result.stderr == ""
    assert re.fullmatch(
        r"verified against Keras \(test_split: 200 rows, max \|diff\| \S+, argmax disagreements 0; "
        r"random: 4096 rows, max \|diff\| \S+, argmax disagreements 0\)\n"
        r"exposed the state of 2 LSTM layer\(s\); resumed runs match whole runs \(test_split: split "
        r"after steps 1\.\.3, max \|diff\| \S+; random: split after steps 1\.\.3, max \|diff\| \S+\)\n"
        rf"wrote {re.escape(str(model))} \({model.stat().st_size} bytes, sha256 {digest[:16]}\.\.\.\)\n",
        result.stdout,
    )
    assert not (artifacts / "export_report.failed.json").exists()
    assert not (artifacts / "model.int8.onnx").exists()


@pytest.mark.slow
def test_sha256_file_is_in_sha256sum_format_and_matches(exported):
    artifacts, _ = exported
    digest = hashlib.sha256((artifacts / "model.onnx").read_bytes()).hexdigest()
    assert (artifacts / "model.onnx.sha256").read_text() == f"{digest}  model.onnx\n"
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", "model.onnx.sha256"], cwd=artifacts,
                               capture_output=True, text=True, check=False)
        assert (check.returncode, check.stdout) == (0, "model.onnx: OK\n")


@pytest.mark.slow
def test_export_report_figures(exported):
    artifacts, _ = exported
    report = read_json(artifacts / "export_report.json")
    model = artifacts / "model.onnx"
    assert report["published"] is True
    assert report["output"] == str(model)
    assert report["bytes"] == model.stat().st_size
    assert report["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert (report["opset"], report["tolerance"], report["near_tie"]) == (17, 1e-5, 1e-6)
    parity = report["parity"]
    assert (parity["passed"], parity["failures"]) == (True, [])
    assert parity["test_split"]["rows"] == 200 and parity["random"]["rows"] == 4096
    for name in ("test_split", "random"):
        assert 0 <= parity[name]["max_abs_difference"] <= 1e-5
        assert parity[name]["argmax_disagreements_not_near_tie"] == 0
        assert parity[name]["max_row_sum_error"] < 1e-4
    carry = parity["state_carry"]
    assert (carry["tolerance"], carry["passed"], carry["failures"]) == (1e-6, True, [])
    for name, rows in (("test_split", 200), ("random", 4096)):
        assert carry[name]["rows"] == rows and carry[name]["split_points"] == [1, 2, 3]
        assert 0 <= carry[name]["max_abs_difference"] <= 1e-6
        assert carry[name]["default_states_max_abs_difference"] == 0.0  # states left out are zeros
    assert report["scoring_interface"] == {
        "states": [{"units": 64, "initial_h": f"initial_h_{layer}", "initial_c": f"initial_c_{layer}",
                    "final_h": f"final_h_{layer}", "final_c": f"final_c_{layer}"} for layer in (0, 1)],
        "states_withheld": None,
        "heads": ["seqscore_top_probabilities", "seqscore_top_classes", "seqscore_step_sums"],
        "head_input": "seqscore_top_k",
    }
    assert set(report["versions"]) == {"tensorflow", "keras", "tf2onnx", "onnx"}


@pytest.mark.slow
def test_onnx_matches_keras_within_tolerance(exported):
    """Parity recomputed here rather than read from the report."""
    import keras
    import onnxruntime as ort

    import train  # noqa: F401  (registers OneHot)

    artifacts, _ = exported
    indices = np.concatenate([
        split_indices(artifacts),
        np.random.default_rng(7).integers(0, 11, size=(500, 4), dtype=np.int32),
    ])
    expected = keras.saving.load_model(str(artifacts / "model.keras")).predict(indices, verbose=0)
    session = ort.InferenceSession(str(artifacts / "model.onnx"), providers=["CPUExecutionProvider"])
    actual = session.run(["probabilities"], {"x": indices})[0]
    assert actual.dtype == np.float32 and actual.shape == (len(indices), 4, 25)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(actual.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_graph_uses_the_fused_lstm_op_and_the_documented_io(exported):
    import onnx

    model = onnx.load(str(exported[0] / "model.onnx"))
    op_types = [node.op_type for node in model.graph.node]
    assert op_types.count("LSTM") == 2  # the default shape: two stacked layers
    assert not {"Loop", "Scan"} & set(op_types)
    lstm = next(node for node in model.graph.node if node.op_type == "LSTM")
    assert {a.name: a.i for a in lstm.attribute if a.name == "hidden_size"} == {"hidden_size": 64}
    assert [opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")] == [17]

    def described(value) -> tuple:
        optional = value.type.HasField("optional_type")
        tensor = (value.type.optional_type.elem_type if optional else value.type).tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in tensor.shape.dim)
        return value.name, onnx.TensorProto.DataType.Name(tensor.elem_type), dims

    layers = (0, 1)
    assert [described(value) for value in model.graph.input] == [
        ("x", "INT32", ("batch", "time")),
        *[(f"initial_{part}_{layer}", "FLOAT", (1, "state_batch", 64)) for layer in layers for part in "hc"],
        ("seqscore_top_k", "INT64", (1,)),
    ]
    assert [described(value) for value in model.graph.output] == [
        ("probabilities", "FLOAT", ("batch", "time", 25)),
        *[(f"final_{part}_{layer}", "FLOAT", (1, "batch", 64)) for layer in layers for part in "hc"],
        ("seqscore_top_probabilities", "FLOAT", ("batch", "time", "k")),
        ("seqscore_top_classes", "INT64", ("batch", "time", "k")),
        ("seqscore_step_sums", "FLOAT", ("batch", "time")),
    ]
    # The new inputs are ONNX optional inputs (zeros; K = 1 when not fed), not initializers.
    assert all(value.type.HasField("optional_type") for value in model.graph.input[1:])
    assert not {value.name for value in model.graph.input} & {t.name for t in model.graph.initializer}
    assert "initial_h_i / initial_c_i" in model.doc_string and "seqscore_top_k" in model.doc_string


@pytest.mark.slow
def test_the_model_takes_any_batch_size_and_sequence_length(exported):
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    for rows, steps in ((1, 4), (3, 7), (257, 1)):
        indices = np.zeros((rows, steps), dtype=np.int32)
        assert session.run(["probabilities"], {"x": indices})[0].shape == (rows, steps, 25)


@pytest.mark.slow
def test_metadata_round_trip(exported):
    import keras
    import onnx
    import onnxruntime as ort
    import tensorflow as tf
    import tf2onnx

    from score.model import baseline, load

    artifacts, _ = exported
    metadata = ort.InferenceSession(
        str(artifacts / "model.onnx"), providers=["CPUExecutionProvider"]
    ).get_modelmeta().custom_metadata_map
    metrics = read_json(artifacts / "metrics.json")
    report = read_json(artifacts / "export_report.json")
    spec = Spec.from_dict(read_json(artifacts / "spec.json"))
    spec = dataclasses.replace(spec, states=tuple(
        StateTensors(**state) for state in report["scoring_interface"]["states"]))

    assert [state.units for state in spec.states] == [64, 64]
    assert Spec.from_json(metadata["spec"]) == spec
    assert load(str(artifacts / "model.onnx")).spec == spec
    summary = json.loads(metadata["metrics"])
    assert summary == {key: metrics[key] for key in summary}
    assert {"token_accuracy", "token_accuracy_per_step", "sequence_accuracy", "top3_accuracy",
            "majority_baseline_accuracy", "epochs_run"} <= set(summary)
    assert metadata["data_fingerprint"] == metrics["data_fingerprint"]
    assert json.loads(metadata["baseline"]) == read_json(artifacts / "baseline.json")
    assert metadata["tensorflow_version"] == tf.__version__
    assert metadata["keras_version"] == keras.__version__
    assert metadata["tf2onnx_version"] == tf2onnx.__version__
    assert metadata["onnx_version"] == onnx.__version__
    created = dt.datetime.fromisoformat(metadata["created_at"])
    assert created.utcoffset() == dt.timedelta(0)
    assert metadata["created_at"] == report["created_at"]
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(hours=1)
    stamp = created.strftime("%Y%m%dT%H%M%SZ")
    assert metadata["version"] == f"{stamp}-{metrics['data_fingerprint'][:12]}"
    assert baseline(load(str(artifacts / "model.onnx"))) == read_json(artifacts / "baseline.json")


BLOCKED_SESSION = """
import sys

BLOCKED = {blocked!r}


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is not installed here")
        return None


sys.meta_path.insert(0, Blocker())
import numpy as np
import pyarrow as pa

from score.core import ScoreOptions, score_batch
from score.model import load

scorer = load(sys.argv[1])
batch = pa.record_batch({{"x": pa.array([[0, 1, 2, 3], [10, 10, 10, 10], [4, 4, 99, 4]],
                                         pa.list_(pa.int8()))}})
scored = score_batch(scorer, batch, ScoreOptions(on_invalid="null"))
print(scored.column("y_pred").to_pylist())
print(scored.column("error").to_pylist())
print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
"""


@pytest.mark.slow
def test_model_loads_and_scores_where_only_onnxruntime_numpy_and_pyarrow_exist(exported):
    model = exported[0] / "model.onnx"
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_SESSION.format(blocked=HEAVY), str(model)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    y_pred, errors, heavy = result.stdout.splitlines()
    assert re.fullmatch(r"\[\[\d+, \d+, \d+, \d+\], \[\d+, \d+, \d+, \d+\], None\]", y_pred)
    assert errors == ("[None, None, \"x[2] = 99 is not one of the model's input values (0..10)\"]")
    assert heavy == "[]"


@pytest.mark.slow
def test_question_preset_converts(tmp_path):
    import onnx

    artifacts = tmp_path / "artifacts"
    fit(artifacts, small_default(tmp_path / "small.parquet", 2000), "--preset", "question")
    result = run_export("--artifacts", artifacts)
    assert result.code == 0, result.stderr
    model = onnx.load(str(artifacts / "model.onnx"))
    lstms = [node for node in model.graph.node if node.op_type == "LSTM"]
    assert [a.i for node in lstms for a in node.attribute if a.name == "hidden_size"] == [24] * 4
    assert not {"Loop", "Scan"} & {node.op_type for node in model.graph.node}
    assert read_json(artifacts / "export_report.json")["parity"]["passed"] is True


# Refusals: exit code, one line, and the previous model.onnx and .sha256 byte for byte -------------
def save_keras(artifacts: Path, units: int, activation: str | None, go_backwards: bool = False) -> None:
    """Replace model.keras with an untrained model whose head is given."""
    import keras

    from train.model import OneHot

    inputs = keras.Input(shape=(None,), dtype="int32", name="x")
    hidden = OneHot(11, name="one_hot")(inputs)
    hidden = keras.layers.LSTM(8, return_sequences=True, use_cudnn=False, go_backwards=go_backwards)(hidden)
    outputs = keras.layers.Dense(units, activation=activation, name="probabilities")(hidden)
    keras.Model(inputs, outputs).save(str(artifacts / "model.keras"))


def assert_kept(result: CliResult, code: int, line: str, folder: Path, before: dict) -> None:
    """A refused export: one line, and the model published before left byte for byte."""
    assert_refused(result, code, line)
    assert published(folder) == before


@pytest.mark.slow
def test_missing_model_exits_66(copy):
    before = published(copy)
    (copy / "model.keras").unlink()
    result = run_export("--artifacts", copy)
    assert_kept(result, 66, f"error: {copy}/model.keras: not found; run `make train` first",
                   copy, before)


def test_missing_artifacts_folder_exits_66(tmp_path):
    result = run_export("--artifacts", tmp_path / "nothing")
    assert (result.code, result.lines) == (
        66, [f"error: {tmp_path}/nothing/model.keras: not found; run `make train` first"]
    )
    assert not (tmp_path / "nothing").exists()


@pytest.mark.slow
def test_missing_test_split_exits_66(copy):
    before = published(copy)
    (copy / "test.parquet").unlink()
    result = run_export("--artifacts", copy)
    assert_kept(result, 66, f"error: {copy}/test.parquet: not found; run `make train` first",
                   copy, before)


@pytest.mark.slow
def test_corrupt_model_keras_exits_78(copy):
    before = published(copy)
    (copy / "model.keras").write_bytes(b"not a zip file")
    result = run_export("--artifacts", copy)
    assert result.code == 78 and len(result.lines) == 1
    assert result.lines[0].startswith(f"error: {copy}/model.keras: cannot be loaded by Keras (")
    assert published(copy) == before


EXPECTED_HEAD = "expected (batch, time, 25) softmax probabilities over the y values 0..24"


@pytest.mark.slow
@pytest.mark.parametrize(
    "units,activation,line",
    [
        pytest.param(24, "softmax", "error: the Keras model's output has shape (None, None, 24); "
                     + EXPECTED_HEAD, id="one_class_short"),
        pytest.param(26, "softmax", "error: the Keras model's output has shape (None, None, 26); "
                     + EXPECTED_HEAD, id="one_class_too_many"),
        pytest.param(25, None, "error: the Keras model's last layer 'probabilities' ends in linear, "
                     "not softmax; " + EXPECTED_HEAD, id="no_activation"),
        pytest.param(25, "sigmoid", "error: the Keras model's last layer 'probabilities' ends in "
                     "sigmoid, not softmax; " + EXPECTED_HEAD, id="sigmoid"),
    ],
)
def test_a_model_without_a_softmax_head_over_the_y_values_is_refused(copy, units, activation, line):
    before = published(copy)
    save_keras(copy, units, activation)
    assert_kept(run_export("--artifacts", copy), 78, line, copy, before)


@pytest.mark.slow
def test_a_spec_from_another_run_is_refused(copy):
    before = published(copy)
    spec = read_json(copy / "spec.json")
    spec["x_values"] = list(range(12))
    (copy / "spec.json").write_text(json.dumps(spec))
    assert_kept(
        run_export("--artifacts", copy), 78,
        "error: the Keras model one-hot encodes 11 input classes but spec.json lists 12 x values "
        "(0..11); the two come from different runs",
        copy, before,
    )


def nudged_bias(convert):
    """tf2onnx's output with one float initializer nudged: a conversion that went wrong."""
    from onnx import numpy_helper

    def wrong_conversion(model, opset):
        model_proto = convert(model, opset)
        for initializer in model_proto.graph.initializer:
            values = numpy_helper.to_array(initializer)
            if values.dtype == np.float32 and values.shape == (25,):  # the Dense bias
                values = values.copy()
                values[0] += 0.5  # one class only: a shift of every logit would cancel out
                initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
                return model_proto
        raise AssertionError("no (25,) float initializer to nudge")

    return wrong_conversion


@pytest.mark.slow
def test_failed_parity_publishes_nothing_and_exits_70(copy, monkeypatch):
    import export.conversion

    monkeypatch.setattr(export.conversion, "convert", nudged_bias(export.conversion.convert))
    failed = refused_with_nothing_published(
        copy,
        r"error: ONNX does not match Keras, nothing published: test_split: max \|p_onnx - p_keras\| "
        r"= \S+ > 1e-05 \(step t allows 1e-05 x max\(1, \(t \+ 1\) / 4\)\); test_split: argmax differs "
        r"on \d+ step\(s\) that are not near-ties; random: max \|p_onnx - p_keras\| = \S+ > 1e-05 .*",
    )
    assert failed["parity"]["passed"] is False
    assert [name for name in (p.name for p in copy.iterdir()) if name.startswith(".")] == []


def refused_with_nothing_published(copy, pattern: str) -> dict:
    """Run the export: exit 70, one line matching ``pattern``, the published files untouched;
    return the refused conversion's report."""
    before = published(copy)
    result = run_export("--artifacts", copy)
    assert result.code == 70 and len(result.lines) == 1 and result.stdout == ""
    assert re.fullmatch(pattern, result.lines[0]), result.lines[0]
    assert published(copy) == before
    failed = read_json(copy / "export_report.failed.json")
    assert failed["published"] is False
    return failed


@pytest.mark.slow
def test_zero_tolerance_fails_parity(copy, monkeypatch):
    import export.parity

    verify = export.parity.verify
    monkeypatch.setattr(
        export.parity, "verify",
        lambda model, model_bytes, inputs, tolerance, near_tie, states: verify(
            model, model_bytes, inputs, 0.0, near_tie, states
        ),
    )
    before = published(copy)
    result = run_export("--artifacts", copy)
    assert result.code == 70 and len(result.lines) == 1
    assert result.lines[0].startswith(
        "error: ONNX does not match Keras, nothing published: test_split: max |p_onnx - p_keras| = "
    )
    assert published(copy) == before


def swapped_states(add_scoring_interface):
    """The interface as added, but listing each layer's initial h as its c and the reverse: a
    wiring fault that Keras parity (which feeds only x) cannot see."""

    def wrong_wiring(model_proto, states_withheld=None):
        interface = add_scoring_interface(model_proto, states_withheld)
        states = tuple(dataclasses.replace(state, initial_h=state.initial_c, initial_c=state.initial_h)
                       for state in interface.states)
        return dataclasses.replace(interface, states=states)

    return wrong_wiring


@pytest.mark.slow
def test_failed_state_carry_publishes_nothing_and_exits_70(copy, monkeypatch):
    import export.graph

    monkeypatch.setattr(export.graph, "add_scoring_interface",
                        swapped_states(export.graph.add_scoring_interface))
    failed = refused_with_nothing_published(
        copy,
        r"error: ONNX resumed from a carried LSTM state does not match ONNX run whole, nothing "
        r"published: test_split: max \|p_pieces - p_whole\| = \S+ > 1e-06 \(split after steps 1, 2, 3\); "
        r"random: max \|p_pieces - p_whole\| = \S+ > 1e-06 \(split after steps 1, 2, 3\)",
    )
    assert failed["parity"]["passed"] is False
    assert failed["parity"]["state_carry"]["passed"] is False
    assert failed["parity"]["test_split"]["max_abs_difference"] <= 1e-5  # Keras parity held
    assert failed["scoring_interface"]["states"][0]["initial_h"] == "initial_c_0"
    assert [name for name in (p.name for p in copy.iterdir()) if name.startswith(".")] == []


@pytest.mark.slow
def test_a_model_that_reads_later_steps_is_published_without_states(copy):
    """go_backwards: tf2onnx writes a forward LSTM after a ReverseSequence, which no rule on
    the graph catches; running the model does."""
    save_keras(copy, 25, "softmax", go_backwards=True)
    result = run_export("--artifacts", copy)
    assert result.code == 0, result.stderr
    report = read_json(copy / "export_report.json")
    assert report["parity"]["passed"] is True and "state_carry" not in report["parity"]
    interface = report["scoring_interface"]
    assert interface["states"] == [] and interface["heads"] == [
        "seqscore_top_probabilities", "seqscore_top_classes", "seqscore_step_sums"]
    assert re.fullmatch(r"a row's first steps run alone differ from the same steps of the whole row by "
                        r"up to \S+: the model reads later steps, so a prefix has no state of its own",
                        interface["states_withheld"])
    assert f"no LSTM state exposed, so no prefix is shared in scoring: {interface['states_withheld']}\n" in result.stdout
    assert fixture_spec(copy / "model.onnx").states == ()


def test_parity_error_is_a_one_line_seqscore_error():
    from export.parity import ParityError
    from score.errors import EXIT_SOFTWARE, SeqscoreError

    assert issubclass(ParityError, SeqscoreError) and ParityError.exit_code == EXIT_SOFTWARE


# int8 ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_int8_is_written_when_the_agreement_threshold_is_met(copy):
    """In a subprocess: the quantiser's advice on the root logger and TensorFlow stay quiet."""
    result = run_module("export", "--artifacts", copy, "--quantize", "int8",
                        "--quantize-agreement", "0.0")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    int8 = copy / "model.int8.onnx"
    digest = hashlib.sha256(int8.read_bytes()).hexdigest()
    assert (copy / "model.int8.onnx.sha256").read_text() == f"{digest}  model.int8.onnx\n"
    report = read_json(copy / "export_report.json")["int8"]
    assert report["published"] is True and report["path"] == str(int8)
    assert 0.0 <= report["argmax_agreement"] <= 1.0 and report["threshold"] == 0.0
    assert report["int8_bytes"] == int8.stat().st_size
    assert report["float_bytes"] == (copy / "model.onnx").stat().st_size
    assert report["speedup"] > 0
    assert re.search(
        rf"^int8: argmax agreement [01]\.\d{{4}} \(threshold 0\.0\), {report['int8_bytes']} bytes vs "
        rf"{report['float_bytes']}, speed-up x\S+: wrote {re.escape(str(int8))}$",
        result.stdout, re.MULTILINE,
    )
    from score.model import load

    assert load(str(int8)).spec == load(str(copy / "model.onnx")).spec
    assert [state.units for state in load(str(int8)).spec.states] == [64, 64]
    # Not a gate: int8's dynamic activation scales depend on what shares a call.
    assert report["state_carry_max_abs_difference"] >= 0


@pytest.mark.slow
def test_int8_is_not_written_below_the_threshold(copy, tmp_path):
    output = tmp_path / "elsewhere" / "m.onnx"
    output.parent.mkdir()
    (output.parent / "m.int8.onnx").write_bytes(b"quantised from an older model")
    result = run_export("--artifacts", copy, "--output", output, "--quantize", "int8",
                        "--quantize-agreement", "1.01")
    assert result.code == 0, result.stderr
    assert re.search(r"^int8: argmax agreement .*\(threshold 1\.01\).*: not written$", result.stdout, re.MULTILINE)
    report = read_json(output.parent / "export_report.json")
    assert report["int8"]["published"] is False and "path" not in report["int8"]
    assert sorted(p.name for p in output.parent.iterdir()) == [
        "export_report.json", "m.onnx", "m.onnx.sha256",  # the stale int8 file is gone too
    ]
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    assert (output.parent / "m.onnx.sha256").read_text() == f"{digest}  m.onnx\n"



# A variable-length model: parity on rows of many lengths ---------------------------------------------
@pytest.fixture(scope="module")
def exported_ragged(tmp_path_factory) -> tuple[Path, CliResult]:
    from train import data

    folder = tmp_path_factory.mktemp("ragged")
    source = folder / "ragged.parquet"
    data.write_parquet(data.ragged_dataset(rows=400, max_len=12), str(source))
    artifacts = folder / "artifacts"
    fit(artifacts, source, "--layers", "1", "--units", "8")
    result = run_export("--artifacts", artifacts)
    assert result.code == 0, result.stderr
    return artifacts, result


@pytest.mark.slow
def test_ragged_parity_covers_every_length_and_the_report_names_them(exported_ragged):
    artifacts, result = exported_ragged
    report = read_json(artifacts / "export_report.json")
    parity = report["parity"]
    assert (parity["passed"], parity["failures"]) == (True, [])
    test_lengths = sorted({len(row) for row in pq.read_table(artifacts / "test.parquet")
                           .column("x").to_pylist()})
    assert parity["test_split"]["lengths"] == test_lengths and len(test_lengths) > 5
    assert parity["random"]["lengths"] == list(range(1, 13))  # every length 1..max_len
    assert report["lengths_covered"] == {"test_split": test_lengths, "random": list(range(1, 13))}
    for name in ("test_split", "random"):
        assert 0 <= parity[name]["max_abs_difference"] <= 1e-5
        assert parity[name]["argmax_disagreements_not_near_tie"] == 0
    assert re.search(r"random: 4096 rows of lengths 1\.\.12, max \|diff\| ", result.stdout)
    carry = parity["state_carry"]
    assert carry["passed"] is True
    # Each length is cut after its first step, in its middle and before its last: 1..11 in all.
    assert carry["random"]["split_points"] == list(range(1, 12))
    from export.parity import verification_inputs

    rows = verification_inputs(Spec.from_dict(read_json(artifacts / "spec.json")), str(artifacts), 4096, 0)
    for name in ("test_split", "random"):
        assert carry[name]["rows"] == int((rows[name].lengths > 1).sum())  # one step: no cut
    for name in ("test_split", "random"):
        assert 0 <= carry[name]["max_abs_difference"] <= 1e-6
    assert re.search(r"random: split after steps 1\.\.11, max \|diff\| ", result.stdout)
    import onnx

    model = onnx.load(str(artifacts / "model.onnx"))
    assert "LSTM" in {node.op_type for node in model.graph.node}
    assert not {"Loop", "Scan"} & {node.op_type for node in model.graph.node}
    spec = Spec.from_json({p.key: p.value for p in model.metadata_props}["spec"])
    assert spec.variable_length and spec.max_len == 12


@pytest.mark.slow
def test_ragged_onnx_on_each_row_alone_equals_keras_on_that_row(exported_ragged):
    """Each row run alone at its own length, in both runtimes: no padding anywhere."""
    import keras
    import onnxruntime as ort

    import train  # noqa: F401  (registers OneHot)

    artifacts, _ = exported_ragged
    rows = pq.read_table(artifacts / "test.parquet").column("x").to_pylist()
    rows += [list(np.random.default_rng(length).integers(0, 11, size=length)) for length in (1, 7, 12)]
    model = keras.saving.load_model(str(artifacts / "model.keras"))
    session = ort.InferenceSession(str(artifacts / "model.onnx"), providers=["CPUExecutionProvider"])
    for row in rows:
        indices = np.array([row], dtype=np.int32)  # x values 0..10 are class indices 0..10
        expected = model.predict(indices, verbose=0)
        actual = session.run(["probabilities"], {"x": indices})[0]
        assert actual.shape == (1, len(row), 25)
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
        ordered = np.sort(expected, axis=-1)
        clear = ordered[..., -1] - ordered[..., -2] >= 1e-6  # argmax may differ on near-ties only
        np.testing.assert_array_equal(actual.argmax(-1)[clear], expected.argmax(-1)[clear])


def test_the_parity_tolerance_holds_for_four_steps_then_grows_with_the_step():
    from export.parity import allowed_difference

    assert allowed_difference(1e-5, 8).tolist() == pytest.approx([1e-5] * 4 + [1.25e-5, 1.5e-5, 1.75e-5, 2e-5])


# The scoring interface: each LSTM layer's state, and the top-k heads ------------------------------
# Fast: on the committed fixtures and on graphs built with onnx.helper, without TensorFlow.
MODEL_V1 = FIXTURES / "model_v1.onnx"  # tf2onnx's graph as exported before the interface
HEAD_OUTPUTS = ("seqscore_top_probabilities", "seqscore_top_classes", "seqscore_step_sums")


def lstm_graph(units: tuple[int, ...], direction: str = "forward", opset: int = 17):
    """A graph shaped like tf2onnx's, with random weights: x (batch, time) int32 -> one-hot over
    3 classes -> stacked LSTMs, each started from a zeros subgraph (Shape, Slice, Concat,
    Expand) -> a dense softmax over 4 classes named 'probabilities'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    generator = np.random.default_rng(0)
    initializers = []

    def constant(name: str, values) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    nodes = [
        helper.make_node("Cast", ["x"], ["x_int64"], to=TensorProto.INT64),  # as tf2onnx does
        helper.make_node("OneHot", ["x_int64", constant("depth", np.array([3], np.int64)),
                                    constant("off_on", np.array([0, 1], np.float32))], ["one_hot"]),
        helper.make_node("Transpose", ["one_hot"], ["hidden_0"], perm=[1, 0, 2]),  # time-major
    ]
    constant("zero", np.zeros((), np.float32))
    directions, features = (2 if direction == "bidirectional" else 1), 3
    for layer, size in enumerate(units):
        hidden, state = f"hidden_{layer}", f"zeros_{layer}"
        nodes += [
            helper.make_node("Shape", [hidden], [f"shape_{layer}"]),
            helper.make_node("Slice", [f"shape_{layer}", constant(f"one_{layer}", np.array([1])),
                                       constant(f"two_{layer}", np.array([2]))], [f"batch_{layer}"]),
            helper.make_node("Concat", [constant(f"directions_{layer}", np.array([directions])),
                                        f"batch_{layer}", constant(f"units_{layer}", np.array([size]))],
                             [f"state_shape_{layer}"], axis=0),
            helper.make_node("Expand", ["zero", f"state_shape_{layer}"], [state]),
            helper.make_node(
                "LSTM",
                [hidden,
                 constant(f"W_{layer}", generator.normal(0, 0.5, (directions, 4 * size, features)).astype(np.float32)),
                 constant(f"R_{layer}", generator.normal(0, 0.5, (directions, 4 * size, size)).astype(np.float32)),
                 constant(f"B_{layer}", generator.normal(0, 0.5, (directions, 8 * size)).astype(np.float32)),
                 "", state, state],
                [f"Y_{layer}", f"Y_h_{layer}", f"Y_c_{layer}"],
                hidden_size=size, direction=direction, name=f"lstm_{layer}",
            ),
            # (time, directions, batch, units) -> (time, batch, directions * units)
            helper.make_node("Transpose", [f"Y_{layer}"], [f"Y_t_{layer}"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"Y_t_{layer}", constant(f"merge_{layer}", np.array([0, 0, -1]))],
                             [f"hidden_{layer + 1}"]),
        ]
        features = directions * size
    nodes += [
        helper.make_node("Transpose", [f"hidden_{len(units)}"], ["batch_major"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["batch_major", constant("dense", generator.normal(0, 1, (features, 4))
                                                            .astype(np.float32))], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "lstm_graph",
        [helper.make_tensor_value_info("x", TensorProto.INT32, ["batch", "time"])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", "time", 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@dataclasses.dataclass(frozen=True)
class Edited:
    """A graph before and after add_scoring_interface, and what the edit reported."""

    before: bytes
    after: bytes
    interface: object  # export.graph.ScoringInterface

    def sessions(self):
        import onnxruntime as ort

        return tuple(ort.InferenceSession(data, providers=["CPUExecutionProvider"])
                     for data in (self.before, self.after))


def edit(model_proto) -> Edited:
    from export.graph import add_scoring_interface

    before = model_proto.SerializeToString()
    interface = add_scoring_interface(model_proto)
    return Edited(before, model_proto.SerializeToString(), interface)


@pytest.fixture(scope="module", params=["tf2onnx_one_layer_16", "two_layers_5_3"])
def edited(request) -> Edited:
    import onnx

    if request.param == "tf2onnx_one_layer_16":
        return edit(onnx.load(str(MODEL_V1)))
    return edit(lstm_graph((5, 3)))


def rows_of(steps: int, count: int = 300, classes: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, classes, size=(count, steps), dtype=np.int32)


def state_feed(states, values) -> dict:
    names = [name for state in states for name in (state.initial_h, state.initial_c)]
    return dict(zip(names, values, strict=True))


def final_names(states) -> list[str]:
    return [name for state in states for name in (state.final_h, state.final_c)]


def test_the_states_are_listed_in_layer_order_with_their_units():
    from score.spec import StateTensors

    edited = edit(lstm_graph((5, 3)))
    assert edited.interface.states == (
        StateTensors(5, "initial_h_0", "initial_c_0", "final_h_0", "final_c_0"),
        StateTensors(3, "initial_h_1", "initial_c_1", "final_h_1", "final_c_1"),
    )
    assert (edited.interface.heads, edited.interface.head_input) == (HEAD_OUTPUTS, "seqscore_top_k")
    assert edited.interface.states_withheld is None
    _, session = edited.sessions()
    outputs = session.run(None, {"x": rows_of(6, count=7)})
    shapes = {output.name: value.shape for output, value in zip(session.get_outputs(), outputs)}
    assert shapes == {
        "probabilities": (7, 6, 4),
        "final_h_0": (1, 7, 5), "final_c_0": (1, 7, 5), "final_h_1": (1, 7, 3), "final_c_1": (1, 7, 3),
        "seqscore_top_probabilities": (7, 6, 1), "seqscore_top_classes": (7, 6, 1),
        "seqscore_step_sums": (7, 6),
    }


def test_a_client_feeding_only_x_gets_the_probabilities_of_the_graph_before_bit_for_bit(edited):
    before, after = edited.sessions()
    optional = [name for state in edited.interface.states for name in (state.initial_h, state.initial_c)]
    assert [(value.name, value.type.startswith("optional(")) for value in after.get_inputs()] == [
        ("x", False), *((name, True) for name in optional + ["seqscore_top_k"])]
    assert after.get_overridable_initializers() == []
    for steps in (1, 4, 12):
        x = rows_of(steps)
        expected = before.run(["probabilities"], {"x": x})[0]
        np.testing.assert_array_equal(after.run(["probabilities"], {"x": x})[0], expected)


def test_two_pieces_carrying_the_state_equal_the_whole_at_every_split(edited):
    _, session = edited.sessions()
    states = edited.interface.states
    x = rows_of(12)
    whole = session.run(["probabilities"], {"x": x})[0]
    for split in range(1, 12):
        first, *carried = session.run(["probabilities", *final_names(states)], {"x": x[:, :split]})
        second = session.run(["probabilities"], {"x": x[:, split:], **state_feed(states, carried)})[0]
        pieces = np.concatenate([first, second], axis=1)
        assert np.abs(pieces - whole).max() <= 1e-6, f"split after step {split}"


def test_one_state_of_batch_one_is_broadcast_to_every_row(edited):
    """initial_* take (1, 1, units) as well as (1, batch, units): one prefix, many continuations."""
    _, session = edited.sessions()
    states = edited.interface.states
    prefix, continuations = rows_of(5, count=1), rows_of(3, count=40, seed=1)
    carried = session.run(final_names(states), {"x": prefix})
    one = session.run(["probabilities"], {"x": continuations, **state_feed(states, carried)})[0]
    tiled = [np.repeat(value, 40, axis=1) for value in carried]
    every = session.run(["probabilities"], {"x": continuations, **state_feed(states, tiled)})[0]
    np.testing.assert_array_equal(one, every)
    whole = session.run(["probabilities"], {"x": np.hstack([np.repeat(prefix, 40, axis=0), continuations])})[0]
    assert np.abs(one - whole[:, 5:]).max() <= 1e-6


@pytest.mark.parametrize("k", [1, 3, 4])
def test_the_heads_give_the_top_k_and_one_sum_per_step(edited, k):
    _, session = edited.sessions()
    x = rows_of(12)
    probabilities, values, classes, sums = session.run(
        ["probabilities", "seqscore_top_probabilities", "seqscore_top_classes", "seqscore_step_sums"],
        {"x": x, "seqscore_top_k": np.array([k], dtype=np.int64)},
    )
    order = np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]
    assert classes.dtype == np.int64 and values.dtype == np.float32
    np.testing.assert_array_equal(classes, order)
    np.testing.assert_array_equal(values, np.take_along_axis(probabilities, order, axis=-1))
    assert sums.shape == (300, 12)
    np.testing.assert_allclose(sums, probabilities.sum(axis=-1), rtol=0, atol=1e-6)


def test_k_defaults_to_one_when_not_fed(edited):
    _, session = edited.sessions()
    probabilities, classes = session.run(["probabilities", "seqscore_top_classes"], {"x": rows_of(4)})
    np.testing.assert_array_equal(classes[..., 0], probabilities.argmax(axis=-1))


def expands_and_zero_initializers(model) -> tuple[list[str], list[str]]:
    """What each Expand broadcasts, and the initializers that hold only zeros (floats)."""
    from onnx import numpy_helper

    expands = [node.input[0] for node in model.graph.node if node.op_type == "Expand"]
    zeros = [tensor.name for tensor in model.graph.initializer
             if tensor.data_type == 1 and not numpy_helper.to_array(tensor).any()]
    return expands, zeros


def test_the_graph_keeps_the_fused_lstm_and_loses_the_old_zeros_subgraph(edited):
    import onnx

    before, after = onnx.load_from_string(edited.before), onnx.load_from_string(edited.after)
    onnx.checker.check_model(after, full_check=True)
    op_types = [node.op_type for node in after.graph.node]
    assert op_types.count("LSTM") == len(edited.interface.states) and not {"Loop", "Scan"} & set(op_types)
    # Before, tf2onnx's zeros (an Expand of a zero constant) start each LSTM; after, only the
    # optional inputs' values (fed, or the zeros in their If) are expanded, and no all-zero
    # initializer is left.
    initial = sorted(name for state in edited.interface.states for name in (state.initial_h, state.initial_c))
    assert expands_and_zero_initializers(before) != (initial, initial)
    expands, zeros = expands_and_zero_initializers(after)
    assert (sorted(expands), zeros) == ([f"{name}_or_default" for name in initial], [])
    producers = {output: node for node in after.graph.node for output in node.output}
    for layer, node in enumerate(n for n in after.graph.node if n.op_type == "LSTM"):
        assert [producers[name].input[0] for name in node.input[5:7]] == [
            f"initial_h_{layer}_or_default", f"initial_c_{layer}_or_default"]
        assert {producers[f"initial_{part}_{layer}_or_default"].op_type for part in "hc"} == {"If"}
        assert list(node.output[1:3]) == [f"final_h_{layer}", f"final_c_{layer}"]
    # Nothing is left that no output needs.
    read = {name for node in after.graph.node for name in node.input} | {o.name for o in after.graph.output}
    assert [node.name for node in after.graph.node if not set(node.output) & read] == []
    assert [tensor.name for tensor in after.graph.initializer if tensor.name not in read] == []


@pytest.mark.parametrize("direction", ["bidirectional", "reverse"])
def test_a_bidirectional_or_reversed_lstm_exposes_no_state(direction):
    edited = edit(lstm_graph((5, 3), direction=direction))
    assert edited.interface.states == ()
    assert edited.interface.states_withheld == f"LSTM layer 0 (lstm_0) runs {direction}"
    before, after = edited.sessions()
    assert [value.name for value in after.get_inputs()] == ["x", "seqscore_top_k"]
    assert [value.name for value in after.get_outputs()] == [
        "probabilities", "seqscore_top_probabilities", "seqscore_top_classes", "seqscore_step_sums",
    ]
    x = rows_of(6)
    np.testing.assert_array_equal(after.run(["probabilities"], {"x": x})[0],
                                  before.run(["probabilities"], {"x": x})[0])


def test_an_opset_below_13_gets_no_interface():
    model = lstm_graph((5,), opset=12)
    edited = edit(model)
    assert edited.interface.states == () and edited.interface.heads == ()
    assert edited.interface.states_withheld == "opset 12 is below 13"
    assert edited.after == edited.before


def test_opsets_13_and_14_take_the_optional_inputs_as_initializers():
    """ONNX has optional-typed inputs from opset 15 on; below, each optional input is an
    initializer listed as a graph input (onnxruntime warns at load), left out the same way."""
    edited = edit(lstm_graph((5,), opset=14))
    before, after = edited.sessions()
    assert [value.name for value in after.get_inputs()] == ["x"]
    assert [value.name for value in after.get_overridable_initializers()] == [
        "initial_h_0", "initial_c_0", "seqscore_top_k"]
    x = rows_of(6)
    np.testing.assert_array_equal(after.run(["probabilities"], {"x": x})[0],
                                  before.run(["probabilities"], {"x": x})[0])


def test_a_file_with_initializer_inputs_is_rewired_to_optional_inputs_bit_for_bit():
    import onnx
    import onnxruntime as ort

    from export.graph import InterfaceError, rewire_optional_inputs

    published = onnx.load_from_string(edit(lstm_graph((5, 3), opset=14)).after)
    with pytest.raises(InterfaceError, match="opset 14 has no optional inputs"):
        rewire_optional_inputs(onnx.load_from_string(published.SerializeToString()))
    published.opset_import[0].version = 17  # as the fixtures were: opset 17, initializer inputs
    rewired = onnx.load_from_string(published.SerializeToString())
    names = ["initial_h_0", "initial_c_0", "initial_h_1", "initial_c_1", "seqscore_top_k"]
    assert rewire_optional_inputs(rewired) == names
    assert rewire_optional_inputs(rewired) == []  # nothing left to rewire
    assert {tensor.name for tensor in rewired.graph.initializer} == {
        tensor.name for tensor in published.graph.initializer} - set(names)
    old, new = (ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
                for model in (published, rewired))
    assert [(value.name, value.type.startswith("optional(")) for value in new.get_inputs()] == [
        ("x", False), *((name, True) for name in names)]
    outputs = [value.name for value in old.get_outputs()]
    x, generator = rows_of(6, count=20), np.random.default_rng(3)
    states = {name: generator.normal(size=(1, 20, 5 if name.endswith("0") else 3)).astype(np.float32)
              for name in names[:-1]}
    for feed in ({"x": x}, {"x": x, **states, "seqscore_top_k": np.array([3], np.int64)}):
        for expected, actual in zip(old.run(outputs, feed), new.run(outputs, feed), strict=True):
            np.testing.assert_array_equal(actual, expected)


def test_a_graph_edited_before_is_refused():
    import onnx

    from export.graph import InterfaceError, add_scoring_interface

    model = onnx.load_from_string(edit(lstm_graph((5,))).after)
    with pytest.raises(InterfaceError, match="already has tensor.*final_c_0.*it was edited before"):
        add_scoring_interface(model)


def test_the_state_carry_check_fails_on_wrongly_wired_states():
    import onnx

    from export.parity import ParityRows, verify_state_carry

    edited = edit(onnx.load(str(MODEL_V1)))
    _, session = edited.sessions()
    (state,) = edited.interface.states
    inputs = {"random": ParityRows(rows_of(4, classes=11))}
    right = verify_state_carry(session, (state,), inputs)
    assert right["random"] == {"rows": 300, "split_points": [1, 2, 3], "max_abs_difference": 0.0,
                               "default_states_max_abs_difference": 0.0}
    assert (right["passed"], right["failures"]) == (True, [])
    swapped = dataclasses.replace(state, initial_h=state.initial_c, initial_c=state.initial_h)
    wrong = verify_state_carry(session, (swapped,), inputs)
    assert wrong["passed"] is False and wrong["random"]["max_abs_difference"] > 1e-3
    assert re.fullmatch(r"random: max \|p_pieces - p_whole\| = \S+ > 1e-06 \(split after steps 1, 2, 3\)",
                        wrong["failures"][0])


def test_the_state_carry_check_runs_ragged_rows_one_length_at_a_time():
    import onnx

    from export.parity import ParityRows, verify_state_carry

    edited = edit(onnx.load(str(MODEL_V1)))
    _, session = edited.sessions()
    lengths = np.array([1, 2, 2, 5, 9, 9, 9])
    indices = np.where(np.arange(9) < lengths[:, None], rows_of(9, count=7, classes=11), 0).astype(np.int32)
    carry = verify_state_carry(session, edited.interface.states, {"test_split": ParityRows(indices, lengths)})
    # Length 1 cannot be cut; 2: after 1; 5: after 1, 2, 4; 9: after 1, 4, 8.
    assert carry["test_split"] == {"rows": 6, "split_points": [1, 2, 4, 8], "max_abs_difference": 0.0,
                                   "default_states_max_abs_difference": 0.0}
    assert carry["passed"] is True


def test_the_causality_check_tells_a_forward_lstm_from_a_reversed_one():
    import onnxruntime as ort

    from export.parity import ParityRows, later_steps_difference

    inputs = {"random": ParityRows(rows_of(6))}
    for direction, causal in (("forward", True), ("reverse", False)):
        session = ort.InferenceSession(lstm_graph((5,), direction=direction).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        assert (later_steps_difference(session, inputs) == 0.0) is causal, direction


def fixture_spec(path: Path) -> Spec:
    import onnx

    return Spec.from_json({p.key: p.value for p in onnx.load(str(path)).metadata_props}["spec"])


@pytest.mark.parametrize("name", ["model.onnx", "ragged.onnx"])
def test_the_committed_fixtures_carry_the_interface_their_spec_lists(name):
    import onnx
    import onnxruntime as ort

    path = FIXTURES / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (FIXTURES / f"{name}.sha256").read_text() == f"{digest}  {name}\n"
    states = fixture_spec(path).states
    assert [state.units for state in states] == [16]  # `make fixture`: one layer of 16 units
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [value.name for value in session.get_inputs()] == ["x", "initial_h_0", "initial_c_0", "seqscore_top_k"]
    assert session.get_overridable_initializers() == []  # optional inputs (rewire_fixtures.py)
    assert [value.name for value in session.get_outputs()] == [
        "probabilities", "final_h_0", "final_c_0", *HEAD_OUTPUTS]
    assert "LSTM" in {node.op_type for node in onnx.load(str(path)).graph.node}


def test_the_model_from_before_the_interface_is_kept_as_it_was():
    import onnxruntime as ort

    digest = hashlib.sha256(MODEL_V1.read_bytes()).hexdigest()
    assert (FIXTURES / "model_v1.onnx.sha256").read_text() == f"{digest}  model_v1.onnx\n"
    assert fixture_spec(MODEL_V1).states == ()
    session = ort.InferenceSession(str(MODEL_V1), providers=["CPUExecutionProvider"])
    assert [value.name for value in session.get_inputs()] == ["x"]
    assert session.get_overridable_initializers() == []
    assert [value.name for value in session.get_outputs()] == ["probabilities"]
