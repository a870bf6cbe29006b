"""Checks, run in onnxruntime, of the LSTM states a published model exposes (export.graph)."""

from __future__ import annotations

import numpy as np

from score.spec import INPUT_NAME, OUTPUT_NAME, StateTensors


def check_default_states(session, states: tuple[StateTensors, ...], indices: np.ndarray) -> float:
    """The largest difference between a run fed only ``x`` and the same run fed zeros for every
    layer's initial state, over the probabilities and the final states: 0 when a state left out
    is zeros, as the interface promises a client that feeds only ``x``.

    ``indices``: encoded rows (rows, steps) of the model's index type. NaN in either run gives NaN.
    """
    names = [OUTPUT_NAME, *(name for state in states for name in (state.final_h, state.final_c))]
    zeros = {name: np.zeros((1, len(indices), state.units), np.float32)
             for state in states for name in (state.initial_h, state.initial_c)}
    omitted = session.run(names, {INPUT_NAME: indices})
    fed = session.run(names, {INPUT_NAME: indices, **zeros})
    return float(np.max([np.abs(left - right).max() for left, right in zip(omitted, fed, strict=True)]))
