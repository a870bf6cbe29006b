"""python -m score INPUT OUTPUT: score Parquet files with the exported ONNX model."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from score.cli import OneLineParser, non_negative, one_line, positive_int, probability
from score.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_SOFTWARE,
    Interrupted,
    SeqscoreError,
)

DESCRIPTION = """\
Read Parquet files of integer sequences, score them with the exported ONNX model, and write
every input column plus y_pred, top_k_values, top_k_probs and error to Parquet. INPUT may be a
file or a directory of *.parquet files (OUTPUT is then a directory, with _SUCCESS written last).
Paths may be URIs (s3://, gs://, hdfs://, file://)."""

EPILOG = """\
exit codes: 0 ok; 2 usage (OUTPUT is INPUT, bad flag); 65 bad data (invalid row, not Parquet,
corrupt, wrong column, drift above --max-psi); 66 INPUT missing; 70 internal error; 73 OUTPUT
cannot be created; 74 I/O error (disk full, network: retry); 77 no permission to read INPUT;
78 model missing, corrupt or not matching its spec; 130 Ctrl-C; 143 SIGTERM."""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m score", description=DESCRIPTION, epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", help="Parquet file or directory (path or URI)")
    p.add_argument("output", metavar="OUTPUT", help="output file, or directory when INPUT is one")
    p.add_argument("--model", metavar="PATH",
                   help="the exported ONNX file (default $SCORE_MODEL, else artifacts/model.onnx)")
    p.add_argument("--top-k", type=positive_int, default=3, metavar="K",
                   help="most likely classes reported per step, 1..classes (default 3)")
    p.add_argument("--on-invalid", choices=["error", "null"], default="error",
                   help="error: stop at the first invalid row, exit 65, write nothing (default); "
                        "null: keep every row, invalid ones get null predictions and an error")
    columns = p.add_mutually_exclusive_group()
    columns.add_argument("--input-column", metavar="NAME",
                         help="list column holding the sequences (default: the model's, usually x)")
    columns.add_argument("--input-columns", metavar="A,B,C,D",
                         help="wide layout: one integer column per step, in step order")
    p.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                   help="variable-length models: score rows of up to N steps (default: the longest "
                        "training length); beyond it predictions are extrapolation")
    p.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="rows per record batch; bounds memory (default 65536)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="onnxruntime intra-op threads (default: one per core)")
    p.add_argument("--summary", metavar="PATH",
                   help="write a JSON summary (status, counts, speed, distributions, drift)")
    p.add_argument("--low-confidence", type=probability, default=0.5, metavar="P",
                   help="a step whose top-1 probability is below P counts as low-confidence (default 0.5)")
    p.add_argument("--max-psi", type=non_negative, default=None, metavar="X",
                   help="fail (exit 65, nothing published) if any step's input or prediction PSI "
                        "exceeds X (default: off)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-file log line")
    return p


def _on_sigterm(signum, frame) -> None:
    raise Interrupted("SIGTERM", EXIT_SIGTERM)


def _config(args: argparse.Namespace):
    from score.core import ScoreOptions
    from score.job import JobConfig
    from score.model import SessionConfig

    input_columns = None
    if args.input_columns is not None:
        input_columns = tuple(name.strip() for name in args.input_columns.split(","))
        if not all(input_columns):
            from score.errors import UsageError

            raise UsageError(f"--input-columns {args.input_columns!r}: a column name is empty")
    options = ScoreOptions(
        top_k=args.top_k,
        on_invalid=args.on_invalid,
        input_column=args.input_column,
        input_columns=input_columns,
        low_confidence=args.low_confidence,
        max_length=args.max_length,
    )
    if args.quiet:
        progress = "none"
    elif sys.stderr.isatty():
        progress = "bar"
    else:
        progress = "lines"
    return JobConfig(
        input=args.input,
        output=args.output,
        model=args.model or os.environ.get("SCORE_MODEL") or "artifacts/model.onnx",
        options=options,
        batch_size=args.batch_size,
        session=SessionConfig(threads=args.threads),
        summary=args.summary,
        progress=progress,
        max_psi=args.max_psi,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace) -> int:
    from score import job, monitor, pipeline

    pipeline.keep_freed_memory()
    state = job.RunState()
    config = None
    exit_code, message = 0, None
    try:
        config = _config(args)
        job.run(config, state)
    except KeyboardInterrupt:
        exit_code, message = EXIT_SIGINT, "interrupted by SIGINT; no output was published"
    except SeqscoreError as error:
        exit_code, message = error.exit_code, str(error)
    except MemoryError:
        exit_code, message = EXIT_SOFTWARE, "out of memory; use a smaller --batch-size"
    except Exception as error:  # noqa: BLE001  (a bug: still one line, never a traceback)
        if os.environ.get("SCORE_DEBUG"):
            raise
        exit_code = EXIT_SOFTWARE
        message = f"internal error ({type(error).__name__}: {error}); rerun with SCORE_DEBUG=1 for details"
    message = one_line(message) if message else None

    for line in state.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if state.drift:
        for line in monitor.drift_warnings(state.drift):
            print(f"warning: {line}", file=sys.stderr)
    if message:
        print(f"error: {message}", file=sys.stderr)
    if config is not None and config.summary:
        try:
            job.write_summary(config.summary, job.summary(config, state, exit_code, message))
        except SeqscoreError as error:
            print(f"error: --summary {error}", file=sys.stderr)  # the message names the location
            exit_code = exit_code or error.exit_code
    return exit_code


class _WithoutPandas:
    """Import finder that reports pandas as absent.

    pyarrow imports pandas, when it is installed, the first time it converts anything to an
    Arrow array, only to check whether the input is a pandas object: 0.3 s of start-up and
    60 MB for nothing in this process. Used only when the job runs as a program.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (not needed by the scoring job)", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, _WithoutPandas())
    sys.exit(main())
