"""Loading the model: one ONNX file that carries its own spec, checked before any data is read."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from score import storage
from score.encoding import Encoder
from score.errors import InputMissing, ModelError, SeqscoreError, StorageError, first_line
from score.model_audit import ModelAudit, WireError, audit_model
from score.spec import HEADS, INPUT_NAME, K_INPUT, OUTPUT_NAME, Spec

# Operator domains built into onnxruntime itself; anything else needs a custom-op library.
# com.microsoft holds onnxruntime's own contrib ops, which int8 quantisation produces.
STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
# Dynamic int8 quantisation takes each call's activation scale from that call's whole input, so
# a run resumed from a carried state is not exactly the whole run: such a model is run whole.
_QUANTIZED = re.compile(r"Quant|Integer")
_INDEX_TYPES = {"tensor(int32)": np.int32, "tensor(int64)": np.int64}
# Rows per session.run. onnxruntime's LSTM needs a few KB per row and step and its arena keeps
# the peak, so a whole record batch at once costs memory in proportion to --batch-size; and
# runs of about this size were the fastest in the benchmark's sweep (bench/results.md).
INFERENCE_ROWS = 1024


@dataclass(frozen=True)
class SessionConfig:
    """How onnxruntime runs the model."""

    threads: int | None = None  # intra-op threads; None lets onnxruntime use every core
    spinning: bool = False  # busy-wait between ops: faster on an idle machine, rude on a shared one
    # Benchmark switches (bench/variant.py), which users leave alone:
    graph_top_k: bool = True  # False: numpy's top-k, not the file's heads (so no prefix sharing)
    inference_rows: int = INFERENCE_ROWS  # rows per session.run


@dataclass
class Scorer:
    """A loaded, verified model: everything the scoring core needs and nothing else."""

    session: ort.InferenceSession
    spec: Spec
    encoder: Encoder
    sha256: str
    location: str
    metadata: dict[str, str] = field(default_factory=dict)
    graph_top_k: bool = False  # the session computes top-k itself (the file's heads)
    exact_states: bool = True  # a run resumed from a carried state equals the whole run
    inference_rows: int = INFERENCE_ROWS  # rows per session.run (SessionConfig.inference_rows)

    @property
    def version(self) -> str:
        return self.metadata.get("version", "")

    def predict(self, indices: np.ndarray) -> np.ndarray:
        """Probabilities (rows, steps, y classes) for encoded rows (rows, steps)."""
        probabilities = np.empty((indices.shape[0], indices.shape[1], self.spec.y_classes), np.float32)
        for start, outputs in self._runs(indices, [OUTPUT_NAME], k=1):
            probabilities[start : start + len(outputs[0])] = outputs[0]
        return probabilities

    def predict_top_k(self, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """With ``graph_top_k``: whether each row's output is finite, and its k best
        probabilities and classes per step, all computed inside onnxruntime.

        Finiteness comes from the sum of each step's probabilities: NaN or infinity anywhere
        makes it non-finite (so would finite values near float32's limit, which no softmax
        gives). The full probabilities never leave onnxruntime.
        """
        rows, steps = indices.shape
        finite = np.empty(rows, dtype=bool)
        top_probabilities = np.empty((rows, steps, k), dtype=np.float32)
        top_classes = np.empty((rows, steps, k), dtype=np.int64)
        for start, (values, classes, sums) in self._runs(indices, list(HEADS), k):
            stop = start + len(sums)
            finite[start:stop] = np.isfinite(sums).all(axis=1)
            top_probabilities[start:stop] = values
            top_classes[start:stop] = classes
        return finite, top_probabilities, top_classes

    @property
    def shares_prefixes(self) -> bool:
        """Whether a run can resume from the LSTM state a prefix left (score.prefix)."""
        return self.graph_top_k and self.exact_states and self.spec.causal and bool(self.spec.states)

    def state_units(self) -> list[int]:
        """The width of each state tensor, in the order resume_top_k takes and returns them."""
        return [state.units for state in self.spec.states for _ in ("h", "c")]

    def resume_top_k(self, indices: np.ndarray, k: int, initial: list[np.ndarray] | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
        """One session.run from the given LSTM states (None: zeros, the sequence's start).

        Returns whether each step's output is finite, the k best probabilities and classes per
        step, and the states after the last step (h and c of each layer, as ``initial``).
        """
        feed = {INPUT_NAME: indices, K_INPUT: np.array([k], dtype=np.int64)}
        names = [name for state in self.spec.states for name in (state.initial_h, state.initial_c)]
        if initial is not None:
            feed.update(zip(names, initial))
        finals = [name for state in self.spec.states for name in (state.final_h, state.final_c)]
        values, classes, sums, *states = self.session.run([*HEADS, *finals], feed)
        return np.isfinite(sums), values, classes, states

    def _runs(self, indices: np.ndarray, names: list[str], k: int):
        """(first row, outputs) of session.run over ``inference_rows`` rows at a time.

        onnxruntime's arena keeps the peak of a run, and runs of about INFERENCE_ROWS were the
        fastest in the benchmark's sweep (bench/results.md).
        """
        feed_k = {K_INPUT: np.array([k], dtype=np.int64)} if self.graph_top_k else {}
        rows = self.inference_rows
        for start in range(0, indices.shape[0], rows):
            yield start, self.session.run(names, {INPUT_NAME: indices[start : start + rows], **feed_k})


def session_options(config: SessionConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if config.threads:
        options.intra_op_num_threads = config.threads
    spin = "1" if config.spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    options.log_severity_level = 3  # onnxruntime's own warnings would break the one-line rule
    return options


def _read_model_bytes(location: str) -> bytes:
    try:
        return storage.read_bytes(location)
    except InputMissing:
        raise ModelError(
            f"{location}: model not found; run `make export`, or pass --model / set SCORE_MODEL"
        ) from None
    except StorageError as error:  # a network or disk failure: worth a retry (74), not a bad model
        raise StorageError(f"model {error}") from None
    except SeqscoreError as error:
        raise ModelError(f"model {error}") from None


def _check_checksum(location: str, model_bytes: bytes) -> str:
    digest = hashlib.sha256(model_bytes).hexdigest()
    sidecar = location + ".sha256"
    try:
        text = storage.read_bytes(sidecar).decode("utf-8", errors="replace")
    except InputMissing:
        return digest
    except StorageError as error:
        raise StorageError(f"checksum {error}") from None
    except SeqscoreError as error:
        raise ModelError(f"{sidecar}: cannot read the checksum ({error})") from None
    expected = text.split()[0].lower() if text.split() else ""
    if expected != digest:
        raise ModelError(
            f"{location}: sha256 is {digest} but {os.path.basename(sidecar)} says "
            f"{expected or 'nothing'}; the model changed after export, re-run `make export`"
        )
    return digest


def audit(location: str, model_bytes: bytes, self_contained_hint: str = "") -> ModelAudit:
    """Refuse (ModelError) a model that is not ONNX, keeps tensors in external data files or
    uses an operator domain onnxruntime does not ship; else what the audit found.
    ``self_contained_hint`` says how to export one file, where the caller knows the exporter."""
    try:
        audit = audit_model(model_bytes)
    except WireError as error:
        raise ModelError(f"{location}: not an ONNX model ({error})") from None
    if audit.external_tensors:
        raise ModelError(
            f"{location}: the model keeps {audit.external_tensors} tensor(s) in external data "
            f"files; export it as one self-contained file{self_contained_hint}"
        )
    foreign = sorted((audit.opset_domains | audit.node_domains) - STANDARD_DOMAINS)
    if foreign:
        raise ModelError(
            f"{location}: the model uses operator domain(s) {', '.join(foreign)}, which "
            f"onnxruntime does not ship; only {', '.join(sorted(d or '(default)' for d in STANDARD_DOMAINS))} are allowed"
        )
    return audit


def _check_io(location: str, session: ort.InferenceSession, spec: Spec) -> np.dtype:
    inputs = [i for i in session.get_inputs() if not _is_optional(i)]
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ModelError(f"{location}: model inputs are {names}; expected one input named 'x'")
    model_input = inputs[0]
    if model_input.type not in _INDEX_TYPES:
        raise ModelError(
            f"{location}: input 'x' is {model_input.type}; expected tensor(int32) or tensor(int64)"
        )
    shape = model_input.shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != spec.seq_len):
        raise ModelError(
            f"{location}: input 'x' has shape {shape}; expected (batch, {spec.seq_len})"
        )
    if spec.variable_length and isinstance(shape[1], int):
        raise ModelError(
            f"{location}: the spec says sequences of {spec.describe_length()} but input 'x' has "
            f"a fixed time axis {shape}; export it with a dynamic time axis"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    output = outputs.get(OUTPUT_NAME)
    if output is None:
        raise ModelError(
            f"{location}: model outputs are {', '.join(outputs) or 'none'}; "
            f"expected one named 'probabilities'"
        )
    expected_shape = f"(batch, {spec.seq_len}, {spec.y_classes})"
    if output.type != "tensor(float)" or len(output.shape) != 3:
        raise ModelError(
            f"{location}: output 'probabilities' is {output.type} {output.shape}; "
            f"expected float32 {expected_shape}"
        )
    classes = output.shape[2]
    if isinstance(classes, int) and classes != spec.y_classes:
        raise ModelError(
            f"{location}: output 'probabilities' has {classes} classes but the spec lists "
            f"{spec.y_classes} y values"
        )
    return np.dtype(_INDEX_TYPES[model_input.type])


def _probe(location: str, scorer: Scorer) -> None:
    """Run one sequence through the model: shapes and probabilities must match the spec."""
    probe = np.zeros((1, scorer.spec.seq_len), dtype=scorer.encoder.index_dtype)
    try:
        probabilities = scorer.predict(probe)
    except Exception as error:  # noqa: BLE001  (onnxruntime raises its own exception types)
        raise ModelError(f"{location}: the model fails on a valid sequence ({first_line(error)})") from None
    expected = (1, scorer.spec.seq_len, scorer.spec.y_classes)
    if probabilities.shape != expected or probabilities.dtype != np.float32:
        raise ModelError(
            f"{location}: the model returns {probabilities.dtype} {probabilities.shape} for one "
            f"sequence; expected float32 {expected}"
        )


def _open_session(location: str, model_bytes: bytes, config: SessionConfig) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model_bytes, sess_options=session_options(config),
                                    providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001  onnxruntime's Fail / InvalidGraph / InvalidProtobuf ...
        raise ModelError(f"{location}: onnxruntime cannot load it ({first_line(error)})") from None


def _has_heads(session: ort.InferenceSession) -> bool:
    """Whether the file carries the top-k heads (export.graph). onnxruntime's TopK is several
    times faster than numpy's top-k over the same output; a file without them (exported before
    the export wrote them, an opset below 13, another exporter) is scored with numpy's."""
    return set(HEADS) <= {value.name for value in session.get_outputs()}


def _is_optional(value) -> bool:
    """An optional-typed input, which a run may leave out (export.graph, opset 15 on). A file
    whose optional inputs are initializers has onnxruntime list those apart, under
    get_overridable_initializers()."""
    return value.type.startswith("optional(")


def _check_states(location: str, session: ort.InferenceSession, spec: Spec) -> None:
    """The state tensors the spec names must be in the graph, as inputs a run may leave out
    and outputs, with the sizes it gives."""
    optional = {value.name: value for value in session.get_overridable_initializers()}
    optional.update((value.name, value) for value in session.get_inputs() if _is_optional(value))
    outputs = {value.name: value for value in session.get_outputs()}
    for layer, state in enumerate(spec.states):
        for name, found in ((state.initial_h, optional), (state.initial_c, optional),
                            (state.final_h, outputs), (state.final_c, outputs)):
            value = found.get(name)
            if value is None or value.shape[-1] != state.units:
                raise ModelError(
                    f"{location}: the spec names state tensor {name!r} of layer {layer} "
                    f"({state.units} units), which the graph does not have; re-run `make export`"
                )


def load(location: str, config: SessionConfig = SessionConfig()) -> Scorer:
    """Load and verify a model; raises ModelError for anything that makes it unusable.

    Steps: 1. read the bytes; 2. check them against model.onnx.sha256 when present; 3. audit
    external data and operator domains; 4. open an onnxruntime session; 5. read the spec from
    the metadata; 6. check inputs and outputs against the spec; 7. probe one sequence.
    """
    model_bytes = _read_model_bytes(location)
    digest = _check_checksum(location, model_bytes)
    found = audit(location, model_bytes)
    session = _open_session(location, model_bytes, config)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    if "spec" not in metadata:
        raise ModelError(
            f"{location}: no 'spec' in the model metadata; export it with `make export`"
        )
    try:
        spec = Spec.from_json(metadata["spec"])
    except ModelError as error:
        raise ModelError(f"{location}: {error}") from None
    index_dtype = _check_io(location, session, spec)
    _check_states(location, session, spec)
    scorer = Scorer(
        session=session,
        spec=spec,
        encoder=Encoder(spec, index_dtype),
        sha256=digest,
        location=location,
        metadata=metadata,
        graph_top_k=config.graph_top_k and _has_heads(session),
        exact_states=not any(_QUANTIZED.search(op) for op in found.op_types),
        inference_rows=config.inference_rows,
    )
    _probe(location, scorer)
    return scorer


def baseline(scorer: Scorer) -> dict | None:
    """The training baseline profile embedded by the export, if any."""
    text = scorer.metadata.get("baseline")
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise ModelError(f"{scorer.location}: the 'baseline' metadata is not valid JSON") from None
