"""The labels of a run with --labels: one true y value per step of each row, read beside the
sequences, checked, and turned into each step's true-class probability and rank.

A row whose sequence is valid but whose labels are not (another length, a value outside the
model's y values, a null) is invalid for its labels; it never counts in any quality figure.
The true class's probability comes from the full distribution, not only the top-k: a run with
labels asks the model for every class, best first (ScoreOptions.run_k), so that de-duplication,
the run's cache and prefix sharing keep working unchanged; the rank of each step's label is
read from there, and only the top K travel on to the output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from score.arrays import segment_gather
from score.encoding import LABEL_LENGTH, NULL_LABEL, REASONS, UNKNOWN_LABEL, VALID
from score.errors import InvalidInput, InvalidRow
from score.model import Scorer
from score.quality import QualityStats
from score.sequences import (
    RaggedSequences,
    column_type_error,
    integer_list_value_type,
    ragged_from_list,
)

LABEL_PROB = "label_prob"  # output column: per step, the probability of the true class
CORRECT = "correct"  # output column: per step, whether the top-1 class is the true class
LABEL_FIELDS = (pa.field(LABEL_PROB, pa.list_(pa.float32())), pa.field(CORRECT, pa.list_(pa.bool_())))


def check_schema(schema: pa.Schema, column: str, sequence_columns: tuple[str, ...]) -> None:
    """Refuse (InvalidInput) a --labels column that is missing or cannot hold integer labels,
    and an input that already has a column the labels add."""
    if column in sequence_columns:
        raise InvalidInput(f"--labels {column!r} names the sequence column; name the column of "
                           f"true y values (one per step)")
    if schema.get_field_index(column) < 0:
        found = ", ".join(schema.names) or "none"
        if schema.names.count(column) > 1:
            raise InvalidInput(f"column {column!r} appears more than once in the input")
        raise InvalidInput(f"--labels column {column!r} not found (the file has: {found})")
    data_type = schema.field(column).type
    if integer_list_value_type(data_type) is None:
        raise InvalidInput(f"--labels: {column_type_error(column, data_type, 'list')}")
    for field_ in LABEL_FIELDS:
        if field_.name in schema.names:
            raise InvalidInput(f"the input already has a column named {field_.name!r}, which "
                               f"--labels adds; rename or drop it")


@dataclass
class Labels:
    """A batch's labels, checked against its sequences."""

    raw: RaggedSequences  # the label column, flat (rows longer than their sequence not gathered)
    classes: np.ndarray  # class index of each gathered label (0 where it is not one)
    reasons: np.ndarray  # (rows,) int8: VALID, or why the row's labels are unusable
    positions: np.ndarray  # (rows,) int64: the first offending label (element-level reasons)
    sequence_column: str
    sequence_lengths: np.ndarray  # (rows,) the sequences' own lengths

    def mark(self, reasons: np.ndarray) -> None:
        """Give each row valid by its sequence but not by its labels its label reason."""
        bad = (reasons == VALID) & (self.reasons != VALID)
        reasons[bad] = self.reasons[bad]

    def truth(self, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The true class of every step of ``rows`` (each of ``lengths`` steps), flat."""
        if rows.size == self.raw.rows and self.classes.size == int(lengths.sum()):
            return self.classes  # every row, every label: as they lie
        return self.classes[segment_gather(self.raw.offsets[rows], lengths)]

    def messages(self, rows: np.ndarray, scorer: Scorer) -> pa.StringArray:
        """What is wrong with the labels of each of ``rows`` (each has a label reason), built
        column-wise by Arrow kernels like the encoder's messages."""
        column, sequences = self.raw.column, self.sequence_column
        reasons, positions = self.reasons[rows], self.positions[rows]

        def text(values: np.ndarray) -> pa.Array:
            return pa.array(values).cast(pa.string())

        def join(*parts: pa.Array | str) -> pa.Array:
            return pc.binary_join_element_wise(*parts, "")

        picked = np.zeros(rows.size, dtype=np.int64)
        if self.raw.values.size:  # the offending value of an unknown label
            picked = self.raw.values[np.where(reasons == UNKNOWN_LABEL, self.raw.offsets[rows] + positions, 0)]
        label = join(column, "[", text(positions), "]")
        unknown = join(label, " = ", text(picked),
                       f" is not one of the model's y values ({scorer.spec.describe_y()})")
        length = join(f"{column} has ", text(self.raw.lengths[rows]), f" labels but {sequences} has ",
                      text(self.sequence_lengths[rows]), " steps; expected one label per step")
        whole = np.full(rows.size, f"{column} is null; expected one label per step of {sequences}",
                        dtype=object)
        null = pc.if_else(pa.array(self.raw.row_null[rows]), pa.array(whole, pa.string()),
                          join(label, " is null"))
        choices = pa.StructArray.from_arrays(
            [pa.array(reasons == code) for code in (LABEL_LENGTH, UNKNOWN_LABEL, NULL_LABEL)],
            names=["length", "unknown", "null"])
        return pc.case_when(choices, length, unknown, null)

    def raise_first(self, reasons: np.ndarray, scorer: Scorer) -> None:
        """--on-invalid error: raise InvalidRow for the first invalid row if it is invalid for
        its labels (a row invalid for its sequence is the encoder's to report)."""
        bad = np.flatnonzero(reasons)
        if bad.size and int(reasons[bad[0]]) in (LABEL_LENGTH, UNKNOWN_LABEL, NULL_LABEL):
            row = int(bad[0])
            message = self.messages(np.array([row]), scorer)[0].as_py()
            raise InvalidRow(row, REASONS[int(reasons[row])], message)


def read(batch: pa.RecordBatch, column: str, sequence_column: str, sequence_lengths: np.ndarray,
         scorer: Scorer) -> Labels:
    """Read and check a batch's label column against its sequences' lengths."""
    rows = sequence_lengths.size
    limit = max(int(sequence_lengths.max()) if rows else 1, 1)
    raw = ragged_from_list(batch.column(column), column, limit)
    classes, known = scorer.encoder.lookup_y(raw.values)
    reasons = np.zeros(rows, dtype=np.int8)
    positions = np.zeros(rows, dtype=np.int64)
    unknown = ~known if raw.element_null is None else ~known & ~raw.element_null
    # Reverse order of precedence: the first problem of a row is the one it is refused for.
    for code, flags in ((UNKNOWN_LABEL, unknown), (NULL_LABEL, raw.element_null)):
        if flags is None or not flags.any():
            continue
        where = np.flatnonzero(flags)
        row_of = np.searchsorted(raw.offsets, where, side="right") - 1  # each offending label's row
        offending, first = np.unique(row_of, return_index=True)
        reasons[offending] = code
        positions[offending] = where[first] - raw.offsets[offending]
    wrong_length = ~raw.row_null & (raw.lengths != sequence_lengths)
    reasons[wrong_length] = LABEL_LENGTH
    reasons[raw.row_null] = NULL_LABEL
    positions[(reasons == LABEL_LENGTH) | raw.row_null] = 0
    return Labels(raw, classes.astype(np.int64, copy=False), reasons, positions, sequence_column,
                  np.asarray(sequence_lengths, dtype=np.int64))


@dataclass
class Resolved:
    """Each labelled step's true class, where it ranks (up to K) and its probability (flat,
    row order)."""

    truth: np.ndarray  # (steps,) class index
    rank: np.ndarray  # (steps,) int8: 0 = the top-1 class, ..., K = not among the top K
    probability: np.ndarray  # (steps,) float32

    @property
    def correct(self) -> np.ndarray:
        return self.rank == 0


def resolve(top_best: np.ndarray, top_probabilities: np.ndarray, truth: np.ndarray,
            every_best: np.ndarray, every_probability: np.ndarray,
            locate: Callable[[np.ndarray], np.ndarray] | None = None) -> Resolved:
    """Where each labelled step's true class stands among its top K, and its probability.

    ``top_best`` and ``top_probabilities``: (labelled steps, K), best first, in the labelled
    steps' order; ``every_best`` and ``every_probability``: (computed steps, every class) as
    the model gave them; ``locate``: the computed step of given labelled steps (None: the
    same). A true class among the top K takes its probability from there; only the others
    look theirs up among every class.
    """
    top_k = top_best.shape[1]
    rank = np.full(truth.size, top_k, dtype=np.int8)
    for position in reversed(range(top_k)):
        rank[top_best[:, position] == truth] = position
    # Each step's probability at its rank (the last of the top K where the class is not among
    # them: replaced below), taken flat in one pass.
    where = np.minimum(rank, top_k - 1).astype(np.intp)
    where += np.arange(0, truth.size * top_k, top_k, dtype=np.intp)
    probability = np.ascontiguousarray(top_probabilities, dtype=np.float32).reshape(-1)[where]
    outside = np.flatnonzero(rank == top_k)
    if outside.size:
        computed = outside if locate is None else locate(outside)
        column = (every_best[computed] == truth[outside, None]).argmax(axis=1)
        probability[outside] = every_probability[computed, column]
    return Resolved(truth, rank, probability)


def measure(scorer: Scorer, top_k: int, resolved: Resolved, best: np.ndarray,
            confidence: np.ndarray, row_steps: np.ndarray | int, positions: np.ndarray | None = None,
            lengths: np.ndarray | None = None) -> QualityStats:
    """A batch's QualityStats from its resolved labels and its top-1 classes and probabilities
    (QualityStats.measure says what ``row_steps``, ``positions`` and ``lengths`` are)."""
    spec = scorer.spec
    return QualityStats.measure(truth=resolved.truth, rank=resolved.rank,
                                label_probability=resolved.probability, confidence=confidence,
                                predicted=best, row_steps=row_steps, positions=positions,
                                lengths=lengths, top_k=top_k, seq_len=spec.seq_len,
                                classes=spec.y_classes)
