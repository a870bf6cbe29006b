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
    """Counts per step (input classes, predicted classes, top-1 probability bins) and lengths.

    Per-step counts cover the positions a row actually has, up to the longest training length;
    ``length_counts[L - 1]`` counts rows of L steps, and its last bin rows longer than any
    training row (scored only under --max-length).
    """

    input_counts: np.ndarray  # (seq_len, x classes)
    prediction_counts: np.ndarray  # (seq_len, y classes)
    confidence_counts: np.ndarray  # (seq_len, CONFIDENCE_BINS)
    length_counts: np.ndarray | None = None  # (seq_len + 1,); None in a baseline from before it

    @classmethod
    def empty(cls, spec: Spec) -> Profile:
        return cls(
            np.zeros((spec.seq_len, spec.x_classes), dtype=np.int64),
            np.zeros((spec.seq_len, spec.y_classes), dtype=np.int64),
            np.zeros((spec.seq_len, CONFIDENCE_BINS), dtype=np.int64),
            np.zeros(spec.seq_len + 1, dtype=np.int64),
        )

    @property
    def steps(self) -> int:
        return self.input_counts.shape[0]

    @property
    def rows(self) -> int:
        if self.length_counts is not None:
            return int(self.length_counts.sum())
        return int(self.input_counts[0].sum()) if self.input_counts.size else 0

    def add(self, indices: np.ndarray, top1: np.ndarray, confidence: np.ndarray,
            mask: np.ndarray | None = None) -> None:
        """Count valid rows: class indices (rows, T), top-1 class (rows, T), its probability;
        ``mask`` (rows, T) marks the real steps of right-padded rows (None: all are real)."""
        self.add_inputs(indices, mask)
        self.add_predictions(top1, confidence, mask)

    def add_inputs(self, indices: np.ndarray, mask: np.ndarray | None = None) -> None:
        if mask is None:  # every step real: count column by column
            _count_columns(self.input_counts, indices)
            self._add_lengths(np.full(indices.shape[0], indices.shape[1]))
            return
        positions, values = _steps(indices, mask)
        self.add_flat_inputs(positions, values, mask.sum(axis=1))

    def add_predictions(self, top1: np.ndarray, confidence: np.ndarray,
                        mask: np.ndarray | None = None) -> None:
        if mask is None:
            _count_columns(self.prediction_counts, top1)
            _count_columns(self.confidence_counts, _confidence_bins(confidence))
            return
        positions, classes = _steps(top1, mask)
        _, probabilities = _steps(confidence, mask)
        self.add_flat_predictions(positions, classes, probabilities)

    def add_flat_inputs(self, positions: np.ndarray, indices: np.ndarray, lengths: np.ndarray) -> None:
        """Inputs given flat: each step's position in its row and class index; each row's length."""
        _count(self.input_counts, positions, indices)
        self._add_lengths(lengths)

    def _add_lengths(self, lengths: np.ndarray) -> None:
        if self.length_counts is not None:
            bins = np.minimum(np.asarray(lengths, dtype=np.int64), self.steps + 1) - 1
            self.length_counts += np.bincount(bins, minlength=self.steps + 1)[: self.steps + 1]

    def add_flat_predictions(self, positions: np.ndarray, top1: np.ndarray, confidence: np.ndarray) -> None:
        _count(self.prediction_counts, positions, top1)
        _count(self.confidence_counts, positions, _confidence_bins(confidence))

    def merge(self, other: Profile) -> None:
        self.input_counts += other.input_counts
        self.prediction_counts += other.prediction_counts
        self.confidence_counts += other.confidence_counts
        if self.length_counts is not None and other.length_counts is not None:
            self.length_counts += other.length_counts

    def to_dict(self) -> dict:
        payload = {
            "input_counts": self.input_counts.tolist(),
            "prediction_counts": self.prediction_counts.tolist(),
            "confidence_counts": self.confidence_counts.tolist(),
            "confidence_bins": CONFIDENCE_BINS,
        }
        if self.length_counts is not None:
            payload["length_counts"] = self.length_counts.tolist()
        return payload

    @classmethod
    def from_dict(cls, payload: dict) -> Profile:
        lengths = payload.get("length_counts")
        return cls(
            np.asarray(payload["input_counts"], dtype=np.int64),
            np.asarray(payload["prediction_counts"], dtype=np.int64),
            np.asarray(payload["confidence_counts"], dtype=np.int64),
            None if lengths is None else np.asarray(lengths, dtype=np.int64),
        )


def _steps(values: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Each counted step's position in its row, and its value, from a (rows, T) array."""
    if mask is None:
        positions = np.broadcast_to(np.arange(values.shape[1]), values.shape)
        return positions.reshape(-1), values.reshape(-1)
    return np.nonzero(mask)[1], values[mask]


def _confidence_bins(confidence: np.ndarray) -> np.ndarray:
    return np.clip((confidence * CONFIDENCE_BINS).astype(np.int64), 0, CONFIDENCE_BINS - 1)


def _count_columns(counts: np.ndarray, values: np.ndarray) -> None:
    """_count for a (rows, T) array whose column t holds step t of every row: one bincount per
    profiled step, with no (position, value) keys to build (a third of the time on 12 steps)."""
    steps, width = counts.shape
    for step in range(min(values.shape[1], steps)):
        counts[step] += np.bincount(values[:, step], minlength=width)


def _count(counts: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
    """Add to (steps, width) ``counts`` each (position, value); positions past the last step
    (longer than any training row) are not profiled per step."""
    steps, width = counts.shape
    positions = np.asarray(positions, dtype=np.int64)
    keep = positions < steps
    if not keep.all():
        positions, values = positions[keep], values[keep]
    shifted = values.astype(np.int64) + positions * width
    counts += np.bincount(shifted, minlength=steps * width).reshape(steps, width)


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


def length_psi(baseline: Profile, today: Profile) -> float | None:
    """PSI of the sequence-length histogram (None where the baseline predates it)."""
    if baseline.length_counts is None or today.length_counts is None:
        return None
    if baseline.length_counts.shape != today.length_counts.shape:
        return None
    value = psi(baseline.length_counts[None, :], today.length_counts[None, :])[0]
    return None if np.isnan(value) else round(float(value), 6)


def drift(baseline: Profile, today: Profile) -> dict:
    """PSI per step for inputs, predictions and confidence, as plain lists for JSON."""

    def rounded(values: np.ndarray) -> list[float | None]:
        return [None if np.isnan(v) else round(float(v), 6) for v in values]

    rows = today.rows
    if baseline.steps != today.steps:  # a baseline of another length: compare the common steps
        steps = min(baseline.steps, today.steps)
        baseline = Profile(baseline.input_counts[:steps], baseline.prediction_counts[:steps],
                           baseline.confidence_counts[:steps], None)
        today = Profile(today.input_counts[:steps], today.prediction_counts[:steps],
                        today.confidence_counts[:steps], None)
    # Rows of any length: a late step seen in few rows, today or in the baseline (whose
    # predictions come from the test split alone), is noise: reported, not acted on.
    step_rows = np.minimum.reduce([counts.sum(axis=1) for counts in (
        today.input_counts, today.prediction_counts, baseline.input_counts, baseline.prediction_counts)])
    return {
        "rows": rows,
        "minimum_rows": minimum_rows(today),
        "checked": rows >= minimum_rows(today),
        "steps_checked": (step_rows >= minimum_rows(today)).tolist(),
        "step_rows": step_rows.astype(int).tolist(),  # the fewest rows behind each step's PSI
        "input_psi": rounded(psi(baseline.input_counts, today.input_counts)),
        "prediction_psi": rounded(psi(baseline.prediction_counts, today.prediction_counts)),
        "confidence_psi": rounded(psi(baseline.confidence_counts, today.confidence_counts)),
        "length_psi": length_psi(baseline, today),
    }


def _checked_steps(report: dict, key: str) -> list[tuple[int, float | None]]:
    """(step, PSI) of the steps seen in enough rows to act on."""
    values = report.get(key, [])
    checked = report.get("steps_checked", [True] * len(values))
    return [(step, value) for step, (value, ok) in enumerate(zip(values, checked)) if ok]


def drift_warnings(report: dict, threshold: float = PSI_WARNING) -> list[str]:
    """One line per step whose input or prediction PSI exceeds the threshold."""
    lines = []
    if not report.get("checked", True):
        return lines
    for key, what in (("input_psi", "input values"), ("prediction_psi", "predicted classes")):
        for step, value in _checked_steps(report, key):
            if value is not None and value > threshold:
                lines.append(
                    f"drift in {what} at step {step}: PSI {value:.3f} > {threshold:g} "
                    f"(the training baseline differs from this run)"
                )
    value = report.get("length_psi")
    if value is not None and value > threshold:
        lines.append(f"drift in sequence lengths: PSI {value:.3f} > {threshold:g} "
                     f"(the training baseline differs from this run)")
    return lines


def max_psi(report: dict) -> tuple[float, str]:
    """The largest input or prediction PSI and where it is, for --max-psi (0 if too few rows)."""
    worst, where = 0.0, ""
    if not report.get("checked", True):
        return worst, where
    for key, what in (("input_psi", "input values"), ("prediction_psi", "predicted classes")):
        for step, value in _checked_steps(report, key):
            if value is not None and value > worst:
                worst, where = value, f"{what} at step {step}"
    value = report.get("length_psi")
    if value is not None and value > worst:
        worst, where = value, "sequence lengths"
    return worst, where
