"""The pieces every command line of the project shares: the one-line parser, the argparse
types, the one-line message, and the scoring flags that `python -m score` and `python -m
score.spark` both take. Each stage's ``__main__`` builds its parser from these."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from score.errors import EXIT_SIGINT, EXIT_USAGE, SeqscoreError, UsageError

if TYPE_CHECKING:
    from score.core import ScoreOptions

DEFAULT_MODEL = "artifacts/model.onnx"  # where `make export` writes the model
# The scoring flags' help as the local job says it; Spark passes its own words where its run
# differs (one thread per task, Spark's batches, its summary and staging).
SCORING_HELP = {
    "model": "the exported ONNX file (default $SCORE_MODEL, else artifacts/model.onnx)",
    "on_invalid": "error: stop at the first invalid row, exit 65, write nothing (default); "
                  "null: keep every row, invalid ones get null predictions and an error",
    "max_length": "variable-length models: score rows of up to N steps (default: the longest "
                  "training length); beyond it predictions are extrapolation",
    "batch_size": "rows per record batch; bounds memory (default 65536)",
    "threads": "onnxruntime intra-op threads (default: one per core)",
    "summary": "write a JSON summary (status, counts, speed, distributions, drift)",
    "max_psi": "fail (exit 65, nothing published) if any step's input or prediction PSI "
               "exceeds X (default: off)",
    "quiet": "no progress bar and no per-file log line",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (schedulers keep the last line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def probability(text: str) -> float:
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1]")
    return value


def non_negative(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def value_set(text: str) -> tuple[int, ...]:
    """A value set as training, the export and the import take it: '0..10' or '1,2,5'."""
    from score.spec import parse_values

    try:
        return parse_values(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def one_line(text: str) -> str:
    """Collapse whitespace and escape unprintable characters (file names and column names in
    messages come from files nobody checked)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in " ".join(text.split()))


def run_stage(stage: Callable[[], int], interrupted: str) -> int:
    """Run one stage's work: a named error becomes one `error: ...` line and its exit code,
    Ctrl-C the line ``interrupted`` (what was left as it was) and exit 130."""
    try:
        return stage()
    except SeqscoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return EXIT_SIGINT


def add_scoring_flags(parser: argparse.ArgumentParser, *, threads_default: int | None = None,
                      **helps: str) -> None:
    """Add the flags every scoring command takes: --model, --top-k, --on-invalid, the input
    columns, --max-length, --batch-size, --threads (default ``threads_default``), --summary,
    --low-confidence, --max-psi, --quiet, --labels, --min-accuracy and
    --min-estimated-accuracy. ``helps`` replaces SCORING_HELP's words by flag."""
    unknown = set(helps) - set(SCORING_HELP)
    assert not unknown, f"no scoring flag {sorted(unknown)}"
    text = {**SCORING_HELP, **helps}
    parser.add_argument("--model", metavar="PATH", help=text["model"])
    parser.add_argument("--top-k", type=positive_int, default=3, metavar="K",
                        help="most likely classes reported per step, 1..classes (default 3)")
    parser.add_argument("--on-invalid", choices=["error", "null"], default="error",
                        help=text["on_invalid"])
    columns = parser.add_mutually_exclusive_group()
    columns.add_argument("--input-column", metavar="NAME",
                         help="list column holding the sequences (default: the model's, usually x)")
    columns.add_argument("--input-columns", metavar="A,B,C,D",
                         help="wide layout: one integer column per step, in step order")
    parser.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                        help=text["max_length"])
    parser.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                        help=text["batch_size"])
    parser.add_argument("--threads", type=positive_int, default=threads_default, metavar="N",
                        help=text["threads"])
    parser.add_argument("--summary", metavar="PATH", help=text["summary"])
    parser.add_argument("--low-confidence", type=probability, default=0.5, metavar="P",
                        help="a step whose top-1 probability is below P counts as low-confidence "
                             "(default 0.5)")
    parser.add_argument("--max-psi", type=non_negative, default=None, metavar="X",
                        help=text["max_psi"])
    parser.add_argument("--quiet", action="store_true", help=text["quiet"])
    quality = parser.add_argument_group("is the model still right (accuracy and calibration)")
    quality.add_argument("--labels", metavar="COL",
                         help="list column of true y values, one per step of the sequence: the "
                              "summary measures accuracy, log loss and calibration, and the output "
                              "gains label_prob and correct")
    quality.add_argument("--min-accuracy", type=probability, default=None, metavar="X",
                         help="fail (exit 65, nothing published) if the top-1 accuracy over the "
                              "labelled steps is below X; needs --labels")
    quality.add_argument("--min-estimated-accuracy", type=probability, default=None, metavar="X",
                         help="fail (exit 65, nothing published) if the estimated accuracy (mean "
                              "top-1 probability over valid steps) is below X")


def add_state_flags(parser: argparse.ArgumentParser) -> None:
    """Add --key, --state-in and --state-out: scheduled runs that carry each key's state."""
    group = parser.add_argument_group(
        "scheduled runs that remember (each row holds only its key's new steps)")
    group.add_argument("--key", metavar="COL",
                       help="the entity column (integer or string): each row continues its key's "
                            "history from the state --state-in holds; needs --state-out")
    group.add_argument("--state-in", metavar="PATH",
                       help="the state a previous run wrote (default: every key starts from zero)")
    group.add_argument("--state-out", metavar="PATH",
                       help="where this run writes every key's state (a new folder per run, e.g. "
                            "state/2026-12-03/; never --state-in)")


def add_table_flags(parser: argparse.ArgumentParser) -> None:
    """Add --output-format, --mode and --txn-id: OUTPUT as a Delta Lake table."""
    table = parser.add_argument_group("a Delta Lake table as OUTPUT (the delta extra)")
    table.add_argument("--output-format", choices=["parquet", "delta"], default="parquet",
                       help="delta: write OUTPUT as a Delta Lake table, committed once at the end "
                            "(default parquet)")
    table.add_argument("--mode", choices=["append", "overwrite"], default=None,
                       help="what to do with an OUTPUT table that exists (default: refuse it; a new "
                            "table is created either way)")
    table.add_argument("--txn-id", metavar="APP:VERSION", default=None,
                       help="record the application's transaction in the commit: a rerun whose "
                            "VERSION the table already has for APP publishes nothing (exactly-once)")


def table_fields(args: argparse.Namespace) -> dict:
    """The config fields --output-format, --mode and --txn-id fill."""
    return {"output_format": args.output_format, "mode": args.mode, "txn_id": args.txn_id}


def state_fields(args: argparse.Namespace) -> dict:
    """The config fields --key, --state-in and --state-out fill."""
    return {"key": args.key, "state_in": args.state_in, "state_out": args.state_out}


def run_fields(args: argparse.Namespace) -> dict:
    """The fields of a scoring run's config that the scoring flags fill, by name: input,
    output, model (--model, else $SCORE_MODEL, else DEFAULT_MODEL), options, batch_size,
    summary, max_psi, min_accuracy, min_estimated_accuracy."""
    return {
        "input": args.input,
        "output": args.output,
        "model": args.model or os.environ.get("SCORE_MODEL") or DEFAULT_MODEL,
        "options": score_options(args),
        "batch_size": args.batch_size,
        "summary": args.summary,
        "max_psi": args.max_psi,
        "min_accuracy": args.min_accuracy,
        "min_estimated_accuracy": args.min_estimated_accuracy,
    }


def score_options(args: argparse.Namespace) -> ScoreOptions:
    """The ScoreOptions the scoring flags ask for; an empty name in --input-columns is a
    UsageError."""
    from score.core import ScoreOptions

    input_columns = None
    if args.input_columns is not None:
        input_columns = tuple(name.strip() for name in args.input_columns.split(","))
        if not all(input_columns):
            raise UsageError(f"--input-columns {args.input_columns!r}: a column name is empty")
    return ScoreOptions(top_k=args.top_k, on_invalid=args.on_invalid,
                        input_column=args.input_column, input_columns=input_columns,
                        low_confidence=args.low_confidence, max_length=args.max_length,
                        labels=args.labels)


class WithoutPandas:
    """Import finder that reports pandas as absent.

    pyarrow imports pandas, when it is installed, the first time it converts anything to an
    Arrow array, only to check whether the input is a pandas object: 0.3 s of start-up and
    60 MB for nothing in this process. Used only when the job runs as a program
    (``sys.meta_path.insert(0, WithoutPandas())``).
    """

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (not needed by the scoring job)",
                                      name=name)
        return None
