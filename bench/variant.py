"""`python -m score` with one of its optimisations switched off, to measure what each one pays.

`python -m bench.variant [--no-dedup] [--no-cache] [--numpy-top-k] [--serial-io] [--whole-batch]
[--spinning] -- ARGS` runs score's own `main(ARGS)` in this process after patching score's
modules, so the variant pays the same start-up, reading, validation and writing as the job and
differs only in the patched piece. No file under score/ changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def patch_no_dedup() -> None:
    """Run every valid row through the model, repeated or not (no de-duplication, no cache)."""
    import score.job

    original = score.job.score_batch_with_stats

    def without_dedup(scorer, batch, options, cache=None):
        return original(scorer, batch, dataclasses.replace(options, dedup=False), None)

    score.job.score_batch_with_stats = without_dedup


def patch_no_cache() -> None:
    """De-duplicate within each record batch only: no result cache across batches and files."""
    import score.job

    score.job.new_cache = lambda *args, **kwargs: None


def patch_numpy_top_k() -> None:
    """Top-k in numpy (k passes of argmax) instead of a TopK added to the onnxruntime graph."""
    import score.model

    score.model.with_top_k = lambda *args: b"not a model"  # the load falls back to the plain graph


def patch_serial_io() -> None:
    """Read, score and write one batch after the other, with no reader or writer thread."""
    import score.pipeline

    class InlineWriter:
        def __init__(self, writer, depth=1):
            self.writer = writer

        def write(self, batch):
            self.writer.write_batch(batch)

        def finish(self):
            pass

    score.pipeline.prefetch = lambda batches, depth=1: iter(batches)
    score.pipeline.BackgroundWriter = InlineWriter


def patch_whole_batch() -> None:
    """Run the model over the whole record batch at once, not INFERENCE_ROWS rows at a time."""
    import score.model

    score.model.INFERENCE_ROWS = 1 << 40


def patch_spinning() -> None:
    """Let onnxruntime's intra-op threads busy-wait between ops (SessionConfig.spinning)."""
    import score.model

    original = score.model.load

    def load_spinning(location, config=score.model.SessionConfig()):
        return original(location, dataclasses.replace(config, spinning=True))

    score.model.load = load_spinning


PATCHES = {
    "no_dedup": patch_no_dedup,
    "no_cache": patch_no_cache,
    "numpy_top_k": patch_numpy_top_k,
    "serial_io": patch_serial_io,
    "whole_batch": patch_whole_batch,
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
