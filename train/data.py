"""Training data: the embedded default, Parquet files, and the question's plain-text form.

Every reader returns two int64 matrices (rows, seq_len) of raw values, already checked: no
nulls, one sequence length, x and y of equal length in every row. Value sets and class indices
are the encoding contract's business (score.encoding), applied afterwards.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from score import storage
from score.encoding import (
    RawSequences,
    column_type_error,
    integer_list_value_type,
    sequences_from_list,
)
from score.errors import InvalidInput
from score.spec import Spec

DEFAULT_ROWS = 10_000
DEFAULT_SEQ_LEN = 4
DEFAULT_X_VALUES = tuple(range(11))  # 0..10: 11 classes, not 10
DEFAULT_Y_VALUES = tuple(range(25))  # 0..24: 25 classes, not 24


@dataclass(frozen=True)
class Dataset:
    """Raw sequences and where they came from."""

    x: np.ndarray  # (rows, seq_len) int64 raw input values
    y: np.ndarray  # (rows, seq_len) int64 raw target values
    source: str  # what a message names: a file, two files, or 'the embedded default'

    @property
    def seq_len(self) -> int:
        return int(self.x.shape[1])

    def fingerprint(self) -> str:
        """sha256 of the values and their shape: the same data gives the same fingerprint."""
        digest = hashlib.sha256()
        digest.update(f"{self.x.shape}|{self.y.shape}".encode())
        digest.update(np.ascontiguousarray(self.x, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(self.y, dtype="<i8").tobytes())
        return digest.hexdigest()


def default_dataset(rows: int = DEFAULT_ROWS, seed: int = 0) -> Dataset:
    """x uniform over 0..10 for 4 steps; y_t = (x_0 + ... + x_t) mod 25 (it needs the past)."""
    generator = np.random.default_rng(seed)
    x = generator.integers(0, 11, size=(rows, DEFAULT_SEQ_LEN), dtype=np.int64)
    y = np.cumsum(x, axis=1) % 25
    return Dataset(x, y, "the embedded default")


def to_table(dataset: Dataset) -> pa.Table:
    """The dataset as a Parquet-ready table with list<int64> columns x and y."""
    return pa.table({"x": list_column(dataset.x), "y": list_column(dataset.y)})


def list_column(values: np.ndarray) -> pa.Array:
    rows, steps = values.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * steps)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))


def write_parquet(dataset: Dataset, path: str) -> None:
    pq.write_table(to_table(dataset), path)


# Parquet --------------------------------------------------------------------------------------
def _first_problem(raw: RawSequences, seq_len: int) -> tuple[int, str] | None:
    """The first row that is null, of the wrong length, or holds a null element."""
    bad_null = raw.row_null
    bad_length = (raw.lengths != seq_len) & ~raw.row_null
    bad_element = raw.element_null.any(axis=1) & ~bad_null & ~bad_length
    bad = bad_null | bad_length | bad_element
    if not bad.any():
        return None
    row = int(np.flatnonzero(bad)[0])
    if bad_null[row]:
        return row, f"{raw.column} is null"
    if bad_length[row]:
        return row, (
            f"{raw.column} has {int(raw.lengths[row])} values; expected {seq_len} "
            f"like the first row"
        )
    position = int(raw.element_null[row].argmax())
    return row, f"{raw.column}[{position}] is null"


def _as_int64(raw: RawSequences, source: str) -> np.ndarray:
    values = raw.values
    if values.dtype == np.uint64 and values.size and values.max() > np.iinfo(np.int64).max:
        row, position = np.argwhere(values > np.iinfo(np.int64).max)[0]
        raise InvalidInput(
            f"{source}: column {raw.column!r}, row {row}: {raw.column}[{position}] = "
            f"{values[row, position]} does not fit in a signed 64-bit integer"
        )
    return values.astype(np.int64)


def read_parquet(path: str, x_column: str = "x", y_column: str = "y") -> Dataset:
    """Read two list-of-integer columns; any list type, integer width and writer's nesting."""
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

    x_array = table.column(x_column).combine_chunks()
    y_array = table.column(y_column).combine_chunks()
    # The sequence length is the first non-null x row's; every row must match it.
    x_lengths = sequences_from_list(x_array, 1, x_column).lengths
    non_null = np.flatnonzero(~np.asarray(x_array.is_null()))
    if non_null.size == 0:
        raise InvalidInput(f"{path}: column {x_column!r}, row 0: {x_column} is null")
    seq_len = int(x_lengths[non_null[0]])
    if seq_len == 0:
        raise InvalidInput(f"{path}: column {x_column!r}, row {non_null[0]}: {x_column} is empty")

    x_raw = sequences_from_list(x_array, seq_len, x_column)
    y_raw = sequences_from_list(y_array, seq_len, y_column)
    problems = []
    for raw in (x_raw, y_raw):
        problem = _first_problem(raw, seq_len)
        if raw is y_raw and problem and "values; expected" in problem[1]:
            row = problem[0]
            problem = (row, f"x has {seq_len} values but y has {int(raw.lengths[row])}")
        if problem:
            problems.append((problem[0], raw.column, problem[1]))
    if problems:
        row, column, detail = min(problems, key=lambda problem: problem[0])  # x first on a tie
        raise InvalidInput(f"{path}: column {column!r}, row {row}: {detail}")
    return Dataset(_as_int64(x_raw, path), _as_int64(y_raw, path), path)


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
        raise InvalidInput(f"{path}: not a readable Parquet file ({_first_line(error)})") from None
    except OSError as error:
        if getattr(error, "errno", None) is None:
            raise InvalidInput(f"{path}: not a readable Parquet file ({_first_line(error)})") from None
        raise storage.read_error(path, error) from None
    finally:
        source.close()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    line = lines[0] if lines else type(error).__name__
    # Arrow names the in-memory source, which says nothing to the person who passed a path.
    return re.sub(r"^Could not open Parquet input source '[^']*': ", "", line)


# Plain text -------------------------------------------------------------------------------------
def _read_text_matrix(path: str) -> np.ndarray:
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
    width = None
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
        if width is None:
            width = len(values)
            if width == 0:
                raise InvalidInput(f"{path}: line {number} is empty; expected a sequence")
        elif len(values) != width:
            raise InvalidInput(
                f"{path}: line {number}: {len(values)} values; expected {width} like line 1"
            )
        rows.append(values)
    try:
        return np.asarray(rows, dtype=np.int64)
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


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def read_text(x_path: str, y_path: str) -> Dataset:
    """The question's form: two files of whitespace-separated integers, one sequence a line."""
    x = _read_text_matrix(x_path)
    y = _read_text_matrix(y_path)
    if x.shape[0] != y.shape[0]:
        raise InvalidInput(
            f"{x_path} has {x.shape[0]} lines but {y_path} has {y.shape[0]}; "
            f"expected one y line for each x line"
        )
    if x.shape[1] != y.shape[1]:
        raise InvalidInput(
            f"{y_path}: line 1: {y.shape[1]} values but {x_path} line 1 has {x.shape[1]}; "
            f"x and y sequences must have the same length"
        )
    return Dataset(x, y, f"{x_path} + {y_path}")


# Value sets ---------------------------------------------------------------------------------------
MAX_CLASSES = 10_000  # an inferred value set beyond this is almost surely codes, not a range


def infer_spec(
    dataset: Dataset,
    x_values: tuple[int, ...] | None = None,
    y_values: tuple[int, ...] | None = None,
) -> Spec:
    """The spec: given value sets, or the full integer range min..max of each column."""

    def full_range(column: str, values: np.ndarray) -> tuple[int, ...]:
        low, high = int(values.min()), int(values.max())
        if high - low + 1 > MAX_CLASSES:
            # One class per integer in min..max: sparse codes would make a huge softmax.
            raise InvalidInput(
                f"{dataset.source}: column {column!r} spans {low}..{high}, "
                f"{high - low + 1} classes as a full range (more than {MAX_CLASSES}); "
                f"list the values that occur with --{column}-values, e.g. 1,20,300"
            )
        return tuple(range(low, high + 1))

    spec = Spec(
        x_values=x_values or full_range("x", dataset.x),
        y_values=y_values or full_range("y", dataset.y),
        seq_len=dataset.seq_len,
    )
    for column, values, allowed in (("x", dataset.x, spec.x_values), ("y", dataset.y, spec.y_values)):
        outside = ~np.isin(values, np.asarray(allowed, dtype=np.int64))
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
