"""Parity: the published ONNX model against Keras, and against itself resumed from a state.

The rows every check runs (the test split, a --reference file, random valid sequences), one
way to run a model on them one row length at a time, the comparison with Keras `predict`
within the stated tolerances, and the checks of the LSTM states: a run resumed from a carried
state equals the whole run, and a model that reads later steps has no state per prefix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from score.errors import EXIT_SOFTWARE, InputMissing, SeqscoreError
from score.spec import INPUT_NAME, OUTPUT_NAME, Spec, StateTensors

# Float32 rounding differs between TensorFlow's and onnxruntime's LSTM kernels and builds up
# through the recurrence: on the ragged example (2 x 64 units, 32 steps) the difference reached
# 4e-5 at step 28 with the argmax identical everywhere. So the tolerance holds as stated for the
# first TOLERANCE_STEPS steps (the default task's whole length) and grows in proportion after.
TOLERANCE_STEPS = 4
# A run resumed from a carried LSTM state must give what the whole run gives: the same kernel
# does the same arithmetic, so only float32 rounding of a differently shaped call may differ.
STATE_CARRY_TOLERANCE = 1e-6

Predict = Callable[[np.ndarray], np.ndarray]  # (batch, time) class indices -> (batch, time, classes)


class ParityError(SeqscoreError):
    """ONNX and Keras disagree beyond the stated tolerances: nothing is published.

    The model itself passed every structural check, so this is a fault in the conversion
    (tf2onnx or onnxruntime), not in the user's data or model: exit 70, like any internal error.
    """

    exit_code = EXIT_SOFTWARE


def allowed_difference(tolerance: float, steps: int) -> np.ndarray:
    """The largest |p_onnx - p_keras| allowed at each step position 0..steps-1."""
    return tolerance * np.maximum(1.0, (np.arange(steps) + 1) / TOLERANCE_STEPS)


@dataclass(frozen=True)
class ParityRows:
    """Rows the parity check runs, as class indices; ragged rows right-padded with 0."""

    indices: np.ndarray  # (rows, width) int32 class indices
    lengths: np.ndarray | None = None  # (rows,) real steps of each row; None: all fill the width

    @property
    def mask(self) -> np.ndarray | None:
        if self.lengths is None:
            return None
        return np.arange(self.indices.shape[1]) < self.lengths[:, None]


def verification_inputs(spec: Spec, artifacts: str, rows: int, seed: int) -> dict[str, ParityRows]:
    """Encoded test split and random valid sequences, as class indices.

    A variable-length model is checked on the test split's rows at their own lengths and on
    random sequences of random lengths 1..max_len.
    """
    path = os.path.join(artifacts, "test.parquet")
    if not os.path.isfile(path):
        raise InputMissing(f"{path}: not found; run `make train` first")
    test = read_rows(path, spec)
    generator = np.random.default_rng(seed)
    return {"test_split": test, "random": random_rows(spec, rows, generator)}


def read_rows(path: str, spec: Spec) -> ParityRows:
    """The input column of a Parquet file, encoded to class indices; a variable-length spec
    keeps each row at its own length (right-padded with 0 to the longest)."""
    import pyarrow.parquet as pq

    from score.arrays import to_padded
    from score.encoding import Encoder
    from score.sequences import ragged_from_list, sequences_from_list

    table = pq.read_table(path, columns=[spec.input_column])
    encoder = Encoder(spec, np.int32)
    if not spec.variable_length:
        raw = sequences_from_list(table.column(spec.input_column), spec.seq_len, spec.input_column)
        return ParityRows(encoder.encode_strict(raw))
    raw = ragged_from_list(table.column(spec.input_column), spec.input_column, spec.max_len)
    flat = encoder.encode_ragged_strict(raw)
    indices, _ = to_padded(flat, raw.offsets, np.arange(raw.rows), int(raw.lengths.max()))
    return ParityRows(indices, raw.lengths)


def random_rows(spec: Spec, rows: int, generator: np.random.Generator) -> ParityRows:
    """Random valid sequences: seq_len steps each, or of random lengths 1..max_len (padded
    with 0) for a variable-length spec."""
    if not spec.variable_length:
        return ParityRows(generator.integers(0, spec.x_classes, size=(rows, spec.seq_len), dtype=np.int32))
    lengths = generator.integers(1, spec.max_len + 1, size=rows, dtype=np.int64)
    random = generator.integers(0, spec.x_classes, size=(rows, spec.max_len), dtype=np.int32)
    random = np.where(np.arange(spec.max_len) < lengths[:, None], random, 0).astype(np.int32)
    return ParityRows(random, lengths)


def length_groups(rows: ParityRows) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(length, which rows, those rows cut to it) for each row length among ``rows``."""
    lengths = rows.lengths if rows.lengths is not None else np.full(len(rows.indices), rows.indices.shape[1])
    for length in np.unique(lengths):
        selected = np.flatnonzero(lengths == length)
        yield int(length), selected, rows.indices[selected, :length]


def run_by_length(predict: Predict, rows: ParityRows) -> np.ndarray:
    """``predict`` on each group of rows of one length, at exactly that length (no padding),
    scattered back into a (rows, width, classes) array (zeros past each row's length)."""
    if rows.lengths is None:
        return predict(rows.indices)
    output = None
    for length, selected, group in length_groups(rows):
        probabilities = predict(group)
        if output is None:
            output = np.zeros((*rows.indices.shape, probabilities.shape[-1]), np.float32)
        output[selected, :length] = probabilities
    return output


def onnx_session(model_bytes: bytes):
    """An onnxruntime session on the CPU, quiet about the optional inputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # A model wired at opset 13-14 keeps its optional inputs as initializers listed as graph
    # inputs, and onnxruntime warns that they are not folded as constants: that is the point of
    # them, not a fault. Errors still raise.
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_predictor(session) -> Predict:
    """(batch, time) class indices -> the model's probabilities, through ``session``."""

    def predict(indices: np.ndarray) -> np.ndarray:
        return session.run([OUTPUT_NAME], {INPUT_NAME: indices})[0]

    return predict


def compare(keras_probabilities: np.ndarray, onnx_probabilities: np.ndarray, near_tie: float,
            mask: np.ndarray | None = None, tolerance: float | None = None) -> dict:
    """Max absolute difference, and argmax disagreements that are not genuine near-ties, over
    the real steps (``mask``, (rows, T)) of (rows, T, classes) probabilities; with ``tolerance``
    also the worst ratio of a step's difference to what is allowed at its position."""
    rows = int(keras_probabilities.shape[0])
    by_step = np.abs(keras_probabilities - onnx_probabilities).max(axis=-1)  # (rows, T)
    if mask is not None:
        by_step = np.where(mask, by_step, 0.0)
    worst_ratio = None
    if tolerance is not None and by_step.size:
        allowed = allowed_difference(tolerance, by_step.shape[1]) if tolerance > 0 else None
        worst_ratio = (float((by_step / allowed).max()) if allowed is not None
                       else (float("inf") if by_step.max() > 0 else 0.0))
    if mask is not None:
        keras_probabilities, onnx_probabilities = keras_probabilities[mask], onnx_probabilities[mask]
    difference = float(np.abs(keras_probabilities - onnx_probabilities).max())
    disagree = keras_probabilities.argmax(-1) != onnx_probabilities.argmax(-1)
    ordered = np.sort(keras_probabilities, axis=-1)
    gap = ordered[..., -1] - ordered[..., -2] if keras_probabilities.shape[-1] > 1 else np.ones(disagree.shape)
    return {
        "rows": rows,
        "max_abs_difference": difference,
        "argmax_disagreements": int(disagree.sum()),
        "argmax_disagreements_not_near_tie": int((disagree & (gap >= near_tie)).sum()),
        "max_row_sum_error": float(np.abs(onnx_probabilities.sum(-1) - 1.0).max()),
        "max_difference_over_allowed": worst_ratio,
    }


def verify(model, model_bytes: bytes, inputs: dict[str, ParityRows], tolerance: float,
           near_tie: float, states: tuple[StateTensors, ...] = ()) -> dict:
    """onnxruntime against Keras, and, where the model exposes its LSTM states, onnxruntime
    resumed from a carried state against onnxruntime run whole.

    Ragged rows: Keras sees them right-padded to the longest, onnxruntime each length group at
    its own length, compared on the real steps; as the model is causal the two must agree, which
    also shows that padding never reaches a real step.
    """
    session = onnx_session(model_bytes)
    report = {}
    for name, rows in inputs.items():
        keras_probabilities = model.predict(rows.indices, batch_size=4096, verbose=0)
        onnx_probabilities = run_by_length(onnx_predictor(session), rows)
        report[name] = compare(keras_probabilities, onnx_probabilities, near_tie, rows.mask, tolerance)
        if rows.lengths is not None:
            report[name]["steps"] = int(rows.lengths.sum())
            report[name]["lengths"] = sorted(int(v) for v in np.unique(rows.lengths))
    failures = _keras_failures(report, tolerance)
    if states:
        report["state_carry"] = verify_state_carry(session, states, inputs)
        failures += report["state_carry"]["failures"]
    report["passed"] = not failures
    report["failures"] = failures
    return report


def _keras_failures(report: dict, tolerance: float) -> list[str]:
    failures = []
    for name, figures in report.items():
        if not figures["max_difference_over_allowed"] <= 1.0:
            failures.append(
                f"{name}: max |p_onnx - p_keras| = {figures['max_abs_difference']:.3g} > {tolerance:g} "
                f"(step t allows {tolerance:g} x max(1, (t + 1) / {TOLERANCE_STEPS}))"
            )
        if figures["argmax_disagreements_not_near_tie"]:
            failures.append(
                f"{name}: argmax differs on {figures['argmax_disagreements_not_near_tie']} step(s) "
                f"that are not near-ties"
            )
        if figures["max_row_sum_error"] > 1e-4:
            failures.append(
                f"{name}: probabilities do not sum to 1 (off by up to {figures['max_row_sum_error']:.3g}); "
                f"the model's output is not a softmax"
            )
    return failures


def refusal(parity: dict) -> str:
    """What failed: Keras parity (whatever else did), or only the state carry."""
    carry_failures = parity.get("state_carry", {}).get("failures", [])
    if len(parity["failures"]) > len(carry_failures):
        return "ONNX does not match Keras"
    return "ONNX resumed from a carried LSTM state does not match ONNX run whole"


def lengths_covered(spec: Spec, parity: dict) -> dict:
    """For a variable-length model: the row lengths the parity check ran, per set of rows."""
    if not spec.variable_length:
        return {}
    return {"lengths_covered": {name: figures["lengths"] for name, figures in parity.items()
                                if isinstance(figures, dict) and "lengths" in figures}}


def split_points(length: int) -> list[int]:
    """Where a row of ``length`` steps is cut in two: after the first step, in the middle and
    before the last (every cut, for the default's 4 steps)."""
    return sorted({1, length // 2, length - 1} & set(range(1, length)))


def run_in_two_pieces(session, states: tuple[StateTensors, ...], indices: np.ndarray,
                      split: int) -> np.ndarray:
    """Probabilities of (rows, steps) ``indices`` run as steps [0, split) and then [split, steps),
    the second run starting from every layer's final state after the first."""
    finals = [name for state in states for name in (state.final_h, state.final_c)]
    initials = [name for state in states for name in (state.initial_h, state.initial_c)]
    first, *carried = session.run([OUTPUT_NAME, *finals], {INPUT_NAME: indices[:, :split]})
    feed = {INPUT_NAME: indices[:, split:], **dict(zip(initials, carried, strict=True))}
    second = session.run([OUTPUT_NAME], feed)[0]
    return np.concatenate([first, second], axis=1)


def later_steps_difference(session, inputs: dict[str, ParityRows]) -> float:
    """The largest difference between a row's first steps run alone and the same steps of the
    whole row, at the split points: 0 for a causal model, whose step t reads steps 0..t only.

    Not a check of the conversion but of the model: one that reads later steps (go_backwards,
    a convolution over time) has no state per prefix to expose.
    """
    differences = [0.0]
    for rows in inputs.values():
        for length, _, group in length_groups(rows):
            whole = session.run([OUTPUT_NAME], {INPUT_NAME: group})[0]
            for split in split_points(length):
                first = session.run([OUTPUT_NAME], {INPUT_NAME: group[:, :split]})[0]
                differences.append(np.abs(first - whole[:, :split]).max())
    return float(np.max(differences))


def why_not_causal(model_proto, inputs: dict[str, ParityRows]) -> str | None:
    """Why the converted model's states must not be exposed, when it reads later steps."""
    difference = later_steps_difference(onnx_session(model_proto.SerializeToString()), inputs)
    if difference <= STATE_CARRY_TOLERANCE:
        return None
    return (f"a row's first steps run alone differ from the same steps of the whole row by up to "
            f"{difference:.3g}: the model reads later steps, so a prefix has no state of its own")


def verify_state_carry(session, states: tuple[StateTensors, ...],
                       inputs: dict[str, ParityRows]) -> dict:
    """Each set of rows run in two pieces with the state carried, at several split points,
    against the same rows run whole; ragged rows one length at a time, at that length.

    This is what scoring with shared prefixes relies on: a prefix's state, fed back, continues
    every sequence that starts with it exactly as a run from the start would.
    """
    report: dict = {"tolerance": STATE_CARRY_TOLERANCE}
    failures = []
    for name, rows in inputs.items():
        differences, splits, split_rows, defaults = [0.0], set(), 0, [0.0]
        for length, _, group in length_groups(rows):
            default, whole = check_default_states(session, states, group)
            defaults.append(default)
            for split in split_points(length):
                pieces = run_in_two_pieces(session, states, group, split)
                differences.append(np.abs(pieces - whole).max())
                splits.add(split)
            split_rows += len(group) if length > 1 else 0
        worst = float(np.max(differences))  # NaN if any piece gave NaN: that fails below too
        default = float(np.max(defaults))
        report[name] = {"rows": split_rows, "split_points": sorted(splits),
                        "max_abs_difference": worst, "default_states_max_abs_difference": default}
        if not worst <= STATE_CARRY_TOLERANCE:
            failures.append(
                f"{name}: max |p_pieces - p_whole| = {worst:.3g} > {STATE_CARRY_TOLERANCE:g} "
                f"(split after steps {', '.join(str(split) for split in sorted(splits))})"
            )
        if not default <= STATE_CARRY_TOLERANCE:
            failures.append(f"{name}: states left out differ from zeros fed by up to {default:.3g} "
                            f"> {STATE_CARRY_TOLERANCE:g}")
    report["passed"] = not failures
    report["failures"] = failures
    return report


def check_default_states(session, states: tuple[StateTensors, ...], indices: np.ndarray
                         ) -> tuple[float, np.ndarray]:
    """The largest difference between a run fed only ``x`` and the same run fed zeros for every
    layer's initial state, over the probabilities and the final states: 0 when a state left out
    is zeros, as the interface promises a client that feeds only ``x``. Also that run's
    probabilities: the whole run the state-carry check compares its pieces with.

    ``indices``: encoded rows (rows, steps) of the model's index type. NaN in either run gives NaN.
    """
    names = [OUTPUT_NAME, *(name for state in states for name in (state.final_h, state.final_c))]
    zeros = {name: np.zeros((1, len(indices), state.units), np.float32)
             for state in states for name in (state.initial_h, state.initial_c)}
    omitted = session.run(names, {INPUT_NAME: indices})
    fed = session.run(names, {INPUT_NAME: indices, **zeros})
    difference = float(np.max([np.abs(left - right).max() for left, right in zip(omitted, fed, strict=True)]))
    return difference, omitted[0]
