"""`python -m score` with some of its optimisations switched off, to measure what each one pays.

`python -m bench.variant [--no-dedup] [--no-cache] [--no-prefix-sharing] [--numpy-top-k]
[--serial-io] [--whole-batch] [--spinning] -- ARGS` runs score's own `main(ARGS)` in this
process with the job's config changed through its benchmark switches (ScoreOptions.dedup,
.share_prefixes, .cache; SessionConfig.graph_top_k, .inference_rows, .spinning;
JobConfig.threaded_io), so the variant pays the same start-up, reading, validation and writing
as the job and differs only in the piece switched off.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

WHOLE_BATCH_ROWS = 1 << 40  # rows per session.run that no record batch reaches
# The benchmark's switches: the part of the job's config each sets (the job's ScoreOptions, its
# SessionConfig, or the JobConfig itself), the field, and the value that turns it off.
SWITCHES: dict[str, tuple[str, str, object]] = {
    "no_dedup": ("options", "dedup", False),
    "no_cache": ("options", "cache", False),
    "no_prefix_sharing": ("options", "share_prefixes", False),
    "numpy_top_k": ("session", "graph_top_k", False),
    "serial_io": ("job", "threaded_io", False),
    "whole_batch": ("session", "inference_rows", WHOLE_BATCH_ROWS),
    "spinning": ("session", "spinning", True),
}
HELP = {
    "no_dedup": "run every valid row through the model, repeated or not (no de-duplication, so "
                "no cache either)",
    "no_cache": "de-duplicate within each record batch only: no result cache across batches "
                "and files",
    "no_prefix_sharing": "run every distinct sequence from its first step: no computing a prefix "
                         "once for all the rows of a batch that share it",
    "numpy_top_k": "top-k in numpy (k passes of argmax) over the full probabilities instead of "
                   "the graph's TopK heads; prefix sharing runs through the heads, so this also "
                   "runs every row from its first step",
    "serial_io": "read, score and write one batch after the other, with no reader or writer thread",
    "whole_batch": "run the model over the whole record batch at once, not INFERENCE_ROWS rows at "
                   "a time",
    "spinning": "let onnxruntime's intra-op threads busy-wait between ops",
}


def adjuster(names: list[str]) -> Callable:
    """A function JobConfig -> JobConfig that applies the switches ``names`` (SWITCHES' keys)."""

    def adjust(config):
        changes: dict[str, dict[str, object]] = {"options": {}, "session": {}, "job": {}}
        for name in names:
            part, field, value = SWITCHES[name]
            changes[part][field] = value
        return dataclasses.replace(
            config,
            options=dataclasses.replace(config.options, **changes["options"]),
            session=dataclasses.replace(config.session, **changes["session"]),
            **changes["job"],
        )

    return adjust


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.variant")
    for name in SWITCHES:
        p.add_argument("--" + name.replace("_", "-"), action="store_true", help=HELP[name])
    p.add_argument("score_args", nargs=argparse.REMAINDER, help="-- then python -m score's arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    score_args = args.score_args[1:] if args.score_args[:1] == ["--"] else args.score_args

    from score.__main__ import main as score_main
    from score.cli import WithoutPandas

    sys.meta_path.insert(0, WithoutPandas())  # as `python -m score` does
    switched = [name for name in SWITCHES if getattr(args, name)]
    return score_main(score_args, adjust=adjuster(switched))


if __name__ == "__main__":
    sys.exit(main())
