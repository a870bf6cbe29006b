"""Shared fixtures: the committed ONNX model, Parquet writers, a plain reference scorer, CLI runners."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_MODEL = FIXTURES / "model.onnx"
# A variable-length model (trained on the ragged example, rows of 1..32 steps): `make fixture`.
RAGGED_MODEL = FIXTURES / "ragged.onnx"

def _parquet_fuzz() -> Path:
    """Apache Arrow's Parquet fuzz regression files: beside the checkout, or where told."""
    candidates = [os.environ.get("PARQUET_FUZZ_DIR"), ROOT.parent / "shared" / "parquet-fuzz",
                  "/work/shared/parquet-fuzz"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return ROOT.parent / "shared" / "parquet-fuzz"


PARQUET_FUZZ = _parquet_fuzz()


@pytest.fixture(scope="session")
def model_path() -> str:
    return str(FIXTURE_MODEL)


@pytest.fixture(scope="session")
def scorer(model_path):
    from score.model import load

    return load(model_path)


@pytest.fixture(scope="session")
def spec(scorer):
    return scorer.spec


def list_array(values: np.ndarray, value_type: pa.DataType = pa.int64()) -> pa.Array:
    """A list<value_type> array from a (rows, steps) matrix."""
    rows, steps = values.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * steps)
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)).cast(value_type))


def random_x(rows: int, seed: int = 0, low: int = 0, high: int = 10, steps: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high + 1, size=(rows, steps), dtype=np.int64)


def write_x(path, x: np.ndarray, value_type: pa.DataType = pa.int64(), **columns) -> str:
    """Write an id column, an x list column and any extra columns to Parquet with pyarrow."""
    table = pa.table({"id": np.arange(x.shape[0], dtype=np.int64), "x": list_array(x, value_type), **columns})
    pq.write_table(table, str(path))
    return str(path)


@dataclass
class Reference:
    """The plain way: onnxruntime on class indices, np.argmax, a stable descending sort."""

    y_pred: np.ndarray  # (rows, T) raw y values
    top_values: np.ndarray  # (rows, T, K)
    top_probs: np.ndarray  # (rows, T, K)


def reference(model_path: str, x: np.ndarray, top_k: int = 3) -> Reference:
    """Score valid raw sequences the obvious way, without any seqscore code."""
    import json

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    spec = json.loads(session.get_modelmeta().custom_metadata_map["spec"])
    x_values = np.asarray(spec["x_values"])
    y_values = np.asarray(spec["y_values"])
    indices = np.searchsorted(x_values, x).astype(np.int32)
    assert (x_values[indices] == x).all(), "reference() takes valid rows only"
    probabilities = session.run(["probabilities"], {"x": indices})[0]
    order = np.argsort(-probabilities, axis=-1, kind="stable")[..., :top_k]
    return Reference(
        y_pred=y_values[probabilities.argmax(axis=-1)],
        top_values=y_values[order],
        top_probs=np.take_along_axis(probabilities, order, axis=-1),
    )


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def run_main(main, *args) -> CliResult:
    """Call a stage's main(argv) in-process and capture its output (argparse exits too)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse
            code = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def run_score(*args) -> CliResult:
    """`python -m score ARGS` in-process."""
    from score.__main__ import main

    return run_main(main, *args)


def run_export(*args) -> CliResult:
    """`python -m export ARGS` in-process."""
    from export.__main__ import main

    return run_main(main, *args)


def run_module(module: str, *args: str, timeout: float = 300, env: dict | None = None,
               **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m module args` in a subprocess (for signals, imports, real exit codes)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *[str(a) for a in args]],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env, **kwargs,
    )


def run_train(*args) -> CliResult:
    """`python -m train ARGS` in-process."""
    from train.__main__ import main

    return run_main(main, *args)


@pytest.fixture(scope="session")
def ragged_scorer():
    """The committed variable-length fixture model, loaded as the job loads it."""
    from score.model import load

    return load(str(RAGGED_MODEL))


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def small_default(path: Path, rows: int) -> str:
    """The first ``rows`` rows of the embedded default dataset, written to ``path``."""
    from train import data

    data.write_parquet(data.default_dataset(rows=rows), str(path))
    return str(path)


def assert_refused(result: CliResult, code: int, line: str, *absent: Path) -> None:
    """A refusal: the exit code, exactly one line on stderr and nothing on stdout; none of
    ``absent`` exists and no temporary file is left beside it (nothing was published)."""
    assert (result.code, result.lines, result.stdout) == (code, [line], ""), result.stderr
    for path in map(Path, absent):
        assert not path.exists(), f"{path} was published"
        assert [p.name for p in path.parent.iterdir() if ".tmp-" in p.name] == []


def parser_of(command: str) -> argparse.ArgumentParser:
    """The argument parser of `python -m COMMAND`: every command's module (a package's
    __main__) has a parser(). An import error fails the test (score.spark included): a command
    that cannot be imported has flags nobody checks."""
    module = importlib.import_module(command)
    if not hasattr(module, "parser"):
        module = importlib.import_module(f"{command}.__main__")
    return module.parser()


# Spark ----------------------------------------------------------------------------------------
def _spark_missing() -> str | None:
    if shutil.which("java") is None:
        return "no `java` on PATH: Spark needs a JRE 17+ (make setup installs one)"
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is missing: it is the 'spark' extra, pip install -e '.[spark]'"
    return None


needs_spark = pytest.mark.skipif(_spark_missing() is not None, reason=_spark_missing() or "")


@pytest.fixture(scope="session")
def spark():
    """One local[2] session for the Spark tests: starting a JVM costs seconds on a 2-core machine."""
    from pyspark.sql import SparkSession

    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers need this venv's seqscore
    session = (
        SparkSession.builder.master("local[2]")
        .appName("seqscore-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        # Small Arrow batches: several batches per task, so partition-relative counts matter.
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "400")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if previous is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = previous



def run_spark_cli(*args) -> tuple[int, list[str]]:
    """python -m score.spark's main in-process: its exit code and stderr's lines."""
    from score import spark as scale

    err = io.StringIO()
    with redirect_stderr(err):
        code = scale.main([str(a) for a in args])
    return code, [line for line in err.getvalue().splitlines() if line.strip()]


def delta_rows(table, version: int | None = None) -> pa.Table:
    """A Delta table's live rows (``table``: a path or a deltalake.DeltaTable), read in this
    thread. delta-rs's to_pyarrow_table scans with pyarrow's thread pool, whose threads can
    outlive Arrow's memory pools and abort the interpreter at exit ("terminate called without
    an active exception", exit 134; apache/arrow#34314, delta-io/delta-rs#2184): 2 in 12
    processes here, and none in 20 reading without threads."""
    import deltalake

    found = table if isinstance(table, deltalake.DeltaTable) else deltalake.DeltaTable(table, version=version)
    return found.to_pyarrow_dataset().to_table(use_threads=False)

