"""The source of an import: read it, find from its graph how its input and output lie, and
probe it once for what the graph does not say (which output axis is time, how many classes,
logits or probabilities).

A source model may take integer ids of any type or one-hot floats, lie time-major, and give
logits; SourceLayout records all of it, and says in numpy what the wrapping (export.wrapping)
does in ONNX, so that the checks (export.source_checks) can compare the two.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper

from export.parity import Predict, onnx_session
from score import model as models
from score.errors import InputMissing, InputPermission, ModelError, first_line

if TYPE_CHECKING:
    from export.imported import ImportConfig

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
SUM_TOLERANCE = 1e-4  # a step of probabilities sums to 1 within this


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


# Reading and inspecting ----------------------------------------------------------------------
def read_source(path: str, label: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise InputMissing(f"{label}: not found") from None
    except IsADirectoryError:
        raise InputMissing(f"{label}: is a directory; expected a model file") from None
    except PermissionError:
        raise InputPermission(f"{label}: no permission to read it") from None


def parse_source(path: str, source_bytes: bytes) -> onnx.ModelProto:
    """The source as a ModelProto, refused as the scorer refuses a model it cannot load."""
    models.audit(path, source_bytes, self_contained_hint=(
        " (torch.onnx.export: external_data=False, or the TorchScript exporter, dynamo=False)"))
    try:
        return onnx.load_model_from_string(source_bytes)
    except Exception as error:  # noqa: BLE001  (protobuf's DecodeError and friends)
        raise ModelError(f"{path}: not an ONNX model ({first_line(error)})") from None


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


def source_session(path: str, source_bytes: bytes):
    try:
        return onnx_session(source_bytes)
    except Exception as error:  # noqa: BLE001  onnxruntime's Fail / InvalidGraph / NotImplemented ...
        raise ModelError(f"{path}: onnxruntime cannot load it ({first_line(error)})") from None


# Probing -------------------------------------------------------------------------------------
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


def source_predictor(session, layout: SourceLayout) -> Predict:
    """(batch, time) class indices -> the source's probabilities after the declared wrapping."""

    def predict(indices: np.ndarray) -> np.ndarray:
        output = session.run([layout.output_name], {layout.input_name: layout.feed(indices)})[0]
        return layout.probabilities(output)

    return predict
