"""Keras to ONNX: load a Keras model on the CPU and convert it with tf2onnx to the fused LSTM op.

Two entry points share the conversion: the project's own artifacts (`python -m export`), whose
model must end in a per-step softmax and is traced at the scoring contract's input ``x``, and a
Keras file made elsewhere (`--keras`), traced at its own input signature and then imported as
an ONNX source is. This is the only part of the export that needs TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import re

from score.errors import InputMissing, ModelError, first_line
from score.spec import INPUT_NAME, OUTPUT_NAME, Spec

FORBIDDEN_OPS = ("Loop", "Scan")  # tf2onnx's fallback when it cannot fuse the LSTM
KERAS_OPSET = 17  # the opset a Keras file (--keras) is converted at, as for `--artifacts`


def force_cpu() -> None:
    """Hide every GPU before tracing: tf2onnx cannot convert the cuDNN LSTM kernel (CudnnRNNV3)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # devices already initialised; CUDA_VISIBLE_DEVICES took effect at import


def package_versions() -> dict[str, str]:
    """The versions that produced the file, for its metadata and the report."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnx": onnx.__version__,
    }


# The project's artifacts ------------------------------------------------------------------------
def keras_path(artifacts: str) -> str:
    """ARTIFACTS/model.keras, refused when training has not written it."""
    path = os.path.join(artifacts, "model.keras")
    if not os.path.isfile(path):
        raise InputMissing(f"{path}: not found; run `make train` first")
    return path


def load_keras(artifacts: str):
    """Load model.keras with the project's custom layer registered."""
    import keras

    import train  # noqa: F401  (registers OneHot)

    path = keras_path(artifacts)
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # noqa: BLE001  (Keras raises many types for a bad file)
        raise ModelError(f"{path}: cannot be loaded by Keras ({first_line(error)})") from None


def check_softmax_shape(model, spec: Spec) -> None:
    """Refuse a model that does not map (batch, time) indices to per-step softmax over y."""
    from train.model import OneHot

    shape = tuple(model.output_shape)
    expected = (
        f"(batch, time, {spec.y_classes}) softmax probabilities over the y values "
        f"{spec.describe_y()}"
    )
    if len(shape) != 3 or shape[-1] != spec.y_classes or shape[1] not in (None, spec.seq_len):
        raise ModelError(f"the Keras model's output has shape {shape}; expected {expected}")
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if activation != "softmax" and not _is_softmax_layer(last):
        raise ModelError(
            f"the Keras model's last layer {last.name!r} ends in "
            f"{activation or type(last).__name__}, not softmax; expected {expected}"
        )
    for layer in model.layers:
        if isinstance(layer, OneHot) and layer.depth != spec.x_classes:
            raise ModelError(
                f"the Keras model one-hot encodes {layer.depth} input classes but spec.json lists "
                f"{spec.x_classes} x values ({spec.describe_x()}); the two come from different runs"
            )


def _is_softmax_layer(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.Softmax) and layer.axis in (-1, 2)


def convert(model, opset: int):
    """tf2onnx conversion with named input and output and the fused LSTM op."""
    import tensorflow as tf

    signature = (tf.TensorSpec((None, None), tf.int32, name=INPUT_NAME),)
    model_proto = to_onnx(model, signature, opset, f"tf2onnx cannot convert the model at opset {opset}")
    outputs = len(model_proto.graph.output)
    if outputs != 1:
        raise ModelError(f"the converted model has {outputs} outputs; expected 1")
    from export.graph import rename_tensor

    rename_tensor(model_proto.graph, model_proto.graph.input[0].name, INPUT_NAME)
    rename_tensor(model_proto.graph, model_proto.graph.output[0].name, OUTPUT_NAME)
    _name_dynamic_axes(model_proto.graph)
    op_types = {node.op_type for node in model_proto.graph.node}
    fallback = sorted(op_types & set(FORBIDDEN_OPS))
    if fallback or "LSTM" not in op_types:
        raise ModelError(
            f"tf2onnx did not produce the fused LSTM op (found {', '.join(fallback) or 'no LSTM'}); "
            f"onnxruntime would run the slow {', '.join(fallback) or 'unfused'} form. Train with "
            f"standard keras.layers.LSTM (use_cudnn=False, no recurrent dropout)"
        )
    return model_proto


def _name_dynamic_axes(graph) -> None:
    """Call the dynamic axes 'batch' and 'time' instead of tf2onnx's 'unk__12'."""
    for value in (graph.input[0], graph.output[0]):
        for dimension, name in zip(value.type.tensor_type.shape.dim, ("batch", "time")):
            if not dimension.HasField("dim_value"):
                dimension.dim_param = name


def to_onnx(model, signature: tuple, opset: int, cannot: str):
    """tf2onnx's ModelProto of ``model`` traced at ``signature``; a failure raises ModelError
    with ``cannot`` and tf2onnx's reason."""
    import tf2onnx

    try:
        model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as error:  # noqa: BLE001  (tf2onnx raises many types)
        raise ModelError(f"{cannot} ({first_line(error)})") from None
    return model_proto


# A Keras file made elsewhere (--keras) ---------------------------------------------------------
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


def convert_keras(model, label: str):
    """tf2onnx conversion at the model's own input signature (dtype and shape, with its dynamic
    axes left dynamic), refused where the recurrence became a Loop or Scan."""
    import tensorflow as tf

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{label}: the model has {len(model.inputs)} input(s) and {len(model.outputs)} "
                         f"output(s); expected one sequence input and one sequence output")
    source_input = model.inputs[0]
    signature = (tf.TensorSpec(tuple(source_input.shape), tf.as_dtype(source_input.dtype), name="input"),)
    model_proto = to_onnx(model, signature, KERAS_OPSET,
                          f"{label}: tf2onnx cannot convert it at opset {KERAS_OPSET}")
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
    versions = package_versions()
    return {
        "path": os.path.abspath(path),
        "sha256": hashlib.sha256(keras_bytes).hexdigest(),
        "framework": "keras",
        "keras_version": versions["keras"],
        "tensorflow_version": versions["tensorflow"],
        "tf2onnx_version": versions["tf2onnx"],
        "opset": KERAS_OPSET,
    }
