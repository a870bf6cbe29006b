"""Scoring rows of any length (a variable-length model over a list column).

The same steps as for rows of one length (score.fixed_rows), over flat arrays (score.ragged):
rows are never padded to the batch's longest row, only in groups of similar length inside the
model run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from score import columns, labels, prefix, ragged
from score.arrays import offsets_from_lengths, segment_gather, take_items
from score.batch import BatchStats, Inferred, batch_stats, refuse_non_finite, valid_rows
from score.cache import ResultCache, ragged_key_length
from score.model import Scorer
from score.options import ScoreOptions
from score.sequences import ragged_from_list


def score(scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions, cache: ResultCache | None
          ) -> tuple[pa.RecordBatch, BatchStats]:
    """score_batch_with_stats for rows of any length: the steps of score.fixed_rows.score."""
    # 1-2. Read, validate, encode; rows over the limit are refused from their length alone.
    name = options.column(scorer)
    raw = ragged_from_list(batch.column(name), name, options.length_limit(scorer))
    encoded = scorer.encoder.encode_ragged(raw)
    labelled = (labels.read(batch, options.labels, name, raw.lengths, scorer)
                if options.labels is not None else None)
    rows = valid_rows(scorer, raw, encoded, options, labelled)
    lengths = raw.gathered_lengths[rows]
    offsets = offsets_from_lengths(lengths)
    if rows.size == raw.rows:
        flat = encoded.indices
    else:
        flat = encoded.indices[segment_gather(raw.offsets[rows], lengths)]

    # 3. Inference on distinct sequences only (the length is part of a sequence's key). Where
    # the prefix tree runs every row and no cache needs keys, equal rows share one path of the
    # tree and the keys are not made.
    merge_in_tree = (options.share_prefixes and scorer.shares_prefixes
                     and not (cache is not None and cache.enabled))
    keys = (ragged.row_keys(flat, offsets, scorer.spec.x_classes, ragged_key_length(scorer, options))
            if options.dedup and not merge_in_tree else None)
    first, inverse = ragged.distinct(keys) if keys is not None else (None, None)
    if first is not None and first.size < lengths.size:
        distinct_lengths = lengths[first]
        distinct_offsets = offsets_from_lengths(distinct_lengths)
        distinct_flat = flat[segment_gather(offsets[first], distinct_lengths)]
        distinct_keys = keys[first]
    else:  # no two rows alike (or no de-duplication): the rows as they are, nothing to scatter
        inverse, distinct_offsets, distinct_flat, distinct_keys = None, offsets, flat, keys
    inferred = infer(scorer, distinct_flat, distinct_offsets, distinct_keys, options.run_k(scorer), cache,
                     options.share_prefixes, merge_in_tree)
    best, probabilities = inferred.best, inferred.probabilities

    # 4-5. NaN or infinity fails the row; with labels, where each step's true class ranks (from
    # every class), then the top K; scatter each distinct row's top-k to every row equal to it.
    row_finite = inferred.finite[inverse] if inverse is not None else inferred.finite
    gather = segment_gather(distinct_offsets[inverse], lengths) if inverse is not None else None
    if not row_finite.all():
        refuse_non_finite(encoded, rows, row_finite, options)
        kept_steps = np.repeat(row_finite, lengths)
        flat = flat[kept_steps]
        if gather is not None:
            gather = gather[kept_steps]
        else:
            best, probabilities = best[kept_steps], probabilities[kept_steps]
        rows, lengths = rows[row_finite], lengths[row_finite]
        offsets = offsets_from_lengths(lengths)
    every = None
    if labelled is not None:  # asked for every class: the top K go on, every class stays here
        every = best, probabilities
        best = np.ascontiguousarray(best[:, : options.top_k])
        probabilities = np.ascontiguousarray(probabilities[:, : options.top_k])
    if gather is not None:
        best, probabilities = take_items(best, gather), take_items(probabilities, gather)
    resolved = None
    if labelled is not None:
        resolved = labels.resolve(best, probabilities, labelled.truth(rows, lengths), *every,
                                  None if gather is None else gather.__getitem__)

    # 6. Assemble: one value (and one list of K) per step of each row.
    row_lengths = np.zeros(raw.rows, dtype=np.int64)
    row_lengths[rows] = lengths
    scored = columns.assemble(batch, scorer, options, raw, encoded, best, probabilities, row_lengths,
                              labelled, resolved)
    confidence = probabilities[:, 0]
    stats = batch_stats(scorer, options, batch.num_rows, encoded.reasons, confidence, inferred)
    positions = np.arange(flat.size, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    stats.profile.add_flat_inputs(positions, flat, lengths)
    stats.profile.add_flat_predictions(positions, best[:, 0], confidence)
    if resolved is not None:
        stats.quality = labels.measure(scorer, options.top_k, resolved, best[:, 0], confidence,
                                       lengths, positions)
    return scored, stats


def infer(scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, keys: np.ndarray | None, k: int,
          cache: ResultCache | None, share_prefixes: bool = True, merge_in_tree: bool = False,
          ) -> Inferred:
    """The top-k of each step of flat rows, flat like ``flat``.

    Rows found in ``cache`` (by key) skip the model; the finite results of the others join it.
    ``merge_in_tree``: the rows were not de-duplicated; the prefix tree merges equal ones.
    """
    rows = offsets.size - 1
    best = np.empty((flat.size, k), dtype=np.int32)  # class indices; half the bytes of intp
    probabilities = np.empty((flat.size, k), dtype=np.float32)
    finite = np.ones(rows, dtype=bool)
    use_cache = cache is not None and cache.enabled and keys is not None
    run = np.arange(rows)
    if use_cache:
        run = cache.serve(keys, run, offsets, best, probabilities)
    model_rows = int(run.size)
    if merge_in_tree:
        computed, model_rows = prefix.infer_merged(scorer, flat, offsets, run, k, best, probabilities, finite)
    else:
        computed = (prefix.infer_shared(scorer, flat, offsets, run, k, best, probabilities, finite)
                    if share_prefixes else None)
    if computed is None:  # nothing shared (or worth sharing): runs of similar length
        computed = ragged.infer(scorer, flat, offsets, run, k, best, probabilities, finite)
    if use_cache:
        cache.remember(keys, run, offsets, best, probabilities, finite)
    return Inferred(best, probabilities, finite, model_rows, computed)
