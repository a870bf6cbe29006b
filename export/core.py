"""Convert the trained Keras model to ONNX, verify it against Keras, and publish it atomically.

The library behind `python -m export`. The published model.onnx is the only thing scoring
needs: its metadata carries the spec, the training metrics, the data fingerprint, the
baseline profile for drift monitoring, and the versions that produced it.

The steps live in their own modules, called from `export` below: export.conversion (Keras to
ONNX), export.graph (the states and heads), export.metadata, export.parity (against Keras and
the state carry), export.publish (atomic, with the report) and export.quantize (int8).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, replace

from export import conversion, graph, metadata, parity, publish, quantize
from score.errors import InputMissing, InvalidInput
from score.spec import Spec


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


def export(config: ExportConfig) -> dict:
    """Convert, verify and publish; return the export report.

    Steps: 1. read the spec, the metrics and the test split, and load the Keras model on the
    CPU, refusing one that does not end in a per-step softmax over the y values; 2. convert with
    tf2onnx and check for the fused LSTM op; 3. add the scoring interface (each LSTM layer's
    state as inputs and outputs, unless the model reads later steps; the top-k heads) and embed
    the metadata, the spec listing the states; 4. verify onnxruntime against Keras on the test
    split and random sequences, and a run resumed from a carried state against the whole run;
    5. publish atomically (only if 4 passed), with the report beside it; 6. optionally quantise.
    """
    conversion.force_cpu()
    # 1. Everything that can be wrong with the inputs fails here, before the slow conversion.
    conversion.keras_path(config.artifacts)
    spec = Spec.from_dict(_read_json(os.path.join(config.artifacts, "spec.json")))
    metrics = _read_json(os.path.join(config.artifacts, "metrics.json"))
    baseline_path = os.path.join(config.artifacts, "baseline.json")
    baseline = _read_json(baseline_path) if os.path.exists(baseline_path) else None
    inputs = parity.verification_inputs(spec, config.artifacts, config.random_rows, config.seed)
    model = conversion.load_keras(config.artifacts)
    conversion.check_softmax_shape(model, spec)

    # 2-3. The checks below run on the very bytes that get published.
    model_proto = conversion.convert(model, config.opset)
    interface = graph.add_scoring_interface(model_proto, parity.why_not_causal(model_proto, inputs))
    spec = replace(spec, states=interface.states)
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    versions = conversion.package_versions()
    metadata.embed_metadata(model_proto, spec, metadata.training_entries(metrics, versions),
                            metrics.get("data_fingerprint", ""), created, baseline, interface)
    model_bytes = model_proto.SerializeToString()

    # 4.
    checks = parity.verify(model, model_bytes, inputs, config.tolerance, config.near_tie, spec.states)
    report = {
        "output": os.path.abspath(config.output_path),
        "opset": config.opset,
        "tolerance": config.tolerance,
        "near_tie": config.near_tie,
        "parity": checks,
        "scoring_interface": metadata.interface_report(interface),
        **parity.lengths_covered(spec, checks),
        "created_at": created.isoformat(timespec="seconds"),
        "bytes": len(model_bytes),
        "versions": versions,
    }

    # 5-6.
    def add_int8(published: dict) -> None:
        if config.quantize == "int8":
            published["int8"] = quantize.quantize_int8(model_bytes, inputs["test_split"], config.output_path,
                                                       config.quantize_agreement, spec.states)

    refusal = None if checks["passed"] else (
        f"{parity.refusal(checks)}, nothing published: " + "; ".join(checks["failures"]))
    return publish.publish_with_report(model_bytes, config.output_path, report, refusal, add_int8)


def _read_json(path: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise InputMissing(f"{path}: not found; run `make train` first") from None
    except ValueError as error:
        raise InvalidInput(f"{path}: not valid JSON ({error})") from None
