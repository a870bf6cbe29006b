"""Import a sequence model made elsewhere (an ONNX file from torch.onnx.export of nn.LSTM /
nn.GRU or any exporter, or a Keras file): wrap it into the scoring contract, verify it against
the source, publish it.

The library behind `python -m export --onnx PATH` and `--keras PATH`. The scoring job takes one input ``x``
(int32 class indices, (batch, time)) and one output ``probabilities`` (float32 (batch, time,
classes), a softmax per step), with the spec in the metadata. A source model may take integer
ids of any type or one-hot floats, lie time-major, and give logits: the wrapping added here
(Cast, OneHot, Transpose, Softmax, all standard ONNX ops) makes it fit, and leaves its
recurrence, the fused LSTM or GRU op, as it is. A Keras file is first converted with tf2onnx
and then takes the same path, with one more check against Keras itself; only that needs
TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.core import (
    FORBIDDEN_OPS,
    STATE_CARRY_TOLERANCE,
    TOLERANCE_STEPS,
    ParityRows,
    _interface_report,
    _session,
    allowed_difference,
    publish_with_report,
    random_rows,
    read_rows,
    split_points,
    verify_state_carry,
)
from export.graph import default_opset, rename_tensor
from score import model as models
from score.errors import InputMissing, InputPermission, InvalidInput, ModelError, first_line
from score.monitor import Profile
from score.spec import INPUT_NAME, OUTPUT_NAME, Spec

# Source input types the wrapping accepts: integer ids are cast from x, one-hot floats built
# from it with OneHot (numpy has no bfloat16, so the check could not run on one).
INTEGER_TYPES = {
    TensorProto.INT8: np.int8, TensorProto.INT16: np.int16, TensorProto.INT32: np.int32,
    TensorProto.INT64: np.int64, TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64,
}
FLOAT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
               TensorProto.FLOAT16: np.float16}
# Words in an axis name that say it is the time axis (torch.onnx.export's dynamic_axes names
# are the exporter's choice: 'seq', 'seq_len', 'sequence', 'time', 'steps', 'length', ...).
TIME_AXIS_WORDS = ("time", "seq", "step", "length")
PARITY_TOLERANCE = 1e-5  # max |p_published - p_source| (the same kernels run on both sides)
# A causal model's step t reads steps 0..t only: changing later steps must leave it exactly as it
# was, up to float32 rounding of a differently shaped call.
CAUSALITY_TOLERANCE = STATE_CARRY_TOLERANCE
SUM_TOLERANCE = 1e-4  # a step of probabilities sums to 1 within this
# The converted Keras model against Keras `predict` (TensorFlow's and onnxruntime's kernels round
# differently): as for `--artifacts`, this holds over the first TOLERANCE_STEPS steps and grows
# in proportion after (export.core.allowed_difference).
KERAS_TOLERANCE = 1e-5
KERAS_OPSET = 17  # the opset a Keras file is converted at, as for `--artifacts`
RENORMALIZED = ("renormalised scores: sigmoid outputs divided by their sum per step; "
                "not calibrated probabilities")
# Names of the source's own input and output inside the published graph, so that the contract's
# 'x' and 'probabilities' are free whatever the exporter called its tensors.
_SOURCE_INPUT = "seqscore_import_input"
_SOURCE_OUTPUT = "seqscore_import_output"
_PREFIX = "seqscore_import_"


@dataclass(frozen=True)
class ImportConfig:
    """What to import, what it means, and where to publish it."""

    source: str  # the ONNX (or, with framework 'keras', .keras / .h5) file made elsewhere
    x_values: tuple[int, ...]  # the raw input value of each input class index, in index order
    y_values: tuple[int, ...]  # the raw output value of each output class index, in index order
    output: str = "artifacts/model.onnx"  # where the wrapped model goes (the scorer's default)
    outputs: str | None = None  # 'probabilities' or 'logits'; None: detect from a probe run
    time_axis: int | None = None  # the source input's time axis (0 or 1); None: from its names
    reference: str | None = None  # Parquet rows (list column 'x' of raw values) to check and profile
    max_length: int = 64  # the longest sequence accepted when the source's time axis is dynamic
    random_rows: int = 256  # random valid sequences checked
    seed: int = 0  # for the random sequences
    renormalize: bool = False  # divide scores in [0, 1] that do not sum to 1 by their sum per step
    framework: str = "onnx"  # 'onnx' or 'keras': what kind of file `source` is

    @property
    def label(self) -> str:
        """How messages name the source: the flag that gave it and its path."""
        return f"--{self.framework} {self.source}"


@dataclass(frozen=True)
class SourceLayout:
    """How the source model's input and output lie, and what its output means."""

    input_name: str
    input_type: int  # TensorProto element type of the source input
    one_hot: bool  # input (batch, time, x classes) floats instead of (batch, time) ids
    time_major: bool  # input (time, batch[, classes])
    time_steps: int | None  # the fixed size of the time axis; None: dynamic
    output_name: str
    output_type: int  # TensorProto element type of the source output
    output_time_major: bool = False  # output (time, batch, classes); found by a probe run
    logits: bool = False  # a Softmax over the last axis turns the output into probabilities
    renormalized: bool = False  # scores in [0, 1] divided by their sum per step (--renormalize)
    x_classes: int = 0  # one-hot depth
    dropped_outputs: tuple[str, ...] = ()  # further graph outputs (a final state, say), left out

    def feed(self, indices: np.ndarray) -> np.ndarray:
        """The source input for (batch, time) class indices."""
        dtype = (FLOAT_TYPES if self.one_hot else INTEGER_TYPES)[self.input_type]
        values = np.eye(self.x_classes, dtype=dtype)[indices] if self.one_hot else indices.astype(dtype)
        return np.swapaxes(values, 0, 1) if self.time_major else values

    def probabilities(self, output: np.ndarray) -> np.ndarray:
        """The declared wrapping of the source output, in numpy: (batch, time, classes) float32."""
        values = np.swapaxes(output, 0, 1) if self.output_time_major else output
        values = values.astype(np.float32)
        if self.logits:
            exponentials = np.exp(values - values.max(axis=-1, keepdims=True))
            values = exponentials / exponentials.sum(axis=-1, keepdims=True)
        if self.renormalized:
            values = values / values.sum(axis=-1, keepdims=True)
        return values

    def describe(self) -> dict:
        return {
            "source_input": self.input_name,
            "source_input_type": helper.tensor_dtype_to_np_dtype(self.input_type).name,
            "input": f"one-hot (depth {self.x_classes}) from x" if self.one_hot else "class indices cast from x",
            "input_time_major": self.time_major,
            "time_steps": self.time_steps,
            "source_output": self.output_name,
            "output_time_major": self.output_time_major,
            "output": self._describe_output(),
            "renormalized": self.renormalized,
            "dropped_outputs": list(self.dropped_outputs),
        }

    def _describe_output(self) -> str:
        if self.logits:
            return "logits, softmax over the last axis added"
        if self.renormalized:
            return "scores in [0, 1], divided by their sum per step (--renormalize)"
        return "probabilities, kept"


def import_model(config: ImportConfig) -> dict:
    """Wrap, verify and publish a sequence model made elsewhere; return the report."""
    if config.framework == "keras":
        return import_keras(config)
    source_bytes = _read_source(config.source, config.label)
    source_proto = _parse(config.label, source_bytes)
    return import_onnx_model(config, source_bytes, source_proto,
                             source_provenance(config.source, source_bytes, source_proto))


def import_onnx_model(config: ImportConfig, source_bytes: bytes, source_proto: onnx.ModelProto,
                      provenance: dict, keras_model=None) -> dict:
    """Wrap, verify and publish an ONNX sequence model; return the report.

    Steps: 1. read and audit the source, and find its input and output layout; 2. probe it:
    the output layout, the number of classes, logits or probabilities; 3. check that its rows
    are independent (else the time axis is wrong) and whether it is causal, which decides the
    spec's length and whether the LSTM states are exposed; 4. wrap it and add
    the scoring interface, with the spec (and a baseline from --reference) in the metadata;
    5. check the result against the source, and the state carry; 6. publish atomically (only if
    5 passed), with the report beside it. With ``keras_model`` (the model ``source_proto`` was
    converted from), step 5 also checks the source against Keras `predict`.
    """
    # 1. Everything that can be wrong with the inputs fails before any model runs.
    layout = inspect_layout(source_proto, config)
    reference_path = config.reference
    if reference_path is not None and not os.path.isfile(reference_path):
        raise InputMissing(f"--reference {reference_path}: not found")
    source_session = _source_session(config.label, source_bytes)

    # 2.
    generator = np.random.default_rng(config.seed)
    layout = probe(source_session, layout, config, generator)
    predict_source = _source_predictor(source_session, layout)

    # 3.
    steps = layout.time_steps or config.max_length
    independence = check_rows_independent(config.label, predict_source, layout, steps,
                                          len(config.x_values), generator)
    causality = check_causality(predict_source, layout, steps, len(config.x_values), generator)
    spec = _spec(config, layout, causality)
    withheld = _why_states_withheld(layout, causality)

    # 4.
    from export.graph import add_scoring_interface

    wrapped = wrap(source_proto, layout, len(config.y_values))
    interface = add_scoring_interface(wrapped, withheld)
    spec = replace(spec, states=interface.states)
    inputs = {"random": random_rows(spec, config.random_rows, generator)}
    if reference_path is not None:
        try:
            inputs["reference"] = read_rows(reference_path, spec)
        except InvalidInput as error:
            raise InvalidInput(f"--reference {reference_path}: {error}") from None
    expected = {name: _run_by_length(predict_source, rows) for name, rows in inputs.items()}
    baseline = None
    if "reference" in inputs:
        baseline = baseline_profile(spec, inputs["reference"], expected["reference"]).to_dict()
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    embed_metadata(wrapped, spec, baseline, provenance, created, interface.describe(), layout.renormalized)
    model_bytes = wrapped.SerializeToString()

    # 5.
    checks = verify(model_bytes, inputs, expected, spec)
    if keras_model is not None:
        checks["keras"] = verify_keras(keras_model, layout, inputs, expected)
        checks["failures"] += checks["keras"]["failures"]
        checks["passed"] = not checks["failures"]
    checks["rows_independent"] = independence
    checks["causality"] = causality
    _check_scorer_loads(model_bytes)
    report = {
        "mode": "import",
        "output": os.path.abspath(config.output),
        "source": provenance,
        "wrapping": layout.describe(),
        "spec": json.loads(spec.to_json()),
        "length": _describe_length(spec, layout, causality),
        "checks": checks,
        "scoring_interface": _interface_report(interface),
        "baseline": "from --reference" if baseline is not None else None,
        "created_at": created.isoformat(timespec="seconds"),
        "bytes": len(model_bytes),
    }

    # 6. export_report.json always describes the published model, as for `--artifacts`.
    refusal = None if checks["passed"] else (
        "the wrapped model does not match the source, nothing published: " + "; ".join(checks["failures"]))
    return publish_with_report(model_bytes, config.output, report, refusal)


# 1. Reading and inspecting ---------------------------------------------------------------------
def _read_source(path: str, label: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputMissing(f"{label}: not found") from None
    except IsADirectoryError:
        raise InputMissing(f"{label}: is a directory; expected a model file") from None
    except PermissionError:
        raise InputPermission(f"{label}: no permission to read it") from None


def _parse(path: str, source_bytes: bytes) -> onnx.ModelProto:
    """The source as a ModelProto, refused as the scorer refuses a model it cannot load."""
    models.audit(path, source_bytes, self_contained_hint=(
        " (torch.onnx.export: external_data=False, or the TorchScript exporter, dynamo=False)"))
    try:
        return onnx.load_model_from_string(source_bytes)
    except Exception as error:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise ModelError(f"{path}: not an ONNX model ({first_line(error)})") from None


def inspect_layout(model_proto: onnx.ModelProto, config: ImportConfig) -> SourceLayout:
    """The source's one required input and its sequence output, from the graph alone."""
    path, graph = config.label, model_proto.graph
    initialized = {tensor.name for tensor in graph.initializer}
    required = [value for value in graph.input if value.name not in initialized]
    if len(required) != 1:
        names = ", ".join(value.name for value in required) or "none"
        raise ModelError(
            f"{path}: the model has {len(required)} required inputs ({names}); expected one, "
            f"the sequence (an initial state or a length must have a default, or be left out)"
        )
    source_input = required[0]
    tensor_type = source_input.type.tensor_type
    if not tensor_type.HasField("shape"):
        raise ModelError(
            f"{path}: input {source_input.name!r} declares no shape, so its time axis is "
            f"unknown; export it with its shape (batch, time) or (batch, time, classes)"
        )
    dimensions = list(tensor_type.shape.dim)
    element = tensor_type.elem_type
    if element in INTEGER_TYPES:
        one_hot, rank = False, 2
    elif element in FLOAT_TYPES:
        one_hot, rank = True, 3
    else:
        raise ModelError(
            f"{path}: input {source_input.name!r} is {_type_name(element)}; expected integer "
            f"class indices (batch, time) or one-hot floats (batch, time, classes)"
        )
    if len(dimensions) < 2:
        raise ModelError(
            f"{path}: input {source_input.name!r} has rank {len(dimensions)}, so no time "
            f"axis; expected (batch, time) class indices or (batch, time, classes) one-hot floats"
        )
    if len(dimensions) != rank:
        raise ModelError(
            f"{path}: input {source_input.name!r} is {_type_name(element)} of rank "
            f"{len(dimensions)}; expected {'(batch, time, classes) one-hot' if one_hot else '(batch, time) class indices'}"
        )
    x_classes = len(config.x_values)
    if one_hot and dimensions[2].HasField("dim_value") and dimensions[2].dim_value != x_classes:
        raise ModelError(
            f"{path}: input {source_input.name!r} is one-hot over {dimensions[2].dim_value} "
            f"classes but --x-values lists {x_classes} values"
        )
    time_axis = config.time_axis if config.time_axis is not None else _named_time_axis(dimensions)
    batch = dimensions[1 - time_axis]
    if batch.HasField("dim_value"):
        raise ModelError(
            f"{path}: the batch axis (axis {1 - time_axis}) of input {source_input.name!r} is "
            f"fixed at {batch.dim_value}; export it with a dynamic batch axis (torch.onnx.export "
            f"dynamic_axes), or pass --time-axis if axis {time_axis} is not the time axis"
        )
    time = dimensions[time_axis]
    if not graph.output:
        raise ModelError(f"{path}: the model has no output")
    output = graph.output[0]
    return SourceLayout(
        input_name=source_input.name,
        input_type=element,
        one_hot=one_hot,
        time_major=time_axis == 0,
        time_steps=time.dim_value if time.HasField("dim_value") else None,
        output_name=output.name,
        output_type=output.type.tensor_type.elem_type,
        x_classes=x_classes,
        dropped_outputs=tuple(value.name for value in graph.output[1:]),
    )


def _named_time_axis(dimensions) -> int:
    """The axis among the first two whose name says time; 1 (batch-major) when names do not say."""
    named = [axis for axis in (0, 1)
             if any(word in dimensions[axis].dim_param.lower() for word in TIME_AXIS_WORDS)]
    return named[0] if len(named) == 1 else 1


def _type_name(element: int) -> str:
    return TensorProto.DataType.Name(element).lower()


def _source_session(path: str, source_bytes: bytes):
    try:
        return _session(source_bytes)
    except Exception as error:  # noqa: BLE001  onnxruntime's Fail / InvalidGraph / NotImplemented ...
        raise ModelError(f"{path}: onnxruntime cannot load it ({first_line(error)})") from None


# 2. Probing ------------------------------------------------------------------------------------
def probe(session, layout: SourceLayout, config: ImportConfig,
          generator: np.random.Generator) -> SourceLayout:
    """Run the source once to learn what the graph does not say: which output axis is time
    (batch and time get different sizes), how many classes, and logits or probabilities."""
    path = config.label
    steps = layout.time_steps or min(config.max_length, 8)
    batch = steps + 2  # never the time axis's size, so the output's axes tell which is which
    indices = generator.integers(0, len(config.x_values), size=(batch, steps), dtype=np.int32)
    try:
        output = session.run([layout.output_name], {layout.input_name: layout.feed(indices)})[0]
    except Exception as error:  # noqa: BLE001  (onnxruntime raises its own exception types)
        raise ModelError(
            f"{path}: the model fails on {batch} valid sequences of {steps} steps "
            f"({first_line(error)}); check --time-axis and --x-values"
        ) from None
    if output.ndim != 3 or output.shape[:2] not in ((batch, steps), (steps, batch)):
        raise ModelError(
            f"{path}: output {layout.output_name!r} is {output.shape} for {batch} sequences "
            f"of {steps} steps; expected one score per class at each step, (batch, time, classes) "
            f"or (time, batch, classes)"
        )
    classes = output.shape[-1]
    if classes != len(config.y_values):
        raise ModelError(
            f"{path}: output {layout.output_name!r} has {classes} classes but --y-values "
            f"lists {len(config.y_values)} values"
        )
    layout = replace(layout, output_time_major=output.shape[:2] == (steps, batch))
    scores = layout.probabilities(output)
    if not np.isfinite(scores).all():
        raise ModelError(f"{path}: the model gives NaN or infinity on valid sequences")
    if _needs_renormalizing(path, scores, config):
        return replace(layout, renormalized=True)
    return replace(layout, logits=_is_logits(path, scores, config.outputs))


def _needs_renormalizing(path: str, scores: np.ndarray, config: ImportConfig) -> bool:
    """With --renormalize: whether the probe's scores lie in [0, 1] without summing to 1.

    A step whose scores all sum to 0 would divide by zero: such a model is refused rather than
    given an epsilon, so that every published step is exactly its scores over their sum.
    """
    if not config.renormalize or config.outputs == "logits":
        return False
    sums = scores.sum(axis=-1)
    if not (scores.min() >= 0.0 and scores.max() <= 1.0) or np.abs(sums - 1.0).max() <= SUM_TOLERANCE:
        return False  # logits or probabilities already: --renormalize has nothing to do
    if not sums.min() > 0.0:
        raise ModelError(
            f"{path}: --renormalize, but at {int((sums <= 0.0).sum())} of {sums.size} probed steps "
            f"every output is 0, so their sum is 0 and dividing by it is undefined; export the "
            f"model's logits instead (then pass --outputs logits)"
        )
    return True


def _is_logits(path: str, scores: np.ndarray, declared: str | None) -> bool:
    """Whether the output needs a softmax: declared, or detected from the probe's values."""
    if declared == "logits":
        return True
    in_unit = bool(scores.min() >= 0.0 and scores.max() <= 1.0)
    sums = scores.sum(axis=-1)
    if in_unit and np.abs(sums - 1.0).max() <= SUM_TOLERANCE:
        return False
    if in_unit:
        raise ModelError(
            f"{path}: the outputs lie in [0, 1] but a step's outputs sum to between "
            f"{sums.min():.3g} and {sums.max():.3g}, not 1: they are independent per-class scores "
            f"(a sigmoid), not a distribution over classes, so argmax would still name the top class "
            f"but the probabilities would not be comparable across steps; export logits or a softmax, "
            f"pass --renormalize to divide them by their sum per step (scores, not calibrated "
            f"probabilities), or, if these are logits, pass --outputs logits"
        )
    if declared == "probabilities":
        raise ModelError(
            f"{path}: --outputs probabilities, but the outputs range over "
            f"[{scores.min():.3g}, {scores.max():.3g}]; pass --outputs logits if they are logits"
        )
    return True


def _source_predictor(session, layout: SourceLayout):
    """(batch, time) class indices -> the source's probabilities after the declared wrapping."""

    def predict(indices: np.ndarray) -> np.ndarray:
        output = session.run([layout.output_name], {layout.input_name: layout.feed(indices)})[0]
        return layout.probabilities(output)

    return predict


def _run_by_length(predict, rows: ParityRows) -> np.ndarray:
    """``predict`` on each group of rows of one length, at that length, scattered back into a
    (rows, width, classes) array (zeros past each row's length)."""
    if rows.lengths is None:
        return predict(rows.indices)
    output = None
    for length in np.unique(rows.lengths):
        group = np.flatnonzero(rows.lengths == length)
        probabilities = predict(rows.indices[group, :length])
        if output is None:
            output = np.zeros((*rows.indices.shape, probabilities.shape[-1]), np.float32)
        output[group, :length] = probabilities
    return output


# 3. Independent rows and causality -------------------------------------------------------------
def check_rows_independent(path: str, predict, layout: SourceLayout, steps: int, x_classes: int,
                           generator: np.random.Generator, rows: int = 16) -> dict:
    """Refuse a model whose rows are not independent: new values in the first row must leave
    every other row's outputs as they were.

    This is what a wrong time axis looks like: run with batch and time swapped, the recurrence
    reads the rows of a batch one after the other, and the wrapping and the causality check
    would both agree with it.
    """
    indices = generator.integers(0, x_classes, size=(rows, steps), dtype=np.int32)
    altered = indices.copy()
    altered[0] = (indices[0] + 1) % x_classes
    difference = float(np.abs(predict(altered)[1:] - predict(indices)[1:]).max())
    if not difference <= CAUSALITY_TOLERANCE:
        axis = 0 if layout.time_major else 1
        raise ModelError(
            f"{path}: changing one row of a batch changes the other rows' outputs by up to "
            f"{difference:.3g}: axis {axis} of input {layout.input_name!r} is not its time axis (pass "
            f"--time-axis {1 - axis}), or the model mixes the rows of a batch, which scoring cannot take"
        )
    return {"rows": rows, "steps": steps, "max_abs_difference": difference, "tolerance": CAUSALITY_TOLERANCE}


def check_causality(predict, layout: SourceLayout, steps: int, x_classes: int,
                    generator: np.random.Generator, rows: int = 64) -> dict:
    """Whether step t of the source reads steps 0..t only: new values after each split point
    must leave the steps before it unchanged, and, with a dynamic time axis, the first steps
    run alone must give what they give in the whole row.

    A model that reads later steps (bidirectional, reversed, attention over the whole row) has
    no state per prefix and no meaning for a shorter row: it is scored at one fixed length.
    """
    indices = generator.integers(0, x_classes, size=(rows, steps), dtype=np.int32)
    whole = predict(indices)
    changed_later, prefix_alone = [0.0], [0.0]
    splits = split_points(steps)
    for split in splits:
        altered = indices.copy()
        altered[:, split:] = generator.integers(0, x_classes, size=(rows, steps - split), dtype=np.int32)
        changed_later.append(np.abs(predict(altered)[:, :split] - whole[:, :split]).max())
        if layout.time_steps is None:
            prefix_alone.append(np.abs(predict(indices[:, :split]) - whole[:, :split]).max())
    report = {
        "rows": rows,
        "steps": steps,
        "split_points": splits,
        "later_steps_changed_max_abs_difference": float(np.max(changed_later)),
        "tolerance": CAUSALITY_TOLERANCE,
    }
    if layout.time_steps is None:
        report["prefix_alone_max_abs_difference"] = float(np.max(prefix_alone))
    report["causal"] = bool(max(np.max(changed_later), np.max(prefix_alone)) <= CAUSALITY_TOLERANCE)
    return report


def _spec(config: ImportConfig, layout: SourceLayout, causality: dict) -> Spec:
    """A fixed time axis stays fixed; a dynamic one takes every length 1..--max-length when the
    model is causal, and only --max-length when it reads later steps."""
    if layout.time_steps is not None or not causality["causal"]:
        return Spec(config.x_values, config.y_values, seq_len=layout.time_steps or config.max_length,
                    causal=bool(causality["causal"]))
    return Spec(config.x_values, config.y_values, seq_len=config.max_length, min_len=1)


def _describe_length(spec: Spec, layout: SourceLayout, causality: dict) -> str:
    """Why the spec takes the lengths it takes, for the report."""
    if layout.time_steps is not None:
        return f"the source's time axis is fixed: exactly {spec.seq_len} steps"
    if spec.variable_length:
        return f"causal with a dynamic time axis: any length 1..{spec.max_len} (--max-length)"
    return (f"not causal (it reads later steps): a fixed-length model of exactly {spec.seq_len} "
            f"steps (--max-length), as a shorter row would change every step's output")


def _why_states_withheld(layout: SourceLayout, causality: dict) -> str | None:
    if not causality["causal"]:
        return (f"changing a row's later steps changes its earlier outputs by up to "
                f"{causality['later_steps_changed_max_abs_difference']:.3g}: the model reads later "
                f"steps, so a prefix has no state of its own")
    if layout.time_steps is not None:
        return f"the source's time axis is fixed at {layout.time_steps} steps, so a prefix cannot run alone"
    return None


# 4. Wrapping -----------------------------------------------------------------------------------
def wrap(source_proto: onnx.ModelProto, layout: SourceLayout, y_classes: int) -> onnx.ModelProto:
    """A copy of the source whose input is x (int32 (batch, time)) and whose only output is
    probabilities (float32 (batch, time, classes)); the recurrence inside is left as it is."""
    model_proto = onnx.ModelProto()
    model_proto.CopyFrom(source_proto)
    graph = model_proto.graph
    # 1. Free the contract's names, whatever the exporter called its tensors.
    rename_tensor(graph, layout.input_name, _SOURCE_INPUT)
    rename_tensor(graph, layout.output_name, _SOURCE_OUTPUT)
    for name in (INPUT_NAME, OUTPUT_NAME):
        rename_tensor(graph, name, f"{_PREFIX}{name}")
    # 2. The nodes before and after the source's own, already in dependency order.
    before = _input_nodes(graph, layout)
    after = _output_nodes(graph, layout, default_opset(model_proto))
    nodes = before + list(graph.node) + after
    graph.ClearField("node")
    graph.node.extend(nodes)
    # 3. The contract's input and output in place of the source's.
    time = layout.time_steps or "time"
    others = [value for value in graph.input if value.name != _SOURCE_INPUT]
    graph.ClearField("input")
    graph.input.extend([helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT32, ["batch", time]),
                        *others])
    graph.ClearField("output")
    graph.output.append(
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", time, y_classes]))
    model_proto.doc_string = ""
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as error:
        from export.graph import InterfaceError

        raise InterfaceError(f"the wrapped model is not valid ONNX ({first_line(error)})") from None
    return model_proto


def _input_nodes(graph: onnx.GraphProto, layout: SourceLayout) -> list[onnx.NodeProto]:
    """x -> the source's input: OneHot (one-hot sources), Transpose (time-major), Cast."""
    nodes, current = [], INPUT_NAME
    if layout.one_hot:
        indices, depth, values = f"{_PREFIX}indices", f"{_PREFIX}depth", f"{_PREFIX}one_hot_values"
        graph.initializer.extend([
            numpy_helper.from_array(np.array([layout.x_classes], np.int64), depth),
            numpy_helper.from_array(np.array([0, 1], FLOAT_TYPES[layout.input_type]), values),
        ])
        # onnxruntime's OneHot kernel takes int64 indices with int64 depth.
        nodes.append(helper.make_node("Cast", [current], [indices], name=indices, to=TensorProto.INT64))
        nodes.append(helper.make_node("OneHot", [indices, depth, values], [f"{_PREFIX}one_hot"],
                                      name=f"{_PREFIX}one_hot", axis=-1))
        current = f"{_PREFIX}one_hot"
    if layout.time_major:
        perm = [1, 0, 2] if layout.one_hot else [1, 0]
        nodes.append(helper.make_node("Transpose", [current], [f"{_PREFIX}time_major"],
                                      name=f"{_PREFIX}time_major", perm=perm))
        current = f"{_PREFIX}time_major"
    if layout.one_hot:
        nodes.append(helper.make_node("Identity", [current], [_SOURCE_INPUT], name=_SOURCE_INPUT))
    else:
        nodes.append(helper.make_node("Cast", [current], [_SOURCE_INPUT], name=_SOURCE_INPUT,
                                      to=layout.input_type))
    return nodes


def _output_nodes(graph: onnx.GraphProto, layout: SourceLayout, opset: int) -> list[onnx.NodeProto]:
    """The source's output -> probabilities: Transpose (time-major), Cast, Softmax (logits) or
    ReduceSum and Div (--renormalize)."""
    nodes, current = [], _SOURCE_OUTPUT
    if layout.output_time_major:
        nodes.append(helper.make_node("Transpose", [current], [f"{_PREFIX}batch_major"],
                                      name=f"{_PREFIX}batch_major", perm=[1, 0, 2]))
        current = f"{_PREFIX}batch_major"
    if layout.output_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [current], [f"{_PREFIX}float"], name=f"{_PREFIX}float",
                                      to=TensorProto.FLOAT))
        current = f"{_PREFIX}float"
    if layout.logits:
        # Softmax over the last axis: per-axis from opset 13, and the same result before it,
        # where the input is flattened to 2-D at that axis (axis 2, not -1: opsets before 11
        # take no negative axis).
        nodes.append(helper.make_node("Softmax", [current], [OUTPUT_NAME], name=OUTPUT_NAME, axis=2))
    elif layout.renormalized:
        # The sum over the last axis, kept as (batch, time, 1) so that Div broadcasts it. ReduceSum
        # takes its axes as an input from opset 13, as an attribute before.
        total = f"{_PREFIX}sum"
        if opset >= 13:
            graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), f"{_PREFIX}sum_axes"))
            nodes.append(helper.make_node("ReduceSum", [current, f"{_PREFIX}sum_axes"], [total], name=total,
                                          keepdims=1))
        else:
            nodes.append(helper.make_node("ReduceSum", [current], [total], name=total, axes=[2], keepdims=1))
        nodes.append(helper.make_node("Div", [current, total], [OUTPUT_NAME], name=OUTPUT_NAME))
    else:
        nodes.append(helper.make_node("Identity", [current], [OUTPUT_NAME], name=OUTPUT_NAME))
    return nodes


def baseline_profile(spec: Spec, rows: ParityRows, probabilities: np.ndarray) -> Profile:
    """The drift baseline, as training computes it (train.core.baseline_profile, which imports
    TensorFlow): inputs and predictions both from the --reference rows, real steps only."""
    profile = Profile.empty(spec)
    profile.add_inputs(rows.indices, rows.mask)
    profile.add_predictions(probabilities.argmax(axis=-1), probabilities.max(axis=-1), rows.mask)
    return profile


def source_provenance(path: str, source_bytes: bytes, model_proto: onnx.ModelProto) -> dict:
    """Where the model came from, for the report and the metadata."""
    return {
        "path": os.path.abspath(path),
        "sha256": hashlib.sha256(source_bytes).hexdigest(),
        "producer_name": model_proto.producer_name,
        "producer_version": model_proto.producer_version,
        "ir_version": model_proto.ir_version,
        "opsets": {entry.domain or "ai.onnx": entry.version for entry in model_proto.opset_import},
        "doc_string": model_proto.doc_string or None,
    }


def embed_metadata(model_proto: onnx.ModelProto, spec: Spec, baseline: dict | None,
                   provenance: dict, created: dt.datetime, interface_description: str,
                   renormalized: bool = False) -> None:
    import onnxruntime as ort

    entries = {
        "spec": spec.to_json(),
        "source": json.dumps(provenance),
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
        "created_at": created.isoformat(timespec="seconds"),
        "version": f"{created.strftime('%Y%m%dT%H%M%SZ')}-{provenance['sha256'][:12]}",
    }
    if baseline is not None:
        entries["baseline"] = json.dumps(baseline)
    if renormalized:
        entries["probabilities"] = RENORMALIZED
    del model_proto.metadata_props[:]
    for key, value in entries.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = "seqscore"
    model_proto.producer_version = ""
    meaning = RENORMALIZED if renormalized else "softmax"
    model_proto.doc_string = (
        "Input 'x': int32 class indices (batch, time). Output 'probabilities': float32 "
        f"(batch, time, classes), {meaning}. The 'spec' metadata maps indices to raw values; "
        "'source' describes the imported model." + (f" {interface_description}" if interface_description else "")
    )


# 5. Checks -------------------------------------------------------------------------------------
def verify(model_bytes: bytes, inputs: dict[str, ParityRows], expected: dict[str, np.ndarray],
           spec: Spec) -> dict:
    """The published model against the source after the declared wrapping, on each set of rows
    (ragged rows one length at a time); and a run resumed from a carried state against the
    whole run, where the states are exposed."""
    session = _session(model_bytes)

    def predict(indices: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: indices})[0]

    report: dict = {"tolerance": PARITY_TOLERANCE}
    failures = []
    for name, rows in inputs.items():
        published = _run_by_length(predict, rows)
        mask = rows.mask if rows.mask is not None else np.ones(rows.indices.shape, dtype=bool)
        difference = float(np.abs(published - expected[name])[mask].max()) if mask.any() else 0.0
        report[name] = {
            "rows": int(len(rows.indices)),
            "max_abs_difference": difference,
            "argmax_disagreements": int((published.argmax(-1) != expected[name].argmax(-1))[mask].sum()),
        }
        if rows.lengths is not None:
            report[name]["lengths"] = sorted(int(length) for length in np.unique(rows.lengths))
        if not difference <= PARITY_TOLERANCE:
            failures.append(f"{name}: max |p_published - p_source| = {difference:.3g} > {PARITY_TOLERANCE:g}")
    if spec.states:
        report["state_carry"] = verify_state_carry(session, spec.states, inputs)
        failures += report["state_carry"]["failures"]
    report["passed"] = not failures
    report["failures"] = failures
    return report


def _check_scorer_loads(model_bytes: bytes) -> None:
    """Load the wrapped model as the scoring job will, so that it is never published unusable."""
    from export.graph import InterfaceError
    from score.model import load

    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.onnx")
        with open(path, "wb") as handle:
            handle.write(model_bytes)
        try:
            load(path)
        except ModelError as error:
            message = str(error).replace(path, "the wrapped model")
            raise InterfaceError(f"the scoring job refuses the wrapped model: {message}") from None


# 6. Keras files --------------------------------------------------------------------------------
def import_keras(config: ImportConfig) -> dict:
    """Load a .keras / .h5 file on the CPU, convert it with tf2onnx at its own input signature,
    and import the result as an ONNX source, checked against Keras `predict` besides."""
    from export.core import _force_cpu

    _force_cpu()
    keras_bytes = _read_source(config.source, config.label)
    model = load_keras_file(config.source, config.label)
    source_proto = convert_keras(model, config.label)
    provenance = keras_provenance(config.source, keras_bytes)
    return import_onnx_model(config, source_proto.SerializeToString(), source_proto, provenance,
                             keras_model=model)


def load_keras_file(path: str, label: str):
    """The Keras model, uncompiled (only `predict` is needed), with the project's layers known."""
    import keras

    import train  # noqa: F401  (registers OneHot, so models trained here load too)

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001  (Keras raises many types for a bad file)
        # Keras wraps the reason in a long message; the custom class's name is the useful part.
        custom = re.search(r"Could not locate (?:class|function) '[^']*'|Unknown (?:layer|object): '[^']*'",
                           str(error))
        if custom:
            raise ModelError(
                f"{label}: Keras cannot deserialize a custom layer or object without its code "
                f"({custom.group(0)}); export the model to ONNX where its code is importable, and "
                f"pass --onnx"
            ) from None
        raise ModelError(f"{label}: Keras cannot load it ({first_line(error)})") from None


def convert_keras(model, label: str) -> onnx.ModelProto:
    """tf2onnx conversion at the model's own input signature (dtype and shape, with its dynamic
    axes left dynamic), refused where the recurrence became a Loop or Scan."""
    import tensorflow as tf
    import tf2onnx

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{label}: the model has {len(model.inputs)} input(s) and {len(model.outputs)} "
                         f"output(s); expected one sequence input and one sequence output")
    source_input = model.inputs[0]
    signature = (tf.TensorSpec(tuple(source_input.shape), tf.as_dtype(source_input.dtype), name="input"),)
    try:
        model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=KERAS_OPSET)
    except Exception as error:  # noqa: BLE001  (tf2onnx raises many types)
        raise ModelError(f"{label}: tf2onnx cannot convert it at opset {KERAS_OPSET} "
                         f"({first_line(error)})") from None
    fallback = sorted({node.op_type for node in model_proto.graph.node} & set(FORBIDDEN_OPS))
    if fallback:
        raise ModelError(
            f"{label}: tf2onnx turned the recurrence into {', '.join(fallback)} instead of the fused "
            f"LSTM/GRU op, as it does for a mask (a Masking layer or Embedding(mask_zero=True)) or "
            f"recurrent dropout; onnxruntime would run it step by step. Remove the mask (scoring never "
            f"pads a row's real steps) and save the model again"
        )
    return model_proto


def keras_provenance(path: str, keras_bytes: bytes) -> dict:
    """Where the model came from and what converted it, for the report and the metadata."""
    import keras
    import tensorflow as tf
    import tf2onnx

    return {
        "path": os.path.abspath(path),
        "sha256": hashlib.sha256(keras_bytes).hexdigest(),
        "framework": "keras",
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "tf2onnx_version": tf2onnx.__version__,
        "opset": KERAS_OPSET,
    }


def verify_keras(model, layout: SourceLayout, inputs: dict[str, ParityRows],
                 expected: dict[str, np.ndarray]) -> dict:
    """The converted model against Keras `predict`, both after the declared wrapping, on each
    set of rows (ragged rows one length at a time), within export.core.allowed_difference."""

    def predict(indices: np.ndarray) -> np.ndarray:
        return layout.probabilities(model.predict(layout.feed(indices), batch_size=4096, verbose=0))

    report: dict = {"tolerance": KERAS_TOLERANCE, "tolerance_steps": TOLERANCE_STEPS}
    failures = []
    for name, rows in inputs.items():
        by_step = np.abs(_run_by_length(predict, rows) - expected[name]).max(axis=-1)  # (rows, T)
        if rows.mask is not None:
            by_step = np.where(rows.mask, by_step, 0.0)
        allowed = allowed_difference(KERAS_TOLERANCE, by_step.shape[1])
        difference = float(by_step.max()) if by_step.size else 0.0
        report[name] = {"rows": int(len(rows.indices)), "max_abs_difference": difference}
        if not (by_step <= allowed).all():  # NaN fails too
            failures.append(f"keras {name}: max |p_onnx - p_keras| = {difference:.3g}, above "
                            f"{KERAS_TOLERANCE:g} (growing after step {TOLERANCE_STEPS}) at some step")
    report["passed"] = not failures
    report["failures"] = failures
    return report
