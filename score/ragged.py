"""Rows of any length: exact keys, groups of similar length, and inference over flat arrays.

A variable-length model is causal (a unidirectional LSTM with return_sequences): the output at
step t depends only on steps 0..t, so right padding cannot change a real step's output and no
mask is needed. Rows are therefore run in groups of similar length, each group padded only to
its own longest row, and only the real steps' results are kept.

Every array here is flat, like score.sequences.RaggedSequences: the steps of all rows back to
back, with ``offsets`` (rows + 1) saying where each row starts. Memory follows the real steps of
a batch, never rows x the longest row.
"""

from __future__ import annotations

import numpy as np

from score.arrays import as_items, segment_gather, to_padded
from score.model import Scorer
from score.topk import run_top_k

# Beyond this many possible distinct sequences a row key would not fit in an int64.
MAX_KEY_SPACE = 1 << 62
# A run's padded steps stay under this share of its real steps (but see MIN_RUN_ROWS).
MAX_PADDING = 0.10
# Padded steps per session.run when whole rows run from their first step. Long runs cost
# onnxruntime more per step (its working set outgrows the caches): raw onnxruntime on the ragged
# benchmark was fastest at about this size (512 rows of mean length 16; bench/results.md), and
# the job was too (22.4 s for 1M rows, against 23.3 s at 4,096 steps, 24.0 s at 16,384 and
# 27.2 s at 2,048). Runs of prefix paths, most of them a few steps long, are larger
# (score.prefix.PATH_RUN_STEPS): there the cost of a call, not the working set, dominates.
ROW_RUN_STEPS = 8192
# A run may pad beyond the limit while it holds at most this many rows: the few rows of a rare
# length would otherwise each cost a whole session.run.
MIN_RUN_ROWS = 32


def key_length(classes: int) -> int:
    """The longest row whose key fits: (classes + 1) ** length <= 2**62."""
    length, space = 0, 1
    while space * (classes + 1) <= MAX_KEY_SPACE:
        length, space = length + 1, space * (classes + 1)
    return length


def row_keys(flat: np.ndarray, offsets: np.ndarray, classes: int, key_len: int) -> np.ndarray:
    """One int64 per row that equals another row's exactly when both sequences are equal.

    A row's key reads (index + 1) at step t as digit t in base classes + 1, so a shorter row
    (whose missing steps are digit 0) never equals a longer one: the length is in the key.
    Rows longer than ``key_len`` get -1: they have no key and are never merged or cached.
    Every row must have at least one step.
    """
    rows = offsets.size - 1
    if rows == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = np.diff(offsets)
    positions = np.arange(flat.size, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    keyed_steps = np.repeat(lengths <= key_len, lengths)
    weights = np.zeros(max(int(lengths.max()), 1), dtype=np.int64)
    weights[: min(key_len, weights.size)] = (classes + 1) ** np.arange(min(key_len, weights.size),
                                                                       dtype=np.int64)
    digits = np.where(keyed_steps, flat.astype(np.int64) + 1, 0)
    keys = np.add.reduceat(digits * weights[positions], offsets[:-1])
    return np.where(lengths <= key_len, keys, -1)


def distinct(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first row of each distinct sequence, and which of them every row equals.

    Rows without a key (-1) are each their own distinct sequence.
    """
    rows = keys.size
    keyed = np.flatnonzero(keys >= 0)
    unkeyed = np.flatnonzero(keys < 0)
    _, first, inverse = np.unique(keys[keyed], return_index=True, return_inverse=True)
    distinct_rows = np.concatenate([keyed[first], unkeyed])
    which = np.empty(rows, dtype=np.int64)
    which[keyed] = inverse.reshape(-1)
    which[unkeyed] = first.size + np.arange(unkeyed.size)
    return distinct_rows, which


def length_chunks(sorted_lengths: np.ndarray, max_rows: int, max_padding: float,
                  max_steps: int | None = None, min_rows: int = 1) -> list[tuple[int, int]]:
    """Cut rows sorted by length into runs of at most ``max_rows`` rows and (past one row)
    ``max_steps`` padded steps, whose padding to the run's longest row stays within
    ``max_padding`` of its real steps, except that a run of up to ``min_rows`` rows may pad
    more (the rare lengths of a batch: a run of a few rows costs a whole session.run).

    A run of one length has no padding, so every run can hold at least its first row.
    """
    count = sorted_lengths.size
    total = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(sorted_lengths, out=total[1:])
    chunks = []
    start = 0
    while start < count:
        stops = np.arange(start + 1, min(start + max_rows, count) + 1)
        rows = stops - start
        real = total[stops] - total[start]
        padded = sorted_lengths[stops - 1].astype(np.int64) * rows
        fits = (padded - real <= max_padding * real) | (rows <= min_rows)
        if max_steps is not None:
            fits &= (padded <= max_steps) | (rows == 1)
        stop = int(stops[np.flatnonzero(fits)[-1]])
        chunks.append((start, stop))
        start = stop
    return chunks


def infer(scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, k: int,
          best: np.ndarray, probabilities: np.ndarray, finite: np.ndarray) -> int:
    """Run ``rows`` of a flat batch through the model in groups of similar length, writing each
    real step's top-k into ``best`` and ``probabilities`` (flat, like ``flat``) and each row's
    finiteness into ``finite``. Returns the steps the model computed, padding included."""
    lengths = np.diff(offsets)
    order = rows[np.argsort(lengths[rows], kind="stable")]
    computed = 0
    runs = length_chunks(lengths[order], scorer.inference_rows, MAX_PADDING, ROW_RUN_STEPS,
                         MIN_RUN_ROWS)
    for start, stop in runs:
        chunk = order[start:stop]
        width = int(lengths[chunk[-1]])
        matrix, mask = to_padded(flat, offsets, chunk, width)
        chunk_finite, chunk_probabilities, chunk_best = run_top_k(scorer, matrix, k)
        destination = segment_gather(offsets[chunk], lengths[chunk])
        real = np.flatnonzero(mask.reshape(-1))
        as_items(best)[destination] = as_items(np.ascontiguousarray(chunk_best.reshape(-1, k), dtype=best.dtype))[real]
        as_items(probabilities)[destination] = as_items(
            np.ascontiguousarray(chunk_probabilities.reshape(-1, k), dtype=probabilities.dtype))[real]
        finite[chunk] = chunk_finite
        computed += matrix.size
    return computed

