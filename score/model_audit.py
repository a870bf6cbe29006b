"""The audit of a model file before it is trusted: its operator domains and op types, and
whether it keeps tensors in external data files, read without the onnx package.

The scoring runtime must not depend on onnx (or protobuf), yet it has to refuse a model that
points at external data files or uses an operator domain onnxruntime does not ship. Reading the
few fields that say so takes a short walk over the protobuf wire format; tensor payloads are
skipped by length, so the walk costs microseconds even for large models. It only reads: a model
is scored as its file is (one without the top-k heads with numpy's top-k, score.topk).
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
        if number == _GRAPH_NODE:
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
