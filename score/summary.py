"""The run summary (--summary): one JSON document for the local job and for Spark, and its writer.

Both runs hand in what they recorded (a RunRecord) and the run's own part (the local job's
`files`, Spark's `spark`); everything else follows from the merged statistics alone, so the two
report a run exactly alike. The file stays short: numbers in a list are written on one line,
and the spec is its fingerprint plus the fields a reader needs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np

from score import __version__, monitor, quality
from score import model as models
from score.encoding import reasons_for
from score.sink import write_small_file

if TYPE_CHECKING:
    from score.core import BatchStats, ScoreOptions

# What top_k_probs holds when the model says nothing else: its softmax. A model imported with
# --renormalize says so in its "probabilities" metadata ("renormalised scores: ...").
SOFTMAX = "softmax probabilities"


class RunRecord(Protocol):
    """What a run records as it goes (score.job.RunState, Spark's SparkRunState)."""

    started: float  # time.perf_counter() at the start
    started_at: str  # utc_now() at the start
    scorer: models.Scorer | None  # None when the model did not load
    stats: BatchStats | None  # the merged statistics of every row scored
    drift: dict | None  # monitor.drift against the model's baseline, None without one
    warnings: list[str]


def utc_now() -> str:
    """Now, in UTC, to the second: the summary's and the scored files' timestamps."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def probabilities(scorer: models.Scorer) -> str:
    """What the scores in top_k_probs are: the model's own sentence, else SOFTMAX."""
    return scorer.metadata.get("probabilities") or SOFTMAX


def build(record: RunRecord, *, exit_code: int, error: str | None, input_location: str,
          output_location: str, options: ScoreOptions, rows_in: int, rows_out: int,
          run: dict, keyed: bool = False) -> dict:
    """The --summary JSON: status, counts, speed, the model, distributions and drift.

    Args:
        rows_in: the rows the run took in (see score.job.RunState.rows_in for a failed run).
        run: the keys only this kind of run has (`files`, or `spark`), after the head.
        keyed: a run with --key (its rows can also fail for their key).
    """
    seconds = time.perf_counter() - record.started
    payload = {
        "status": "succeeded" if exit_code == 0 else "failed",
        "exit_code": exit_code,
        "error": error,
        "input": input_location,
        "output": output_location,
        "started_at": record.started_at,
        "finished_at": utc_now(),
        "seconds": round(seconds, 3),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_per_second": round(rows_in / seconds, 1) if seconds > 0 else None,
        "scorer_version": __version__,
        "top_k": options.top_k,
        "on_invalid": options.on_invalid,
        **run,
    }
    payload.update(_figures(options, record.scorer, record.stats, record.drift, keyed))
    payload["warnings"] = list(record.warnings)
    return payload


def spec_fields(spec) -> dict:
    """The spec as a reader needs it: its fingerprint (the sha256 of the JSON embedded in the
    model and in each scored file's seqscore.spec), the value sets and the lengths."""
    text = spec.to_json()
    fields = {"sha256": hashlib.sha256(text.encode()).hexdigest()}
    fields.update({key: value for key, value in json.loads(text).items() if key != "states"})
    fields["state_layers"] = len(spec.states)
    return fields


def _figures(options: ScoreOptions, scorer: models.Scorer | None, stats: BatchStats | None,
             drift: dict | None, keyed: bool = False) -> dict:
    """The model, the counts, the distributions and the drift of a run's merged statistics."""
    payload: dict = {}
    if scorer is not None:
        payload["model"] = {"location": scorer.location, "sha256": scorer.sha256, "version": scorer.version}
        payload["spec"] = spec_fields(scorer.spec)
        payload["probabilities"] = probabilities(scorer)
    if stats is None or scorer is None:
        return payload
    spec = scorer.spec
    rows = stats.rows
    invalid = int(rows - stats.reason_counts[0])
    payload["rows_invalid"] = invalid
    payload["invalid_by_reason"] = {
        name: int(stats.reason_counts[code])
        for code, name in reasons_for(spec, keyed, options.labels is not None).items()}
    payload["predicted_class_distribution"] = _per_step(spec.y_values, stats.profile.prediction_counts)
    payload["input_value_histogram"] = _per_step(spec.x_values, stats.profile.input_counts)
    report = dict(drift or {})
    baseline = models.baseline(scorer)
    report["has_baseline"] = baseline is not None
    report["baseline_profile"] = baseline
    report["profile"] = stats.profile.to_dict()
    report["low_confidence_threshold"] = options.low_confidence
    report["low_confidence_share"] = (
        round(stats.low_confidence_steps / stats.scored_steps, 6) if stats.scored_steps else None
    )
    report["invalid_share"] = round(invalid / rows, 6) if rows else None
    report["psi_warning_level"] = monitor.PSI_WARNING
    payload["drift"] = report
    payload["distinct_sequences_scored"] = stats.distinct_rows
    payload["steps_scored"] = stats.scored_steps
    payload["steps_computed"] = stats.steps_computed
    payload["max_length"] = options.length_limit(scorer)
    payload["sequence_length_histogram"] = length_histogram(stats.profile)
    payload.update(quality_figures(options, scorer, stats, baseline))
    return payload


def quality_figures(options: ScoreOptions, scorer: models.Scorer, stats: BatchStats,
                    baseline: dict | None) -> dict:
    """Is the model still right: the estimated accuracy of every run, the test split's measured
    quality the export embedded ('none' in an older file), and with --labels the run's own."""
    calibrated = probabilities(scorer) == SOFTMAX
    payload = {
        "estimated_accuracy": quality.estimate(stats.confidence_sum, stats.scored_steps, calibrated),
        "baseline_quality": (baseline or {}).get("quality") or "none",
    }
    if options.labels is not None:
        measured = stats.quality or quality.QualityStats(options.top_k, scorer.spec.seq_len + 1,
                                                         classes=scorer.spec.y_classes)
        payload["quality"] = {"labels": options.labels, **measured.figures(scorer.spec.y_values)}
    return payload


def _per_step(values: tuple[int, ...], counts: np.ndarray) -> list[dict[str, int]]:
    """For each step, the count of each value seen at it (values never seen left out)."""
    return [{str(value): int(count) for value, count in zip(values, row) if count} for row in counts]


def length_histogram(profile: monitor.Profile) -> dict[str, int]:
    """Rows per sequence length; the last key, '>N', counts rows longer than any training row."""
    counts = profile.length_counts
    if counts is None:
        return {}
    names = [str(length) for length in range(1, counts.size)] + [f">{counts.size - 1}"]
    return {name: int(count) for name, count in zip(names, counts) if count}


def write(location: str, payload: dict) -> None:
    """Write the summary to a path or URI, atomically."""
    write_small_file(location, (dumps(payload) + "\n").encode())


def dumps(value: object, indent: str = "") -> str:
    """JSON, indented by two spaces, with every list or object of plain values on one line:
    a profile of 32 steps is 32 lines, not one line per count."""
    inner = indent + "  "
    if isinstance(value, dict) and not _plain(value.values()):
        items = [f"{inner}{json.dumps(str(key))}: {dumps(item, inner)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list | tuple) and not _plain(value):
        items = [f"{inner}{dumps(item, inner)}" for item in value]
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    return json.dumps(value, default=_jsonable)


def _plain(values) -> bool:
    return not any(isinstance(value, dict | list | tuple) for value in values)


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
