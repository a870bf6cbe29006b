"""The import's graph edit: wrap a source model into the scoring contract.

The wrapped model takes x (int32 class indices, (batch, time)) and gives probabilities (float32
(batch, time, classes), a softmax per step). The nodes added (Cast, OneHot, Transpose, Softmax,
ReduceSum and Div, all standard ONNX ops) make the source fit, and leave its recurrence, the
fused LSTM or GRU op, as it is. The states and heads are added after, by export.graph.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.graph import InterfaceError, default_opset, rename_tensor
from export.source import FLOAT_TYPES, SourceLayout
from score.errors import first_line
from score.spec import INPUT_NAME, OUTPUT_NAME

# Names of the source's own input and output inside the published graph, so that the contract's
# 'x' and 'probabilities' are free whatever the exporter called its tensors.
_SOURCE_INPUT = "seqscore_import_input"
_SOURCE_OUTPUT = "seqscore_import_output"
_PREFIX = "seqscore_import_"


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
