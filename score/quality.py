"""Is the model still right? Accuracy and calibration of a run's labelled steps, merged per batch.

A run with --labels knows each step's true class. Every batch adds counts and sums (never
per-step arrays kept for the run) to a QualityStats, which the local job merges batch by batch
and Spark through its accumulator, exactly as the drift profile. The figures follow from the
merged counts alone: accuracy (top-1 and top-k), whole-sequence accuracy, log loss, the
expected calibration error over ECE_BINS bins of the top-1 probability, accuracy by position
and by sequence length, and the most frequent confusions.

Without labels a run still estimates its accuracy: the mean top-1 probability over its valid
steps is the accuracy a calibrated model expects (confidence-based performance estimation);
training measures how calibrated the model is on its test split (baseline_quality).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from score.errors import InvalidInput, UsageError

ECE_BINS = 15  # equal-width bins of the top-1 probability over [0, 1]; p = 1.0 in the last
POSITIONS = 64  # accuracy by position covers the first POSITIONS positions of a row
TOP_CONFUSIONS = 10  # the most frequent (true, predicted) pairs the summary lists
LOG_LOSS_FLOOR = 1e-12  # -ln p(true class) with p clipped below at this


def confidence_bins(confidence: np.ndarray) -> np.ndarray:
    """The ECE bin of each top-1 probability: floor(p * ECE_BINS), p = 1.0 in the last bin."""
    scaled = np.asarray(confidence, dtype=np.float64) * ECE_BINS
    return np.minimum(scaled.astype(np.int64), ECE_BINS - 1)  # probabilities are >= 0


@dataclass
class QualityStats:
    """Counts and sums over a run's labelled steps (valid rows only)."""

    top_k: int  # K: the run's --top-k
    length_bins: int  # the drift profile's length histogram: lengths 1..seq_len, then longer
    steps: int = 0
    rows: int = 0
    top_k_correct: np.ndarray | None = None  # (K,) steps whose label is among the k best
    rows_correct: int = 0  # rows whose every step is right
    log_loss_sum: float = 0.0  # sum of -ln max(p(true class), LOG_LOSS_FLOOR)
    confidence_sum: float = 0.0  # sum of the top-1 probability over the labelled steps
    bin_steps: np.ndarray | None = None  # (ECE_BINS,) steps per confidence bin
    bin_confidence: np.ndarray | None = None  # (ECE_BINS,) sum of their top-1 probabilities
    bin_correct: np.ndarray | None = None  # (ECE_BINS,) of them right
    position_steps: np.ndarray | None = None  # (POSITIONS,)
    position_correct: np.ndarray | None = None  # (POSITIONS,)
    length_rows: np.ndarray | None = None  # (length_bins,) rows per length bucket
    length_steps: np.ndarray | None = None  # (length_bins,)
    length_correct: np.ndarray | None = None  # (length_bins,)
    confusion_pairs: np.ndarray | None = None  # sorted codes true * classes + predicted (wrong steps)
    confusion_counts: np.ndarray | None = None  # steps per pair
    classes: int = 0  # y classes: the base of confusion_pairs

    def __post_init__(self) -> None:
        def zeros(size: int, dtype=np.int64) -> np.ndarray:
            return np.zeros(size, dtype=dtype)

        if self.top_k_correct is None:
            self.top_k_correct = zeros(self.top_k)
            self.bin_steps, self.bin_correct = zeros(ECE_BINS), zeros(ECE_BINS)
            self.bin_confidence = zeros(ECE_BINS, np.float64)
            self.position_steps, self.position_correct = zeros(POSITIONS), zeros(POSITIONS)
            self.length_rows = zeros(self.length_bins)
            self.length_steps, self.length_correct = zeros(self.length_bins), zeros(self.length_bins)
            self.confusion_pairs, self.confusion_counts = zeros(0), zeros(0)

    @classmethod
    def measure(cls, *, truth: np.ndarray, rank: np.ndarray, label_probability: np.ndarray,
                confidence: np.ndarray, predicted: np.ndarray, row_steps: np.ndarray | int,
                positions: np.ndarray | None = None, lengths: np.ndarray | None = None,
                top_k: int, seq_len: int, classes: int) -> QualityStats:
        """One batch's figures, from flat arrays over its labelled steps in row order.

        Args:
            truth: each step's true class index.
            rank: where the true class stands among the step's top K (0: top-1; K: not there).
            label_probability: the true class's probability.
            confidence: the top-1 probability.
            predicted: the top-1 class index.
            row_steps: each row's steps in the flat arrays (rows in order, back to back); one
                number when every row has that many (rows of one length: no positions needed).
            positions: each step's position in its row's history; None: 0, 1, ... in each row.
            lengths: each row's length for the length buckets (its history's, with --key);
                None: ``row_steps``.
        """
        stats = cls(top_k=top_k, length_bins=seq_len + 1, classes=classes)
        steps = int(truth.size)
        if steps == 0:
            return stats
        correct = rank == 0
        stats.steps = steps
        stats.top_k_correct = np.cumsum(np.bincount(rank, minlength=top_k + 1)[:top_k]).astype(np.int64)
        probability = np.maximum(label_probability.astype(np.float64), LOG_LOSS_FLOOR)
        stats.log_loss_sum = float(-np.log(probability).sum())
        confidence = confidence.astype(np.float64)
        stats.confidence_sum = float(confidence.sum())
        bins = confidence_bins(confidence)
        stats.bin_steps = np.bincount(bins, minlength=ECE_BINS).astype(np.int64)
        stats.bin_confidence = np.bincount(bins, weights=confidence, minlength=ECE_BINS)
        stats.bin_correct = np.bincount(bins[correct], minlength=ECE_BINS).astype(np.int64)
        if np.ndim(row_steps) == 0 and positions is None and lengths is None:
            stats._add_rows_of_one_length(correct, int(row_steps), seq_len)
        else:
            stats._add_rows(correct, row_steps, positions, lengths, seq_len)
        wrong = np.flatnonzero(~correct)
        codes = truth[wrong].astype(np.int64) * classes + predicted[wrong].astype(np.int64)
        stats.confusion_pairs, counts = np.unique(codes, return_counts=True)
        stats.confusion_counts = counts.astype(np.int64)
        return stats

    def _add_rows_of_one_length(self, correct: np.ndarray, width: int, seq_len: int) -> None:
        """Rows, positions and length buckets of rows that all have ``width`` steps."""
        matrix = correct.reshape(-1, width)
        rows, shown = matrix.shape[0], min(width, POSITIONS)
        self.rows = rows
        self.rows_correct = int(matrix.all(axis=1).sum())
        self.position_steps[:shown] += rows
        self.position_correct[:shown] += matrix.sum(axis=0)[:shown]
        bucket = min(width, seq_len + 1) - 1
        self.length_rows[bucket] += rows
        self.length_steps[bucket] += correct.size
        self.length_correct[bucket] += int(correct.sum())

    def _add_rows(self, correct: np.ndarray, row_steps: np.ndarray | int, positions: np.ndarray | None,
                  lengths: np.ndarray | None, seq_len: int) -> None:
        """Rows, positions and length buckets of rows of any length."""
        if np.ndim(row_steps) == 0:
            row_steps = np.full(correct.size // int(row_steps), int(row_steps), dtype=np.int64)
        row_steps = np.asarray(row_steps, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(row_steps)[:-1]]).astype(np.int64)
        if positions is None:
            positions = np.arange(correct.size, dtype=np.int64) - np.repeat(starts, row_steps)
        lengths = row_steps if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.rows = int(row_steps.size)
        wrong_by_row = np.add.reduceat((~correct).astype(np.int64), starts)
        self.rows_correct = int((wrong_by_row == 0).sum())
        early = positions < POSITIONS
        self.position_steps = np.bincount(positions[early], minlength=POSITIONS).astype(np.int64)
        self.position_correct = np.bincount(positions[early & correct], minlength=POSITIONS).astype(np.int64)
        buckets = np.minimum(lengths, seq_len + 1) - 1
        step_buckets = np.repeat(buckets, row_steps)
        self.length_rows = np.bincount(buckets, minlength=seq_len + 1).astype(np.int64)
        self.length_steps = np.bincount(step_buckets, minlength=seq_len + 1).astype(np.int64)
        self.length_correct = np.bincount(step_buckets[correct], minlength=seq_len + 1).astype(np.int64)

    def merge(self, other: QualityStats) -> None:
        for name in ("steps", "rows", "rows_correct", "log_loss_sum", "confidence_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("top_k_correct", "bin_steps", "bin_confidence", "bin_correct",
                     "position_steps", "position_correct", "length_rows", "length_steps",
                     "length_correct"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.classes = max(self.classes, other.classes)
        pairs = np.concatenate([self.confusion_pairs, other.confusion_pairs])
        counts = np.concatenate([self.confusion_counts, other.confusion_counts])
        self.confusion_pairs, inverse = np.unique(pairs, return_inverse=True)
        self.confusion_counts = np.bincount(inverse, weights=counts,
                                            minlength=self.confusion_pairs.size).astype(np.int64)

    def figures(self, y_values: tuple[int, ...]) -> dict:
        """The summary's `quality` section (ratios unrounded: they are ratios of counts)."""
        steps = self.steps
        return {
            "steps": steps,
            "rows": self.rows,
            "accuracy": _ratio(self.top_k_correct[0], steps),
            "top_k_accuracy": [_ratio(count, steps) for count in self.top_k_correct],
            "sequence_accuracy": _ratio(self.rows_correct, self.rows),
            "log_loss": self.log_loss_sum / steps if steps else None,
            "estimated_accuracy": self.confidence_sum / steps if steps else None,
            "ece": expected_calibration_error(self.bin_steps, self.bin_confidence, self.bin_correct),
            "bins": bin_figures(self.bin_steps, self.bin_confidence, self.bin_correct),
            "accuracy_by_position": [
                {"position": position, "steps": int(count),
                 "accuracy": _ratio(self.position_correct[position], count)}
                for position, count in enumerate(self.position_steps) if count],
            "accuracy_by_length": {
                _length_name(bucket, self.length_bins): {
                    "rows": int(self.length_rows[bucket]), "steps": int(count),
                    "accuracy": _ratio(self.length_correct[bucket], count)}
                for bucket, count in enumerate(self.length_steps) if count},
            "top_confusions": self.top_confusions(y_values),
        }

    def top_confusions(self, y_values: tuple[int, ...]) -> list[dict]:
        """The TOP_CONFUSIONS most frequent wrong (true, predicted) pairs, in raw y values;
        equal counts in the order of the pairs' values."""
        order = np.lexsort((self.confusion_pairs, -self.confusion_counts))[:TOP_CONFUSIONS]
        return [{"true": int(y_values[int(self.confusion_pairs[i]) // self.classes]),
                 "predicted": int(y_values[int(self.confusion_pairs[i]) % self.classes]),
                 "count": int(self.confusion_counts[i])} for i in order]


def _ratio(count: float, total: float) -> float | None:
    return float(count) / float(total) if total else None


def _length_name(bucket: int, length_bins: int) -> str:
    return str(bucket + 1) if bucket < length_bins - 1 else f">{length_bins - 1}"


def expected_calibration_error(steps: np.ndarray, confidence: np.ndarray, correct: np.ndarray
                               ) -> float | None:
    """Sum over bins of (steps in bin / all steps) x |accuracy in bin - mean confidence in bin|."""
    total = int(steps.sum())
    if total == 0:
        return None
    return float(np.abs(correct.astype(np.float64) - confidence).sum() / total)


def bin_figures(steps: np.ndarray, confidence: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Each bin's range, steps, mean top-1 probability and accuracy (None when empty)."""
    return [{"low": index / ECE_BINS, "high": (index + 1) / ECE_BINS, "steps": int(count),
             "mean_confidence": float(confidence[index]) / count if count else None,
             "accuracy": float(correct[index]) / count if count else None}
            for index, count in enumerate(steps.tolist())]


def baseline_quality(probabilities: np.ndarray, targets: np.ndarray,
                     mask: np.ndarray | None = None) -> dict:
    """The test split's accuracy, ECE and bins, as training and an import with a labelled
    --reference embed them beside the drift baseline: full probabilities (rows, T, classes),
    true class indices (rows, T), ``mask`` the real steps of right-padded rows."""
    real = np.ones(targets.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    probabilities = probabilities[real]
    confidence = probabilities.max(axis=-1).astype(np.float64)
    correct = probabilities.argmax(axis=-1) == targets[real]
    bins = confidence_bins(confidence)
    steps = np.bincount(bins, minlength=ECE_BINS)
    sums = np.bincount(bins, weights=confidence, minlength=ECE_BINS)
    right = np.bincount(bins[correct], minlength=ECE_BINS)
    return {
        "steps": int(correct.size),
        "accuracy": float(correct.mean()) if correct.size else None,
        "ece": expected_calibration_error(steps, sums, right),
        "mean_confidence": float(confidence.mean()) if correct.size else None,
        "bins": bin_figures(steps, sums, right),
    }


def estimate(confidence_sum: float, steps: int, calibrated: bool) -> dict:
    """The summary's `estimated_accuracy`: the mean top-1 probability over the valid steps."""
    return {
        "value": confidence_sum / steps if steps else None,
        "steps": int(steps),
        "calibrated": calibrated,
        "assumes": ("the model is as calibrated on this data as on its test split (compare "
                    "baseline_quality)" if calibrated else
                    "nothing: top_k_probs are renormalised scores, not probabilities, so their "
                    "mean is not an accuracy (uncalibrated)"),
    }


def check_gate_flags(labels: str | None, min_accuracy: float | None) -> None:
    """--min-accuracy measures labelled steps: it needs --labels (exit 2)."""
    if min_accuracy is not None and labels is None:
        raise UsageError("--min-accuracy needs --labels COL: accuracy is measured against labels "
                         "(use --min-estimated-accuracy without them)")


def check_floors(location: str, quality: QualityStats | None, confidence_sum: float, steps: int,
                 min_accuracy: float | None, min_estimated: float | None) -> None:
    """Refuse to publish (InvalidInput, 65) below --min-accuracy or --min-estimated-accuracy;
    a floor with no valid step to measure is not met."""
    if min_accuracy is not None:
        measured = quality.steps if quality is not None else 0
        if measured == 0:
            raise InvalidInput(f"{location}: no valid labelled step to measure accuracy on; "
                               f"--min-accuracy {min_accuracy:g} is not met; nothing was published")
        accuracy = quality.top_k_correct[0] / measured
        if accuracy < min_accuracy:
            raise InvalidInput(f"{location}: accuracy {accuracy:.4f} over {measured} labelled steps "
                               f"is below --min-accuracy {min_accuracy:g}; nothing was published")
    if min_estimated is not None:
        if steps == 0:
            raise InvalidInput(f"{location}: no valid step to estimate accuracy on; "
                               f"--min-estimated-accuracy {min_estimated:g} is not met; nothing "
                               f"was published")
        estimated = confidence_sum / steps
        if estimated < min_estimated:
            raise InvalidInput(f"{location}: estimated accuracy {estimated:.4f} (mean top-1 "
                               f"probability over {steps} steps) is below --min-estimated-accuracy "
                               f"{min_estimated:g}; nothing was published")
