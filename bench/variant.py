"""`python -m score` with one of its optimisations switched off, to measure what each one pays.

`python -m bench.variant [--no-dedup] [--no-cache] [--no-prefix-sharing] [--numpy-top-k]
[--serial-io] [--whole-batch] [--spinning] -- ARGS` runs score's own `main(ARGS)` in this
process after patching score's modules, so the variant pays the same start-up, reading,
validation and writing as the job and differs only in the patched piece. No file under score/
changes.
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


def patch_no_prefix_sharing() -> None:
    """Run every distinct sequence from its first step: no computing a prefix once for all the
    rows of a batch that share it (ScoreOptions.share_prefixes off)."""
    import score.job

    original = score.job.score_batch_with_stats

    def without_prefix_sharing(scorer, batch, options, cache=None):
        return original(scorer, batch, dataclasses.replace(options, share_prefixes=False), cache)

    score.job.score_batch_with_stats = without_prefix_sharing


def patch_numpy_top_k() -> None:
    """Top-k in numpy (k passes of argmax) over the full probabilities, instead of the TopK in
    the graph (the model file's heads, or those added at load time to an older file). Prefix
    sharing runs through the heads, so this variant also runs every row from its first step."""
    import score.model

    score.model.with_top_k = lambda *args: b"not a model"  # an older file: the plain graph
    original = score.model.load

    def load_without_heads(location, config=score.model.SessionConfig()):
        scorer = original(location, config)
        scorer.graph_top_k = False
        return scorer

    score.model.load = load_without_heads


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
    "no_prefix_sharing": patch_no_prefix_sharing,
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
