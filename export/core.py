"""Convert the trained Keras model to ONNX, verify it against Keras, and publish it atomically.

The library behind `python -m export`. The published model.onnx is the only thing scoring
needs: its metadata carries the spec, the training metrics, the data fingerprint, the
baseline profile for drift monitoring, and the versions that produced it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from score.errors import (
    EXIT_SOFTWARE,
    InputMissing,
    InvalidInput,
    ModelError,
    OutputError,
    SeqscoreError,
    first_line,
)
from score.spec import INPUT_NAME, OUTPUT_NAME, Spec, StateTensors

if TYPE_CHECKING:
    from export.graph import ScoringInterface

FORBIDDEN_OPS = ("Loop", "Scan")  # tf2onnx's fallback when it cannot fuse the LSTM
REPORT_NAME = "export_report.json"  # describes the published model.onnx
FAILED_REPORT_NAME = "export_report.failed.json"  # the figures of a refused conversion


class ParityError(SeqscoreError):
    """ONNX and Keras disagree beyond the stated tolerances: nothing is published.

    The model itself passed every structural check, so this is a fault in the conversion
    (tf2onnx or onnxruntime), not in the user's data or model: exit 70, like any internal error.
    """

    exit_code = EXIT_SOFTWARE


# Float32 rounding differs between TensorFlow's and onnxruntime's LSTM kernels and builds up
# through the recurrence: on the ragged example (2 x 64 units, 32 steps) the difference reached
# 4e-5 at step 28 with the argmax identical everywhere. So the tolerance holds as stated for the
# first TOLERANCE_STEPS steps (the default task's whole length) and grows in proportion after.
TOLERANCE_STEPS = 4


# A run resumed from a carried LSTM state must give what the whole run gives: the same kernel
# does the same arithmetic, so only float32 rounding of a differently shaped call may differ.
STATE_CARRY_TOLERANCE = 1e-6


def allowed_difference(tolerance: float, steps: int) -> np.ndarray:
    """The largest |p_onnx - p_keras| allowed at each step position 0..steps-1."""
    return tolerance * np.maximum(1.0, (np.arange(steps) + 1) / TOLERANCE_STEPS)


@dataclass(frozen=True)
class ExportConfig:
    """What to convert, how, and where to publish."""

    artifacts: str = "artifacts"  # folder with model.keras, spec.json, test.parquet, metrics.json
    output: str | None = None  # where model.onnx goes; default: ARTIFACTS/model.onnx
    opset: int = 17  # ONNX opset; 17 loads in onnxruntime builds from 2022 on
    random_rows: int = 4096  # random valid sequences checked besides the test split
    tolerance: float = 1e-5  # max |p_onnx - p_keras| allowed over the first TOLERANCE_STEPS steps
    near_tie: float = 1e-6  # argmax may differ only where the top-2 gap is below this
    seed: int = 0  # for the random sequences
    quantize: str | None = None  # 'int8': also write model.int8.onnx if it agrees well enough
    quantize_agreement: float = 0.999  # minimum argmax agreement of int8 with float on the test split

    @property
    def output_path(self) -> str:
        return self.output or os.path.join(self.artifacts, "model.onnx")


def _read_json(path: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputMissing(f"{path}: not found; run `make train` first") from None
    except ValueError as error:
        raise InvalidInput(f"{path}: not valid JSON ({error})") from None


def _force_cpu() -> None:
    # tf2onnx cannot convert the cuDNN LSTM kernel (CudnnRNNV3): hide every GPU before tracing.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # devices already initialised; CUDA_VISIBLE_DEVICES took effect at import


def _keras_path(artifacts: str) -> str:
    path = os.path.join(artifacts, "model.keras")
    if not os.path.isfile(path):
        raise InputMissing(f"{path}: not found; run `make train` first")
    return path


def load_keras(artifacts: str):
    """Load model.keras with the project's custom layer registered."""
    import keras

    import train  # noqa: F401  (registers OneHot)

    path = _keras_path(artifacts)
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
    import tf2onnx

    signature = (tf.TensorSpec((None, None), tf.int32, name=INPUT_NAME),)
    try:
        model_proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    except Exception as error:  # noqa: BLE001  (tf2onnx raises many types)
        raise ModelError(
            f"tf2onnx cannot convert the model at opset {opset} ({first_line(error)})"
        ) from None
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


@dataclass(frozen=True)
class ParityRows:
    """Rows the parity check runs, as class indices; ragged rows right-padded with 0."""

    indices: np.ndarray  # (rows, width) int32 class indices
    lengths: np.ndarray | None = None  # (rows,) real steps of each row; None: all fill the width

    @property
    def mask(self) -> np.ndarray | None:
        if self.lengths is None:
            return None
        return np.arange(self.indices.shape[1]) < self.lengths[:, None]


def verification_inputs(spec: Spec, artifacts: str, rows: int, seed: int) -> dict[str, ParityRows]:
    """Encoded test split and random valid sequences, as class indices.

    A variable-length model is checked on the test split's rows at their own lengths and on
    random sequences of random lengths 1..max_len.
    """
    path = os.path.join(artifacts, "test.parquet")
    if not os.path.isfile(path):
        raise InputMissing(f"{path}: not found; run `make train` first")
    test = read_rows(path, spec)
    generator = np.random.default_rng(seed)
    return {"test_split": test, "random": random_rows(spec, rows, generator)}


def read_rows(path: str, spec: Spec) -> ParityRows:
    """The input column of a Parquet file, encoded to class indices; a variable-length spec
    keeps each row at its own length (right-padded with 0 to the longest)."""
    import pyarrow.parquet as pq

    from score.encoding import Encoder, ragged_from_list, sequences_from_list, to_padded

    table = pq.read_table(path, columns=[spec.input_column])
    encoder = Encoder(spec, np.int32)
    if not spec.variable_length:
        raw = sequences_from_list(table.column(spec.input_column), spec.seq_len, spec.input_column)
        return ParityRows(encoder.encode_strict(raw))
    raw = ragged_from_list(table.column(spec.input_column), spec.input_column, spec.max_len)
    flat = encoder.encode_ragged_strict(raw)
    indices, _ = to_padded(flat, raw.offsets, np.arange(raw.rows), int(raw.lengths.max()))
    return ParityRows(indices, raw.lengths)


def random_rows(spec: Spec, rows: int, generator: np.random.Generator) -> ParityRows:
    """Random valid sequences: seq_len steps each, or of random lengths 1..max_len (padded
    with 0) for a variable-length spec."""
    if not spec.variable_length:
        return ParityRows(generator.integers(0, spec.x_classes, size=(rows, spec.seq_len), dtype=np.int32))
    lengths = generator.integers(1, spec.max_len + 1, size=rows, dtype=np.int64)
    random = generator.integers(0, spec.x_classes, size=(rows, spec.max_len), dtype=np.int32)
    random = np.where(np.arange(spec.max_len) < lengths[:, None], random, 0).astype(np.int32)
    return ParityRows(random, lengths)


def compare(keras_probabilities: np.ndarray, onnx_probabilities: np.ndarray, near_tie: float,
            mask: np.ndarray | None = None, tolerance: float | None = None) -> dict:
    """Max absolute difference, and argmax disagreements that are not genuine near-ties, over
    the real steps (``mask``, (rows, T)) of (rows, T, classes) probabilities; with ``tolerance``
    also the worst ratio of a step's difference to what is allowed at its position."""
    rows = int(keras_probabilities.shape[0])
    by_step = np.abs(keras_probabilities - onnx_probabilities).max(axis=-1)  # (rows, T)
    if mask is not None:
        by_step = np.where(mask, by_step, 0.0)
    worst_ratio = None
    if tolerance is not None and by_step.size:
        allowed = allowed_difference(tolerance, by_step.shape[1]) if tolerance > 0 else None
        worst_ratio = (float((by_step / allowed).max()) if allowed is not None
                       else (float("inf") if by_step.max() > 0 else 0.0))
    if mask is not None:
        keras_probabilities, onnx_probabilities = keras_probabilities[mask], onnx_probabilities[mask]
    difference = float(np.abs(keras_probabilities - onnx_probabilities).max())
    disagree = keras_probabilities.argmax(-1) != onnx_probabilities.argmax(-1)
    ordered = np.sort(keras_probabilities, axis=-1)
    gap = ordered[..., -1] - ordered[..., -2] if keras_probabilities.shape[-1] > 1 else np.ones(disagree.shape)
    return {
        "rows": rows,
        "max_abs_difference": difference,
        "argmax_disagreements": int(disagree.sum()),
        "argmax_disagreements_not_near_tie": int((disagree & (gap >= near_tie)).sum()),
        "max_row_sum_error": float(np.abs(onnx_probabilities.sum(-1) - 1.0).max()),
        "max_difference_over_allowed": worst_ratio,
    }


def run_onnx_by_length(session, rows: ParityRows) -> np.ndarray:
    """onnxruntime on each group of rows of one length, at exactly that length (no padding),
    scattered back into a (rows, width, classes) array (zeros past each row's length)."""
    if rows.lengths is None:
        return session.run([OUTPUT_NAME], {INPUT_NAME: rows.indices})[0]
    output = None
    for length in np.unique(rows.lengths):
        group = np.flatnonzero(rows.lengths == length)
        probabilities = session.run([OUTPUT_NAME], {INPUT_NAME: rows.indices[group, :length]})[0]
        if output is None:
            output = np.zeros((*rows.indices.shape, probabilities.shape[-1]), np.float32)
        output[group, :length] = probabilities
    return output


def _session(model_bytes: bytes):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Its warning that the optional state inputs are initializers listed as inputs (so not
    # folded as constants) is the point of them, not a fault; errors still raise.
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def verify(model, model_bytes: bytes, inputs: dict[str, ParityRows], config: ExportConfig,
           states: tuple[StateTensors, ...] = ()) -> dict:
    """onnxruntime against Keras, and, where the model exposes its LSTM states, onnxruntime
    resumed from a carried state against onnxruntime run whole.

    Ragged rows: Keras sees them right-padded to the longest, onnxruntime each length group at
    its own length, compared on the real steps; as the model is causal the two must agree, which
    also shows that padding never reaches a real step.
    """
    session = _session(model_bytes)
    report = {}
    for name, rows in inputs.items():
        keras_probabilities = model.predict(rows.indices, batch_size=4096, verbose=0)
        onnx_probabilities = run_onnx_by_length(session, rows)
        report[name] = compare(keras_probabilities, onnx_probabilities, config.near_tie, rows.mask,
                               config.tolerance)
        if rows.lengths is not None:
            report[name]["steps"] = int(rows.lengths.sum())
            report[name]["lengths"] = sorted(int(v) for v in np.unique(rows.lengths))
    failures = _keras_failures(report, config)
    if states:
        report["state_carry"] = verify_state_carry(session, states, inputs)
        failures += report["state_carry"]["failures"]
    report["passed"] = not failures
    report["failures"] = failures
    return report


def _keras_failures(report: dict, config: ExportConfig) -> list[str]:
    failures = []
    for name, figures in report.items():
        if not figures["max_difference_over_allowed"] <= 1.0:
            failures.append(
                f"{name}: max |p_onnx - p_keras| = {figures['max_abs_difference']:.3g} > {config.tolerance:g} "
                f"(step t allows {config.tolerance:g} x max(1, (t + 1) / {TOLERANCE_STEPS}))"
            )
        if figures["argmax_disagreements_not_near_tie"]:
            failures.append(
                f"{name}: argmax differs on {figures['argmax_disagreements_not_near_tie']} step(s) "
                f"that are not near-ties"
            )
        if figures["max_row_sum_error"] > 1e-4:
            failures.append(
                f"{name}: probabilities do not sum to 1 (off by up to {figures['max_row_sum_error']:.3g}); "
                f"the model's output is not a softmax"
            )
    return failures


def split_points(length: int) -> list[int]:
    """Where a row of ``length`` steps is cut in two: after the first step, in the middle and
    before the last (every cut, for the default's 4 steps)."""
    return sorted({1, length // 2, length - 1} & set(range(1, length)))


def run_in_two_pieces(session, states: tuple[StateTensors, ...], indices: np.ndarray,
                      split: int) -> np.ndarray:
    """Probabilities of (rows, steps) ``indices`` run as steps [0, split) and then [split, steps),
    the second run starting from every layer's final state after the first."""
    finals = [name for state in states for name in (state.final_h, state.final_c)]
    initials = [name for state in states for name in (state.initial_h, state.initial_c)]
    first, *carried = session.run([OUTPUT_NAME, *finals], {INPUT_NAME: indices[:, :split]})
    feed = {INPUT_NAME: indices[:, split:], **dict(zip(initials, carried, strict=True))}
    second = session.run([OUTPUT_NAME], feed)[0]
    return np.concatenate([first, second], axis=1)


def _length_groups(rows: ParityRows):
    """(length, the rows of that length cut to it) for each row length among ``rows``."""
    lengths = rows.lengths if rows.lengths is not None else np.full(len(rows.indices), rows.indices.shape[1])
    for length in np.unique(lengths):
        yield int(length), rows.indices[lengths == length, :length]


def later_steps_difference(session, inputs: dict[str, ParityRows]) -> float:
    """The largest difference between a row's first steps run alone and the same steps of the
    whole row, at the split points: 0 for a causal model, whose step t reads steps 0..t only.

    Not a check of the conversion but of the model: one that reads later steps (go_backwards,
    a convolution over time) has no state per prefix to expose.
    """
    differences = [0.0]
    for rows in inputs.values():
        for length, group in _length_groups(rows):
            whole = session.run([OUTPUT_NAME], {INPUT_NAME: group})[0]
            for split in split_points(length):
                first = session.run([OUTPUT_NAME], {INPUT_NAME: group[:, :split]})[0]
                differences.append(np.abs(first - whole[:, :split]).max())
    return float(np.max(differences))


def why_not_causal(model_proto, inputs: dict[str, ParityRows]) -> str | None:
    """Why the converted model's states must not be exposed, when it reads later steps."""
    difference = later_steps_difference(_session(model_proto.SerializeToString()), inputs)
    if difference <= STATE_CARRY_TOLERANCE:
        return None
    return (f"a row's first steps run alone differ from the same steps of the whole row by up to "
            f"{difference:.3g}: the model reads later steps, so a prefix has no state of its own")


def verify_state_carry(session, states: tuple[StateTensors, ...],
                       inputs: dict[str, ParityRows]) -> dict:
    """Each set of rows run in two pieces with the state carried, at several split points,
    against the same rows run whole; ragged rows one length at a time, at that length.

    This is what scoring with shared prefixes relies on: a prefix's state, fed back, continues
    every sequence that starts with it exactly as a run from the start would.
    """
    report: dict = {"tolerance": STATE_CARRY_TOLERANCE}
    failures = []
    for name, rows in inputs.items():
        differences, splits, split_rows = [0.0], set(), 0
        for length, group in _length_groups(rows):
            whole = session.run([OUTPUT_NAME], {INPUT_NAME: group})[0]
            for split in split_points(length):
                pieces = run_in_two_pieces(session, states, group, split)
                differences.append(np.abs(pieces - whole).max())
                splits.add(split)
            split_rows += len(group) if length > 1 else 0
        worst = float(np.max(differences))  # NaN if any piece gave NaN: that fails below too
        report[name] = {"rows": split_rows, "split_points": sorted(splits),
                        "max_abs_difference": worst}
        if not worst <= STATE_CARRY_TOLERANCE:
            failures.append(
                f"{name}: max |p_pieces - p_whole| = {worst:.3g} > {STATE_CARRY_TOLERANCE:g} "
                f"(split after steps {', '.join(str(split) for split in sorted(splits))})"
            )
    report["passed"] = not failures
    report["failures"] = failures
    return report


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


def embed_metadata(model_proto, spec: Spec, metrics: dict, baseline: dict | None, created: dt.datetime,
                   interface: ScoringInterface | None = None) -> None:
    versions = package_versions()
    summary_keys = (
        "token_accuracy", "token_accuracy_per_step", "sequence_accuracy", "top1_accuracy",
        "top2_accuracy", "top3_accuracy", "majority_baseline_accuracy", "epochs_run", "test_rows",
        "token_accuracy_by_length", "min_len", "max_len",
    )
    entries = {
        "spec": spec.to_json(),
        "metrics": json.dumps({key: metrics[key] for key in summary_keys if key in metrics}),
        "data_fingerprint": metrics.get("data_fingerprint", ""),
        "tensorflow_version": versions["tensorflow"],
        "keras_version": versions["keras"],
        "tf2onnx_version": versions["tf2onnx"],
        "onnx_version": versions["onnx"],
        "created_at": created.isoformat(timespec="seconds"),
        "version": f"{created.strftime('%Y%m%dT%H%M%SZ')}-{metrics.get('data_fingerprint', '')[:12]}",
    }
    if baseline is not None:
        entries["baseline"] = json.dumps(baseline)
    del model_proto.metadata_props[:]
    for key, value in entries.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = "seqscore"
    model_proto.model_version = int(created.timestamp())
    model_proto.doc_string = (
        "Input 'x': int32 class indices (batch, time). Output 'probabilities': float32 "
        "(batch, time, classes), softmax. The 'spec' metadata maps indices to raw values."
        + (f" {interface.describe()}" if interface and interface.describe() else "")
    )


def publish_file(data: bytes, path: str) -> str:
    """Write ``data`` to ``path`` atomically with a sha256sum-format sidecar; return the digest.

    Both files are written and fsynced under temporary names first, then renamed back to back,
    so a reader sees a model and a sidecar that disagree only for the instant between renames.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    sidecar = f"{digest}  {os.path.basename(path)}\n".encode()
    with _staged(f"{path}.sha256", sidecar) as sidecar_temporary, _staged(path, data) as temporary:
        os.replace(temporary, path)
        os.replace(sidecar_temporary, f"{path}.sha256")
    _fsync_directory(directory)
    return digest


def _atomic_write(path: str, data: bytes) -> None:
    with _staged(path, data) as temporary:
        os.replace(temporary, path)
    _fsync_directory(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def _staged(path: str, data: bytes):
    """A fsynced temporary file beside ``path`` holding ``data``; removed unless renamed."""
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        yield temporary
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _fsync_directory(directory: str) -> None:
    directory_handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_handle)
    finally:
        os.close(directory_handle)


def _remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def _without_preprocessing_advice():
    """Drop onnxruntime.quantization's root-logger advice to run its pre-processing first.

    It goes through ``logging.warning``, which would also install a root handler on first use;
    lending the root logger Python's last-resort handler for the call prevents that while
    still printing any other warning as usual.
    """
    root = logging.getLogger()

    def advice(record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()

    lent = logging.lastResort if not root.handlers and logging.lastResort else None
    root.addFilter(advice)
    if lent:
        root.addHandler(lent)
    try:
        yield
    finally:
        root.removeFilter(advice)
        if lent:
            root.removeHandler(lent)


def quantize_int8(model_bytes: bytes, test: ParityRows, config: ExportConfig,
                  states: tuple[StateTensors, ...] = ()) -> dict:
    """Dynamic int8 quantisation, published only if it agrees with the float model.

    With ``states``, the report also says how far a run resumed from a carried state is from
    the whole run. It is not a gate: int8 quantises activations with a scale taken from each
    call's whole input, so its results already depend on which rows and steps share a call.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "model.onnx")
        target = os.path.join(scratch, "model.int8.onnx")
        with open(source, "wb") as handle:
            handle.write(model_bytes)
        with _without_preprocessing_advice():
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        with open(target, "rb") as handle:
            quantized = handle.read()
    float_session, int8_session = _session(model_bytes), _session(quantized)

    def timed(session) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        for _ in range(3):
            output = run_onnx_by_length(session, test)
        return output, (time.perf_counter() - started) / 3

    float_output, float_seconds = timed(float_session)
    int8_output, int8_seconds = timed(int8_session)
    agree = float_output.argmax(-1) == int8_output.argmax(-1)
    agreement = float(agree.mean() if test.mask is None else agree[test.mask].mean())
    report = {
        "argmax_agreement": agreement,
        "threshold": config.quantize_agreement,
        "float_bytes": len(model_bytes),
        "int8_bytes": len(quantized),
        "float_seconds_test_split": round(float_seconds, 5),
        "int8_seconds_test_split": round(int8_seconds, 5),
        "speedup": round(float_seconds / int8_seconds, 3) if int8_seconds else None,
        "published": agreement >= config.quantize_agreement,
    }
    if states:
        carry = verify_state_carry(int8_session, states, {"test_split": test})["test_split"]
        report["state_carry_max_abs_difference"] = carry["max_abs_difference"]
    if report["published"]:
        publish_file(quantized, int8_path(config))
        report["path"] = int8_path(config)
    return report


def int8_path(config: ExportConfig) -> str:
    return int8_path_for(config.output_path)


def int8_path_for(output: str) -> str:
    """Where the int8 model of the model at ``output`` goes."""
    return os.path.splitext(output)[0] + ".int8.onnx"


def export(config: ExportConfig) -> dict:
    """Convert, verify and publish; return the export report.

    Steps: 1. read the spec, the metrics and the test split, and load the Keras model on the
    CPU, refusing one that does not end in a per-step softmax over the y values; 2. convert with
    tf2onnx and check for the fused LSTM op; 3. add the scoring interface (each LSTM layer's
    state as inputs and outputs, unless the model reads later steps; the top-k heads) and embed
    the metadata, the spec listing the states; 4. verify onnxruntime against Keras on the test split and random sequences, and a
    run resumed from a carried state against the whole run; 5. publish atomically (only if 4
    passed), with the report beside it; 6. optionally quantise.
    """
    from export.graph import add_scoring_interface

    _force_cpu()
    # 1. Everything that can be wrong with the inputs fails here, before the slow conversion.
    _keras_path(config.artifacts)
    spec = Spec.from_dict(_read_json(os.path.join(config.artifacts, "spec.json")))
    metrics = _read_json(os.path.join(config.artifacts, "metrics.json"))
    baseline_path = os.path.join(config.artifacts, "baseline.json")
    baseline = _read_json(baseline_path) if os.path.exists(baseline_path) else None
    inputs = verification_inputs(spec, config.artifacts, config.random_rows, config.seed)
    model = load_keras(config.artifacts)
    check_softmax_shape(model, spec)

    # 2-3. The checks below run on the very bytes that get published.
    model_proto = convert(model, config.opset)
    interface = add_scoring_interface(model_proto, why_not_causal(model_proto, inputs))
    spec = replace(spec, states=interface.states)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    embed_metadata(model_proto, spec, metrics, baseline, created, interface)
    model_bytes = model_proto.SerializeToString()

    # 4.
    parity = verify(model, model_bytes, inputs, config, spec.states)
    report = {
        "output": os.path.abspath(config.output_path),
        "opset": config.opset,
        "tolerance": config.tolerance,
        "near_tie": config.near_tie,
        "parity": parity,
        "scoring_interface": _interface_report(interface),
        **_lengths_covered(spec, parity),
        "created_at": created.isoformat(timespec="seconds"),
        "bytes": len(model_bytes),
        "versions": package_versions(),
    }

    # 5-6.
    def quantize(published: dict) -> None:
        if config.quantize == "int8":
            published["int8"] = quantize_int8(model_bytes, inputs["test_split"], config, spec.states)

    refusal = None if parity["passed"] else f"{_refusal(parity)}, nothing published: " + "; ".join(parity["failures"])
    return publish_with_report(model_bytes, config.output_path, report, refusal, quantize)


def publish_with_report(model_bytes: bytes, output: str, report: dict, refusal: str | None,
                        after_publishing=None) -> dict:
    """Publish ``model_bytes`` at ``output`` with export_report.json beside it, or, with a
    ``refusal``, publish nothing, leave the figures in export_report.failed.json and raise
    ParityError(refusal). ``after_publishing(report)`` may add an int8 model; an int8 file
    left beside the new model from an older one is removed."""
    directory = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(directory, exist_ok=True)
        if refusal is not None:
            report["published"] = False
            _atomic_write(os.path.join(directory, FAILED_REPORT_NAME), _json_bytes(report))
            raise ParityError(refusal)
        report["sha256"] = publish_file(model_bytes, output)
        report["published"] = True
        if after_publishing is not None:
            after_publishing(report)
        if not report.get("int8", {}).get("published"):
            int8 = int8_path_for(output)  # quantised from an older model
            _remove([int8, int8 + ".sha256"])
        _atomic_write(os.path.join(directory, REPORT_NAME), _json_bytes(report))
        _remove([os.path.join(directory, FAILED_REPORT_NAME)])
    except OSError as error:
        raise OutputError(f"{output}: cannot write the model ({error})") from None
    return report


def _refusal(parity: dict) -> str:
    """What failed: Keras parity (whatever else did), or only the state carry."""
    carry_failures = parity.get("state_carry", {}).get("failures", [])
    if len(parity["failures"]) > len(carry_failures):
        return "ONNX does not match Keras"
    return "ONNX resumed from a carried LSTM state does not match ONNX run whole"


def _interface_report(interface: ScoringInterface) -> dict:
    """The state tensors (in layer order) and heads the published model carries."""
    return {
        "states": [asdict(state) for state in interface.states],
        "states_withheld": interface.states_withheld,
        "heads": list(interface.heads),
        "head_input": interface.head_input,
    }


def _lengths_covered(spec: Spec, parity: dict) -> dict:
    """For a variable-length model: the row lengths the parity check ran, per set of rows."""
    if not spec.variable_length:
        return {}
    return {"lengths_covered": {name: figures["lengths"] for name, figures in parity.items()
                                if isinstance(figures, dict) and "lengths" in figures}}


def _json_bytes(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()
