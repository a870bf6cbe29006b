"""The scoring core: a pure function from one Arrow record batch to one scored record batch.

No file access and no globals: the Parquet job, Spark's mapInArrow, the benchmark and the tests
all call :func:`score_batch` unchanged. Its parts: the options (score.options), the input check
and the output columns (score.columns), the run's result cache (score.cache), and one pipeline
for rows of one length (score.fixed_rows) and one for rows of any length (score.ragged_rows),
which share their steps around inference (score.batch).
"""

from __future__ import annotations

import pyarrow as pa

from score import fixed_rows, ragged_rows
from score.batch import BatchStats, empty_stats
from score.cache import ResultCache, new_cache
from score.columns import OUTPUT_COLUMNS, check_input_schema, output_fields, output_schema
from score.model import Scorer
from score.options import ON_INVALID, ScoreOptions, length_warnings
from score.topk import top_k


def score_batch_with_stats(
    scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions, cache: ResultCache | None = None
) -> tuple[pa.RecordBatch, BatchStats]:
    """Score one batch; also return its counts for the run summary and drift monitoring.

    ``cache``: the run's results so far (new_cache), shared by its batches; None: none kept.
    """
    pipeline = ragged_rows if options.ragged(scorer) else fixed_rows
    return pipeline.score(scorer, batch, options, cache)


def score_batch(scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions) -> pa.RecordBatch:
    """Score one record batch: every input column, then y_pred, top_k_values, top_k_probs, error."""
    return score_batch_with_stats(scorer, batch, options)[0]


__all__ = [
    "ON_INVALID",
    "OUTPUT_COLUMNS",
    "BatchStats",
    "ResultCache",
    "ScoreOptions",
    "check_input_schema",
    "empty_stats",
    "length_warnings",
    "new_cache",
    "output_fields",
    "output_schema",
    "score_batch",
    "score_batch_with_stats",
    "top_k",
]
