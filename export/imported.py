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

This module runs the steps; each lives in its own: export.source (reading, inspecting and
probing the source), export.source_checks (independence, causality, parity with the source
and with Keras), export.wrapping, export.graph (states and heads), export.metadata,
export.publish and, for Keras files, export.conversion.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, replace

import numpy as np
import onnx

from export import conversion, graph, metadata, source_checks
from export.parity import ParityRows, random_rows, read_rows, run_by_length
from export.publish import publish_with_report
from export.source import (
    SourceLayout,
    inspect_layout,
    parse_source,
    probe,
    read_source,
    source_predictor,
    source_provenance,
    source_session,
)
from export.wrapping import wrap
from score.arrays import to_padded
from score.encoding import NULL_ELEMENT, UNKNOWN_VALUE, EncodedRagged, Encoder
from score.errors import InputMissing, InvalidInput
from score.monitor import Profile
from score.quality import baseline_quality
from score.sequences import (
    RaggedSequences,
    column_type_error,
    integer_list_value_type,
    ragged_from_list,
)
from score.spec import Spec


@dataclass(frozen=True)
class ImportConfig:
    """What to import, what it means, and where to publish it."""

    source: str  # the ONNX (or, with framework 'keras', .keras / .h5) file made elsewhere
    x_values: tuple[int, ...]  # the raw input value of each input class index, in index order
    y_values: tuple[int, ...]  # the raw output value of each output class index, in index order
    output: str = "artifacts/model.onnx"  # where the wrapped model goes (the scorer's default)
    outputs: str | None = None  # 'probabilities' or 'logits'; None: detect from a probe run
    time_axis: int | None = None  # the source input's time axis (0 or 1); None: from its names
    reference: str | None = None  # Parquet rows (list column 'x'; optional 'y': labels) to check and profile
    max_length: int = 64  # the longest sequence accepted when the source's time axis is dynamic
    random_rows: int = 256  # random valid sequences checked
    seed: int = 0  # for the random sequences
    renormalize: bool = False  # divide scores in [0, 1] that do not sum to 1 by their sum per step
    framework: str = "onnx"  # 'onnx' or 'keras': what kind of file `source` is

    @property
    def label(self) -> str:
        """How messages name the source: the flag that gave it and its path."""
        return f"--{self.framework} {self.source}"


def import_model(config: ImportConfig) -> dict:
    """Wrap, verify and publish a sequence model made elsewhere; return the report."""
    if config.framework == "keras":
        return import_keras(config)
    source_bytes = read_source(config.source, config.label)
    source_proto = parse_source(config.label, source_bytes)
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
    session = source_session(config.label, source_bytes)

    # 2.
    generator = np.random.default_rng(config.seed)
    layout = probe(session, layout, config, generator)
    predict_source = source_predictor(session, layout)

    # 3.
    steps = layout.time_steps or config.max_length
    independence = source_checks.check_rows_independent(config.label, predict_source, layout, steps,
                                                        len(config.x_values), generator)
    causality = source_checks.check_causality(predict_source, layout, steps, len(config.x_values), generator)
    spec = _spec(config, layout, causality)
    withheld = _why_states_withheld(layout, causality)

    # 4.
    wrapped = wrap(source_proto, layout, len(config.y_values))
    interface = graph.add_scoring_interface(wrapped, withheld)
    spec = replace(spec, states=interface.states)
    inputs = {"random": random_rows(spec, config.random_rows, generator)}
    labels = None
    if reference_path is not None:
        try:
            inputs["reference"] = read_rows(reference_path, spec)
            labels = read_labels(reference_path, spec, inputs["reference"])
        except InvalidInput as error:
            raise InvalidInput(f"--reference {reference_path}: {error}") from None
    expected = {name: run_by_length(predict_source, rows) for name, rows in inputs.items()}
    baseline = None
    if "reference" in inputs:
        baseline = baseline_profile(spec, inputs["reference"], expected["reference"]).to_dict()
        if labels is not None:
            baseline["quality"] = baseline_quality(expected["reference"], labels,
                                                   inputs["reference"].mask)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    metadata.embed_metadata(wrapped, spec, metadata.import_entries(provenance), provenance["sha256"], created,
                            baseline, interface, layout.renormalized)
    model_bytes = wrapped.SerializeToString()

    # 5.
    checks = source_checks.verify_against_source(model_bytes, inputs, expected, spec)
    if keras_model is not None:
        checks["keras"] = source_checks.verify_keras(keras_model, layout, inputs, expected)
        checks["failures"] += checks["keras"]["failures"]
        checks["passed"] = not checks["failures"]
    checks["rows_independent"] = independence
    checks["causality"] = causality
    source_checks.check_scorer_loads(model_bytes)
    report = {
        "mode": "import",
        "output": os.path.abspath(config.output),
        "source": provenance,
        "wrapping": layout.describe(),
        "spec": json.loads(spec.to_json()),
        "length": _describe_length(spec, layout, causality),
        "checks": checks,
        "scoring_interface": metadata.interface_report(interface),
        "baseline": _describe_baseline(baseline),
        "created_at": created.isoformat(timespec="seconds"),
        "bytes": len(model_bytes),
    }

    # 6. export_report.json always describes the published model, as for `--artifacts`.
    refusal = None if checks["passed"] else (
        "the wrapped model does not match the source, nothing published: " + "; ".join(checks["failures"]))
    return publish_with_report(model_bytes, config.output, report, refusal)


def import_keras(config: ImportConfig) -> dict:
    """Load a .keras / .h5 file on the CPU, convert it with tf2onnx at its own input signature,
    and import the result as an ONNX source, checked against Keras `predict` besides."""
    conversion.force_cpu()
    keras_bytes = read_source(config.source, config.label)
    model = conversion.load_keras_file(config.source, config.label)
    source_proto = conversion.convert_keras(model, config.label)
    provenance = conversion.keras_provenance(config.source, keras_bytes)
    return import_onnx_model(config, source_proto.SerializeToString(), source_proto, provenance,
                             keras_model=model)


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


def baseline_profile(spec: Spec, rows: ParityRows, probabilities: np.ndarray) -> Profile:
    """The drift baseline, as training computes it (train.core.baseline_profile, which imports
    TensorFlow): inputs and predictions both from the --reference rows, real steps only."""
    profile = Profile.empty(spec)
    profile.add_inputs(rows.indices, rows.mask)
    profile.add_predictions(probabilities.argmax(axis=-1), probabilities.max(axis=-1), rows.mask)
    return profile


def _describe_baseline(baseline: dict | None) -> str | None:
    """Where the baseline came from, for the report."""
    if baseline is None:
        return None
    if "quality" in baseline:
        return "from --reference (with labels: accuracy and calibration)"
    return "from --reference"


def read_labels(path: str, spec: Spec, rows: ParityRows) -> np.ndarray | None:
    """The reference file's target column (y: one true y value per step of x) as class indices,
    right-padded with 0 like ``rows``; None when the file has no such column.

    A column that is there must hold integer lists, each as long as its row of x, of the
    model's y values only: anything else raises InvalidInput naming the first bad row.
    """
    import pyarrow.parquet as pq

    column = spec.target_column
    schema = pq.read_schema(path)
    if column not in schema.names:
        return None
    if integer_list_value_type(schema.field(column).type) is None:
        raise column_type_error(column, schema.field(column).type, "list")
    width = rows.indices.shape[1]
    steps = rows.lengths if rows.lengths is not None else np.full(len(rows.indices), width)
    # Rows longer than x are not gathered: their length alone refuses them.
    raw = ragged_from_list(pq.read_table(path, columns=[column]).column(column), column, width)
    y_spec = Spec(spec.y_values, spec.y_values, spec.seq_len, min_len=1)
    encoded = Encoder(y_spec, np.int32).encode_ragged(raw)
    wrong_length = ~raw.row_null & (raw.lengths != steps)
    bad_label = (encoded.reasons == NULL_ELEMENT) | (encoded.reasons == UNKNOWN_VALUE)
    bad = np.flatnonzero(raw.row_null | wrong_length | bad_label)
    if bad.size:
        row = int(bad[0])
        raise InvalidInput(f"row {row}: {_label_problem(spec, raw, encoded, row, int(steps[row]))}")
    return to_padded(encoded.indices, raw.offsets, np.arange(raw.rows), width)[0]


def _label_problem(spec: Spec, raw: RaggedSequences, encoded: EncodedRagged, row: int,
                   steps: int) -> str:
    """What is wrong with one row's labels, in the order a row is refused for."""
    column, x_column = raw.column, spec.input_column
    if raw.row_null[row]:
        return f"{column} is null; expected one label per step of {x_column}"
    if raw.lengths[row] != steps:
        return (f"{column} has {int(raw.lengths[row])} labels but {x_column} has {steps} steps; "
                f"expected one label per step")
    position = int(encoded.positions[row])
    if encoded.reasons[row] == NULL_ELEMENT:
        return f"{column}[{position}] is null; expected one of the model's y values ({spec.describe_y()})"
    value = raw.values[raw.offsets[row] + position]
    return f"{column}[{position}] = {value} is not one of the model's y values ({spec.describe_y()})"
