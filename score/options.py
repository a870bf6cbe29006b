"""How one batch is scored: the options the command lines fill, checked against the model."""

from __future__ import annotations

from dataclasses import dataclass

from score.errors import UsageError
from score.model import Scorer

ON_INVALID = ("error", "null")


@dataclass(frozen=True)
class ScoreOptions:
    """How one batch is scored.

    ``dedup``, ``share_prefixes`` and ``cache`` are benchmark switches: each turns one
    optimisation off to measure what it pays (bench.variant); no command-line flag sets them,
    and the output is the same either way.
    """

    top_k: int = 3  # how many of the most likely classes to report per step
    on_invalid: str = "error"  # 'error': stop at the first invalid row; 'null': keep it, say why
    input_column: str | None = None  # list column with the sequences; None: the spec's column
    input_columns: tuple[str, ...] | None = None  # wide layout: one integer column per step
    dedup: bool = True  # score each distinct sequence of a batch once (the model is deterministic)
    low_confidence: float = 0.5  # a step whose top-1 probability is below this is low-confidence
    max_length: int | None = None  # variable-length models: longest row scored (None: trained max)
    share_prefixes: bool = True  # compute each distinct prefix of a batch once (score.prefix)
    cache: bool = True  # keep results across batches (score.cache); needs dedup
    labels: str | None = None  # list column of true y values, one per step: measure accuracy

    def validate(self, scorer: Scorer) -> None:
        spec = scorer.spec
        classes = spec.y_classes
        if not 1 <= self.top_k <= classes:
            raise UsageError(f"--top-k {self.top_k}: expected 1 <= K <= {classes} (the model's classes)")
        if self.on_invalid not in ON_INVALID:
            raise UsageError(f"--on-invalid {self.on_invalid}: expected one of {', '.join(ON_INVALID)}")
        if self.max_length is not None:
            if self.max_length < 1:
                raise UsageError(f"--max-length {self.max_length}: expected a positive integer")
            if not spec.variable_length:
                raise UsageError(
                    f"--max-length {self.max_length}: the model takes sequences of exactly "
                    f"{spec.seq_len} (it was trained on one length); the limit applies only to "
                    f"variable-length models"
                )
        if self.input_columns is not None:
            columns = len(self.input_columns)
            if not spec.variable_length and columns != spec.seq_len:
                raise UsageError(
                    f"--input-columns names {columns} column(s); the model takes sequences of "
                    f"{spec.seq_len}, one column per step (the wide layout is fixed-length)"
                )
            if spec.variable_length and columns > self.length_limit(scorer):
                raise UsageError(
                    f"--input-columns names {columns} column(s); the model takes at most "
                    f"{self.length_limit(scorer)} steps. The wide layout is fixed-length (every "
                    f"row has one value per column): use a list column for rows of any length"
                )
        if not 0.0 <= self.low_confidence <= 1.0:
            raise UsageError(f"--low-confidence {self.low_confidence}: expected a probability in [0, 1]")

    def run_k(self, scorer: Scorer) -> int:
        """Classes asked of the model per step: the top K, or with labels every class (the
        true class's probability and rank come from the full distribution, score.labels)."""
        return scorer.spec.y_classes if self.labels is not None else self.top_k

    def column(self, scorer: Scorer) -> str:
        return self.input_column or scorer.spec.input_column

    def length_limit(self, scorer: Scorer) -> int:
        """The longest row this run scores: --max-length, else the longest training length."""
        return self.max_length or scorer.spec.seq_len

    def ragged(self, scorer: Scorer) -> bool:
        """Whether rows may have any length (a variable-length model over a list column)."""
        return scorer.spec.variable_length and self.input_columns is None


def length_warnings(scorer: Scorer, options: ScoreOptions) -> list[str]:
    """What the run should know about its length limit."""
    limit, trained = options.length_limit(scorer), scorer.spec.seq_len
    if scorer.spec.variable_length and limit > trained:
        return [f"--max-length {limit} is beyond the longest training length ({trained}): "
                f"predictions for steps past {trained} are extrapolation"]
    return []
