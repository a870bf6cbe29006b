"""python -m score --key: chains of scheduled runs equal scoring each key's whole history.

Each chain gives some keys new steps in each run (keys appear, skip runs, reappear, and are
new), carrying the state from run to run. The reference is the plain way: each key's whole
history concatenated and run through onnxruntime from the zero state, once.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURE_MODEL, FIXTURES, RAGGED_MODEL, run_export, run_score

TOP_K = 3


@pytest.fixture(scope="module")
def torch_model(tmp_path_factory) -> str:
    """The PyTorch LSTM (two layers, time-major) imported as a variable-length model of 1..8."""
    path = tmp_path_factory.mktemp("torch") / "torch_lstm.onnx"
    result = run_export("--onnx", FIXTURES / "torch_lstm.onnx", "--x-values", "0..10", "--y-values",
                        "0..24", "--output", path, "--max-length", 8)
    assert result.code == 0, result.stderr
    return str(path)


class Plain:
    """The reference: a key's whole history through onnxruntime, from the zero state."""

    def __init__(self, model: str) -> None:
        self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        spec = json.loads(self.session.get_modelmeta().custom_metadata_map["spec"])
        self.x_values = np.asarray(spec["x_values"])
        self.y_values = np.asarray(spec["y_values"])
        self.states = [name for state in spec["states"] for name in (state["final_h"], state["final_c"])]
        self.state_columns = [name for state in spec["states"] for name in (state["initial_h"], state["initial_c"])]
        self.index_type = np.int32 if self.session.get_inputs()[0].type == "tensor(int32)" else np.int64

    def run(self, history: list[int]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Top-k values and probabilities of every step, and the final states."""
        indices = np.searchsorted(self.x_values, history).astype(self.index_type)[None]
        probabilities, *states = self.session.run(["probabilities", *self.states], {"x": indices})
        order = np.argsort(-probabilities[0], axis=-1, kind="stable")[:, :TOP_K]
        return (self.y_values[order], np.take_along_axis(probabilities[0], order, axis=-1),
                [state[0, 0] for state in states])


def chain_inputs(runs: int, ragged: bool, string_keys: bool, seed: int = 0) -> list[dict]:
    """Each run's rows: {key: new steps}. 30 keys; each run takes a random two thirds of the
    keys seen so far plus a few new ones, so keys skip runs, reappear and are new."""
    rng = np.random.default_rng(seed)
    runs_rows, known, next_key = [], [], 0
    for _ in range(runs):
        keys = [key for key in known if rng.random() < 0.65]
        for _ in range(int(rng.integers(6, 12))):
            keys.append(next_key)
            known.append(next_key)
            next_key += 1
        rows = {}
        for key in keys:
            length = int(rng.integers(1, 7)) if ragged else 3
            rows[f"user-{key:03d}" if string_keys else key * 7 - 40] = rng.integers(0, 11, length).tolist()
        runs_rows.append(rows)
    return runs_rows


def write_run(path: Path, rows: dict, sort: bool, seed: int) -> None:
    keys = sorted(rows) if sort else list(np.random.default_rng(seed).permutation(list(rows)))
    keys = [key.item() if isinstance(key, np.generic) else key for key in keys]
    pq.write_table(pa.table({"user": keys, "x": pa.array([rows[key] for key in keys], pa.list_(pa.int64())),
                             "note": [f"n{index}" for index in range(len(keys))]}), path)


@pytest.mark.parametrize("runs", [1, 2, 5])
@pytest.mark.parametrize("model,ragged,string_keys,pieces", [
    pytest.param("ragged", True, True, None, id="ragged_model-ragged_increments-string_keys"),
    pytest.param("ragged", False, False, None, id="ragged_model-fixed_increments-int_keys"),
    pytest.param("torch", True, False, None, id="torch_lstm-ragged_increments-int_keys"),
    pytest.param("torch", False, True, None, id="torch_lstm-fixed_increments-string_keys"),
    # The state read a few entries at a time, and rows scored a few at a time: a row's state
    # may lie in the next piece of the state, and the keys between two rows in several.
    pytest.param("ragged", True, False, (3, 4), id="ragged_model-small_pieces"),
])
def test_a_chain_of_runs_equals_scoring_each_whole_history(tmp_path, monkeypatch, torch_model, runs, model,
                                                           ragged, string_keys, pieces):
    if pieces is not None:
        from score import keyed_job, state_store

        monkeypatch.setattr(keyed_job, "STATE_ROWS", pieces[0])
        monkeypatch.setattr(state_store, "ROWS_PER_CHUNK", pieces[0])
        monkeypatch.setattr(keyed_job, "KEYED_BATCH_ROWS", pieces[1])
    path = str(RAGGED_MODEL) if model == "ragged" else torch_model
    plain = Plain(path)
    histories: dict = {}
    limit = ["--max-length", "40"]  # the torch import was trained to 8 steps; histories grow past it
    for index, rows in enumerate(chain_inputs(runs, ragged, string_keys, seed=runs)):
        source = tmp_path / f"in{index}.parquet"
        write_run(source, rows, sort=index % 2 == 0, seed=index)  # streamed, then held in memory
        output = tmp_path / f"out{index}.parquet"
        state_in = ["--state-in", tmp_path / f"state{index - 1}"] if index else []
        result = run_score(source, output, "--model", path, "--key", "user", "--state-out",
                           tmp_path / f"state{index}", *state_in, *limit, "--quiet",
                           "--summary", tmp_path / f"summary{index}.json")
        assert result.code == 0, result.stderr
        scored = pq.read_table(output)
        assert scored.column("user").to_pylist() == pq.read_table(source).column("user").to_pylist()
        assert scored.column("note").to_pylist() == pq.read_table(source).column("note").to_pylist()
        summary = json.loads((tmp_path / f"summary{index}.json").read_text())
        assert summary["keys_in_state"] == len(histories)
        assert summary["keys_scored"] == len(rows)
        assert summary["keys_new"] == len(set(rows) - set(histories))
        assert summary["keys_carried_unchanged"] == len(set(histories) - set(rows))
        assert summary["steps_resumed"] == sum(len(histories.get(key, [])) for key in rows)
        assert summary["input_sorted_by_key"] is (index % 2 == 0)
        for row in scored.to_pylist():
            before = len(histories.get(row["user"], []))
            assert row["steps_before"] == before
            assert row["error"] is None
            history = histories.get(row["user"], []) + rows[row["user"]]
            values, probabilities, _ = plain.run(history)
            assert row["top_k_values"] == values[before:].tolist()
            assert row["y_pred"] == values[before:, 0].tolist()
            np.testing.assert_allclose(row["top_k_probs"], probabilities[before:], atol=1e-6, rtol=0)
        for key, steps in rows.items():
            histories[key] = histories.get(key, []) + steps

    state = pq.read_table(tmp_path / f"state{runs - 1}")
    keys = state.column("user").to_pylist()
    assert keys == sorted(histories)
    assert state.column("steps").to_pylist() == [len(histories[key]) for key in keys]
    assert state.schema.field("user").type == (pa.string() if string_keys else pa.int64())
    for position, key in enumerate(keys):
        _, _, finals = plain.run(histories[key])
        for column, final in zip(plain.state_columns, finals):
            np.testing.assert_allclose(state.column(column)[position].as_py(), final, atol=1e-6, rtol=0)


def test_the_state_dataset_records_the_model_and_its_lineage(tmp_path):
    first = {"a": [1, 2, 3], "b": [4]}
    write_run(tmp_path / "day1.parquet", first, sort=True, seed=0)
    write_run(tmp_path / "day2.parquet", {"b": [5, 6], "c": [7]}, sort=False, seed=1)
    assert run_score(tmp_path / "day1.parquet", tmp_path / "out1.parquet", "--model", RAGGED_MODEL,
                     "--key", "user", "--state-out", tmp_path / "state1", "--quiet").code == 0
    result = run_score(tmp_path / "day2.parquet", tmp_path / "out2.parquet", "--model", RAGGED_MODEL,
                       "--key", "user", "--state-in", tmp_path / "state1", "--state-out",
                       tmp_path / "state2", "--quiet")
    assert result.code == 0, result.stderr
    first_meta = pq.read_metadata(next((tmp_path / "state1").glob("*.parquet"))).metadata
    meta = {key.decode(): value.decode()
            for key, value in pq.read_metadata(next((tmp_path / "state2").glob("*.parquet"))).metadata.items()}
    from score.model import load

    scorer = load(str(RAGGED_MODEL))
    assert meta["seqscore.model_sha256"] == scorer.sha256
    assert json.loads(meta["seqscore.state_tensors"]) == [
        {"name": "initial_h_0", "units": 16}, {"name": "initial_c_0", "units": 16}]
    assert meta["seqscore.rows"] == "3"
    assert meta["seqscore.parent_fingerprint"] == first_meta[b"seqscore.fingerprint"].decode()
    assert meta["seqscore.input_fingerprint"] != first_meta[b"seqscore.input_fingerprint"].decode()
    state = pq.read_table(tmp_path / "state2")
    assert state.column("user").to_pylist() == ["a", "b", "c"]
    assert state.column("steps").to_pylist() == [3, 3, 1]
    assert state.schema.field("initial_h_0").type == pa.list_(pa.float32(), 16)


# Refusals: one line, the documented exit code, nothing published ------------------------------
def day(tmp_path: Path, name: str, rows: dict, sort: bool = True) -> Path:
    path = tmp_path / f"{name}.parquet"
    write_run(path, rows, sort=sort, seed=3)
    return path


def keyed_run(source: Path, output: Path, *extra) -> object:
    return run_score(source, output, "--model", RAGGED_MODEL, "--key", "user", "--quiet", *extra)


@pytest.fixture
def yesterday(tmp_path) -> Path:
    """A state of keys a, b and c, written by a first run."""
    source = day(tmp_path, "day1", {"a": [1, 2], "b": [3], "c": [4, 5, 6]})
    assert keyed_run(source, tmp_path / "out1.parquet", "--state-out", tmp_path / "state1").code == 0
    return tmp_path / "state1"


def assert_nothing_published(tmp_path: Path, *paths: Path) -> None:
    for path in paths:
        assert not path.exists(), path
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_key_twice_in_one_run_is_refused_naming_the_key_and_both_rows(tmp_path, yesterday):
    source = day(tmp_path, "day2", {"b": [1], "a": [2], "d": [3]}, sort=False)
    table = pq.read_table(source)
    table = pa.concat_tables([table, table.slice(1, 1)])  # row 3 repeats row 1's key
    pq.write_table(table, source)
    key = table.column("user")[1].as_py()
    out, state = tmp_path / "out2.parquet", tmp_path / "state2"
    result = keyed_run(source, out, "--state-in", yesterday, "--state-out", state)
    assert result.code == 65
    assert result.lines == [f"error: {source}: rows 1 and 3: key {key!r} appears twice in this run's "
                            f"input; a run takes one row per key (its new steps)"]
    assert_nothing_published(tmp_path, out, state)


def test_under_on_invalid_null_both_rows_of_a_repeated_key_are_invalid_and_its_state_is_kept(tmp_path, yesterday):
    source = tmp_path / "day2.parquet"
    pq.write_table(pa.table({"user": ["c", "a", "c", None], "x": [[1], [2, 3], [4], [5]]}), source)
    out, state = tmp_path / "out2.parquet", tmp_path / "state2"
    result = keyed_run(source, out, "--state-in", yesterday, "--state-out", state, "--on-invalid", "null",
                       "--summary", tmp_path / "summary.json")
    assert result.code == 0, result.stderr
    scored = pq.read_table(out).to_pylist()
    assert [row["error"] for row in scored] == [
        "key 'c' has more than one row in this run's input; a run takes one row per key",
        None,
        "key 'c' has more than one row in this run's input; a run takes one row per key",
        "the key column 'user' is null; every row needs a key"]
    assert [row["steps_before"] for row in scored] == [3, 2, 3, None]
    assert scored[0]["y_pred"] is None and scored[3]["y_pred"] is None
    before, after = pq.read_table(yesterday), pq.read_table(state)
    assert after.column("user").to_pylist() == ["a", "b", "c"]
    assert after.column("steps").to_pylist() == [4, 1, 3]
    assert after.slice(1, 2).equals(before.slice(1, 2))  # b (absent) and c (invalid) as they were
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["invalid_by_reason"]["duplicate_key"] == 2
    assert summary["invalid_by_reason"]["null_key"] == 1
    assert (summary["keys_scored"], summary["keys_carried_unchanged"]) == (1, 2)


def test_a_repeated_key_across_the_files_of_a_directory_is_refused(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    day(folder, "part-0", {"a": [1], "b": [2]})
    day(folder, "part-1", {"c": [1], "b": [2]})
    result = keyed_run(folder, tmp_path / "out", "--state-out", tmp_path / "state")
    assert result.code == 65
    assert result.lines == [f"error: {folder / 'part-0.parquet'}: row 1 and {folder / 'part-1.parquet'} "
                            f"row 0: key 'b' appears twice in this run's input; a run takes one row "
                            f"per key (its new steps)"]
    assert_nothing_published(tmp_path, tmp_path / "state")
    assert not list((tmp_path / "out").glob("*"))


def test_a_null_key_is_refused_with_its_row(tmp_path):
    source = tmp_path / "day.parquet"
    pq.write_table(pa.table({"user": [5, None], "x": [[1], [2]]}), source)
    result = keyed_run(source, tmp_path / "out.parquet", "--state-out", tmp_path / "state")
    assert result.code == 65
    assert result.lines == [f"error: {source}: row 1: the key column 'user' is null; every row needs a key"]
    assert_nothing_published(tmp_path, tmp_path / "out.parquet", tmp_path / "state")


def test_a_history_longer_than_the_limit_is_too_long(tmp_path, yesterday):
    source = day(tmp_path, "day2", {"a": list(range(10)) * 3 + [1], "b": [1]})  # a: 2 + 31 steps
    out, state = tmp_path / "out2.parquet", tmp_path / "state2"
    result = keyed_run(source, out, "--state-in", yesterday, "--state-out", state)
    assert result.code == 65
    assert result.lines == [
        f"error: {source}: row 0 (key 'a'): x has 31 new values after 2 steps of this key's "
        f"history, 33 in all; the model takes at most 32 (its longest training length; "
        f"--max-length raises the limit for a run)"]
    assert_nothing_published(tmp_path, out, state)
    result = keyed_run(source, out, "--state-in", yesterday, "--state-out", state, "--on-invalid", "null")
    assert result.code == 0
    assert pq.read_table(out).column("error")[0].as_py().endswith("33 in all; the model takes at most 32 "
                                                                  "(its longest training length; "
                                                                  "--max-length raises the limit for a run)")
    assert pq.read_table(state).column("steps").to_pylist() == [2, 2, 3]
    result = keyed_run(source, out, "--state-in", yesterday, "--state-out", state, "--max-length", "33")
    assert result.code == 0
    assert result.lines == ["warning: --max-length 33 is beyond the longest training length (32): "
                            "predictions for steps past 32 are extrapolation"]


@pytest.mark.parametrize("flags,line", [
    pytest.param(["--key", "user"], "--key needs --state-out PATH (where the run writes every key's state)",
                 id="key_without_state_out"),
    pytest.param(["--state-out", "s"], "--state-out needs --key COL (the column naming each row's entity)",
                 id="state_out_without_key"),
    pytest.param(["--key", "user", "--state-in", "s/", "--state-out", "s"],
                 "--state-in and --state-out are both s; a retried run must find its input state, so "
                 "give each run its own state folder (for example state/2026-12-03/)", id="state_in_is_state_out"),
])
def test_usage_errors_exit_2(tmp_path, flags, line):
    source = day(tmp_path, "day", {"a": [1]})
    result = run_score(source, tmp_path / "out.parquet", "--model", RAGGED_MODEL, "--quiet", *flags)
    assert result.code == 2
    assert result.lines == [f"error: {line}"]


def test_a_fixed_length_model_cannot_carry_state(tmp_path):
    source = tmp_path / "day.parquet"
    pq.write_table(pa.table({"user": [1], "x": [[1, 2, 3, 4]]}), source)
    result = run_score(source, tmp_path / "out.parquet", "--model", FIXTURE_MODEL, "--key", "user",
                       "--state-out", tmp_path / "state", "--quiet")
    assert result.code == 78
    assert result.lines == [f"error: --key: the model {FIXTURE_MODEL} cannot carry state: it takes "
                            f"sequences of exactly 4 steps (fixed length), so a history that grows run "
                            f"after run does not fit it; train it on rows of any length"]
    assert_nothing_published(tmp_path, tmp_path / "out.parquet", tmp_path / "state")


def test_a_missing_state_in_exits_66(tmp_path):
    source = day(tmp_path, "day", {"a": [1]})
    result = keyed_run(source, tmp_path / "out.parquet", "--state-in", tmp_path / "nowhere",
                       "--state-out", tmp_path / "state")
    assert result.code == 66
    assert len(result.lines) == 1 and str(tmp_path / "nowhere") in result.lines[0]
    assert_nothing_published(tmp_path, tmp_path / "out.parquet", tmp_path / "state")


def test_a_state_of_another_model_is_refused_naming_both_digests(tmp_path, torch_model):
    source = day(tmp_path, "day", {"a": [1]})
    assert run_score(source, tmp_path / "out.parquet", "--model", torch_model, "--key", "user",
                     "--state-out", tmp_path / "torch_state", "--quiet").code == 0
    from score.model import load

    result = keyed_run(source, tmp_path / "out2.parquet", "--state-in", tmp_path / "torch_state",
                       "--state-out", tmp_path / "state")
    assert result.code == 65
    assert len(result.lines) == 1
    line = result.lines[0]
    assert load(torch_model).sha256 in line and load(str(RAGGED_MODEL)).sha256 in line
    assert "omit --state-in to start over" in line
    assert_nothing_published(tmp_path, tmp_path / "out2.parquet", tmp_path / "state")


def test_a_state_whose_key_type_differs_from_the_input_is_refused(tmp_path, yesterday):
    source = tmp_path / "day2.parquet"
    pq.write_table(pa.table({"user": [1, 2], "x": [[1], [2]]}), source)
    result = keyed_run(source, tmp_path / "out2.parquet", "--state-in", yesterday, "--state-out",
                       tmp_path / "state2")
    assert result.code == 65
    assert len(result.lines) == 1 and "string" in result.lines[0] and "int64" in result.lines[0]
    assert_nothing_published(tmp_path, tmp_path / "out2.parquet", tmp_path / "state2")


def test_a_truncated_state_is_refused(tmp_path, yesterday):
    part = next(yesterday.glob("*.parquet"))
    part.write_bytes(part.read_bytes()[:-100])
    source = day(tmp_path, "day2", {"a": [1]})
    result = keyed_run(source, tmp_path / "out2.parquet", "--state-in", yesterday, "--state-out",
                       tmp_path / "state2")
    assert result.code == 65
    assert len(result.lines) == 1 and str(part) in result.lines[0]
    assert_nothing_published(tmp_path, tmp_path / "out2.parquet", tmp_path / "state2")


def test_new_keys_share_work_as_rows_without_a_key_do(tmp_path):
    """40 new keys whose rows are 3 distinct sequences, in batches of 8: the model runs each
    sequence once (de-duplication, then the run's cache), and every key still ends in its state."""
    sequences = [[1, 2, 3, 4], [1, 2, 3, 5], [7, 7]]
    rows = {f"k{index:02d}": sequences[index % 3] for index in range(40)}
    source = day(tmp_path, "day", rows, sort=False)
    result = keyed_run(source, tmp_path / "out.parquet", "--state-out", tmp_path / "state",
                       "--batch-size", "8", "--summary", tmp_path / "summary.json")
    assert result.code == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["distinct_sequences_scored"] == 3
    plain = Plain(str(RAGGED_MODEL))
    state = pq.read_table(tmp_path / "state")
    for position, key in enumerate(state.column("user").to_pylist()):
        _, _, finals = plain.run(rows[key])
        for column, final in zip(plain.state_columns, finals):
            np.testing.assert_allclose(state.column(column)[position].as_py(), final, atol=1e-6, rtol=0)
    scored = pq.read_table(tmp_path / "out.parquet").to_pylist()
    for row in scored:
        values, probabilities, _ = plain.run(rows[row["user"]])
        assert row["top_k_values"] == values.tolist()
        np.testing.assert_allclose(row["top_k_probs"], probabilities, atol=1e-6, rtol=0)


# Crashes: a SIGKILL at any moment leaves OUTPUT and --state-out as they were -----------------
def folder_digest(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def big_day(path: Path, rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, rows)
    keys = rng.permutation(rows * 2)[:rows]  # unsorted: the input is held in memory
    pq.write_table(pa.table({"user": keys, "x": pa.array([rng.integers(0, 11, n).tolist() for n in lengths],
                                                         pa.list_(pa.int64()))}), path)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["state_staged", "output_staged", "after_a_while"])
def test_a_sigkill_at_any_moment_leaves_output_and_state_as_they_were(tmp_path, moment):
    import subprocess
    import sys
    import time

    from conftest import ROOT

    big_day(tmp_path / "day1.parquet", 20_000, seed=1)
    big_day(tmp_path / "day2.parquet", 60_000, seed=2)
    base = [sys.executable, "-m", "score", "--model", str(RAGGED_MODEL), "--key", "user", "--quiet"]
    out, state = tmp_path / "out2.parquet", tmp_path / "state2"
    assert run_score(tmp_path / "day1.parquet", tmp_path / "out1.parquet", "--model", RAGGED_MODEL,
                     "--key", "user", "--state-out", tmp_path / "state1", "--quiet").code == 0
    # A previous attempt published OUTPUT and --state-out (of a smaller input).
    assert run_score(tmp_path / "day1.parquet", out, "--model", RAGGED_MODEL, "--key", "user",
                     "--state-in", tmp_path / "state1", "--state-out", state, "--quiet").code == 0
    before_output, before_state = out.read_bytes(), folder_digest(state)

    command = [*base, str(tmp_path / "day2.parquet"), str(out), "--state-in", str(tmp_path / "state1"),
               "--state-out", str(state), "--batch-size", "512"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        hidden = [path.name for path in tmp_path.iterdir() if path.name.startswith(".")]
        if moment == "state_staged" and any(name.startswith(".state2.") for name in hidden):
            break
        if moment == "output_staged" and any(name.startswith(".out2.parquet.") for name in hidden):
            break
        if moment == "after_a_while" and any(name.startswith(".state2.") for name in hidden):
            time.sleep(0.2)  # into the scoring
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before it could be killed"
    process.kill()
    process.wait(timeout=30)
    assert out.read_bytes() == before_output
    assert folder_digest(state) == before_state

    # The retry publishes both; a second retry of the same run gives the same rows and state.
    assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
    first_rows, first_state = pq.read_table(out), pq.read_table(state)
    assert subprocess.run(command, cwd=ROOT, capture_output=True).returncode == 0
    assert pq.read_table(out).equals(first_rows)
    assert pq.read_table(state).equals(first_state)
    assert first_rows.num_rows == 60_000


def test_new_keys_that_begin_alike_share_their_beginning_and_end_in_their_own_state(tmp_path):
    """300 new keys whose 24-step rows share their first 18 steps in 3 groups: the prefix tree
    cuts (fewer steps computed than scored), and every key's outputs and state are still exact."""
    rng = np.random.default_rng(5)
    stems = [rng.integers(0, 11, 18).tolist() for _ in range(3)]
    rows = {index: stems[index % 3] + rng.integers(0, 11, 6).tolist() for index in range(300)}
    source = day(tmp_path, "day", rows)
    result = keyed_run(source, tmp_path / "out.parquet", "--state-out", tmp_path / "state",
                       "--summary", tmp_path / "summary.json")
    assert result.code == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps_computed"] < summary["steps_scored"] / 2
    plain = Plain(str(RAGGED_MODEL))
    state = pq.read_table(tmp_path / "state")
    scored = pq.read_table(tmp_path / "out.parquet").to_pylist()
    for position, (key, row) in enumerate(zip(state.column("user").to_pylist(), scored)):
        assert row["user"] == key
        values, probabilities, finals = plain.run(rows[key])
        assert row["top_k_values"] == values.tolist()
        np.testing.assert_allclose(row["top_k_probs"], probabilities, atol=1e-6, rtol=0)
        for column, final in zip(plain.state_columns, finals):
            np.testing.assert_allclose(state.column(column)[position].as_py(), final, atol=1e-6, rtol=0)
