"""Just enough of the protobuf wire format to audit an ONNX file without the onnx package.

The scoring runtime must not depend on onnx (or protobuf), yet it has to refuse a model that
points at external data files or uses an operator domain onnxruntime does not ship. Reading the
few fields that say so takes a short walk over the wire format; tensor payloads are skipped by
length, so the walk costs microseconds even for large models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# Field numbers from onnx/onnx.proto.
_MODEL_OPSET_IMPORT = 8
_MODEL_GRAPH = 7
_MODEL_FUNCTIONS = 25
_OPSET_DOMAIN = 1
_GRAPH_NODE = 1
_GRAPH_INITIALIZER = 5
_GRAPH_SPARSE_INITIALIZER = 15
_FUNCTION_NODE = 7
_NODE_OP_TYPE = 4
_NODE_ATTRIBUTE = 5
_NODE_DOMAIN = 7
_ATTRIBUTE_TENSOR = 5
_ATTRIBUTE_GRAPH = 6
_ATTRIBUTE_TENSORS = 11
_ATTRIBUTE_GRAPHS = 12
_ATTRIBUTE_SPARSE_TENSOR = 22
_ATTRIBUTE_SPARSE_TENSORS = 23
_SPARSE_VALUES = 1
_SPARSE_INDICES = 2
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_DATA_LOCATION_EXTERNAL = 1


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


@dataclass
class ModelAudit:
    """What the scorer needs to know about a model before trusting it."""

    opset_domains: set[str] = field(default_factory=set)
    node_domains: set[str] = field(default_factory=set)
    op_types: set[str] = field(default_factory=set)
    external_tensors: int = 0
    outputs: list[str] = field(default_factory=list)  # the main graph's output names


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if position >= len(data):
            raise WireError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) for each field of one message."""
    position = 0
    end = len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire_type == 0:
            value, position = _varint(data, position)
            yield number, wire_type, value
        elif wire_type == 1:
            if position + 8 > end:
                raise WireError("truncated fixed64")
            position += 8
        elif wire_type == 2:
            length, position = _varint(data, position)
            if position + length > end:
                raise WireError("length runs past the end of the message")
            yield number, wire_type, data[position : position + length]
            position += length
        elif wire_type == 5:
            if position + 4 > end:
                raise WireError("truncated fixed32")
            position += 4
        else:
            raise WireError(f"unsupported wire type {wire_type}")


def _text(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise WireError("expected a string")
    return bytes(value).decode("utf-8", errors="replace")


def _audit_tensor(data: memoryview, audit: ModelAudit) -> None:
    external = False
    for number, _, value in fields(data):
        if number == _TENSOR_DATA_LOCATION and value == _DATA_LOCATION_EXTERNAL:
            external = True
        elif number == _TENSOR_EXTERNAL_DATA:
            external = True
    audit.external_tensors += external


def _audit_sparse(data: memoryview, audit: ModelAudit) -> None:
    for number, wire_type, value in fields(data):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES) and wire_type == 2:
            _audit_tensor(value, audit)


def _audit_node(data: memoryview, audit: ModelAudit, depth: int) -> None:
    domain = ""
    for number, wire_type, value in fields(data):
        if number == _NODE_DOMAIN:
            domain = _text(value)
        elif number == _NODE_OP_TYPE:
            audit.op_types.add(_text(value))
        elif number == _NODE_ATTRIBUTE and wire_type == 2:
            for attribute_number, attribute_wire, attribute_value in fields(value):
                if attribute_wire != 2:
                    continue
                if attribute_number in (_ATTRIBUTE_TENSOR, _ATTRIBUTE_TENSORS):
                    _audit_tensor(attribute_value, audit)
                elif attribute_number in (_ATTRIBUTE_GRAPH, _ATTRIBUTE_GRAPHS):
                    _audit_graph(attribute_value, audit, depth + 1)
                elif attribute_number in (_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS):
                    _audit_sparse(attribute_value, audit)
    audit.node_domains.add(domain)


def _audit_graph(data: memoryview, audit: ModelAudit, depth: int) -> None:
    if depth > 32:
        raise WireError("subgraphs nested more than 32 deep")
    for number, wire_type, value in fields(data):
        if wire_type != 2:
            continue
        if number == _GRAPH_OUTPUT and depth == 0:
            for info_number, info_wire, info_value in fields(value):
                if info_number == _VALUE_INFO_NAME and info_wire == 2:
                    audit.outputs.append(_text(info_value))
        elif number == _GRAPH_NODE:
            _audit_node(value, audit, depth)
        elif number == _GRAPH_INITIALIZER:
            _audit_tensor(value, audit)
        elif number == _GRAPH_SPARSE_INITIALIZER:
            _audit_sparse(value, audit)


def audit_model(model_bytes: bytes) -> ModelAudit:
    """Collect operator domains, op types and external-data references of an ONNX model."""
    audit = ModelAudit()
    data = memoryview(model_bytes)
    for number, wire_type, value in fields(data):
        if wire_type != 2:
            continue
        if number == _MODEL_OPSET_IMPORT:
            for opset_number, _, opset_value in fields(value):
                if opset_number == _OPSET_DOMAIN:
                    audit.opset_domains.add(_text(opset_value))
        elif number == _MODEL_GRAPH:
            _audit_graph(value, audit, 0)
        elif number == _MODEL_FUNCTIONS:
            for function_number, function_wire, function_value in fields(value):
                if function_number == _FUNCTION_NODE and function_wire == 2:
                    _audit_node(function_value, audit, 1)
    return audit


# Writing: a graph fragment that protobuf merges into the model ----------------------------------
# A message field that appears twice on the wire is merged, and repeated fields are appended, so
# a model's bytes followed by a second `graph` field holding only new nodes, inputs and outputs
# parse as the model with those additions: no onnx package, no re-serialisation of the weights.
_GRAPH_INPUT = 11
_GRAPH_OUTPUT = 12
_NODE_INPUT = 1
_NODE_OUTPUT = 2
_NODE_NAME = 3
_VALUE_INFO_NAME = 1
_VALUE_INFO_TYPE = 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_ELEM_TYPE = 1
_TENSOR_TYPE_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE = 1
_ATTRIBUTE_NAME = 1
_ATTRIBUTE_INT = 3
_ATTRIBUTE_TYPE = 20
_ATTRIBUTE_TYPE_INT = 2
_TENSOR_DIMS = 1
_TENSOR_DATA_TYPE = 2
_TENSOR_INT64_DATA = 7
_TENSOR_NAME = 8
FLOAT = 1  # onnx TensorProto.DataType
INT64 = 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _encode_varint(number << 3) + _encode_varint(value)


def _tensor_value_info(name: str, elem_type: int, dims: tuple[int, ...] | None = None) -> bytes:
    tensor_type = _int_field(_TENSOR_TYPE_ELEM_TYPE, elem_type)
    if dims is not None:
        shape = b"".join(_length_delimited(_SHAPE_DIM, _int_field(_DIM_VALUE, d)) for d in dims)
        tensor_type += _length_delimited(_TENSOR_TYPE_SHAPE, shape)
    return (_length_delimited(_VALUE_INFO_NAME, name.encode())
            + _length_delimited(_VALUE_INFO_TYPE, _length_delimited(_TYPE_TENSOR, tensor_type)))


def with_top_k(model_bytes: bytes, source: str, k_input: str, values: str, classes: str, sums: str) -> bytes:
    """The model plus a TopK over its output ``source`` (last axis, largest first), and the
    sum of ``source`` over its last axis (one number per step): the heads a model exported
    before they were written into the file (export.graph) gets at load time.

    K is a graph input (int64, shape [1]), so one session serves every --top-k. ONNX's TopK
    breaks ties by the lower index, as a stable descending sort does. ReduceSum takes its axes
    as an input from opset 13 on; a model with an older opset fails to load this way and is
    scored with the plain graph instead.
    """
    top_k = (_length_delimited(_NODE_INPUT, source.encode())
             + _length_delimited(_NODE_INPUT, k_input.encode())
             + _length_delimited(_NODE_OUTPUT, values.encode())
             + _length_delimited(_NODE_OUTPUT, classes.encode())
             + _length_delimited(_NODE_NAME, f"{values}_node".encode())
             + _length_delimited(_NODE_OP_TYPE, b"TopK"))
    axes_name = f"{sums}_axes"
    keepdims = (_length_delimited(_ATTRIBUTE_NAME, b"keepdims") + _int_field(_ATTRIBUTE_INT, 0)
                + _int_field(_ATTRIBUTE_TYPE, _ATTRIBUTE_TYPE_INT))
    reduce_sum = (_length_delimited(_NODE_INPUT, source.encode())
                  + _length_delimited(_NODE_INPUT, axes_name.encode())
                  + _length_delimited(_NODE_OUTPUT, sums.encode())
                  + _length_delimited(_NODE_NAME, f"{sums}_node".encode())
                  + _length_delimited(_NODE_OP_TYPE, b"ReduceSum")
                  + _length_delimited(_NODE_ATTRIBUTE, keepdims))
    axes = (_int_field(_TENSOR_DIMS, 1) + _int_field(_TENSOR_DATA_TYPE, INT64)
            + _length_delimited(_TENSOR_INT64_DATA, _encode_varint(2))
            + _length_delimited(_TENSOR_NAME, axes_name.encode()))
    fragment = (_length_delimited(_GRAPH_NODE, top_k)
                + _length_delimited(_GRAPH_NODE, reduce_sum)
                + _length_delimited(_GRAPH_INITIALIZER, axes)
                + _length_delimited(_GRAPH_INPUT, _tensor_value_info(k_input, INT64, (1,)))
                + _length_delimited(_GRAPH_OUTPUT, _tensor_value_info(values, FLOAT))
                + _length_delimited(_GRAPH_OUTPUT, _tensor_value_info(classes, INT64))
                + _length_delimited(_GRAPH_OUTPUT, _tensor_value_info(sums, FLOAT)))
    return model_bytes + _length_delimited(_MODEL_GRAPH, fragment)
