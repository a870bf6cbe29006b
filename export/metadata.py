"""What a published model says about itself: the metadata and doc_string embedded in the file,
for a converted Keras model and an imported one alike, and its interface as the report lists it.

The scoring job reads the spec (and the baseline, where there is one) from here and repeats
nothing; the rest says where the model came from.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from score.spec import Spec

if TYPE_CHECKING:
    from export.graph import ScoringInterface

# The 'probabilities' entry of a model imported with --renormalize: the scoring side reads it.
RENORMALIZED = ("renormalised scores: sigmoid outputs divided by their sum per step; "
                "not calibrated probabilities")
# The training summary's figures that travel in a converted model's 'metrics' entry.
METRICS_KEYS = (
    "token_accuracy", "token_accuracy_per_step", "sequence_accuracy", "top1_accuracy",
    "top2_accuracy", "top3_accuracy", "majority_baseline_accuracy", "epochs_run", "test_rows",
    "token_accuracy_by_length", "min_len", "max_len", "ece",
)


def training_entries(metrics: dict, versions: dict[str, str]) -> dict[str, str]:
    """The metadata of a model converted from the project's artifacts: the training summary,
    the data fingerprint and the versions that produced it."""
    return {
        "metrics": json.dumps({key: metrics[key] for key in METRICS_KEYS if key in metrics}),
        "data_fingerprint": metrics.get("data_fingerprint", ""),
        "tensorflow_version": versions["tensorflow"],
        "keras_version": versions["keras"],
        "tf2onnx_version": versions["tf2onnx"],
        "onnx_version": versions["onnx"],
    }


def import_entries(provenance: dict) -> dict[str, str]:
    """The metadata of an imported model: where it came from and what wrapped it."""
    import onnx
    import onnxruntime as ort

    return {
        "source": json.dumps(provenance),
        "onnx_version": onnx.__version__,
        "onnxruntime_version": ort.__version__,
    }


def embed_metadata(model_proto, spec: Spec, entries: dict[str, str], fingerprint: str,
                   created: dt.datetime, baseline: dict | None = None,
                   interface: ScoringInterface | None = None, renormalized: bool = False) -> None:
    """Replace ``model_proto``'s metadata with the spec, ``entries`` (what produced it), the
    creation time, a version ('20260101T000000Z-' and the first 12 of ``fingerprint``), the
    drift baseline and, for renormalised scores, what they are; and describe it in doc_string.
    """
    metadata = {
        "spec": spec.to_json(),
        **entries,
        "created_at": created.isoformat(timespec="seconds"),
        "version": f"{created.strftime('%Y%m%dT%H%M%SZ')}-{fingerprint[:12]}",
    }
    if baseline is not None:
        metadata["baseline"] = json.dumps(baseline)
    if renormalized:
        metadata["probabilities"] = RENORMALIZED
    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    model_proto.producer_name = "seqscore"
    model_proto.producer_version = ""
    model_proto.model_version = int(created.timestamp())
    meaning = RENORMALIZED if renormalized else "softmax"
    source = "; 'source' describes the imported model." if "source" in entries else "."
    described = interface.describe() if interface is not None else ""
    model_proto.doc_string = (
        f"Input 'x': int32 class indices (batch, time). Output 'probabilities': float32 "
        f"(batch, time, classes), {meaning}. The 'spec' metadata maps indices to raw values{source}"
        + (f" {described}" if described else "")
    )


def interface_report(interface: ScoringInterface) -> dict:
    """The state tensors (in layer order) and heads the published model carries."""
    return {
        "states": [asdict(state) for state in interface.states],
        "states_withheld": interface.states_withheld,
        "heads": list(interface.heads),
        "head_input": interface.head_input,
    }
