"""Profiles of inputs, predictions and confidence, and how far a run drifts from training.

Training computes a baseline profile on its data; the export embeds it in the model; every
scoring run accumulates the same profile over its valid rows (a few bincounts per batch) and
compares the two with the population stability index (PSI).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from score.spec import Spec

CONFIDENCE_BINS = 20  # equal-width bins of the top-1 probability over [0, 1]
PSI_WARNING = 0.2  # the conventional level above which a shift deserves a look
_PSI_FLOOR = 1e-4  # share given to an empty bin so that the logarithm stays finite
# PSI over a handful of rows is noise: with about 20 rows expected per bin, a sample drawn like
# the baseline stays far below the warning level. Fewer rows: the PSI is reported, not acted on.
ROWS_PER_BIN = 20


@dataclass
class Profile:
    """Counts per step: input classes, predicted classes, top-1 probability bins."""

    input_counts: np.ndarray  # (seq_len, x classes)
    prediction_counts: np.ndarray  # (seq_len, y classes)
    confidence_counts: np.ndarray  # (seq_len, CONFIDENCE_BINS)

    @classmethod
    def empty(cls, spec: Spec) -> Profile:
        return cls(
            np.zeros((spec.seq_len, spec.x_classes), dtype=np.int64),
            np.zeros((spec.seq_len, spec.y_classes), dtype=np.int64),
            np.zeros((spec.seq_len, CONFIDENCE_BINS), dtype=np.int64),
        )

    @property
    def rows(self) -> int:
        return int(self.input_counts[0].sum()) if self.input_counts.size else 0

    def add(self, indices: np.ndarray, top1: np.ndarray, confidence: np.ndarray) -> None:
        """Count valid rows: class indices (rows, T), top-1 class (rows, T), its probability."""
        self.add_inputs(indices)
        self.add_predictions(top1, confidence)

    def add_inputs(self, indices: np.ndarray) -> None:
        self.input_counts += _per_step_counts(indices, self.input_counts.shape[1])

    def add_predictions(self, top1: np.ndarray, confidence: np.ndarray) -> None:
        self.prediction_counts += _per_step_counts(top1, self.prediction_counts.shape[1])
        bins = np.clip((confidence * CONFIDENCE_BINS).astype(np.int64), 0, CONFIDENCE_BINS - 1)
        self.confidence_counts += _per_step_counts(bins, CONFIDENCE_BINS)

    def merge(self, other: Profile) -> None:
        self.input_counts += other.input_counts
        self.prediction_counts += other.prediction_counts
        self.confidence_counts += other.confidence_counts

    def to_dict(self) -> dict:
        return {
            "input_counts": self.input_counts.tolist(),
            "prediction_counts": self.prediction_counts.tolist(),
            "confidence_counts": self.confidence_counts.tolist(),
            "confidence_bins": CONFIDENCE_BINS,
        }

    @classmethod
    def from_dict(cls, payload: dict) -> Profile:
        return cls(
            np.asarray(payload["input_counts"], dtype=np.int64),
            np.asarray(payload["prediction_counts"], dtype=np.int64),
            np.asarray(payload["confidence_counts"], dtype=np.int64),
        )


def _per_step_counts(classes: np.ndarray, width: int) -> np.ndarray:
    """(steps, width) counts of the class in each step of (rows, steps) data, by one bincount."""
    steps = classes.shape[1]
    shifted = classes.astype(np.int64) + np.arange(steps, dtype=np.int64) * width
    return np.bincount(shifted.ravel(), minlength=steps * width).reshape(steps, width)


def psi(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Population stability index per row of two (steps, bins) count arrays.

    PSI = sum over bins of (a - e) * ln(a / e), with a and e the shares of each bin. Empty bins
    get a small floor share. Returns NaN for a step with no observations on either side.
    """
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    expected_total = expected.sum(axis=1, keepdims=True)
    actual_total = actual.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected_share = np.maximum(expected / expected_total, _PSI_FLOOR)
        actual_share = np.maximum(actual / actual_total, _PSI_FLOOR)
        values = ((actual_share - expected_share) * np.log(actual_share / expected_share)).sum(axis=1)
    empty = (expected_total[:, 0] == 0) | (actual_total[:, 0] == 0)
    return np.where(empty, np.nan, values)


def minimum_rows(profile: Profile) -> int:
    """Rows needed before drift is acted on: ROWS_PER_BIN for each bin of the widest histogram."""
    widest = max(profile.input_counts.shape[1], profile.prediction_counts.shape[1], CONFIDENCE_BINS)
    return ROWS_PER_BIN * widest


def drift(baseline: Profile, today: Profile) -> dict:
    """PSI per step for inputs, predictions and confidence, as plain lists for JSON."""

    def rounded(values: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else round(float(v), 6) for v in values]

    rows = today.rows
    return {
        "rows": rows,
        "minimum_rows": minimum_rows(today),
        "checked": rows >= minimum_rows(today),
        "input_psi": rounded(psi(baseline.input_counts, today.input_counts)),
        "prediction_psi": rounded(psi(baseline.prediction_counts, today.prediction_counts)),
        "confidence_psi": rounded(psi(baseline.confidence_counts, today.confidence_counts)),
    }


def drift_warnings(report: dict, threshold: float = PSI_WARNING) -> list[str]:
    """One line per step whose input or prediction PSI exceeds the threshold."""
    lines = []
    if not report.get("checked", True):
        return lines
    for key, what in (("input_psi", "input values"), ("prediction_psi", "predicted classes")):
        for step, value in enumerate(report.get(key, [])):
            if value is not None and value > threshold:
                lines.append(
                    f"drift in {what} at step {step}: PSI {value:.3f} > {threshold:g} "
                    f"(the training baseline differs from this run)"
                )
    return lines


def max_psi(report: dict) -> tuple[float, str]:
    """The largest input or prediction PSI and where it is, for --max-psi (0 if too few rows)."""
    worst, where = 0.0, ""
    if not report.get("checked", True):
        return worst, where
    for key, what in (("input_psi", "input values"), ("prediction_psi", "predicted classes")):
        for step, value in enumerate(report.get(key, [])):
            if value is not None and value > worst:
                worst, where = value, f"{what} at step {step}"
    return worst, where
