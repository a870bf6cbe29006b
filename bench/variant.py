"""`python -m score` with one candidate change patched in, for measuring it before proposing it.

`python -m bench.variant [--chunked] [--fast-top-k] [--overlap] [--spinning] [--no-dedup] -- ARGS`
runs score's own `main(ARGS)` in this process after patching score's modules, so the variant
pays the same start-up, reading, validation and writing as the job and differs only in the
patched piece. No file under score/ changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def patch_no_dedup() -> None:
    """Run every valid row through the model, repeated or not (ScoreOptions.dedup=False)."""
    import score.job

    original = score.job.score_batch_with_stats

    def without_dedup(scorer, batch, options):
        return original(scorer, batch, dataclasses.replace(options, dedup=False))

    score.job.score_batch_with_stats = without_dedup


def patch_overlap() -> None:
    """Read and write Parquet in threads of their own, beside inference (bench/overlap.py)."""
    import score.job
    from bench.overlap import score_file_overlapped

    score.job.score_file = score_file_overlapped


def patch_spinning() -> None:
    """Let onnxruntime's intra-op threads busy-wait between ops (SessionConfig.spinning)."""
    import score.model

    original = score.model.load

    def load_spinning(location, config=score.model.SessionConfig()):
        return original(location, dataclasses.replace(config, spinning=True))

    score.model.load = load_spinning


CHUNK_ROWS = 1024  # rows per session.run in the chunked variant (the raw onnxruntime sweep's best)


def patch_chunked() -> None:
    """Run the model over at most CHUNK_ROWS rows at a time, whatever the record batch size.

    onnxruntime's LSTM needs a few KB per row and time step, and its arena keeps the peak; in
    chunks memory no longer grows with --batch-size, and smaller runs are faster here.
    """
    import numpy as np

    import score.model

    def predict_in_chunks(self, indices):
        rows = indices.shape[0]
        if rows <= CHUNK_ROWS:
            return self.session.run([score.model.OUTPUT_NAME], {score.model.INPUT_NAME: indices})[0]
        shape = (rows, self.spec.seq_len, self.spec.y_classes)
        probabilities = np.empty(shape, dtype=np.float32)
        for start in range(0, rows, CHUNK_ROWS):
            chunk = indices[start : start + CHUNK_ROWS]
            probabilities[start : start + CHUNK_ROWS] = self.session.run(
                [score.model.OUTPUT_NAME], {score.model.INPUT_NAME: chunk}
            )[0]
        return probabilities

    score.model.Scorer.predict = predict_in_chunks


def top_k_by_argmax(probabilities, k):
    """score.core.top_k by k passes of argmax: ties go to the lower class, as before."""
    import numpy as np

    classes = probabilities.shape[-1]
    if k >= classes:
        return np.argsort(-probabilities, axis=-1, kind="stable")
    flat = probabilities.reshape(-1, classes)
    rows = np.arange(flat.shape[0])
    best = np.empty((flat.shape[0], k), dtype=np.intp)
    taken = np.empty((flat.shape[0], k), dtype=flat.dtype)
    # Each pass hides the class it found (probabilities are >= 0, so -inf is never the max);
    # argmax returns the first of equal values, so ties go to the lower class index.
    for rank in range(k):
        best[:, rank] = flat.argmax(axis=1)
        taken[:, rank] = flat[rows, best[:, rank]]
        flat[rows, best[:, rank]] = -np.inf
    for rank in range(k):  # put the caller's probabilities back as they were
        flat[rows, best[:, rank]] = taken[:, rank]
    return best.reshape(probabilities.shape[:-1] + (k,))


def patch_fast_top_k() -> None:
    """Top-k by k passes of argmax instead of argpartition, lexsort and a tie check."""
    import score.core

    score.core.top_k = top_k_by_argmax


PATCHES = {
    "chunked": patch_chunked,
    "fast_top_k": patch_fast_top_k,
    "no_dedup": patch_no_dedup,
    "overlap": patch_overlap,
    "spinning": patch_spinning,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.variant")
    for name in PATCHES:
        parser.add_argument(
            "--" + name.replace("_", "-"), action="store_true", help=PATCHES[name].__doc__
        )
    parser.add_argument(
        "score_args", nargs=argparse.REMAINDER, help="-- then python -m score's arguments"
    )
    args = parser.parse_args(argv)
    score_args = args.score_args[1:] if args.score_args[:1] == ["--"] else args.score_args

    from score.__main__ import _WithoutPandas
    from score.__main__ import main as score_main

    sys.meta_path.insert(0, _WithoutPandas())  # as `python -m score` does
    for name, patch in PATCHES.items():
        if getattr(args, name):
            patch()
    return score_main(score_args)


if __name__ == "__main__":
    sys.exit(main())
