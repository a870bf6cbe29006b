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
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, CliResult, run_module

from score.spec import Spec

HEAVY = ("tensorflow", "keras", "tf2onnx", "onnx")


def run_export(*args) -> CliResult:
    """`python -m export ARGS` in-process through main(argv), output captured."""
    from export.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def fit(artifacts: Path, dataset_path: Path, *flags: str) -> None:
    from train.__main__ import main

    with redirect_stdout(io.StringIO()):
        code = main(["--data", str(dataset_path), "--artifacts", str(artifacts), "--epochs", "1",
                     "--quiet", *flags])
    assert code == 0


def small_default(path: Path) -> Path:
    from train import data

    data.write_parquet(data.default_dataset(rows=2000), str(path))
    return path


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


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
    fit(artifacts, small_default(folder / "small.parquet"), "--preset", "default")
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
        tensor = value.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in tensor.shape.dim)
        return value.name, onnx.TensorProto.DataType.Name(tensor.elem_type), dims

    assert [described(value) for value in model.graph.input] == [("x", "INT32", ("batch", "time"))]
    assert [described(value) for value in model.graph.output] == [
        ("probabilities", "FLOAT", ("batch", "time", 25))
    ]


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
    fit(artifacts, small_default(tmp_path / "small.parquet"), "--preset", "question")
    result = run_export("--artifacts", artifacts)
    assert result.code == 0, result.stderr
    model = onnx.load(str(artifacts / "model.onnx"))
    lstms = [node for node in model.graph.node if node.op_type == "LSTM"]
    assert [a.i for node in lstms for a in node.attribute if a.name == "hidden_size"] == [24] * 4
    assert not {"Loop", "Scan"} & {node.op_type for node in model.graph.node}
    assert read_json(artifacts / "export_report.json")["parity"]["passed"] is True


# Refusals: exit code, one line, and the previous model.onnx and .sha256 byte for byte -------------
def save_keras(artifacts: Path, units: int, activation: str | None) -> None:
    """Replace model.keras with an untrained model whose head is given."""
    import keras

    from train.model import OneHot

    inputs = keras.Input(shape=(None,), dtype="int32", name="x")
    hidden = OneHot(11, name="one_hot")(inputs)
    hidden = keras.layers.LSTM(8, return_sequences=True, use_cudnn=False)(hidden)
    outputs = keras.layers.Dense(units, activation=activation, name="probabilities")(hidden)
    keras.Model(inputs, outputs).save(str(artifacts / "model.keras"))


def assert_refused(result: CliResult, code: int, line: str, folder: Path, before: dict) -> None:
    assert (result.code, result.lines, result.stdout) == (code, [line], "")
    assert published(folder) == before


@pytest.mark.slow
def test_missing_model_exits_66(copy):
    before = published(copy)
    (copy / "model.keras").unlink()
    result = run_export("--artifacts", copy)
    assert_refused(result, 66, f"error: {copy}/model.keras: not found; run `make train` first",
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
    assert_refused(result, 66, f"error: {copy}/test.parquet: not found; run `make train` first",
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
    assert_refused(run_export("--artifacts", copy), 78, line, copy, before)


@pytest.mark.slow
def test_a_spec_from_another_run_is_refused(copy):
    before = published(copy)
    spec = read_json(copy / "spec.json")
    spec["x_values"] = list(range(12))
    (copy / "spec.json").write_text(json.dumps(spec))
    assert_refused(
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
    import export.core

    monkeypatch.setattr(export.core, "convert", nudged_bias(export.core.convert))
    before = published(copy)
    result = run_export("--artifacts", copy)
    assert result.code == 70 and len(result.lines) == 1 and result.stdout == ""
    assert re.fullmatch(
        r"error: ONNX does not match Keras, nothing published: test_split: max \|p_onnx - p_keras\| "
        r"= \S+ > 1e-05 \(step t allows 1e-05 x max\(1, \(t \+ 1\) / 4\)\); test_split: argmax differs "
        r"on \d+ step\(s\) that are not near-ties; random: max \|p_onnx - p_keras\| = \S+ > 1e-05 .*",
        result.lines[0],
    )
    assert published(copy) == before
    failed = read_json(copy / "export_report.failed.json")
    assert failed["published"] is False and failed["parity"]["passed"] is False
    assert [name for name in (p.name for p in copy.iterdir()) if name.startswith(".")] == []


@pytest.mark.slow
def test_zero_tolerance_fails_parity(copy, monkeypatch):
    import export.core

    verify = export.core.verify
    monkeypatch.setattr(
        export.core, "verify",
        lambda model, model_bytes, inputs, config: verify(
            model, model_bytes, inputs, dataclasses.replace(config, tolerance=0.0)
        ),
    )
    before = published(copy)
    result = run_export("--artifacts", copy)
    assert result.code == 70 and len(result.lines) == 1
    assert result.lines[0].startswith(
        "error: ONNX does not match Keras, nothing published: test_split: max |p_onnx - p_keras| = "
    )
    assert published(copy) == before


def test_parity_error_is_a_one_line_seqscore_error():
    from export.core import ParityError
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

    assert load(str(int8)).spec == Spec.from_dict(read_json(copy / "spec.json"))


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
    from export.core import allowed_difference

    assert allowed_difference(1e-5, 8).tolist() == pytest.approx([1e-5] * 4 + [1.25e-5, 1.5e-5, 1.75e-5, 2e-5])
