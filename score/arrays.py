"""Flat ragged arrays: rows of any length laid back to back, with offsets saying where each
starts, and moving whole rows of numpy arrays in one copy.

Encoding, the scoring pipelines, training and the benchmark all build on these; every function
is vectorised (no Python loop over rows).
"""

from __future__ import annotations

import numpy as np


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """(rows + 1,) int64 offsets of rows of the given lengths laid back to back."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def segment_gather(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat positions of the segments [start, start + length), one after the other."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    shift = np.repeat(starts.astype(np.int64) - (ends - lengths), lengths)
    return np.arange(total, dtype=np.int64) + shift


def as_items(array: np.ndarray) -> np.ndarray:
    """A C-contiguous (n, ...) array as n opaque items of one row's bytes each (a view).

    Fancy indexing moves such an item with one copy instead of an index loop over its
    values: gathering and scattering the (steps, k) top-k rows this way is 2-3x faster.
    """
    if not array.flags.c_contiguous:
        raise ValueError("as_items needs a C-contiguous array")
    row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    return array.reshape(array.shape[0], -1).view(np.dtype((np.void, row_bytes))).reshape(-1)


def take_items(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] for a C-contiguous array, each row moved as one item (as_items)."""
    return as_items(array)[rows].view(array.dtype).reshape((rows.size, *array.shape[1:]))


def to_padded(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, width: int,
              fill: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a flat ragged array (steps, ...) as a (len(rows), width, ...) array, right-padded
    with ``fill``, and the (len(rows), width) mask of real steps. Every row must fit."""
    lengths = offsets[rows + 1] - offsets[rows]
    mask = np.arange(width) < lengths[:, None]
    matrix = np.full((rows.size, width) + flat.shape[1:], fill, dtype=flat.dtype)
    matrix[mask] = flat[segment_gather(offsets[rows], lengths)]
    return matrix, mask
