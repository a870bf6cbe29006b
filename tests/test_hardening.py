"""The fault matrix: every bad input and fault ends in its exit code, one line, and nothing lost.

Each case asserts the exact exit code, the exact stderr line (one line, no traceback), that no
output (and no temporary file) is left behind, and that the input is byte-for-byte unchanged.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, PARQUET_FUZZ, ROOT, assert_refused, random_x, run_score, write_x

MALFORMED = FIXTURES / "malformed"
X_RANGE = "(0..10)"


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in Path(directory).iterdir() if ".tmp-" in p.name)



# Row problems ---------------------------------------------------------------------------------------
ROW_CASES = [
    pytest.param([1, 2, 13, 4], "x[2] = 13 is not one of the model's input values (0..10)", id="unknown_value"),
    pytest.param([1, -5, 3, 4], "x[1] = -5 is not one of the model's input values (0..10)", id="negative_value"),
    pytest.param(None, "x is null", id="null_row"),
    pytest.param([1, None, 3, 4], "x[1] is null", id="null_element"),
    pytest.param([1, 2, 3], "x has 3 values; the model takes sequences of 4", id="too_short"),
    pytest.param([1, 2, 3, 4, 5], "x has 5 values; the model takes sequences of 4", id="too_long"),
    pytest.param([], "x has 0 values; the model takes sequences of 4", id="empty_list"),
]


@pytest.mark.parametrize("bad_row,detail", ROW_CASES)
def test_row_problem_stops_the_run(tmp_path, model_path, bad_row, detail):
    rows = [[1, 2, 3, 4]] * 1234 + [bad_row] + [[0, 0, 0, 0]] * 10
    source = tmp_path / "input.parquet"
    pq.write_table(pa.table({"x": pa.array(rows, pa.list_(pa.int64()))}), source)
    before = digest(source)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path)
    assert_refused(result, 65, f"error: {source}: row 1234: {detail}", output)
    assert digest(source) == before


@pytest.mark.parametrize("bad_row,detail", ROW_CASES)
def test_row_problem_under_null_policy_keeps_the_row(tmp_path, model_path, bad_row, detail):
    rows = [[1, 2, 3, 4], bad_row, [0, 0, 0, 0]]
    source = tmp_path / "input.parquet"
    pq.write_table(pa.table({"x": pa.array(rows, pa.list_(pa.int64()))}), source)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path, "--on-invalid", "null", "--quiet",
                       "--summary", tmp_path / "summary.json")
    assert result.code == 0, result.stderr
    out = pq.read_table(output)
    assert out.column("error").to_pylist() == [None, detail, None]
    assert out.column("y_pred").to_pylist()[1] is None
    assert out.column("top_k_values").to_pylist()[1] is None
    assert out.column("top_k_probs").to_pylist()[1] is None
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rows_invalid"] == 1
    assert sum(summary["invalid_by_reason"].values()) == 1


def test_unsigned_values_that_do_not_fit_are_refused_not_wrapped(tmp_path, model_path):
    # 2**64 - 1 would wrap to -1 as a signed integer; it must be quoted exactly and refused.
    source = tmp_path / "input.parquet"
    pq.write_table(pa.table({"x": pa.array([[1, 2, 3, 4], [2**64 - 1, 0, 0, 0]], pa.list_(pa.uint64()))}), source)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path)
    assert_refused(result, 65, f"error: {source}: row 1: x[0] = 18446744073709551615 is not one of "
                               f"the model's input values (0..10)", output)


# File problems -----------------------------------------------------------------------------------------
def test_input_missing(tmp_path, model_path):
    output = tmp_path / "out.parquet"
    result = run_score(tmp_path / "nope.parquet", output, "--model", model_path)
    assert_refused(result, 66, f"error: {tmp_path / 'nope.parquet'}: no such file or directory", output)


def test_empty_input_directory(tmp_path, model_path):
    (tmp_path / "in").mkdir()
    result = run_score(tmp_path / "in", tmp_path / "out", "--model", model_path)
    assert result.code == 66
    assert result.lines == [f"error: {tmp_path / 'in'}: no *.parquet files in this directory"]


MALFORMED_CASES = {
    "empty.parquet": "the file is empty (0 bytes); expected a Parquet file",
    "not_parquet.parquet": "not a Parquet file, or truncated (no Parquet footer: Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.)",
    "truncated.parquet": "not a Parquet file, or truncated (no Parquet footer: Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.)",
    "truncated_footer.parquet": "not a Parquet file, or truncated (no Parquet footer: Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file.)",
    "zeroed_footer.parquet": "corrupt or truncated Parquet file (Couldn't deserialize thrift: TProtocolException: Invalid data)",
    "footer_length_2GiB.parquet": "corrupt or truncated Parquet file (Parquet file size is 25026 bytes, smaller than the size reported by footer's (2147483647bytes))",
    "claims_2pow40_rows.parquet": "corrupt Parquet file (the footer claims 1099511627776 rows but 2000 were read)",
    "claims_1TiB_column_chunk.parquet": "corrupt or truncated Parquet file (Invalid column metadata (corrupt file?))",
    "claims_2pow30_schema_elements.parquet": "corrupt or truncated Parquet file (Couldn't deserialize thrift: TProtocolException: Exceeded size limit)",
    "claims_2GiB_string.parquet": "corrupt or truncated Parquet file (Couldn't deserialize thrift: TProtocolException: Exceeded size limit)",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_CASES))
def test_malformed_parquet_fixtures(tmp_path, model_path, name):
    source = tmp_path / name
    shutil.copyfile(MALFORMED / name, source)
    before = digest(source)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path)
    assert_refused(result, 65, f"error: {source}: {MALFORMED_CASES[name]}", output)
    assert digest(source) == before


def fuzz_files() -> list[Path]:
    if not PARQUET_FUZZ.is_dir():
        return []
    return sorted(p for p in PARQUET_FUZZ.iterdir() if p.name.startswith("clusterfuzz-"))


@pytest.mark.skipif(not fuzz_files(), reason="../shared/parquet-fuzz is not present beside the checkout")
def test_arrow_parquet_fuzz_regression_files(tmp_path, model_path):
    failures = []
    for path in fuzz_files():
        output = tmp_path / "out.parquet"
        result = run_score(path, output, "--model", model_path)
        one_clean_line = (
            len(result.lines) == 1
            and result.lines[0].startswith(f"error: {path}: ")
            and result.lines[0].isprintable()
        )
        if result.code != 65 or not one_clean_line or output.exists() or leftovers(tmp_path):
            failures.append(f"{path.name}: exit {result.code}: {result.stderr[:200]!r}")
    assert failures == []
    assert len(fuzz_files()) > 100


def test_column_missing(tmp_path, model_path):
    source = tmp_path / "input.parquet"
    pq.write_table(pa.table({"id": [1], "seq": pa.array([[1, 2, 3, 4]])}), source)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path)
    assert_refused(result, 65, f"error: {source}: column 'x' not found (the file has: id, seq); "
                               f"name the sequence column with --input-column", output)


@pytest.mark.parametrize("column,type_text,hint", [
    pytest.param(pa.array([[1.0, 2.0, 3.0, 4.0]]), "list<item: double>",
                 "; floating-point values are refused rather than truncated: cast them to integers", id="float_list"),
    pytest.param(pa.array([[1.5, 2.0, 3.0, 4.0]], pa.list_(pa.float32())), "list<item: float>",
                 "; floating-point values are refused rather than truncated: cast them to integers", id="float32_list"),
    pytest.param(pa.array([["1", "2", "3", "4"]]), "list<item: string>", "", id="string_list"),
    pytest.param(pa.array([7]), "int64", "", id="plain_integer"),
    pytest.param(pa.array(["1 2 3 4"]), "string", "", id="string"),
])
def test_column_not_integer_sequences(tmp_path, model_path, column, type_text, hint):
    source = tmp_path / "input.parquet"
    pq.write_table(pa.table({"x": column}), source)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path)
    expected = ("a list of integers (list, large_list or fixed_size_list of int8..int64 or "
                "uint8..uint64)")
    type_text = pq.read_schema(source).field("x").type
    assert_refused(result, 65, f"error: {source}: column 'x' is {type_text}; expected {expected}{hint}", output)


def test_extension_type_metadata_is_refused(tmp_path, model_path):
    source = tmp_path / "input.parquet"
    field = pa.field("payload", pa.binary(), metadata={b"ARROW:extension:name": b"arrow.py_extension_type",
                                                       b"ARROW:extension:metadata": b"cos\nsystem\n(S'echo pwned'\ntR."})
    schema = pa.schema([pa.field("x", pa.list_(pa.int64())), field])
    pq.write_table(pa.table({"x": pa.array([[1, 2, 3, 4]]), "payload": pa.array([b""])}, schema=schema), source)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path)
    assert_refused(result, 65, f"error: {source}: column 'payload' carries Arrow extension-type metadata, "
                               f"which is refused (never deserialised); write plain Arrow types", output)


def test_input_already_has_an_output_column(tmp_path, model_path):
    source = tmp_path / "input.parquet"
    pq.write_table(pa.table({"x": pa.array([[1, 2, 3, 4]]), "y_pred": [1]}), source)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model_path)
    assert_refused(result, 65, f"error: {source}: the input already has a column named 'y_pred', which "
                               f"the output adds; rename or drop it", output)


def test_output_is_input(tmp_path, model_path):
    source = write_x(tmp_path / "input.parquet", random_x(10))
    before = digest(source)
    for same in (source, str(tmp_path / "." / "input.parquet")):
        result = run_score(source, same, "--model", model_path)
        assert result.code == 2
        assert result.lines == [f"error: OUTPUT is INPUT ({same}); choose another output path"]
    assert digest(source) == before
    assert leftovers(tmp_path) == []


def test_output_inside_input_directory(tmp_path, model_path):
    (tmp_path / "in").mkdir()
    write_x(tmp_path / "in" / "a.parquet", random_x(3))
    result = run_score(tmp_path / "in", tmp_path / "in" / "scored", "--model", model_path)
    assert result.code == 2
    assert result.lines[0].startswith(f"error: OUTPUT {tmp_path / 'in' / 'scored'} is inside INPUT")


def test_output_parent_missing(tmp_path, model_path):
    source = write_x(tmp_path / "input.parquet", random_x(10))
    output = tmp_path / "missing" / "out.parquet"
    result = run_score(source, output, "--model", model_path)
    assert result.code == 73
    assert result.lines == [f"error: {output}: cannot create the output (the directory "
                            f"{tmp_path / 'missing'} does not exist)"]
    assert not (tmp_path / "missing").exists()


def test_output_is_a_directory(tmp_path, model_path):
    source = write_x(tmp_path / "input.parquet", random_x(10))
    (tmp_path / "out").mkdir()
    result = run_score(source, tmp_path / "out", "--model", model_path)
    assert result.code == 73
    assert result.lines == [f"error: {tmp_path / 'out'}: is a directory; INPUT is a file, so OUTPUT must be a file path"]
    assert list((tmp_path / "out").iterdir()) == []


def _as_nobody():
    os.setgid(65534)
    os.setuid(65534)


def nobody_can_run_python() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        probe = subprocess.run([sys.executable, "-c", "import numpy, pyarrow, onnxruntime"], cwd=ROOT,
                               capture_output=True, preexec_fn=_as_nobody, timeout=60)
    except OSError:
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not nobody_can_run_python(),
                    reason="needs root, and a Python the unprivileged user 'nobody' can run (this one "
                           "lives under a private home); the read-only mount test covers exit 73")
def test_permissions_for_an_unprivileged_user(model_path):
    # Root ignores file permissions, so the job runs as 'nobody' in a world-readable folder.
    folder = Path(tempfile.mkdtemp(prefix="seqscore-perm-"))
    try:
        folder.chmod(0o755)
        source = Path(write_x(folder / "input.parquet", random_x(10)))
        source.chmod(0o644)
        locked_in = Path(write_x(folder / "locked.parquet", random_x(10)))
        locked_in.chmod(0o000)
        model = folder / "model.onnx"
        shutil.copyfile(model_path, model)
        model.chmod(0o644)
        command = [sys.executable, "-m", "score", "--model", str(model)]
        run = lambda *args: subprocess.run(command + [str(a) for a in args], cwd=ROOT, capture_output=True,  # noqa: E731
                                           text=True, preexec_fn=_as_nobody, timeout=120)
        cannot_write = run(source, folder / "out.parquet")
        assert cannot_write.returncode == 73, cannot_write.stderr
        assert cannot_write.stderr.splitlines() == [f"error: {folder / 'out.parquet'}: cannot create the output (Permission denied)"]
        cannot_read = run(locked_in, "/tmp/seqscore-never.parquet")
        assert cannot_read.returncode == 77, cannot_read.stderr
        assert cannot_read.stderr.splitlines() == [f"error: {locked_in}: permission denied"]
        assert not (folder / "out.parquet").exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def mount_tmpfs(mount_point: Path, options: str) -> None:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'})")


def test_output_on_a_read_only_file_system(tmp_path, model_path):
    source = write_x(tmp_path / "input.parquet", random_x(10))
    mount_point = tmp_path / "readonly"
    mount_point.mkdir()
    mount_tmpfs(mount_point, "ro,size=64k")
    try:
        result = run_score(source, mount_point / "out.parquet", "--model", model_path)
        assert result.code == 73
        assert result.lines == [f"error: {mount_point / 'out.parquet'}: cannot create the output (Read-only file system)"]
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 1 MiB tmpfs mounted for the test: a real 'no space left on device'."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mount_tmpfs(mount_point, "size=1m")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_disk_full(tmp_path, model_path, small_filesystem):
    source = write_x(tmp_path / "input.parquet", random_x(50_000, seed=3))
    output = small_filesystem / "out.parquet"
    result = run_score(source, output, "--model", model_path, "--batch-size", "4096")
    assert result.code == 74
    assert result.lines == [f"error: {output}: no space left on the device while writing; nothing was published"]
    assert list(small_filesystem.iterdir()) == []


def test_disk_full_keeps_the_previous_output(tmp_path, model_path, small_filesystem):
    source = write_x(tmp_path / "input.parquet", random_x(50_000, seed=3))
    output = small_filesystem / "out.parquet"
    small = write_x(tmp_path / "small.parquet", random_x(10))
    assert run_score(small, output, "--model", model_path, "--quiet").code == 0
    before = digest(output)
    result = run_score(source, output, "--model", model_path, "--batch-size", "4096")
    assert result.code == 74
    assert digest(output) == before
    assert leftovers(small_filesystem) == []


# The model (exit 78, checked before any data is read) --------------------------------------------------
SPEC = {"x_values": list(range(11)), "y_values": list(range(25)), "seq_len": 4, "input_column": "x"}


def toy_model(path: Path, *, spec: dict | None = SPEC, output_name: str = "probabilities", classes: int = 25,
              input_type: str = "INT32", nan_below: int | None = None, domain: str = "",
              external: bool = False) -> Path:
    """A small hand-built ONNX model: uniform probabilities, or NaN/inf for inputs below a value.
    Only the tests that build one need the onnx package (a train extra): they skip without it."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["xf", "axis"], ["xu"])]
    def tensor(name: str, values: np.ndarray):
        return numpy_helper.from_array(values, name)  # raw_data, so it can live in external data

    ones = np.full((1, 1, classes), 1.0 / classes, dtype=np.float32)
    zeros = np.zeros((1, 1, classes), dtype=np.float32)
    initializers = [tensor("axis", np.array([2], dtype=np.int64)), tensor("ones", ones)]
    if nan_below is not None:
        initializers.append(tensor("shift", np.array(nan_below, dtype=np.float32)))
        nodes += [helper.make_node("Sub", ["xu", "shift"], ["d"]), helper.make_node("Log", ["d"], ["l"]),
                  helper.make_node("Mul", ["l", "zero_ones"], ["m"]), helper.make_node("Add", ["m", "ones"], [output_name])]
        initializers.append(tensor("zero_ones", zeros))
    else:
        nodes += [helper.make_node("Mul", ["xu", "zeros"], ["m"]), helper.make_node("Add", ["m", "ones"], [output_name])]
        initializers.append(tensor("zeros", zeros))
    if domain:
        nodes.append(helper.make_node("Custom", ["xf"], ["unused"], domain=domain))
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", getattr(TensorProto, input_type), ["batch", "time"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", "time", classes])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if spec is not None:
        helper.set_model_props(model, {"spec": json.dumps(spec)})
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)
    else:
        onnx.save_model(model, str(path))
    return path


def model_refusal(tmp_path: Path, model: Path) -> tuple:
    source = write_x(tmp_path / "input.parquet", random_x(10))
    output = tmp_path / "out.parquet"
    return run_score(source, output, "--model", model), output


def test_toy_model_scores(tmp_path):
    model = toy_model(tmp_path / "toy.onnx")
    result, output = model_refusal(tmp_path, model)
    assert result.code == 0, result.stderr
    assert pq.read_table(output).column("y_pred").to_pylist()[0] == [0, 0, 0, 0]  # ties: lowest class


def test_model_missing(tmp_path):
    result, output = model_refusal(tmp_path, tmp_path / "absent.onnx")
    assert_refused(result, 78, f"error: {tmp_path / 'absent.onnx'}: model not found; run `make export`, "
                               f"or pass --model / set SCORE_MODEL", output)


def test_model_corrupt(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07" + os.urandom(2000))
    result, output = model_refusal(tmp_path, model)
    assert result.code == 78
    assert len(result.lines) == 1 and result.lines[0].startswith(f"error: {model}: ")
    assert not output.exists()


def test_model_truncated(tmp_path, model_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(Path(model_path).read_bytes()[:5000])
    result, output = model_refusal(tmp_path, model)
    assert result.code == 78
    assert result.lines[0].startswith(f"error: {model}: ")
    assert len(result.lines) == 1 and not output.exists()


def test_model_failing_its_checksum(tmp_path, model_path):
    model = tmp_path / "model.onnx"
    data = bytearray(Path(model_path).read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    shutil.copyfile(model_path + ".sha256", tmp_path / "model.onnx.sha256")
    expected = Path(model_path + ".sha256").read_text().split()[0]
    actual = hashlib.sha256(bytes(data)).hexdigest()
    result, output = model_refusal(tmp_path, model)
    assert_refused(result, 78, f"error: {model}: sha256 is {actual} but model.onnx.sha256 says {expected}; "
                               f"the model changed after export, re-run `make export`", output)


def test_model_without_spec(tmp_path):
    result, output = model_refusal(tmp_path, toy_model(tmp_path / "m.onnx", spec=None))
    assert_refused(result, 78, f"error: {tmp_path / 'm.onnx'}: no 'spec' in the model metadata; export it "
                               f"with `make export`", output)


def test_model_with_external_data(tmp_path):
    model = toy_model(tmp_path / "m.onnx", external=True)
    result, output = model_refusal(tmp_path, model)
    assert_refused(result, 78, f"error: {model}: the model keeps 3 tensor(s) in external data files; export "
                               f"it as one self-contained file", output)


def test_model_with_a_custom_op_domain(tmp_path):
    model = toy_model(tmp_path / "m.onnx", domain="evil.ops")
    result, output = model_refusal(tmp_path, model)
    assert_refused(result, 78, f"error: {model}: the model uses operator domain(s) evil.ops, which onnxruntime "
                               f"does not ship; only (default), ai.onnx, ai.onnx.ml, com.microsoft are allowed", output)


@pytest.mark.parametrize("kwargs,detail", [
    pytest.param({"output_name": "scores"}, "model outputs are scores; expected one named 'probabilities'", id="output_name"),
    pytest.param({"classes": 24}, "output 'probabilities' has 24 classes but the spec lists 25 y values", id="classes"),
    pytest.param({"input_type": "FLOAT"}, "input 'x' is tensor(float); expected tensor(int32) or tensor(int64)", id="input_type"),
    pytest.param({"spec": {**SPEC, "seq_len": 0}}, "spec: seq_len is 0; expected a positive integer", id="bad_spec"),
    pytest.param({"spec": {"x_values": [1]}}, "spec: missing y_values, seq_len", id="incomplete_spec"),
])
def test_model_not_matching_its_spec(tmp_path, kwargs, detail):
    model = toy_model(tmp_path / "m.onnx", **kwargs)
    result, output = model_refusal(tmp_path, model)
    assert_refused(result, 78, f"error: {model}: {detail}", output)


def test_model_checked_before_any_data_is_read(tmp_path):
    # A broken model and a missing input: the model's exit code wins, so a scheduler knows the
    # deployment is at fault, not the day's data.
    result = run_score(tmp_path / "missing.parquet", tmp_path / "out.parquet", "--model", tmp_path / "absent.onnx")
    assert result.code == 78


def test_non_finite_output_fails_the_row_or_the_run(tmp_path):
    model = toy_model(tmp_path / "nan.onnx", nan_below=5)
    x = np.array([[6, 7, 8, 9], [1, 6, 6, 6], [9, 9, 9, 9], [5, 6, 7, 8]])
    source = write_x(tmp_path / "input.parquet", x)
    output = tmp_path / "out.parquet"
    result = run_score(source, output, "--model", model)
    assert_refused(result, 65, f"error: {source}: row 1: the model's output is NaN or infinite for this row", output)
    result = run_score(source, output, "--model", model, "--on-invalid", "null", "--quiet",
                       "--summary", tmp_path / "s.json")
    assert result.code == 0, result.stderr
    out = pq.read_table(output)
    assert out.column("error").to_pylist() == [None, "the model's output is NaN or infinite for this row", None,
                                                "the model's output is NaN or infinite for this row"]
    assert out.column("y_pred").to_pylist()[1] is None
    probabilities = np.array([p for p in out.column("top_k_probs").to_pylist() if p is not None])
    assert np.isfinite(probabilities).all()
    assert json.loads((tmp_path / "s.json").read_text())["invalid_by_reason"]["non_finite_output"] == 2


def test_usage_errors_are_one_line(tmp_path, model_path):
    source = write_x(tmp_path / "input.parquet", random_x(3))
    cases = {
        ("--top-k", "26"): "error: --top-k 26: expected 1 <= K <= 25 (the model's classes)",
        ("--top-k", "0"): "python -m score: error: argument --top-k: 0 is not a positive integer (see --help)",
        ("--on-invalid", "skip"): "python -m score: error: argument --on-invalid: invalid choice: 'skip' (choose from 'error', 'null') (see --help)",
        ("--input-columns", "a,b"): "error: --input-columns names 2 column(s); the model takes sequences of 4, one column per step (the wide layout is fixed-length)",
        ("--batch-size", "-3"): "python -m score: error: argument --batch-size: -3 is not a positive integer (see --help)",
    }
    for flags, line in cases.items():
        result = run_score(source, tmp_path / "out.parquet", "--model", model_path, *flags)
        assert result.code == 2, flags
        assert result.lines == [line], flags
    assert not (tmp_path / "out.parquet").exists()


# Signals, kills and concurrent runs ---------------------------------------------------------------------
def big_input(folder: Path, rows: int = 400_000) -> Path:
    x = random_x(rows, seed=21)
    # Random noise columns make the output large, so writing takes a while.
    noise = np.random.default_rng(1).random(rows)
    return Path(write_x(folder / "big.parquet", x, noise=noise))


def start_job(source: Path, output: Path, model_path: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "score", str(source), str(output), "--model", model_path,
         "--batch-size", "2048", "--quiet", *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for_writing(folder: Path, process: subprocess.Popen, minimum_bytes: int = 200_000) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the job ended before it could be interrupted: {process.stderr.read()}")
        temporary = [p for p in folder.iterdir() if ".tmp-" in p.name]
        if temporary and temporary[0].stat().st_size >= minimum_bytes:
            return
        time.sleep(0.02)
    pytest.fail("the job never started writing")


@pytest.fixture
def previous_output(tmp_path, model_path) -> tuple[Path, str]:
    output = tmp_path / "out.parquet"
    small = write_x(tmp_path / "small.parquet", random_x(10))
    assert run_score(small, output, "--model", model_path, "--quiet").code == 0
    return output, digest(output)


def test_sigkill_mid_write_leaves_the_previous_output_intact(tmp_path, model_path, previous_output):
    output, before = previous_output
    source = big_input(tmp_path)
    process = start_job(source, output, model_path)
    wait_for_writing(tmp_path, process)
    process.kill()
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert digest(output) == before
    # A SIGKILL leaves its hidden temporary file (nothing can remove it); never a torn OUTPUT.
    assert pq.read_metadata(output).num_rows == 10


@pytest.mark.parametrize("signal_number,exit_code,name", [
    pytest.param(signal.SIGTERM, 143, "SIGTERM", id="sigterm"),
    pytest.param(signal.SIGINT, 130, "SIGINT", id="sigint"),
])
def test_sigterm_and_ctrl_c_remove_the_temporary_file(tmp_path, model_path, previous_output, signal_number, exit_code, name):
    output, before = previous_output
    source = big_input(tmp_path)
    process = start_job(source, output, model_path)
    wait_for_writing(tmp_path, process)
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == exit_code, stderr
    assert stderr.splitlines() == [f"error: interrupted by {name}; no output was published"]
    assert digest(output) == before
    assert leftovers(tmp_path) == []


def test_two_concurrent_runs_never_mix(tmp_path, model_path):
    source = big_input(tmp_path, rows=150_000)
    output = tmp_path / "out.parquet"
    first = start_job(source, output, model_path, "--top-k", "1")
    second = start_job(source, output, model_path, "--top-k", "5")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.wait(timeout=300) == 0, second.stderr.read()
    table = pq.read_table(output)
    k = int(pq.read_metadata(output).metadata[b"seqscore.top_k"])
    assert k in (1, 5)
    assert table.num_rows == 150_000
    lengths = {len(step) for row in table.column("top_k_values").slice(0, 1000).to_pylist() for step in row}
    assert lengths == {k}
    assert leftovers(tmp_path) == []


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = "score" if node.level else node.module
            base = f"{package}.{node.module}" if node.level and node.module else package
            modules.add(base)
            # `from score import sink` imports the module score.sink.
            modules.update(f"{base}.{alias.name}" for alias in node.names)
    return modules


def test_sinks_never_import_the_facade_and_storage_no_sink():
    """score.sink -> local_sink, remote_sink -> sink_common, storage: no cycle back."""
    sinks = {"score.sink", "score.local_sink", "score.remote_sink", "score.sink_common"}
    imports = {name: imported_modules(ROOT / "score" / f"{name}.py")
               for name in ("sink", "local_sink", "remote_sink", "sink_common", "storage")}
    assert {"score.local_sink", "score.remote_sink"} <= imports["sink"]
    for name in ("local_sink", "remote_sink", "sink_common"):
        assert "score.sink" not in imports[name], name
    assert not imports["sink_common"] & sinks
    assert not imports["storage"] & sinks
