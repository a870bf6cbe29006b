"""The import's checks: that the source's rows are independent and whether it is causal (both
on the source, before wrapping), and that the wrapped model gives what the source gives, resumes
from a carried state as a whole run does, matches Keras `predict` for a converted Keras file,
and loads in the scoring job.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from export.graph import InterfaceError
from export.parity import (
    STATE_CARRY_TOLERANCE,
    TOLERANCE_STEPS,
    ParityRows,
    Predict,
    allowed_difference,
    onnx_predictor,
    onnx_session,
    run_by_length,
    split_points,
    verify_state_carry,
)
from export.source import SourceLayout
from score.errors import ModelError
from score.spec import Spec

PARITY_TOLERANCE = 1e-5  # max |p_published - p_source| (the same kernels run on both sides)
# A causal model's step t reads steps 0..t only: changing later steps must leave it exactly as it
# was, up to float32 rounding of a differently shaped call.
CAUSALITY_TOLERANCE = STATE_CARRY_TOLERANCE
# The converted Keras model against Keras `predict` (TensorFlow's and onnxruntime's kernels round
# differently): as for `--artifacts`, this holds over the first TOLERANCE_STEPS steps and grows
# in proportion after (export.parity.allowed_difference).
KERAS_TOLERANCE = 1e-5


# Before wrapping: the source ---------------------------------------------------------------------
def check_rows_independent(path: str, predict: Predict, layout: SourceLayout, steps: int, x_classes: int,
                           generator: np.random.Generator, rows: int = 16) -> dict:
    """Refuse a model whose rows are not independent: new values in the first row must leave
    every other row's outputs as they were.

    This is what a wrong time axis looks like: run with batch and time swapped, the recurrence
    reads the rows of a batch one after the other, and the wrapping and the causality check
    would both agree with it.
    """
    indices = generator.integers(0, x_classes, size=(rows, steps), dtype=np.int32)
    altered = indices.copy()
    altered[0] = (indices[0] + 1) % x_classes
    difference = float(np.abs(predict(altered)[1:] - predict(indices)[1:]).max())
    if not difference <= CAUSALITY_TOLERANCE:
        axis = 0 if layout.time_major else 1
        raise ModelError(
            f"{path}: changing one row of a batch changes the other rows' outputs by up to "
            f"{difference:.3g}: axis {axis} of input {layout.input_name!r} is not its time axis (pass "
            f"--time-axis {1 - axis}), or the model mixes the rows of a batch, which scoring cannot take"
        )
    return {"rows": rows, "steps": steps, "max_abs_difference": difference, "tolerance": CAUSALITY_TOLERANCE}


def check_causality(predict: Predict, layout: SourceLayout, steps: int, x_classes: int,
                    generator: np.random.Generator, rows: int = 64) -> dict:
    """Whether step t of the source reads steps 0..t only: new values after each split point
    must leave the steps before it unchanged, and, with a dynamic time axis, the first steps
    run alone must give what they give in the whole row.

    A model that reads later steps (bidirectional, reversed, attention over the whole row) has
    no state per prefix and no meaning for a shorter row: it is scored at one fixed length.
    """
    indices = generator.integers(0, x_classes, size=(rows, steps), dtype=np.int32)
    whole = predict(indices)
    changed_later, prefix_alone = [0.0], [0.0]
    splits = split_points(steps)
    for split in splits:
        altered = indices.copy()
        altered[:, split:] = generator.integers(0, x_classes, size=(rows, steps - split), dtype=np.int32)
        changed_later.append(np.abs(predict(altered)[:, :split] - whole[:, :split]).max())
        if layout.time_steps is None:
            prefix_alone.append(np.abs(predict(indices[:, :split]) - whole[:, :split]).max())
    report = {
        "rows": rows,
        "steps": steps,
        "split_points": splits,
        "later_steps_changed_max_abs_difference": float(np.max(changed_later)),
        "tolerance": CAUSALITY_TOLERANCE,
    }
    if layout.time_steps is None:
        report["prefix_alone_max_abs_difference"] = float(np.max(prefix_alone))
    report["causal"] = bool(max(np.max(changed_later), np.max(prefix_alone)) <= CAUSALITY_TOLERANCE)
    return report


# After wrapping: the published model -------------------------------------------------------------
def verify_against_source(model_bytes: bytes, inputs: dict[str, ParityRows],
                          expected: dict[str, np.ndarray], spec: Spec) -> dict:
    """The published model against the source after the declared wrapping, on each set of rows
    (ragged rows one length at a time); and a run resumed from a carried state against the
    whole run, where the states are exposed."""
    session = onnx_session(model_bytes)
    predict = onnx_predictor(session)
    report: dict = {"tolerance": PARITY_TOLERANCE}
    failures = []
    for name, rows in inputs.items():
        published = run_by_length(predict, rows)
        mask = rows.mask if rows.mask is not None else np.ones(rows.indices.shape, dtype=bool)
        difference = float(np.abs(published - expected[name])[mask].max()) if mask.any() else 0.0
        report[name] = {
            "rows": int(len(rows.indices)),
            "max_abs_difference": difference,
            "argmax_disagreements": int((published.argmax(-1) != expected[name].argmax(-1))[mask].sum()),
        }
        if rows.lengths is not None:
            report[name]["lengths"] = sorted(int(length) for length in np.unique(rows.lengths))
        if not difference <= PARITY_TOLERANCE:
            failures.append(f"{name}: max |p_published - p_source| = {difference:.3g} > {PARITY_TOLERANCE:g}")
    if spec.states:
        report["state_carry"] = verify_state_carry(session, spec.states, inputs)
        failures += report["state_carry"]["failures"]
    report["passed"] = not failures
    report["failures"] = failures
    return report


def verify_keras(model, layout: SourceLayout, inputs: dict[str, ParityRows],
                 expected: dict[str, np.ndarray]) -> dict:
    """The converted model against Keras `predict`, both after the declared wrapping, on each
    set of rows (ragged rows one length at a time), within export.parity.allowed_difference."""

    def predict(indices: np.ndarray) -> np.ndarray:
        return layout.probabilities(model.predict(layout.feed(indices), batch_size=4096, verbose=0))

    report: dict = {"tolerance": KERAS_TOLERANCE, "tolerance_steps": TOLERANCE_STEPS}
    failures = []
    for name, rows in inputs.items():
        by_step = np.abs(run_by_length(predict, rows) - expected[name]).max(axis=-1)  # (rows, T)
        if rows.mask is not None:
            by_step = np.where(rows.mask, by_step, 0.0)
        allowed = allowed_difference(KERAS_TOLERANCE, by_step.shape[1])
        difference = float(by_step.max()) if by_step.size else 0.0
        report[name] = {"rows": int(len(rows.indices)), "max_abs_difference": difference}
        if not (by_step <= allowed).all():  # NaN fails too
            failures.append(f"keras {name}: max |p_onnx - p_keras| = {difference:.3g}, above "
                            f"{KERAS_TOLERANCE:g} (growing after step {TOLERANCE_STEPS}) at some step")
    report["passed"] = not failures
    report["failures"] = failures
    return report


def check_scorer_loads(model_bytes: bytes) -> None:
    """Load the wrapped model as the scoring job will, so that it is never published unusable."""
    from score.model import load

    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.onnx")
        with open(path, "wb") as handle:
            handle.write(model_bytes)
        try:
            load(path)
        except ModelError as error:
            message = str(error).replace(path, "the wrapped model")
            raise InterfaceError(f"the scoring job refuses the wrapped model: {message}") from None
