"""The committed model files as a plain onnxruntime client and the scorer meet them: a silent
load, ``x`` alone enough for the probabilities and the heads, states left out equal to zeros
fed, a run resumed from a carried state equal to the whole run; and a file whose optional
inputs are initializers (exported before the optional wiring) scored as the file is now."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
from conftest import FIXTURE_MODEL, RAGGED_MODEL, list_array

from score.model import INFERENCE_ROWS, SessionConfig, load
from score.spec import HEADS, INPUT_NAME, K_INPUT, OUTPUT_NAME

FILES = [pytest.param(FIXTURE_MODEL, id="model"), pytest.param(RAGGED_MODEL, id="ragged")]
ROWS, STEPS = 300, 9


def rows_for(path, rows: int = ROWS, steps: int = STEPS, seed: int = 0) -> np.ndarray:
    spec = load(str(path)).spec
    return np.random.default_rng(seed).integers(0, spec.x_classes, (rows, steps)).astype(np.int32)


def plain_session(path) -> ort.InferenceSession:
    """The session any client gets: onnxruntime's defaults."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("path", FILES)
def test_a_plain_client_loads_the_file_without_a_word(path):
    code = "import sys, onnxruntime as ort; ort.InferenceSession(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                            timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("path", FILES)
def test_x_alone_gives_the_probabilities_and_the_heads(path):
    session = plain_session(path)
    x = rows_for(path)
    probabilities, values, classes, sums = session.run([OUTPUT_NAME, *HEADS], {INPUT_NAME: x})
    assert probabilities.shape == (ROWS, STEPS, load(str(path)).spec.y_classes)
    np.testing.assert_array_equal(classes[..., 0], probabilities.argmax(axis=-1))  # K = 1
    np.testing.assert_array_equal(values[..., 0], probabilities.max(axis=-1))
    np.testing.assert_allclose(sums, probabilities.sum(axis=-1), rtol=0, atol=1e-6)
    fed_k = session.run([OUTPUT_NAME], {INPUT_NAME: x, K_INPUT: np.array([3], np.int64)})[0]
    np.testing.assert_array_equal(fed_k, probabilities)


@pytest.mark.parametrize("path", FILES)
def test_states_left_out_equal_zeros_fed(path):
    from export.parity import check_default_states

    states = load(str(path)).spec.states
    assert states
    difference, probabilities = check_default_states(plain_session(path), states, rows_for(path))
    assert difference == 0.0
    expected = plain_session(path).run([OUTPUT_NAME], {INPUT_NAME: rows_for(path)})[0]
    np.testing.assert_array_equal(probabilities, expected)  # the run fed only x


def test_the_default_states_check_sees_a_default_that_is_not_zeros():
    from export.parity import check_default_states

    class OffByOne:
        """A session whose state left out is ones: what a wrong default would give."""

        def __init__(self, session):
            self.session = session

        def run(self, names, feed):
            rows = len(feed[INPUT_NAME])
            ones = {name: np.ones((1, rows, state.units), np.float32)
                    for state in states for name in (state.initial_h, state.initial_c)}
            return self.session.run(names, {**ones, **feed})

    states = load(str(FIXTURE_MODEL)).spec.states
    difference, _ = check_default_states(OffByOne(plain_session(FIXTURE_MODEL)), states,
                                         rows_for(FIXTURE_MODEL))
    assert difference > 1e-3


@pytest.mark.parametrize("path", FILES)
def test_a_run_resumed_from_a_carried_state_equals_the_whole_run(path):
    session, states = plain_session(path), load(str(path)).spec.states
    initial = [name for state in states for name in (state.initial_h, state.initial_c)]
    final = [name for state in states for name in (state.final_h, state.final_c)]
    x = rows_for(path)
    whole = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    for split in range(1, STEPS):
        first, *carried = session.run([OUTPUT_NAME, *final], {INPUT_NAME: x[:, :split]})
        second = session.run([OUTPUT_NAME], {INPUT_NAME: x[:, split:], **dict(zip(initial, carried))})[0]
        assert np.abs(np.concatenate([first, second], axis=1) - whole).max() <= 1e-6, split


def initializer_wired(path) -> bytes:
    """The file as the export wrote it before optional inputs (and still does for opsets 13-14):
    each optional input an initializer, listed as a graph input, holding its default."""
    import onnx
    from onnx import numpy_helper

    model_proto = onnx.load(str(path))
    graph = model_proto.graph
    ifs = {node.output[0]: node for node in graph.node if node.op_type == "If"}
    for value in [value for value in graph.input if value.type.HasField("optional_type")]:
        choice = ifs[f"{value.name}_or_default"]
        default = next(attribute.g for attribute in choice.attribute if attribute.name == "else_branch")
        graph.initializer.append(numpy_helper.from_array(
            numpy_helper.to_array(default.node[0].attribute[0].t), value.name))
        value.type.CopyFrom(value.type.optional_type.elem_type)
        for node in graph.node:
            node.input[:] = [value.name if name == choice.output[0] else name for name in node.input]
    kept = [node for node in graph.node if node.op_type not in ("If", "OptionalHasElement")]
    graph.ClearField("node")
    graph.node.extend(kept)
    onnx.checker.check_model(model_proto)
    return model_proto.SerializeToString()


def scored(scorer, x: np.ndarray, **options) -> pa.RecordBatch:
    from score.core import ScoreOptions, score_batch

    batch = pa.RecordBatch.from_arrays([list_array(np.asarray(scorer.spec.x_values)[x])],
                                       names=[scorer.spec.input_column])
    return score_batch(scorer, batch, ScoreOptions(**options))


def test_a_file_whose_optional_inputs_are_initializers_scores_as_the_file_does_now(tmp_path):
    before = tmp_path / "model.onnx"
    before.write_bytes(initializer_wired(FIXTURE_MODEL))
    session = ort.InferenceSession(str(before), providers=["CPUExecutionProvider"])
    assert [value.name for value in session.get_inputs()] == [INPUT_NAME]
    assert [value.name for value in session.get_overridable_initializers()] == [
        "initial_h_0", "initial_c_0", K_INPUT]
    old, new = load(str(before)), load(str(FIXTURE_MODEL))
    assert old.graph_top_k and old.shares_prefixes and new.shares_prefixes
    x = rows_for(FIXTURE_MODEL, rows=3000, steps=4, seed=1)
    for k in (1, 3):
        assert scored(old, x, top_k=k).equals(scored(new, x, top_k=k))


def test_the_benchmark_switches_change_how_not_what(tmp_path):
    scorer = load(str(FIXTURE_MODEL))
    assert (scorer.graph_top_k, scorer.inference_rows) == (True, INFERENCE_ROWS)
    numpy_top_k = load(str(FIXTURE_MODEL), SessionConfig(graph_top_k=False))
    assert not numpy_top_k.graph_top_k and not numpy_top_k.shares_prefixes
    small_runs = load(str(FIXTURE_MODEL), SessionConfig(inference_rows=7))
    assert small_runs.inference_rows == 7
    x = rows_for(FIXTURE_MODEL, rows=2000, steps=4, seed=2)
    want = scored(scorer, x, top_k=3)
    for other in (numpy_top_k, small_runs):
        assert scored(other, x, top_k=3).equals(want)
