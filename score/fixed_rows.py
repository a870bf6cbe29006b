"""Scoring rows of one length (a fixed-length model, or the wide layout): rows are a matrix
(rows, steps) from reading to the model."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from score import columns, labels, prefix, ragged
from score.batch import BatchStats, Inferred, batch_stats, refuse_non_finite, valid_rows
from score.cache import ResultCache
from score.model import Scorer
from score.options import ScoreOptions
from score.sequences import RawSequences, sequences_from_columns, sequences_from_list
from score.topk import run_top_k


def read_sequences(batch: pa.RecordBatch, scorer: Scorer, options: ScoreOptions) -> RawSequences:
    if options.input_columns is not None:
        arrays = [batch.column(name) for name in options.input_columns]
        return sequences_from_columns(arrays, list(options.input_columns))
    name = options.column(scorer)
    return sequences_from_list(batch.column(name), scorer.spec.seq_len, name)


def distinct_rows(indices: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The distinct sequences' keys and first row numbers, and which of them every row equals.

    A row's key is its class indices read as a number in base ``classes``. None when a key
    would not fit in an int64 (very long sequences, which rarely repeat).
    """
    rows, steps = indices.shape
    if rows < 1 or classes**steps > ragged.MAX_KEY_SPACE:
        return None
    weights = classes ** np.arange(steps, dtype=np.int64)
    keys = indices.astype(np.int64) @ weights
    unique_keys, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return unique_keys, first, inverse.reshape(-1)


def score(scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions, cache: ResultCache | None
          ) -> tuple[pa.RecordBatch, BatchStats]:
    """score_batch_with_stats for rows of one length.

    Steps: 1. read and encode the sequences; 2. stop at the first invalid row, or mark it;
    3. run each distinct valid sequence through the model once; 4. refuse non-finite output;
    5. top-k and decode; 6. assemble the output columns after the input columns.
    """
    # 1-2. Read, validate, encode.
    raw = read_sequences(batch, scorer, options)
    steps = raw.values.shape[1]  # the spec's length; the wide layout's columns
    encoded = scorer.encoder.encode(raw, steps)
    labelled = (labels.read(batch, options.labels, raw.column, raw.lengths, scorer)
                if options.labels is not None else None)
    rows = valid_rows(scorer, raw, encoded, options, labelled)
    indices = encoded.indices[rows]

    # 3. Inference on distinct sequences only (and only those the run's cache has not seen);
    # results are scattered back to every row by `inverse`.
    groups = distinct_rows(indices, scorer.spec.x_classes) if options.dedup else None
    if groups is None:
        keys, inverse, distinct_input = None, None, indices
    else:
        keys, first, inverse = groups
        distinct_input = indices[first]
        if first.size == indices.shape[0]:  # no two rows alike: the rows as they are, no scatter
            keys, inverse, distinct_input = keys[inverse], None, indices
    inferred = infer(scorer, distinct_input, keys, options.run_k(scorer), cache, options.share_prefixes)
    best, probabilities = inferred.best, inferred.probabilities

    # 4. NaN or infinity in the output fails the row, never reaches the file.
    if not inferred.finite.all():
        row_finite = inferred.finite[inverse] if inverse is not None else inferred.finite
        refuse_non_finite(encoded, rows, row_finite, options)
        indices = indices[row_finite]
        if inverse is not None:
            inverse = inverse[row_finite]
        else:
            best, probabilities = best[row_finite], probabilities[row_finite]

    # 5-6. Scatter the distinct rows' top-k to every row (with labels the model gave every
    # class: the top K go on, and each step's true class is looked up); assemble.
    every = None
    if labelled is not None:  # asked for every class: the top K go on, every class stays here
        every = best.reshape(-1, best.shape[-1]), probabilities.reshape(-1, best.shape[-1])
        best = np.ascontiguousarray(best[..., : options.top_k])
        probabilities = np.ascontiguousarray(probabilities[..., : options.top_k])
    if inverse is not None:
        best, probabilities = best[inverse], probabilities[inverse]
    resolved = None
    if labelled is not None:
        kept = np.flatnonzero(encoded.reasons == 0)
        truth = labelled.truth(kept, np.full(kept.size, steps, dtype=np.int64))
        locate = None if inverse is None else (lambda step: inverse[step // steps] * steps + step % steps)
        resolved = labels.resolve(best.reshape(-1, options.top_k), probabilities.reshape(-1, options.top_k),
                                  truth, *every, locate)
    scored = columns.assemble(batch, scorer, options, raw, encoded, best, probabilities, steps,
                              labelled, resolved)
    confidence = probabilities[..., 0]
    stats = batch_stats(scorer, options, batch.num_rows, encoded.reasons, confidence, inferred)
    stats.profile.add(indices, best[..., 0], confidence)
    if resolved is not None:
        stats.quality = labels.measure(scorer, options.top_k, resolved, best[..., 0].reshape(-1),
                                       confidence.reshape(-1), steps)
    return scored, stats


def infer(scorer: Scorer, rows: np.ndarray, keys: np.ndarray | None, k: int,
          cache: ResultCache | None, share_prefixes: bool = True) -> Inferred:
    """The top-k of ``rows`` (rows, steps). Rows found in ``cache`` (by key) skip the model;
    the finite results of the others join it."""
    count, steps = rows.shape
    use_cache = cache is not None and cache.enabled and keys is not None
    hit, slot = cache.lookup(keys) if use_cache else (np.zeros(count, dtype=bool), None)
    hits = int(hit.sum())
    run = np.flatnonzero(~hit) if hits else None
    model_input = np.ascontiguousarray(rows if run is None else rows[run])
    # Top-k inside onnxruntime where it can; non-finite rows are dropped by the caller.
    ran = run_rows(scorer, model_input, k, share_prefixes)
    inferred = ran
    if hits:  # put the cached and the computed rows together, in row order
        inferred = Inferred(np.empty((count, steps, k), dtype=ran.best.dtype),
                            np.empty((count, steps, k), dtype=np.float32),
                            np.ones(count, dtype=bool), ran.model_rows, ran.steps_computed)
        inferred.best[hit], inferred.probabilities[hit] = cache.get(slot[hit])
        inferred.best[run], inferred.probabilities[run] = ran.best, ran.probabilities
        inferred.finite[run] = ran.finite
    if use_cache:
        cache.settle(hits / count if count else 1.0)
        ran_keys = keys if run is None else keys[run]
        cache.add(ran_keys[ran.finite], ran.best[ran.finite], ran.probabilities[ran.finite])
    return inferred


def run_rows(scorer: Scorer, matrix: np.ndarray, k: int, share_prefixes: bool) -> Inferred:
    """run_top_k over rows of one length, sharing their common prefixes where that pays."""
    rows, steps = matrix.shape
    if share_prefixes and scorer.shares_prefixes and rows > 1:
        best = np.empty((rows * steps, k), dtype=np.int32)
        probabilities = np.empty((rows * steps, k), dtype=np.float32)
        finite = np.empty(rows, dtype=bool)
        offsets = np.arange(rows + 1, dtype=np.int64) * steps
        computed = prefix.infer_shared(scorer, matrix.reshape(-1), offsets, np.arange(rows), k,
                                       best, probabilities, finite)
        if computed is not None:
            return Inferred(best.reshape(rows, steps, k), probabilities.reshape(rows, steps, k),
                            finite, rows, computed)
    finite, probabilities, best = run_top_k(scorer, matrix, k)
    return Inferred(best, probabilities, finite, rows, matrix.size)
