"""Runs that start from a given LSTM state and give back the state each row ends in.

A run resumed from a carried state (score.keyed) must end each row in the state after its last
real step. Padding would move that state on (a padded step is a step), so these runs group
rows of exactly one length: no padding at all, and the final state of every row is exact.
"""

from __future__ import annotations

import numpy as np

from score.arrays import as_items, segment_gather
from score.model import Scorer

# Padded steps and rows per session.run, as for prefix paths (score.prefix.PATH_RUN_STEPS):
# the rows resumed from a carried state are a day's few new steps, and for short rows the cost
# of a call, not the working set, dominates.
RUN_STEPS = 12_288
RUN_ROWS = 8_192


def length_groups(lengths: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """``rows`` in runs of one length each, of at most RUN_STEPS steps (or one row) and RUN_ROWS rows."""
    if rows.size == 0:
        return []
    order = rows[np.argsort(lengths[rows], kind="stable")]
    sorted_lengths = lengths[order]
    edges = [0, *(np.flatnonzero(np.diff(sorted_lengths)) + 1).tolist(), order.size]
    groups = []
    for first, last in zip(edges[:-1], edges[1:]):
        per_run = max(1, min(RUN_ROWS, RUN_STEPS // int(sorted_lengths[first])))
        groups.extend(order[start : min(start + per_run, last)] for start in range(first, last, per_run))
    return groups


def infer_states(scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, k: int,
                 best: np.ndarray, probabilities: np.ndarray, finite: np.ndarray,
                 initial: list[np.ndarray] | None, final: list[np.ndarray]) -> int:
    """Run ``rows`` of a flat batch from ``initial`` (one (rows of offsets, units) array per
    state tensor; None: the zero state), writing each step's top-k into ``best`` and
    ``probabilities`` (flat, like ``flat``), each row's finiteness into ``finite`` and the state
    after its last step into ``final`` (arrays like ``initial``). Returns the steps computed."""
    lengths = np.diff(offsets)
    computed = 0
    for chunk in length_groups(lengths, rows):
        width = int(lengths[chunk[0]])
        positions = segment_gather(offsets[chunk], lengths[chunk])
        matrix = flat[positions].reshape(chunk.size, width).astype(scorer.encoder.index_dtype, copy=False)
        feed = None if initial is None else [np.take(state, chunk, axis=0)[None] for state in initial]
        step_finite, top_probabilities, top_classes, states = scorer.resume_top_k(matrix, k, feed)
        as_items(best)[positions] = as_items(np.ascontiguousarray(top_classes.reshape(-1, k), dtype=best.dtype))
        as_items(probabilities)[positions] = as_items(
            np.ascontiguousarray(top_probabilities.reshape(-1, k), dtype=probabilities.dtype))
        finite[chunk] = step_finite.all(axis=1)
        for kept, state in zip(final, states):
            kept[chunk] = state[0]
        computed += matrix.size
    return computed
