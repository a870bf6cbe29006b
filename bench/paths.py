"""The in-memory paths the job is compared with, each timed in a child process of its own.

`python -m bench.paths keras|onnxruntime MODEL_DIR DATA --threads N --batch-sizes A,B --rows R`
prints one JSON object: rows/s for each batch size. The rows are read and encoded before the
clock starts; only inference (and, for Keras, the question's argmax and top-3) is timed.
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
    from score.encoding import Encoder, sequences_from_list
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

    from score.model import INPUT_NAME, OUTPUT_NAME, SessionConfig, load, session_options

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


PATHS = {"keras": keras_rates, "onnxruntime": onnxruntime_rates}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paths")
    parser.add_argument("path", choices=sorted(PATHS))
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch-sizes", required=True, help="comma-separated")
    parser.add_argument("--rows", type=int, default=0, help="first N rows only (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="report the fastest of N runs")
    args = parser.parse_args(argv)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    rates = PATHS[args.path](
        args.model_dir, args.data, args.threads, batch_sizes, args.rows, args.repeat
    )
    json.dump({str(size): rate for size, rate in rates.items()}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
