"""The in-memory paths the job is compared with, each timed in a child process of its own.

`python -m bench.paths PATH MODEL_DIR DATA --threads N --batch-sizes A,B --rows R` prints one
JSON object: "rates", rows/s for each batch size, and for the ragged paths "padding", padded
steps / real steps - 1 for each batch size, and "real_steps". The rows are read and encoded
(and for the ragged paths padded into their batches) before the clock starts; only inference
(and, for Keras, the question's argmax and top-3) is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow.parquet as pq

TOP_K = 3


def encoded_rows(model_dir: str, data: str, rows: int, index_dtype: type) -> np.ndarray:
    """The first ``rows`` rows of ``data`` as class indices, through the scoring contract."""
    from score.encoding import Encoder
    from score.sequences import sequences_from_list
    from score.spec import Spec

    with open(os.path.join(model_dir, "spec.json")) as handle:
        spec = Spec.from_dict(json.load(handle))
    column = pq.read_table(data, columns=[spec.input_column]).column(spec.input_column)
    column = column.slice(0, rows) if rows else column
    raw = sequences_from_list(column.combine_chunks(), spec.seq_len, spec.input_column)
    return np.ascontiguousarray(Encoder(spec, index_dtype).encode_strict(raw))


def _timed(function, repeat: int) -> float:
    """The fastest of ``repeat`` runs, in seconds: the least disturbed by other processes."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def keras_rates(
    model_dir: str, data: str, threads: int, batch_sizes: list[int], rows: int, repeat: int
) -> dict[int, float]:
    """Keras model.predict, then np.argmax and a numpy top-3: the question's way."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import keras

    import train  # noqa: F401  (registers the model's one-hot layer)

    model = keras.saving.load_model(os.path.join(model_dir, "model.keras"))
    inputs = encoded_rows(model_dir, data, rows, np.int32)

    def predict(batch_size: int) -> None:
        probabilities = model.predict(inputs, batch_size=batch_size, verbose=0)
        np.argmax(probabilities, axis=-1)
        top = np.argsort(-probabilities, axis=-1)[..., :TOP_K]
        np.take_along_axis(probabilities, top, axis=-1)

    rates = {}
    for batch_size in batch_sizes:
        model.predict(inputs[:batch_size], batch_size=batch_size, verbose=0)  # trace once
        rates[batch_size] = len(inputs) / _timed(lambda: predict(batch_size), repeat)
    return rates


def onnxruntime_rates(
    model_dir: str, data: str, threads: int, batch_sizes: list[int], rows: int, repeat: int
) -> dict[int, float]:
    """session.run over pre-encoded integer arrays, nothing else: this runtime's ceiling.

    A plain session on the model file with the job's session options (score.model.session_options),
    fetching the probabilities only: the top-k the job adds to the graph at load time is part of
    the job's work, not of this ceiling.
    """
    import onnxruntime as ort

    from score.model import SessionConfig, load, session_options
    from score.spec import INPUT_NAME, OUTPUT_NAME

    path = os.path.join(model_dir, "model.onnx")
    scorer = load(path, SessionConfig(threads=threads))  # for the index type the model takes
    inputs = encoded_rows(model_dir, data, rows, scorer.encoder.index_dtype)
    session = ort.InferenceSession(
        path,
        sess_options=session_options(SessionConfig(threads=threads)),
        providers=["CPUExecutionProvider"],
    )

    def run(batch_size: int) -> None:
        for start in range(0, len(inputs), batch_size):
            session.run([OUTPUT_NAME], {INPUT_NAME: inputs[start : start + batch_size]})

    rates = {}
    for batch_size in sorted(batch_sizes):  # ascending: the arena grows once per size
        session.run([OUTPUT_NAME], {INPUT_NAME: inputs[:batch_size]})
        rates[batch_size] = len(inputs) / _timed(lambda: run(batch_size), repeat)
    return rates


def ragged_rows(
    model_dir: str, data: str, rows: int, index_dtype: type
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``rows`` rows of any length as flat class indices and offsets (rows + 1)."""
    from score.encoding import Encoder
    from score.sequences import ragged_from_list
    from score.spec import Spec

    with open(os.path.join(model_dir, "spec.json")) as handle:
        spec = Spec.from_dict(json.load(handle))
    column = pq.read_table(data, columns=[spec.input_column]).column(spec.input_column)
    column = column.slice(0, rows) if rows else column
    raw = ragged_from_list(column.combine_chunks(), spec.input_column, spec.seq_len)
    return Encoder(spec, index_dtype).encode_ragged_strict(raw), raw.offsets


def padded_batches(
    flat: np.ndarray, offsets: np.ndarray, order: np.ndarray, batch_size: int
) -> list[np.ndarray]:
    """Rows ``order`` in batches of ``batch_size``, each right-padded to its own longest row:
    what a user writes by hand to run rows of any length through the model."""
    from score.arrays import to_padded

    lengths = np.diff(offsets)
    batches = []
    for start in range(0, order.size, batch_size):
        rows = order[start : start + batch_size]
        batches.append(to_padded(flat, offsets, rows, int(lengths[rows].max()))[0])
    return batches


def ragged_rates(
    model_dir: str,
    data: str,
    threads: int,
    batch_sizes: list[int],
    rows: int,
    repeat: int,
    by_length: bool,
) -> tuple[dict[int, float], dict[int, float], int]:
    """session.run over batches of rows of any length, each padded to its longest row; the rows
    in file order or (``by_length``) sorted by length first. Returns rows/s and the padding
    (padded steps / real steps - 1) per batch size, and the real steps timed.

    The same plain session as onnxruntime_rates; the padded batches are built before the clock.
    """
    import onnxruntime as ort

    from score.model import SessionConfig, load, session_options
    from score.spec import INPUT_NAME, OUTPUT_NAME

    path = os.path.join(model_dir, "model.onnx")
    scorer = load(path, SessionConfig(threads=threads))  # for the index type the model takes
    flat, offsets = ragged_rows(model_dir, data, rows, scorer.encoder.index_dtype)
    del scorer  # its session: this path runs a plain one
    lengths = np.diff(offsets)
    order = np.argsort(lengths, kind="stable") if by_length else np.arange(lengths.size)
    session = ort.InferenceSession(
        path,
        sess_options=session_options(SessionConfig(threads=threads)),
        providers=["CPUExecutionProvider"],
    )

    rates, padding = {}, {}
    for batch_size in sorted(batch_sizes):  # ascending: the arena grows once per size
        batches = padded_batches(flat, offsets, order, batch_size)
        widest = max(batches, key=lambda batch: batch.shape[1])
        session.run([OUTPUT_NAME], {INPUT_NAME: widest[:batch_size]})  # warm up

        def run(batches=batches) -> None:
            for batch in batches:
                session.run([OUTPUT_NAME], {INPUT_NAME: batch})

        rates[batch_size] = lengths.size / _timed(run, repeat)
        padding[batch_size] = sum(batch.size for batch in batches) / int(lengths.sum()) - 1
        del batches, widest
    return rates, padding, int(lengths.sum())


PATHS = {"keras": keras_rates, "onnxruntime": onnxruntime_rates}
# Rows of any length, for a variable-length model: in file order, or sorted by length.
RAGGED_PATHS = {"onnxruntime-file-order": False, "onnxruntime-sorted": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paths")
    parser.add_argument("path", choices=sorted(PATHS) + sorted(RAGGED_PATHS))
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-sizes", required=True, help="comma-separated")
    parser.add_argument("--rows", type=int, default=0, help="first N rows only (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="report the fastest of N runs")
    args = parser.parse_args(argv)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    common = (args.model_dir, args.data, args.threads, batch_sizes, args.rows, args.repeat)
    figures: dict = {}
    if args.path in RAGGED_PATHS:
        rates, padding, real_steps = ragged_rates(*common, by_length=RAGGED_PATHS[args.path])
        figures["padding"] = {str(size): value for size, value in padding.items()}
        figures["real_steps"] = real_steps
    else:
        rates = PATHS[args.path](*common)
    figures["rates"] = {str(size): rate for size, rate in rates.items()}
    json.dump(figures, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
