"""The run's result cache: top-k results of the sequences already scored, across batches."""

from __future__ import annotations

import numpy as np

from score import ragged
from score.arrays import segment_gather, to_padded
from score.model import Scorer
from score.options import ScoreOptions


class ResultCache:
    """Top-k results of the sequences already scored in a run, looked up by sequence key.

    The model is deterministic, so a sequence seen in an earlier batch needs no second run:
    on data like the default (11**4 possible sequences) every batch after the first is served
    from here. Memory is bounded by ``max_bytes``: once full the cache stops growing. A cache
    that already holds results but serves under MIN_HIT_RATE of a batch switches itself off and
    lets its memory go: data that does not repeat would only pay for look-ups and inserts.
    """

    MIN_HIT_RATE = 0.05

    def __init__(self, steps: int, k: int, classes: int, max_bytes: int = 32 << 20,
                 state_width: int = 0) -> None:
        self.index_dtype = np.int16 if classes <= np.iinfo(np.int16).max else np.int32
        entry_bytes = 8 + steps * k * (np.dtype(self.index_dtype).itemsize + 4) + 4 * state_width
        self.capacity = max_bytes // entry_bytes
        self.keys = np.empty(0, dtype=np.int64)  # sorted
        self.best = np.empty((0, steps, k), dtype=self.index_dtype)
        self.probabilities = np.empty((0, steps, k), dtype=np.float32)
        # A run with --key also keeps the state each sequence ends in (every state tensor's
        # values side by side), which the next run of its key starts from.
        self.states = np.empty((0, state_width), dtype=np.float32)
        self.enabled = self.capacity > 0

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key: whether it is cached, and where."""
        if not self.enabled or self.keys.size == 0:
            return np.zeros(keys.size, dtype=bool), np.zeros(keys.size, dtype=np.intp)
        slot = np.searchsorted(self.keys, keys).clip(max=self.keys.size - 1)
        return self.keys[slot] == keys, slot

    def get(self, slot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.best[slot].astype(np.intp), self.probabilities[slot]

    def add(self, keys: np.ndarray, best: np.ndarray, probabilities: np.ndarray,
            states: np.ndarray | None = None) -> None:
        """Remember new results (keys not cached yet), as many as there is room for; ``states``
        (rows, state width) with a cache that keeps them."""
        room = self.capacity - self.keys.size
        if not self.enabled or room <= 0 or keys.size == 0:
            return
        keys, best, probabilities = keys[:room], best[:room], probabilities[:room]
        merged = np.concatenate([self.keys, keys])
        order = np.argsort(merged, kind="stable")
        self.keys = merged[order]
        self.best = np.concatenate([self.best, best.astype(self.index_dtype)])[order]
        self.probabilities = np.concatenate([self.probabilities, probabilities])[order]
        if self.states.shape[1]:
            self.states = np.concatenate([self.states, states[:room]])[order]

    def serve(self, keys: np.ndarray, rows: np.ndarray, offsets: np.ndarray, best: np.ndarray,
              probabilities: np.ndarray, finals: list[np.ndarray] | None = None) -> np.ndarray:
        """Fill the flat top-k of the ``rows`` (of ``offsets``) it holds, and with ``finals`` the
        state each ends in (a cache that keeps states); return the rows left to run."""
        lengths = offsets[rows + 1] - offsets[rows]
        found, slot = self.lookup(keys[rows])
        hit = found & (keys[rows] >= 0)
        if hit.any():
            cached_best, cached_probabilities = self.get(slot[hit])
            mask = np.arange(self.best.shape[1]) < lengths[hit][:, None]
            destination = segment_gather(offsets[rows[hit]], lengths[hit])
            best[destination] = cached_best[mask]
            probabilities[destination] = cached_probabilities[mask]
            start = 0
            for final in finals or []:
                final[rows[hit]] = self.states[slot[hit], start : start + final.shape[1]]
                start += final.shape[1]
        self.settle(float(hit.mean()) if rows.size else 1.0)
        return rows[~hit]

    def remember(self, keys: np.ndarray, rows: np.ndarray, offsets: np.ndarray, best: np.ndarray,
                 probabilities: np.ndarray, finite: np.ndarray,
                 finals: list[np.ndarray] | None = None) -> None:
        """Keep the results of the ``rows`` just run (those with a key and a finite output), and
        with ``finals`` the state each ends in."""
        if not self.enabled:
            return
        kept = rows[finite[rows] & (keys[rows] >= 0)]
        if kept.size:
            width = self.best.shape[1]
            states = np.concatenate([final[kept] for final in finals], axis=1) if finals else None
            self.add(keys[kept], to_padded(best, offsets, kept, width)[0],
                     to_padded(probabilities, offsets, kept, width)[0], states)

    def settle(self, hit_rate: float) -> None:
        """After a look-up: a cache that held results but served under MIN_HIT_RATE switches off."""
        if self.enabled and self.keys.size and hit_rate < self.MIN_HIT_RATE:
            self.enabled = False
            self.keys = self.keys[:0]
            self.best = self.best[:0]
            self.probabilities = self.probabilities[:0]
            self.states = self.states[:0]


def ragged_key_length(scorer: Scorer, options: ScoreOptions) -> int:
    """The longest row of any length that gets a key (and a place in the run's cache)."""
    return min(ragged.key_length(scorer.spec.x_classes), options.length_limit(scorer))


def new_cache(scorer: Scorer, options: ScoreOptions, states: bool = False) -> ResultCache | None:
    """The run's result cache, sized for the rows this model and these options key; None
    without de-duplication (no keys) or with the cache switched off (ScoreOptions.cache).
    ``states``: also keep the state each sequence ends in (a run with --key)."""
    if not (options.dedup and options.cache):
        return None
    spec = scorer.spec
    if options.ragged(scorer):
        width = sum(scorer.state_units()) if states else 0
        return ResultCache(ragged_key_length(scorer, options), options.run_k(scorer), spec.y_classes,
                           state_width=width)
    steps = len(options.input_columns) if options.input_columns is not None else spec.seq_len
    return ResultCache(steps, options.run_k(scorer), spec.y_classes)
