"""Edit the converted graph into the scoring interface: each LSTM layer's state, and top-k heads.

The scoring job computes each distinct sequence prefix once and resumes the longer sequences
from that prefix's LSTM state, so every layer's initial state becomes an optional input and its
final state an output. tf2onnx builds each initial state from a zeros subgraph of its own; that
subgraph is replaced, not left beside the new inputs. The top-k heads let the scorer take the
k best classes inside onnxruntime; a file without them is scored with numpy's top-k.

A client that feeds only ``x`` and reads only ``probabilities`` sees the model as before, and
onnxruntime loads it without a word: from opset 15 on, the new inputs are ONNX optional inputs
(OptionalHasElement -> If: the fed tensor, else zeros, or K = 1). Opsets 13 and 14 have no
optional type, so there they keep the older wiring, an initializer listed as a graph input,
which works the same but makes onnxruntime warn at every load that the initializer "will not be
treated as constant". rewire_optional_inputs turns a file published with that wiring into one
with optional inputs, weights and outputs unchanged.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from score.errors import EXIT_SOFTWARE, SeqscoreError
from score.spec import (
    HEADS,
    INPUT_NAME,
    K_INPUT,
    OUTPUT_NAME,
    STEP_SUMS,
    TOP_CLASSES,
    TOP_PROBABILITIES,
    StateTensors,
)

# Recurrences whose state the LSTM wiring below does not carry: a graph with any of them is
# published without states and scored without prefix sharing.
UNCARRIED_RECURRENCES = ("GRU", "RNN", "Loop", "Scan")
# ReduceSum takes its axes as an input from opset 13 on; an older opset gets the graph as
# converted (no states, and numpy's top-k in the scorer).
INTERFACE_MIN_OPSET = 13
# Optional-typed graph inputs (OptionalHasElement, OptionalGetElement) exist from opset 15 on.
OPTIONAL_INPUT_MIN_OPSET = 15
# K when a client asks for the heads without feeding it: 1 is valid for any number of classes.
DEFAULT_K = 1
_OR_DEFAULT = "_or_default"  # an optional input's value: the fed tensor, else its default
_PREFIX = "seqscore_state_"  # names of the helper tensors the state wiring adds


class InterfaceError(SeqscoreError):
    """The edited graph is not a valid model: a fault in this code or in tf2onnx's graph, so
    an internal error (exit 70), and nothing is published."""

    exit_code = EXIT_SOFTWARE


@dataclass(frozen=True)
class ScoringInterface:
    """What add_scoring_interface added to the graph."""

    states: tuple[StateTensors, ...] = ()  # one per LSTM layer, in graph order; () when withheld
    states_withheld: str | None = None  # why no state is exposed, when none is
    heads: tuple[str, ...] = ()  # the head outputs added; () below INTERFACE_MIN_OPSET
    head_input: str | None = None  # the optional K input of the heads, when they were added

    def describe(self) -> str:
        """Sentences for the model's doc_string."""
        sentences = []
        if self.states:
            sentences.append(
                f"Optional inputs initial_h_i / initial_c_i (float32 (1, batch, units), zeros "
                f"when not fed) and outputs final_h_i / final_c_i carry the state of LSTM layer i "
                f"(i = 0..{len(self.states) - 1}): a run fed another run's final state continues "
                f"that run's sequence."
            )
        if self.heads:
            sentences.append(
                f"Outputs {TOP_PROBABILITIES} / {TOP_CLASSES} are the top-K probabilities and "
                f"class indices per step (K from the optional int64 input {K_INPUT}, default "
                f"{DEFAULT_K}); {STEP_SUMS} is each step's sum of the probabilities."
            )
        return " ".join(sentences)


def add_scoring_interface(model_proto: onnx.ModelProto,
                          states_withheld: str | None = None) -> ScoringInterface:
    """Expose each LSTM layer's state and add the top-k heads, editing ``model_proto`` in place.

    ``states_withheld``: the caller's reason not to expose the states (the model reads later
    steps, which only running it shows); a reason the graph itself gives comes first.

    Steps: 1. decide whether the states can be carried; 2. wire them; 3. add the heads; 4. put
    the nodes in dependency order and drop what no output needs any more (tf2onnx's zeros
    subgraphs); 5. check the result with onnx.checker.
    """
    graph = model_proto.graph
    opset = default_opset(model_proto)
    if opset < INTERFACE_MIN_OPSET:
        reason = f"opset {opset} is below {INTERFACE_MIN_OPSET}"
        return ScoringInterface(states_withheld=reason)
    _check_names_are_free(graph)

    # 1-2.
    withheld = why_states_are_withheld(graph) or states_withheld
    states = () if withheld else _expose_states(graph, opset)
    # 3.
    _add_heads(graph, opset)
    # 4-5.
    _sort_topologically(graph)
    _remove_unused(graph)
    _check(model_proto, "the graph with the scoring interface")
    return ScoringInterface(states=states, states_withheld=withheld, heads=HEADS, head_input=K_INPUT)


def why_states_are_withheld(graph: onnx.GraphProto) -> str | None:
    """Why the LSTM states of ``graph`` cannot be carried from one run to the next, or None.

    A bidirectional or reversed layer reads later steps, so a prefix has no state of its own;
    other recurrences keep state this wiring does not expose.
    """
    for node in graph.node:
        if node.op_type in UNCARRIED_RECURRENCES:
            return f"the graph has a {node.op_type} node ({node.name}), whose state is not exposed"
    lstms = [node for node in graph.node if node.op_type == "LSTM"]
    if not lstms:
        return "the graph has no LSTM node"
    for layer, node in enumerate(lstms):
        direction = _attribute(node, "direction", b"forward")
        if direction != b"forward":
            return f"LSTM layer {layer} ({node.name}) runs {direction.decode()}"
        if _attribute(node, "layout", 0) != 0:
            return f"LSTM layer {layer} ({node.name}) is batch-major (layout 1)"
        if len(node.input) > 4 and node.input[4]:
            return f"LSTM layer {layer} ({node.name}) takes sequence lengths (a masked input)"
    return None


def _expose_states(graph: onnx.GraphProto, opset: int) -> tuple[StateTensors, ...]:
    """Optional zero initial states broadcast to the batch, and the final states as outputs."""
    state_shape = _add_state_shape(graph)
    batch = _dimension(graph.input, INPUT_NAME, 0)
    states = []
    for layer, node in enumerate(node for node in graph.node if node.op_type == "LSTM"):
        state = StateTensors(
            units=_attribute(node, "hidden_size", 0),
            initial_h=f"initial_h_{layer}",
            initial_c=f"initial_c_{layer}",
            final_h=f"final_h_{layer}",
            final_c=f"final_c_{layer}",
        )
        if state.units < 1:
            raise InterfaceError(f"LSTM layer {layer} ({node.name}) has no hidden_size")
        # The LSTM takes its initial state at inputs 5 and 6 and gives its final one at outputs
        # 1 and 2 (ONNX's LSTM signature); unused trailing inputs may be absent.
        inputs = list(node.input) + [""] * (7 - len(node.input))
        inputs[5] = _add_initial_state(graph, state.initial_h, state.units, state_shape, opset)
        inputs[6] = _add_initial_state(graph, state.initial_c, state.units, state_shape, opset)
        node.ClearField("input")
        node.input.extend(inputs)
        outputs = list(node.output) + [""] * (3 - len(node.output))
        for index, name in ((1, state.final_h), (2, state.final_c)):
            if outputs[index]:
                rename_tensor(graph, outputs[index], name)
            outputs[index] = name
            graph.output.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, batch, state.units])
            )
        node.ClearField("output")
        node.output.extend(outputs)
        states.append(state)
    return tuple(states)


def _add_state_shape(graph: onnx.GraphProto) -> str:
    """(1, batch, 1), batch taken from x: an initial state of (1, 1, units) or (1, batch, units)
    broadcast against it is (1, batch, units), as the LSTM needs."""
    one, zero = f"{_PREFIX}one", f"{_PREFIX}zero"
    x_shape, batch, shape = f"{_PREFIX}x_shape", f"{_PREFIX}batch", f"{_PREFIX}shape"
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], np.int64), one),
        numpy_helper.from_array(np.array([0], np.int64), zero),
    ])
    graph.node.extend([
        helper.make_node("Shape", [INPUT_NAME], [x_shape], name=x_shape),
        helper.make_node("Slice", [x_shape, zero, one, zero], [batch], name=batch),
        helper.make_node("Concat", [one, batch, one], [shape], name=shape, axis=0),
    ])
    return shape


def _add_initial_state(graph: onnx.GraphProto, name: str, units: int, state_shape: str,
                       opset: int) -> str:
    """An optional graph input ``name`` (zeros when not fed), broadcast to the batch; returns
    the broadcast tensor's name."""
    state_type = helper.make_tensor_type_proto(TensorProto.FLOAT, [1, "state_batch", units])
    value = add_optional_input(graph, name, state_type, np.zeros((1, 1, units), np.float32), opset)
    broadcast = f"{_PREFIX}{name}"
    graph.node.append(helper.make_node("Expand", [value, state_shape], [broadcast], name=broadcast))
    return broadcast


def add_optional_input(graph: onnx.GraphProto, name: str, tensor_type: onnx.TypeProto,
                       default: np.ndarray, opset: int) -> str:
    """Graph input ``name`` of ``tensor_type`` that a client may leave out, ``default`` when it
    does; returns the name of the tensor that holds the value, for the nodes that read it.

    From opset 15 on the input is optional-typed, and OptionalHasElement -> If gives the fed
    tensor or ``default`` (a Constant). Below, it is an initializer listed as a graph input.
    """
    if opset < OPTIONAL_INPUT_MIN_OPSET:
        graph.initializer.append(numpy_helper.from_array(default, name))
        graph.input.append(helper.make_value_info(name, tensor_type))
        return name
    value, given, fed, fallback = (f"{name}{suffix}" for suffix in (_OR_DEFAULT, "_given", "_fed", "_default"))
    element = tensor_type.tensor_type.elem_type
    then_branch = helper.make_graph(
        [helper.make_node("OptionalGetElement", [name], [fed], name=fed)], fed, [],
        [helper.make_tensor_value_info(fed, element, None)],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Constant", [], [fallback], name=fallback, value=numpy_helper.from_array(default))],
        fallback, [], [helper.make_tensor_value_info(fallback, element, None)],
    )
    graph.input.append(helper.make_value_info(name, helper.make_optional_type_proto(tensor_type)))
    graph.node.extend([
        helper.make_node("OptionalHasElement", [name], [given], name=given),
        helper.make_node("If", [given], [value], name=value, then_branch=then_branch, else_branch=else_branch),
    ])
    return value


def rewire_optional_inputs(model_proto: onnx.ModelProto) -> list[str]:
    """Make each input of ``model_proto`` that an initializer backs (the states and K of a file
    published with the opset 13-14 wiring) an optional-typed input with that initializer as its
    default, editing it in place: the weights, the metadata and every output stay as they were.
    Returns the inputs rewired, [] for a file that has none (one rewired already).
    """
    graph = model_proto.graph
    defaults = {tensor.name: tensor for tensor in graph.initializer}
    backed = [value for value in graph.input if value.name in defaults]
    if not backed:
        return []
    opset = default_opset(model_proto)
    if opset < OPTIONAL_INPUT_MIN_OPSET:
        raise InterfaceError(f"opset {opset} has no optional inputs (they need {OPTIONAL_INPUT_MIN_OPSET})")
    rewired = [(value.name, onnx.TypeProto.FromString(value.type.SerializeToString())) for value in backed]
    kept = [value for value in graph.input if value.name not in defaults]
    graph.ClearField("input")
    graph.input.extend(kept)
    for name, tensor_type in rewired:
        readers = list(graph.node)
        default = numpy_helper.to_array(defaults[name])
        graph.initializer.remove(defaults[name])
        value = add_optional_input(graph, name, tensor_type, default, opset)
        for node in readers:
            node.input[:] = [value if read == name else read for read in node.input]
    _sort_topologically(graph)
    _check(model_proto, "the rewired graph")
    return [name for name, _ in rewired]


def _add_heads(graph: onnx.GraphProto, opset: int) -> None:
    """TopK over the probabilities' last axis (K fed at run time) and one sum per step.

    ONNX's TopK breaks ties by the lower index, as the scorer's stable sort does; a NaN or an
    infinity anywhere in a step makes that step's sum non-finite.
    """
    batch = _dimension(graph.output, OUTPUT_NAME, 0)
    time = _dimension(graph.output, OUTPUT_NAME, 1)
    axes = f"{STEP_SUMS}_axes"
    k_type = helper.make_tensor_type_proto(TensorProto.INT64, [1])
    k = add_optional_input(graph, K_INPUT, k_type, np.array([DEFAULT_K], np.int64), opset)
    graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes))
    graph.node.extend([
        helper.make_node("TopK", [OUTPUT_NAME, k], [TOP_PROBABILITIES, TOP_CLASSES],
                         name=TOP_PROBABILITIES, axis=-1, largest=1, sorted=1),
        helper.make_node("ReduceSum", [OUTPUT_NAME, axes], [STEP_SUMS], name=STEP_SUMS, keepdims=0),
    ])
    graph.output.extend([
        helper.make_tensor_value_info(TOP_PROBABILITIES, TensorProto.FLOAT, [batch, time, "k"]),
        helper.make_tensor_value_info(TOP_CLASSES, TensorProto.INT64, [batch, time, "k"]),
        helper.make_tensor_value_info(STEP_SUMS, TensorProto.FLOAT, [batch, time]),
    ])


def _check(model_proto: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(model_proto)
    except onnx.checker.ValidationError as error:
        raise InterfaceError(f"{what} is not valid ONNX ({error})") from None


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Order the nodes so that each follows the producers of its inputs, as ONNX requires,
    keeping the present order wherever it already is one (new nodes were appended at the end)."""
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    waiting_on = [
        {producer[name] for name in _inputs(node) if name in producer} - {index}
        for index, node in enumerate(nodes)
    ]
    consumers: list[list[int]] = [[] for _ in nodes]
    for index, producers in enumerate(waiting_on):
        for source in producers:
            consumers[source].append(index)
    ready = [index for index, producers in enumerate(waiting_on) if not producers]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for consumer in consumers[index]:
            waiting_on[consumer].discard(index)
            if not waiting_on[consumer]:
                heapq.heappush(ready, consumer)
    if len(order) != len(nodes):
        raise InterfaceError("the edited graph has a cycle")
    graph.ClearField("node")
    graph.node.extend(nodes[index] for index in order)


def _remove_unused(graph: onnx.GraphProto) -> None:
    """Drop the nodes no graph output depends on, then the initializers and shape annotations
    of tensors nothing reads or produces any more. The nodes must be sorted."""
    needed = {value.name for value in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(_inputs(node))
    graph.ClearField("node")
    graph.node.extend(reversed(kept))
    initializers = [tensor for tensor in graph.initializer if tensor.name in needed]
    graph.ClearField("initializer")
    graph.initializer.extend(initializers)
    produced = {name for node in graph.node for name in node.output}
    annotations = [value for value in graph.value_info if value.name in produced]
    graph.ClearField("value_info")
    graph.value_info.extend(annotations)


def _inputs(node: onnx.NodeProto) -> Iterator[str]:
    """The tensors a node reads: its inputs, and the outer names its subgraphs (If, Loop) use."""
    yield from (name for name in node.input if name)
    for attribute in node.attribute:
        for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
            for inner in subgraph.node:
                yield from _inputs(inner)


def rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Give tensor ``old`` the name ``new`` wherever the main graph mentions it: node inputs and
    outputs, graph inputs and outputs, shape annotations and initializers."""
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new
    for tensor in graph.initializer:
        if tensor.name == old:
            tensor.name = new


def _check_names_are_free(graph: onnx.GraphProto) -> None:
    """Refuse a graph that already uses a name this edit adds (an already edited one)."""
    taken = {value.name for value in list(graph.input) + list(graph.output)}
    taken |= {tensor.name for tensor in graph.initializer}
    taken |= {name for node in graph.node for name in node.output}
    clashes = sorted(name for name in taken if name in HEADS or name.startswith(
        (K_INPUT, _PREFIX, "initial_h_", "initial_c_", "final_h_", "final_c_")))
    if clashes:
        raise InterfaceError(
            f"the converted graph already has tensor(s) {', '.join(clashes)}; it was edited before"
        )


def default_opset(model_proto: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain; 0 when it imports none."""
    return next((entry.version for entry in model_proto.opset_import
                 if entry.domain in ("", "ai.onnx")), 0)


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _dimension(values, name: str, axis: int) -> str | int:
    """Axis ``axis`` of graph input or output ``name``: its symbolic name or size ('batch')."""
    for value in values:
        if value.name == name:
            dimensions = value.type.tensor_type.shape.dim
            if axis < len(dimensions):
                dimension = dimensions[axis]
                if dimension.HasField("dim_value"):
                    return dimension.dim_value
                return dimension.dim_param or ("batch", "time")[axis]
    return ("batch", "time")[axis]
