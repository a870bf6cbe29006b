"""The state dataset (score.state_store): round trips, metadata, the cursor, every refusal, and
the writer's all-or-nothing publishing. Real files under tmp_path; chunks made small."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RAGGED_MODEL, ROOT

from score import state_store
from score.errors import InputMissing, InvalidInput, OutputError, UsageError
from score.state_store import (
    MANIFEST,
    PART_NAME,
    StateChunk,
    StateCursor,
    StateLayout,
    StateReader,
    check_key_type,
    key_arrow,
    key_numpy,
)
from score.state_writer import StateWriter

CHUNK = 100  # ROWS_PER_CHUNK in these tests, so that a few hundred entries span chunks
LINEAGE = {"input_fingerprint": "in-1", "parent_fingerprint": ""}


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(state_store, "ROWS_PER_CHUNK", CHUNK)


def layout_for(scorer, key_type: pa.DataType = pa.int64()) -> StateLayout:
    return StateLayout.for_model(scorer, "id", key_type)


@pytest.fixture
def layout(ragged_scorer) -> StateLayout:
    return layout_for(ragged_scorer)


def entries(keys, layout: StateLayout, seed: int = 0) -> StateChunk:
    """Random steps and states for the given (ascending) keys."""
    rng = np.random.default_rng(seed)
    keys = np.asarray(keys, dtype=layout.empty().keys.dtype)
    return StateChunk(keys, rng.integers(0, 1000, len(keys)),
                      [rng.standard_normal((len(keys), units), dtype=np.float32)
                       for _, units in layout.tensors])


def write_state(location, layout: StateLayout, chunk: StateChunk, pieces: int = 3,
                lineage: dict | None = None) -> StateWriter:
    """Commit ``chunk`` to ``location``, handed to the writer in ``pieces`` uneven parts."""
    writer = StateWriter(str(location), layout, lineage or LINEAGE)
    for rows in np.array_split(np.arange(len(chunk)), pieces):
        writer.write(chunk.take(rows))
    writer.commit()
    return writer


def read_state(location, layout: StateLayout) -> tuple[StateChunk, list[int]]:
    """Everything in a state, and the size of each chunk the reader yielded."""
    chunks = list(StateReader(str(location), layout).chunks())
    return StateChunk.concat(chunks, layout), [len(chunk) for chunk in chunks]


def assert_same(found: StateChunk, expected: StateChunk) -> None:
    assert found.keys.dtype == expected.keys.dtype
    assert found.keys.tolist() == expected.keys.tolist()
    np.testing.assert_array_equal(found.steps, expected.steps)
    assert len(found.states) == len(expected.states)
    for found_state, expected_state in zip(found.states, expected.states, strict=True):
        assert found_state.dtype == np.float32 and found_state.flags.c_contiguous
        np.testing.assert_array_equal(found_state, expected_state)


def hidden(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name.startswith(".")]


# --- layout and keys ---------------------------------------------------------------------------


def test_layout_for_the_ragged_model(ragged_scorer):
    layout = layout_for(ragged_scorer)
    assert layout.tensors == (("initial_h_0", 16), ("initial_c_0", 16))
    assert layout.model_sha256 == ragged_scorer.sha256
    assert layout.schema() == pa.schema([
        pa.field("id", pa.int64(), nullable=False),
        pa.field("steps", pa.int64(), nullable=False),
        pa.field("initial_h_0", pa.list_(pa.float32(), 16), nullable=False),
        pa.field("initial_c_0", pa.list_(pa.float32(), 16), nullable=False),
    ])
    empty = layout.empty()
    assert (len(empty), empty.keys.dtype, [state.shape for state in empty.states]) == (
        0, np.int64, [(0, 16), (0, 16)])


@pytest.mark.parametrize(("array", "expected", "dtype"), [
    pytest.param(pa.array([-3, 7], pa.int32()), [-3, 7], np.int64, id="int32"),
    pytest.param(pa.array([2**64 - 1, 5], pa.uint64()), [2**64 - 1, 5], np.uint64, id="uint64"),
    pytest.param(pa.array(["b", "a"]).dictionary_encode(), ["b", "a"], object, id="dictionary"),
    pytest.param(pa.chunked_array([pa.array(["x"]).dictionary_encode(),
                                   pa.array(["é"]).dictionary_encode()]), ["x", "é"], object,
                 id="chunked_dictionaries"),
    pytest.param(pa.array(["a"], pa.large_string()), ["a"], object, id="large_string"),
])
def test_key_numpy_and_back(array, expected, dtype):
    keys = key_numpy(array)
    assert (keys.dtype, keys.tolist()) == (np.dtype(dtype), expected)
    key_type = check_key_type(array.type, "id", "in.parquet")
    assert key_arrow(keys, key_type).equals(pa.array(expected, key_type))


def test_a_key_column_named_like_a_state_column_is_refused(ragged_scorer):
    with pytest.raises(UsageError) as refused:
        StateLayout.for_model(ragged_scorer, "steps", pa.int64())
    assert (refused.value.exit_code, str(refused.value)) == (
        2, "--key steps: the state dataset has its own column of that name; rename the key column")


def test_check_key_type_refuses_floats():
    with pytest.raises(InvalidInput) as refused:
        check_key_type(pa.float64(), "id", "in.parquet")
    assert (refused.value.exit_code, str(refused.value)) == (
        65, "in.parquet: key column 'id' is double; expected an integer or string column")


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize(("key_type", "keys"), [
    pytest.param(pa.int64(), np.arange(-500, 500, 4), id="int64"),
    pytest.param(pa.int32(), np.arange(250) * 3 + 2**31 - 1000, id="int32"),
    pytest.param(pa.uint64(), np.arange(250, dtype=np.uint64) + np.uint64(2**64 - 300), id="uint64"),
    pytest.param(pa.string(), sorted(f"user-{n:04d}é" for n in range(250)), id="string"),
    pytest.param(pa.large_string(), ["", *sorted(str(n) for n in range(249))], id="large_string"),
])
def test_round_trip_across_chunks(ragged_scorer, tmp_path, key_type, keys):
    layout = layout_for(ragged_scorer, key_type)
    written = entries(keys, layout)
    writer = write_state(tmp_path / "state", layout, written, pieces=7)
    found, sizes = read_state(tmp_path / "state", layout)
    assert_same(found, written)
    assert sizes == [100, 100, 50]
    part = pq.ParquetFile(tmp_path / "state" / PART_NAME)
    assert [part.metadata.row_group(index).num_rows for index in range(3)] == [100, 100, 50]
    assert part.schema_arrow.field("id").type == key_type
    reader = StateReader(str(tmp_path / "state"), layout)
    assert (reader.rows, reader.fingerprint, writer.rows) == (250, writer.fingerprint, 250)
    assert sorted(os.listdir(tmp_path / "state")) == [MANIFEST, PART_NAME]
    assert hidden(tmp_path) == []


def test_an_empty_state_round_trips(layout, tmp_path):
    write_state(tmp_path / "state", layout, layout.empty())
    found, sizes = read_state(tmp_path / "state", layout)
    assert (len(found), sizes, StateReader(str(tmp_path / "state"), layout).rows) == (0, [], 0)


def test_a_single_file_and_several_part_files_are_read_in_name_order(layout, tmp_path):
    written = entries(np.arange(300), layout)
    write_state(tmp_path / "a", layout, written.take(slice(0, 120)))
    write_state(tmp_path / "b", layout, written.take(slice(120, 300)))
    spark = tmp_path / "spark"
    spark.mkdir()
    os.replace(tmp_path / "a" / PART_NAME, spark / "part-00000-x.parquet")
    os.replace(tmp_path / "b" / PART_NAME, spark / "part-00001-x.parquet")
    (spark / "_SUCCESS").write_text("")
    (spark / ".part-00002-x.parquet.crc").write_text("")
    found, sizes = read_state(spark, layout)
    assert_same(found, written)
    assert sizes == [100, 20, 100, 80]
    single, _ = read_state(spark / "part-00001-x.parquet", layout)
    assert_same(single, written.take(slice(120, 300)))


def test_a_plain_list_column_of_the_right_width_is_accepted(layout, tmp_path):
    written = entries(np.arange(10), layout)
    write_state(tmp_path / "state", layout, written)
    rewrite(tmp_path / "state", lambda table: table.set_column(
        3, "initial_c_0", table.column("initial_c_0").cast(pa.list_(pa.float32()))))
    assert_same(read_state(tmp_path / "state", layout)[0], written)


# --- metadata and fingerprint -------------------------------------------------------------------


def test_metadata_and_manifest(layout, tmp_path):
    writer = write_state(tmp_path / "state", layout, entries(np.arange(5), layout),
                         lineage={"input_fingerprint": "in-2", "parent_fingerprint": "parent-1"})
    metadata = {key.decode(): value.decode()
                for key, value in pq.read_metadata(tmp_path / "state" / PART_NAME).metadata.items()
                if key.startswith(b"seqscore.")}
    created_at = metadata.pop("seqscore.created_at")
    assert created_at.endswith("+00:00") and len(created_at) == 25
    assert metadata == {
        "seqscore.state_format": "1",
        "seqscore.model_sha256": layout.model_sha256,
        "seqscore.key_column": "id",
        "seqscore.state_tensors": json.dumps([{"name": "initial_h_0", "units": 16},
                                              {"name": "initial_c_0", "units": 16}]),
        "seqscore.rows": "5",
        "seqscore.input_fingerprint": "in-2",
        "seqscore.parent_fingerprint": "parent-1",
        "seqscore.fingerprint": writer.fingerprint,
    }
    assert len(writer.fingerprint) == 64 and int(writer.fingerprint, 16) >= 0
    text = (tmp_path / "state" / MANIFEST).read_text()
    assert text.endswith("}\n") and '\n  "seqscore.rows": "5",\n' in text
    assert json.loads(text) == {**metadata, "seqscore.created_at": created_at, "status": "succeeded"}


def test_fingerprint_follows_content_and_lineage_not_chunking(layout, tmp_path):
    written = entries(np.arange(250), layout)
    first = write_state(tmp_path / "one", layout, written, pieces=1).fingerprint
    assert write_state(tmp_path / "two", layout, written, pieces=9).fingerprint == first
    written.states[1][137, 5] += np.float32(1e-3)  # one float of one entry
    changed = write_state(tmp_path / "three", layout, written).fingerprint
    chained = write_state(tmp_path / "four", layout, written,
                          lineage={**LINEAGE, "parent_fingerprint": changed}).fingerprint
    assert len({first, changed, chained}) == 3


# --- the cursor ---------------------------------------------------------------------------------


def counting(chunks):
    """The chunks, counting in ``pulled[0]`` how many were taken."""
    pulled = [0]

    def generate():
        for chunk in chunks:
            pulled[0] += 1
            yield chunk

    return generate(), pulled


def test_cursor_until_and_rest(layout, tmp_path):
    written = entries(np.arange(0, 500, 2), layout)  # 250 entries: chunks of 100, 100, 50
    write_state(tmp_path / "state", layout, written)
    chunks, pulled = counting(StateReader(str(tmp_path / "state"), layout).chunks())
    cursor = StateCursor(chunks, layout)
    assert_same(cursor.until(5), written.take(slice(0, 3)))
    assert pulled == [1]
    assert len(cursor.until(5)) == 0 and len(cursor.until(-1)) == 0
    assert_same(cursor.until(300), written.take(slice(3, 151)))  # across a chunk boundary
    assert pulled == [2]  # one chunk ahead at most
    assert len(cursor.until(301)) == 0
    rest = list(cursor.rest())
    assert [len(chunk) for chunk in rest] == [49, 50]
    assert_same(StateChunk.concat(rest, layout), written.take(slice(151, 250)))
    assert len(cursor.until(10**6)) == 0 and list(cursor.rest()) == []


def test_cursor_with_keys_beyond_the_last(layout, tmp_path):
    written = entries(np.arange(250), layout)
    write_state(tmp_path / "state", layout, written)
    cursor = StateCursor(StateReader(str(tmp_path / "state"), layout).chunks(), layout)
    assert_same(cursor.until(10**6), written)
    assert len(cursor.until(10**7)) == 0 and list(cursor.rest()) == []


def test_cursor_over_string_keys(ragged_scorer, tmp_path):
    layout = layout_for(ragged_scorer, pa.string())
    written = entries(sorted(f"k{n:03d}" for n in range(250)), layout)
    write_state(tmp_path / "state", layout, written)
    cursor = StateCursor(StateReader(str(tmp_path / "state"), layout).chunks(), layout)
    assert_same(cursor.until("k099~"), written.take(slice(0, 100)))
    assert_same(cursor.until("k1"), layout.empty())
    assert_same(StateChunk.concat(list(cursor.rest()), layout), written.take(slice(100, 250)))


def test_cursor_over_an_empty_state(layout):
    cursor = StateCursor(None, layout)
    assert_same(cursor.until(5), layout.empty())
    assert list(cursor.rest()) == []


# --- refusals -----------------------------------------------------------------------------------


def refused(location, layout: StateLayout, exit_code: int):
    """The error StateReader raises, opening or streaming; one line, with this exit code."""
    with pytest.raises((InputMissing, InvalidInput)) as caught:
        reader = StateReader(str(location), layout)
        list(reader.chunks())
    assert caught.value.exit_code == exit_code
    assert "\n" not in str(caught.value)
    return str(caught.value)


def rewrite(folder: Path, change, changed_metadata: dict | None = None) -> Path:
    """Rewrite a state's part file through ``change(table)``, keeping its seqscore metadata."""
    part = folder / PART_NAME
    metadata = {key: value for key, value in pq.read_metadata(part).metadata.items()
                if key.startswith(b"seqscore.")}
    metadata.update(changed_metadata or {})
    table = change(pq.read_table(part))
    pq.write_table(table.replace_schema_metadata(metadata), part, row_group_size=CHUNK)
    return part


def rewrite_metadata(folder: Path, changed: dict) -> Path:
    return rewrite(folder, lambda table: table, changed)


@pytest.fixture
def state(layout, tmp_path) -> Path:
    """A valid state of 250 entries with keys 0, 2, 4, ..."""
    write_state(tmp_path / "state", layout, entries(np.arange(0, 500, 2), layout))
    return tmp_path / "state"


def test_refuses_a_missing_folder_and_an_empty_one(layout, tmp_path):
    assert refused(tmp_path / "none", layout, 66) == (
        f"--state-in {tmp_path / 'none'}: not found; omit --state-in to start from the zero "
        f"state, or pass the folder a run wrote with --state-out")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_SUCCESS").write_text("{}")
    assert refused(tmp_path / "empty", layout, 66) == (
        f"--state-in {tmp_path / 'empty'}: no *.parquet part file in this folder; expected the "
        f"folder a run wrote with --state-out")


def test_refuses_a_file_that_is_not_parquet_or_truncated(layout, state):
    part = state / PART_NAME
    content = part.read_bytes()
    part.write_bytes(content[: len(content) // 2])
    assert refused(state, layout, 65).startswith(f"--state-in {part}: not a Parquet file, or truncated")
    part.write_bytes(b"key,steps\n1,2\n" * 10)
    assert refused(state, layout, 65).startswith(f"--state-in {part}: not a Parquet file, or truncated")


def test_refuses_corrupt_pages_while_streaming(layout, state):
    part = state / PART_NAME
    content = bytearray(part.read_bytes())
    middle = len(content) // 3
    content[middle : middle + 64] = bytes(64)
    part.write_bytes(bytes(content))
    assert refused(state, layout, 65).startswith(f"--state-in {part}: corrupt or truncated Parquet")


@pytest.mark.parametrize(("change", "expected"), [
    pytest.param(lambda table: table.drop_columns(["steps"]),
                 "no column 'steps'; the file has 'id', 'initial_h_0', 'initial_c_0'",
                 id="missing_column"),
    pytest.param(lambda table: table.set_column(0, "id", table.column("id").cast(pa.string())),
                 "key column 'id' is string, but the input's key column is int64; use the same "
                 "key type", id="key_type"),
    pytest.param(lambda table: table.set_column(1, "steps", table.column("steps").cast(pa.float64())),
                 "column 'steps' is double; expected an integer column", id="steps_type"),
    pytest.param(lambda table: table.set_column(3, "initial_c_0", pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(250 * 8, np.float32)), 8)),
                 "column 'initial_c_0' is fixed_size_list<element: float>[8]; expected "
                 "fixed_size_list<float>[16], the width of this model's state", id="width"),
    pytest.param(lambda table: table.set_column(2, "initial_h_0", table.column("initial_h_0").cast(
        pa.list_(pa.float64(), 16))),
                 "column 'initial_h_0' is fixed_size_list<element: double>[16]; expected "
                 "fixed_size_list<float>[16], the width of this model's state", id="float64"),
])
def test_refuses_a_schema_unlike_the_layout(layout, state, change, expected):
    part = rewrite(state, change)
    assert refused(state, layout, 65) == f"--state-in {part}: {expected}"


def lists(table: pa.Table, name: str, row: int, values: list | None) -> pa.Table:
    """``table`` with column ``name`` a plain list<float> whose row ``row`` is ``values``."""
    rows = table.column(name).to_pylist()
    rows[row] = values
    return table.set_column(table.schema.get_field_index(name), name,
                            pa.array(rows, pa.list_(pa.float32())))


def keyed(table: pa.Table, keys: list) -> pa.Table:
    return table.set_column(0, "id", pa.array(keys, pa.int64()))


@pytest.mark.parametrize(("change", "expected"), [
    pytest.param(lambda table: lists(table, "initial_c_0", 130, [0.5] * 15),
                 "row 130: 'initial_c_0' holds 15 values; expected 16, the width of this model's "
                 "state", id="list_width"),
    pytest.param(lambda table: lists(table, "initial_h_0", 7, None),
                 "row 7: 'initial_h_0' is null; a state holds a key, its steps and every state "
                 "tensor", id="null_tensor_row"),
    pytest.param(lambda table: lists(table, "initial_h_0", 201, [0.5] * 15 + [None]),
                 "row 201: 'initial_h_0' holds a null value; a state holds every value of each "
                 "tensor", id="null_tensor_value"),
    pytest.param(lambda table: keyed(table, [*range(0, 40, 2), None, *range(42, 500, 2)]),
                 "row 20: 'id' is null; a state holds a key, its steps and every state tensor",
                 id="null_key"),
    pytest.param(lambda table: keyed(table, [*range(0, 20, 2), 30, *range(22, 500, 2)]),
                 "row 11: key 22 is not after key 30; a state holds each key once, in ascending "
                 "order", id="unsorted"),
    pytest.param(lambda table: keyed(table, [*range(0, 200, 2), 198, *range(202, 500, 2)]),
                 "row 100: key 198 is not after key 198; a state holds each key once, in "
                 "ascending order", id="duplicated_across_chunks"),
    pytest.param(lambda table: table.set_column(1, "steps", pa.array([3] * 249 + [-1])),
                 "row 249: 'steps' is -1; expected a count >= 0", id="negative_steps"),
])
def test_refuses_entries_while_streaming(layout, state, change, expected):
    part = rewrite(state, change)
    reader = StateReader(str(state), layout)  # the footer is fine: opening succeeds
    assert reader.rows == 250
    assert refused(state, layout, 65) == f"--state-in {part}: {expected}"


def test_refuses_duplicated_string_keys_across_files(ragged_scorer, tmp_path):
    layout = layout_for(ragged_scorer, pa.string())
    write_state(tmp_path / "a", layout, entries(["a", "b", "c"], layout))
    write_state(tmp_path / "b", layout, entries(["c", "d"], layout))
    os.replace(tmp_path / "b" / PART_NAME, tmp_path / "a" / "part-00001.parquet")
    assert refused(tmp_path / "a", layout, 65) == (
        f"--state-in {tmp_path / 'a' / 'part-00001.parquet'}: row 0: key 'c' is not after key "
        f"'c'; a state holds each key once, in ascending order")


def test_refuses_the_state_of_another_model_or_no_state(layout, state, tmp_path):
    other = StateLayout(layout.key, layout.key_type, layout.tensors, "0" * 64)
    assert refused(state, other, 65) == (
        f"--state-in {state / PART_NAME}: written by the model with sha256 "
        f"{layout.model_sha256}, but this run's model has sha256 {'0' * 64}; omit --state-in "
        f"to start over from the zero state")
    newer = rewrite_metadata(state, {b"seqscore.state_format": b"2"})
    assert refused(state, layout, 65) == (
        f"--state-in {newer}: state format '2'; this seqscore reads format 1")
    plain = tmp_path / "plain.parquet"
    pq.write_table(pq.read_table(state / PART_NAME).replace_schema_metadata({}), plain)
    assert refused(plain, layout, 65) == (
        f"--state-in {plain}: not a seqscore state (no seqscore.model_sha256 in its metadata); "
        f"pass the folder a run wrote with --state-out")


# --- publishing ---------------------------------------------------------------------------------


def test_abort_leaves_nothing_behind(layout, tmp_path):
    writer = StateWriter(str(tmp_path / "state"), layout, LINEAGE)
    writer.write(entries(np.arange(250), layout))
    assert len(hidden(tmp_path)) == 1  # the staging folder
    writer.abort()
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_abort_after_commit_keeps_the_state(layout, tmp_path):
    writer = write_state(tmp_path / "state", layout, entries(np.arange(3), layout))
    writer.abort()
    assert sorted(os.listdir(tmp_path / "state")) == [MANIFEST, PART_NAME]


def test_a_second_commit_replaces_the_first_whole(layout, tmp_path):
    location = tmp_path / "runs" / "state"  # the parent is created
    first = entries(np.arange(250), layout, seed=1)
    write_state(location, layout, first)
    second = entries(np.arange(100, 150), layout, seed=2)
    writer = StateWriter(str(location), layout, LINEAGE)
    writer.write(second)
    assert_same(read_state(location, layout)[0], first)  # the previous state, until the commit
    writer.commit()
    assert_same(read_state(location, layout)[0], second)
    assert sorted(os.listdir(location)) == [MANIFEST, PART_NAME]
    assert hidden(location.parent) == []


def test_refuses_a_location_it_cannot_create(layout, tmp_path):
    (tmp_path / "file").write_text("")
    for location in (tmp_path / "file", tmp_path / "file" / "state"):
        with pytest.raises(OutputError) as refusal:
            StateWriter(str(location), layout, LINEAGE)
        assert refusal.value.exit_code == 73
        assert str(refusal.value).startswith(f"--state-out {location}: ")
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_entries_must_ascend(layout, tmp_path):
    writer = StateWriter(str(tmp_path / "state"), layout, LINEAGE)
    writer.write(entries([1, 2], layout))
    with pytest.raises(AssertionError):
        writer.write(entries([2, 3], layout))
    writer.abort()
    assert os.listdir(tmp_path) == []


KILLED_WRITER = """
import sys, time
import numpy as np, pyarrow as pa
from score.model import load
from score.state_store import StateChunk, StateLayout
from score.state_writer import StateWriter
layout = StateLayout.for_model(load(sys.argv[1]), "id", pa.int64())
writer = StateWriter(sys.argv[2], layout, {"input_fingerprint": "", "parent_fingerprint": ""})
writer.write(StateChunk(np.arange(7), np.zeros(7, np.int64), [np.zeros((7, 16), np.float32)] * 2))
print("staged", flush=True)
time.sleep(60)
"""


def test_a_writer_killed_before_commit_leaves_the_previous_state(layout, tmp_path):
    first = entries(np.arange(250), layout)
    write_state(tmp_path / "state", layout, first)
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(RAGGED_MODEL),
                                str(tmp_path / "state")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "staged\n"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert_same(read_state(tmp_path / "state", layout)[0], first)
    assert [name.split(".tmp-")[0] for name in hidden(tmp_path)] == [".state"]  # skipped by readers
