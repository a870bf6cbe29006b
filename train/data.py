"""Training data: the embedded default, Parquet files, and the question's plain-text form.

Every reader returns two int64 matrices of raw values, already checked: no nulls, no empty
sequence, x and y of equal length in every row. Rows of one length fill the matrices exactly;
rows of different lengths (ragged data) are right-padded with 0 to the longest row, and
``Dataset.lengths`` says how many steps of each row are real. Value sets and class indices are
the encoding contract's business (score.encoding), applied afterwards.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from score import atomic, storage
from score.arrays import offsets_from_lengths, to_padded
from score.errors import InvalidInput, OutputError, first_line
from score.sequences import (
    RaggedSequences,
    column_type_error,
    integer_list_value_type,
    ragged_from_list,
)
from score.spec import Spec

DEFAULT_ROWS = 10_000
DEFAULT_SEQ_LEN = 4
DEFAULT_X_VALUES = tuple(range(11))  # 0..10: 11 classes, not 10
DEFAULT_Y_VALUES = tuple(range(25))  # 0..24: 25 classes, not 24
RAGGED_ROWS = 10_000
RAGGED_MAX_LEN = 32  # the ragged example's lengths are uniform over 1..32
EXAMPLES = ("default", "ragged")  # the embedded datasets `--example` chooses from


@dataclass(frozen=True)
class Dataset:
    """Raw sequences and where they came from.

    Ragged rows are right-padded with 0 to the longest; ``lengths`` counts each row's real steps.
    Rows that all share one length are a fixed-length dataset: ``lengths`` is then None.
    """

    x: np.ndarray  # (rows, steps) int64 raw input values, 0 past a row's length
    y: np.ndarray  # (rows, steps) int64 raw target values, 0 past a row's length
    source: str  # what a message names: a file, two files, or 'the embedded default'
    lengths: np.ndarray | None = None  # (rows,) int64 real steps per row; None: all are real

    def __post_init__(self) -> None:
        if self.lengths is not None:
            lengths = np.asarray(self.lengths, dtype=np.int64)
            # One length for every row that fills the matrix: the fixed-length case, as before.
            fixed = lengths.size and (lengths == self.x.shape[1]).all()
            object.__setattr__(self, "lengths", None if fixed else lengths)

    @property
    def variable_length(self) -> bool:
        return self.lengths is not None

    @property
    def seq_len(self) -> int:
        """The sequence length: the only one, or the longest of a ragged dataset."""
        return int(self.x.shape[1])

    @property
    def row_lengths(self) -> np.ndarray:
        """(rows,) real steps of each row."""
        if self.lengths is None:
            return np.full(self.x.shape[0], self.x.shape[1], dtype=np.int64)
        return self.lengths

    @property
    def mask(self) -> np.ndarray:
        """(rows, steps) bool: which steps are real (not padding)."""
        return np.arange(self.x.shape[1]) < self.row_lengths[:, None]

    def fingerprint(self) -> str:
        """sha256 of the values and their shape: the same data gives the same fingerprint."""
        digest = hashlib.sha256()
        if self.lengths is None:  # unchanged for fixed-length data: older metrics still match
            digest.update(f"{self.x.shape}|{self.y.shape}".encode())
            digest.update(np.ascontiguousarray(self.x, dtype="<i8").tobytes())
            digest.update(np.ascontiguousarray(self.y, dtype="<i8").tobytes())
            return digest.hexdigest()
        mask = self.mask
        digest.update(f"ragged|{self.x.shape[0]}".encode())
        digest.update(np.ascontiguousarray(self.lengths, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.x[mask], dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.y[mask], dtype="<i8").tobytes())
        return digest.hexdigest()


def default_dataset(rows: int = DEFAULT_ROWS, seed: int = 0) -> Dataset:
    """x uniform over 0..10 for 4 steps; y_t = (x_0 + ... + x_t) mod 25 (it needs the past)."""
    generator = np.random.default_rng(seed)
    x = generator.integers(0, 11, size=(rows, DEFAULT_SEQ_LEN), dtype=np.int64)
    y = np.cumsum(x, axis=1) % 25
    return Dataset(x, y, _embedded("the embedded default", seed))


def ragged_dataset(rows: int = RAGGED_ROWS, seed: int = 0, max_len: int = RAGGED_MAX_LEN) -> Dataset:
    """The default's rule on rows of lengths uniform over 1..max_len: x in 0..10, y_t = (x_0 +
    ... + x_t) mod 25."""
    generator = np.random.default_rng(seed)
    lengths = generator.integers(1, max_len + 1, size=rows, dtype=np.int64)
    real = np.arange(max_len) < lengths[:, None]
    x = np.where(real, generator.integers(0, 11, size=(rows, max_len), dtype=np.int64), 0)
    y = np.where(real, np.cumsum(x, axis=1) % 25, 0)
    return Dataset(x, y, _embedded("the embedded ragged example", seed), lengths)


def example_dataset(name: str, seed: int = 0) -> Dataset:
    """One of the embedded EXAMPLES by name; another seed draws fresh rows by the same rule."""
    return ragged_dataset(seed=seed) if name == "ragged" else default_dataset(seed=seed)


def _embedded(name: str, seed: int) -> str:
    """What a message calls an embedded dataset: seed 0 is the one training uses."""
    return name if seed == 0 else f"{name} (seed {seed})"


def to_table(dataset: Dataset) -> pa.Table:
    """The dataset as a Parquet-ready table with list<int64> columns x and y (ragged kept)."""
    lengths = dataset.lengths
    return pa.table({"x": list_column(dataset.x, lengths), "y": list_column(dataset.y, lengths)})


def list_column(values: np.ndarray, lengths: np.ndarray | None = None) -> pa.Array:
    """A list array of the rows of a (rows, steps) matrix, each cut to its length if given."""
    rows, steps = values.shape
    if lengths is None:
        offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * steps)
        return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))
    offsets = offsets_from_lengths(lengths)
    real = np.arange(steps) < np.asarray(lengths)[:, None]
    return pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values[real])).cast(
        pa.list_(pa.int64())
    )


def write_parquet(dataset: Dataset, path: str) -> None:
    """Write the dataset to a local Parquet file, making its folder first (`data/`, say):
    the whole file or none (score.atomic); a path that cannot be written is an OutputError."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic.AtomicFile(path) as staged:
            pq.write_table(to_table(dataset), staged.temporary)
            atomic.fsync_file(staged.temporary)
            staged.commit()
    except OSError as error:
        raise OutputError(f"{path}: cannot write the dataset ({first_line(error)})") from None


# Parquet --------------------------------------------------------------------------------------
_NO_LIMIT = np.iinfo(np.int64).max  # training reads rows of every length


def _row_of(raw: RaggedSequences, elements: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and position in the row of flat element numbers."""
    rows = np.searchsorted(raw.offsets, elements, side="right") - 1
    return rows, elements - raw.offsets[rows]


def _first_problem(raw: RaggedSequences) -> tuple[int, str] | None:
    """The first row that is null, empty, or holds a null element."""
    empty = ~raw.row_null & (raw.lengths == 0)
    element_row = np.zeros(raw.rows, dtype=bool)
    first_position = np.zeros(raw.rows, dtype=np.int64)
    if raw.element_null is not None:
        rows, positions = _row_of(raw, np.flatnonzero(raw.element_null))
        unique_rows, first = np.unique(rows, return_index=True)
        element_row[unique_rows] = True
        first_position[unique_rows] = positions[first]
    bad = raw.row_null | empty | element_row
    if not bad.any():
        return None
    row = int(np.flatnonzero(bad)[0])
    if raw.row_null[row]:
        return row, f"{raw.column} is null"
    if empty[row]:
        return row, f"{raw.column} is an empty list; expected a sequence of at least one value"
    return row, f"{raw.column}[{int(first_position[row])}] is null"


def _first_mismatch(x_raw: RaggedSequences, y_raw: RaggedSequences) -> tuple[int, str] | None:
    """The first row whose x and y (both present) have different lengths."""
    usable = ~x_raw.row_null & ~y_raw.row_null
    mismatch = usable & (x_raw.lengths != y_raw.lengths)
    if not mismatch.any():
        return None
    row = int(np.flatnonzero(mismatch)[0])
    return row, (
        f"{x_raw.column} has {int(x_raw.lengths[row])} values but {y_raw.column} has "
        f"{int(y_raw.lengths[row])}"
    )


def _as_int64(raw: RaggedSequences, source: str) -> np.ndarray:
    """The flat values as int64; an unsigned value beyond int64 is refused, never wrapped."""
    values = raw.values
    if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
        element = int(np.flatnonzero(values > np.iinfo(np.int64).max)[0])
        rows, positions = _row_of(raw, np.array([element]))
        raise InvalidInput(
            f"{source}: column {raw.column!r}, row {int(rows[0])}: {raw.column}[{int(positions[0])}] "
            f"= {values[element]} does not fit in a signed 64-bit integer"
        )
    return values.astype(np.int64)


def read_parquet(path: str, x_column: str = "x", y_column: str = "y") -> Dataset:
    """Read two list-of-integer columns; any list type, integer width and writer's nesting.

    Rows may have different lengths (len(x_i) == len(y_i) in every row); a file whose rows all
    share one length is a fixed-length dataset, exactly as before.
    """
    table = _read_table(path)
    for column in (x_column, y_column):
        if column not in table.column_names:
            found = ", ".join(table.column_names) or "none"
            raise InvalidInput(f"{path}: column {column!r} not found (the file has: {found})")
        if integer_list_value_type(table.schema.field(column).type) is None:
            error = column_type_error(column, table.schema.field(column).type, "list")
            raise InvalidInput(f"{path}: {error}")
    if table.num_rows == 0:
        raise InvalidInput(f"{path}: the file has no rows")

    # Flat values and offsets of every row, vectorised; then the first problem of any kind.
    x_raw = ragged_from_list(table.column(x_column), x_column, _NO_LIMIT)
    y_raw = ragged_from_list(table.column(y_column), y_column, _NO_LIMIT)
    problems = []
    for raw, problem in ((x_raw, _first_problem(x_raw)), (y_raw, _first_problem(y_raw)),
                         (y_raw, _first_mismatch(x_raw, y_raw))):
        if problem:
            problems.append((problem[0], raw.column, problem[1]))
    if problems:
        row, column, detail = min(problems, key=lambda problem: problem[0])  # x first on a tie
        raise InvalidInput(f"{path}: column {column!r}, row {row}: {detail}")

    x_values, y_values = _as_int64(x_raw, path), _as_int64(y_raw, path)
    rows = np.arange(x_raw.rows)
    width = int(x_raw.lengths.max())
    x, _ = to_padded(x_values, x_raw.offsets, rows, width)
    y, _ = to_padded(y_values, y_raw.offsets, rows, width)
    return Dataset(x, y, path, x_raw.lengths)


def _read_table(path: str) -> pa.Table:
    source = storage.open_input(path)
    try:
        if source.size() == 0:
            raise InvalidInput(f"{path}: the file is empty (0 bytes); expected a Parquet file")
        return pq.read_table(
            source,
            thrift_string_size_limit=64 << 20,
            thrift_container_size_limit=1 << 20,
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowMemoryError) as error:
        raise InvalidInput(f"{path}: not a readable Parquet file ({_reader_message(error)})") from None
    except OSError as error:
        if getattr(error, "errno", None) is None:
            raise InvalidInput(f"{path}: not a readable Parquet file ({_reader_message(error)})") from None
        raise storage.read_error(path, error) from None
    finally:
        source.close()


def _reader_message(error: BaseException) -> str:
    line = first_line(error)
    # Arrow names the in-memory source, which says nothing to the person who passed a path.
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", line)


# Plain text -------------------------------------------------------------------------------------
def _read_text_rows(path: str) -> list[list[int]]:
    """One list of integers per line; lines may differ in length, none may be empty."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise storage.read_error(path, error) from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InvalidInput(f"{path}: the file is empty; expected one sequence per line")
    rows = []
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        try:
            values = [int(token) for token in tokens]
        except ValueError:
            token = next(t for t in tokens if not _is_int(t))
            raise InvalidInput(
                f"{path}: line {number}: {token!r} is not an integer; expected whitespace-"
                f"separated integers"
            ) from None
        if not values:
            raise InvalidInput(f"{path}: line {number} is empty; expected a sequence")
        rows.append(values)
    return rows


def _padded(path: str, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The rows right-padded with 0 into an int64 matrix, and their lengths."""
    lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    try:
        flat = np.fromiter((value for row in rows for value in row), dtype=np.int64,
                           count=int(lengths.sum()))
    except OverflowError:
        number, value = next(
            (number, value)
            for number, values in enumerate(rows, start=1)
            for value in values
            if not _INT64_MIN <= value <= _INT64_MAX
        )
        raise InvalidInput(
            f"{path}: line {number}: {value} does not fit in a signed 64-bit integer"
        ) from None
    offsets = offsets_from_lengths(lengths)
    matrix, _ = to_padded(flat, offsets, np.arange(lengths.size), int(lengths.max()))
    return matrix, lengths


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def read_text(x_path: str, y_path: str) -> Dataset:
    """The question's form: two files of whitespace-separated integers, one sequence a line.

    Lines may differ in length, as long as each y line is as long as its x line.
    """
    x_rows, y_rows = _read_text_rows(x_path), _read_text_rows(y_path)
    x, x_lengths = _padded(x_path, x_rows)
    y, y_lengths = _padded(y_path, y_rows)
    if x_lengths.size != y_lengths.size:
        raise InvalidInput(
            f"{x_path} has {x_lengths.size} lines but {y_path} has {y_lengths.size}; "
            f"expected one y line for each x line"
        )
    mismatch = np.flatnonzero(x_lengths != y_lengths)
    if mismatch.size:
        row = int(mismatch[0])
        raise InvalidInput(
            f"{y_path}: line {row + 1}: {y_lengths[row]} values but {x_path} line {row + 1} has "
            f"{x_lengths[row]}; x and y sequences must have the same length"
        )
    return Dataset(x, y, f"{x_path} + {y_path}", x_lengths)


# Value sets ---------------------------------------------------------------------------------------
MAX_CLASSES = 10_000  # an inferred value set beyond this is almost surely codes, not a range


def infer_spec(
    dataset: Dataset,
    x_values: tuple[int, ...] | None = None,
    y_values: tuple[int, ...] | None = None,
) -> Spec:
    """The spec: given value sets, or the full integer range min..max of each column."""

    mask = dataset.mask  # padding is not data: it neither widens a value set nor breaks one

    def full_range(column: str, values: np.ndarray) -> tuple[int, ...]:
        values = values[mask]
        low, high = int(values.min()), int(values.max())
        if high - low + 1 > MAX_CLASSES:
            # One class per integer in min..max: sparse codes would make a huge softmax.
            raise InvalidInput(
                f"{dataset.source}: column {column!r} spans {low}..{high}, "
                f"{high - low + 1} classes as a full range (more than {MAX_CLASSES}); "
                f"list the values that occur with --{column}-values, e.g. 1,20,300"
            )
        return tuple(range(low, high + 1))

    lengths = dataset.row_lengths
    spec = Spec(
        x_values=x_values or full_range("x", dataset.x),
        y_values=y_values or full_range("y", dataset.y),
        seq_len=dataset.seq_len,  # the longest row, for a variable-length model
        min_len=int(lengths.min()) if dataset.variable_length else None,
    )
    for column, values, allowed in (("x", dataset.x, spec.x_values), ("y", dataset.y, spec.y_values)):
        outside = ~np.isin(values, np.asarray(allowed, dtype=np.int64)) & mask
        if outside.any():
            row, position = (int(i) for i in np.argwhere(outside)[0])
            raise InvalidInput(
                f"{dataset.source}: column {column!r}, row {row}: {column}[{position}] = "
                f"{values[row, position]} is not in --{column}-values "
                f"{spec.describe_x() if column == 'x' else spec.describe_y()}"
            )
    return spec


@dataclass(frozen=True)
class Split:
    """Row numbers of the train, validation and test parts."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split(rows: int, seed: int, validation: float = 0.1, test: float = 0.1) -> Split:
    """A seeded shuffle cut into train / validation / test (80/10/10 by default)."""
    test_rows = round(rows * test)
    validation_rows = round(rows * validation)
    if min(test_rows, validation_rows) < 1 or rows - test_rows - validation_rows < 1:
        raise InvalidInput(
            f"only {rows} rows: the {1 - validation - test:.0%}/{validation:.0%}/{test:.0%} "
            f"split needs at least one row in each part; provide at least "
            f"{int(np.ceil(1 / min(validation, test)))} rows"
        )
    order = np.random.default_rng(seed).permutation(rows)
    return Split(
        train=np.sort(order[test_rows + validation_rows :]),
        validation=np.sort(order[test_rows : test_rows + validation_rows]),
        test=np.sort(order[:test_rows]),
    )
