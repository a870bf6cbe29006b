"""python -m export --onnx on real torch.onnx.export output: it imports, and scores like the source.

The two source models are committed fixtures made by tests/fixtures/make_torch_models.py with
PyTorch (not a dependency: that script is not run here). tests/test_import.py builds the same
kind of graph with onnx.helper; these are what the TorchScript exporter really writes, with
its zeros initial states built from the input's shape, a Squeeze after each recurrence and
(for batch_first) Transposes around it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, run_export, run_score

from score.spec import Spec

X_VALUES = tuple(range(11))  # the fixtures' ids 0..10 are their raw input values
Y_VALUES = tuple(range(25))  # and their classes 0..24 the running sum mod 25
MAX_LENGTH = 8
TOP_K = 3


@dataclass(frozen=True)
class TorchFixture:
    """A committed torch.onnx.export model and what its import should find."""

    file: str
    time_major: bool  # input ids (seq, batch) and logits (seq, batch, 25)
    states: int  # LSTM layers whose state the published model exposes
    states_withheld: str | None


FIXTURE_MODELS = [
    # nn.LSTM(num_layers=2) without batch_first: PyTorch exports each layer as its own fused
    # LSTM node in ONNX's default time-major layout (layout 0), its zeros initial state a
    # ConstantOfShape sized from the input and Sliced per layer. export/graph.py replaces those
    # two initial-state inputs with optional ones and the dead zeros subgraph drops out, so both
    # layers' states are exposed and scoring shares prefixes. The axis names {0: "seq", 1:
    # "batch"} tell the import that the input is time-major.
    pytest.param(TorchFixture("torch_lstm.onnx", time_major=True, states=2, states_withheld=None),
                 id="lstm_two_layers_time_major"),
    # nn.GRU(batch_first=True): the exporter Transposes into and out of a time-major GRU node;
    # a GRU's state is never exposed, so it is scored without prefix sharing.
    pytest.param(TorchFixture("torch_gru.onnx", time_major=False, states=0,
                              states_withheld="the graph has a GRU node (/recurrence/GRU), whose "
                                              "state is not exposed"),
                 id="gru_batch_first"),
]


def random_rows(rows: int, seed: int) -> list[list[int]]:
    """Random rows of 1..MAX_LENGTH raw values, and a few that share prefixes."""
    generator = np.random.default_rng(seed)
    ragged = [generator.choice(X_VALUES, size=int(generator.integers(1, MAX_LENGTH + 1))).tolist()
              for _ in range(rows)]
    return ragged + [[3, 7, 10], [3, 7, 10, 1], [3, 7, 10, 1, 0, 9, 9, 2], [3]]


def source_by_hand(source: Path, fixture: TorchFixture, row: list[int]) -> np.ndarray:
    """The source model on one raw row, run the plain way: (steps, 25) probabilities."""
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    ids = np.searchsorted(X_VALUES, row).astype(np.int64)[None, :]  # (1, steps)
    logits = session.run(["logits"], {"ids": ids.T if fixture.time_major else ids})[0]
    logits = (np.swapaxes(logits, 0, 1) if fixture.time_major else logits)[0]
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("fixture", FIXTURE_MODELS)
def test_a_torch_onnx_export_imports_and_scores_like_the_source(tmp_path, fixture):
    source = FIXTURES / fixture.file
    model_path = tmp_path / "published" / "model.onnx"

    # 1. The import: no flag but the value sets; layout, logits and length are found.
    result = run_export("--onnx", source, "--x-values", "0..10", "--y-values", "0..24",
                        "--output", model_path, "--max-length", MAX_LENGTH)
    assert result.code == 0, result.stderr
    assert result.stderr == ""
    report = json.loads((tmp_path / "published" / "export_report.json").read_text())
    assert report["source"]["producer_name"] == "pytorch"
    assert report["source"]["opsets"] == {"ai.onnx": 17}
    wrapping = report["wrapping"]
    assert (wrapping["source_input"], wrapping["source_input_type"]) == ("ids", "int64")
    assert wrapping["input_time_major"] is fixture.time_major
    assert wrapping["output_time_major"] is fixture.time_major
    assert wrapping["time_steps"] is None  # dynamic_axes left the time axis dynamic
    assert wrapping["output"] == "logits, softmax over the last axis added"
    assert wrapping["dropped_outputs"] == []
    assert report["checks"]["passed"] is True
    assert report["checks"]["causality"]["causal"] is True
    assert report["checks"]["random"]["max_abs_difference"] <= 1e-5
    assert len(report["scoring_interface"]["states"]) == fixture.states
    assert report["scoring_interface"]["states_withheld"] == fixture.states_withheld
    assert ("state_carry" in report["checks"]) == bool(fixture.states)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    spec = Spec.from_json(session.get_modelmeta().custom_metadata_map["spec"])
    assert (spec.x_values, spec.y_values, spec.min_len, spec.max_len) == (X_VALUES, Y_VALUES, 1, MAX_LENGTH)
    assert len(spec.states) == fixture.states

    # 2. Scoring: the same argmax and top-k classes as the source run by hand (a stable
    # descending sort, through Y_VALUES), probabilities within 1e-6.
    rows = random_rows(24, seed=0)
    data = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": np.arange(len(rows), dtype=np.int64),
                             "x": pa.array(rows, type=pa.list_(pa.int64()))}), str(data))
    scored_path = tmp_path / "scored.parquet"
    scored = run_score(data, scored_path, "--model", model_path, "--top-k", TOP_K, "--quiet")
    assert scored.code == 0, scored.stderr
    assert scored.stderr == (f"warning: the model {model_path} carries no training baseline: drift is "
                             f"not monitored (export or import it with --reference to add one)\n")
    out = pq.read_table(scored_path)
    y_values = np.asarray(Y_VALUES)
    correct = steps = 0
    for number, row in enumerate(rows):
        probabilities = source_by_hand(source, fixture, row)
        order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :TOP_K]
        y_pred = out.column("y_pred")[number].as_py()
        assert y_pred == y_values[probabilities.argmax(-1)].tolist()
        assert out.column("top_k_values")[number].as_py() == y_values[order].tolist()
        np.testing.assert_allclose(np.asarray(out.column("top_k_probs")[number].as_py(), np.float32),
                                   np.take_along_axis(probabilities, order, -1), atol=1e-6)
        correct += int((np.asarray(y_pred) == np.cumsum(row) % 25).sum())
        steps += len(row)
    # The fixtures were trained on the running sum mod 25 (about 0.88 of steps right on rows of
    # 12): a y mapping off by one, or an untrained file, would be near 1/25.
    assert correct / steps > 0.7
