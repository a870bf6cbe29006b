"""What the two scoring pipelines (score.fixed_rows, score.ragged_rows) share: the model's
results for a batch, the batch's counts for the run summary, and the steps around inference."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from score.encoding import NON_FINITE_OUTPUT, REASONS, VALID, Encoded, EncodedRagged
from score.errors import InvalidRow
from score.labels import Labels
from score.model import Scorer
from score.monitor import Profile
from score.options import ScoreOptions
from score.quality import QualityStats
from score.sequences import RaggedSequences, RawSequences


@dataclass
class Inferred:
    """The top-k of the rows given to inference (run by the model or found in the cache)."""

    best: np.ndarray  # class indices, best first: (rows, steps, k), or flat (steps, k)
    probabilities: np.ndarray  # their probabilities, the same shape
    finite: np.ndarray  # (rows,) bool: the model's output for the row is finite
    model_rows: int  # rows the model ran (distinct and not cached)
    steps_computed: int  # steps the model computed, padding included


@dataclass
class BatchStats:
    """What a batch contributed to the run's summary."""

    rows: int
    reason_counts: np.ndarray  # (len(REASONS) + 1,) rows per reason, index 0 = valid
    profile: Profile
    low_confidence_steps: int = 0
    scored_steps: int = 0
    distinct_rows: int = 0  # sequences actually run through the model
    steps_computed: int = 0  # steps the model ran, padding of rows of any length included
    confidence_sum: float = 0.0  # sum of the top-1 probability of the scored steps (estimated accuracy)
    quality: QualityStats | None = None  # a run with --labels: its labelled steps' figures

    def merge(self, other: BatchStats) -> None:
        self.rows += other.rows
        self.reason_counts += other.reason_counts
        self.profile.merge(other.profile)
        self.low_confidence_steps += other.low_confidence_steps
        self.scored_steps += other.scored_steps
        self.distinct_rows += other.distinct_rows
        self.steps_computed += other.steps_computed
        self.confidence_sum += other.confidence_sum
        if other.quality is not None:
            if self.quality is None:
                self.quality = QualityStats(other.quality.top_k, other.quality.length_bins,
                                            classes=other.quality.classes)
            self.quality.merge(other.quality)


def empty_stats(scorer: Scorer) -> BatchStats:
    return BatchStats(0, np.zeros(len(REASONS) + 1, dtype=np.int64), Profile.empty(scorer.spec))


def valid_rows(scorer: Scorer, raw: RawSequences | RaggedSequences,
               encoded: Encoded | EncodedRagged, options: ScoreOptions,
               labelled: Labels | None = None) -> np.ndarray:
    """The valid rows' numbers (by sequence, and by labels with ``labelled``); with
    --on-invalid error, the first invalid row raises."""
    if labelled is not None:
        labelled.mark(encoded.reasons)
    if options.on_invalid == "error":
        if labelled is not None:
            labelled.raise_first(encoded.reasons, scorer)
        scorer.encoder.raise_first_invalid(raw, encoded)
    return np.flatnonzero(encoded.reasons == VALID)


def refuse_non_finite(encoded: Encoded | EncodedRagged, rows: np.ndarray, row_finite: np.ndarray,
                      options: ScoreOptions) -> None:
    """NaN or infinity in the output fails the row (of ``rows``), never reaches the file: the
    first one raises with --on-invalid error, else each gets its reason."""
    broken = rows[~row_finite]
    if options.on_invalid == "error":
        raise InvalidRow(int(broken[0]), REASONS[NON_FINITE_OUTPUT],
                         "the model's output is NaN or infinite for this row")
    encoded.reasons[broken] = NON_FINITE_OUTPUT


def batch_stats(scorer: Scorer, options: ScoreOptions, rows: int, reasons: np.ndarray,
                confidence: np.ndarray, inferred: Inferred) -> BatchStats:
    """The batch's counts, from its rows' reasons and its scored steps' top-1 probabilities
    (the drift profile is the pipeline's to add)."""
    stats = empty_stats(scorer)
    stats.rows = rows
    stats.reason_counts = np.bincount(reasons, minlength=len(REASONS) + 1).astype(np.int64)
    stats.low_confidence_steps = int((confidence < options.low_confidence).sum())
    stats.scored_steps = int(confidence.size)
    stats.confidence_sum = float(confidence.sum(dtype=np.float64))
    stats.distinct_rows = int(inferred.model_rows)
    stats.steps_computed = int(inferred.steps_computed)
    return stats
