"""python -m score INPUT OUTPUT: score Parquet files with the exported ONNX model."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from score import cli
from score.cli import OneLineParser, one_line
from score.errors import (
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_SOFTWARE,
    Interrupted,
    SeqscoreError,
)

if TYPE_CHECKING:
    from score.job import JobConfig

DESCRIPTION = """\
Read Parquet files of integer sequences, score them with the exported ONNX model, and write
every input column plus y_pred, top_k_values, top_k_probs and error to Parquet. INPUT may be a
file or a directory of *.parquet files (OUTPUT is then a directory, with _SUCCESS written last).
Paths may be URIs (s3://, gs://, hdfs://, file://)."""

EPILOG = """\
exit codes: 0 ok; 2 usage (OUTPUT is INPUT, bad flag); 65 bad data (invalid row, not Parquet,
corrupt, wrong column, drift above --max-psi); 66 INPUT or --state-in missing; 70 internal error; 73 OUTPUT
cannot be created; 74 I/O error (disk full, network: retry); 77 no permission to read INPUT;
78 model missing, corrupt, not matching its spec, or unable to carry state (--key); 130 Ctrl-C; 143 SIGTERM."""


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m score", description=DESCRIPTION, epilog=EPILOG,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT",
                   help="Parquet file or directory, or a Delta Lake table's folder (path or URI)")
    p.add_argument("output", metavar="OUTPUT",
                   help="output file (for a file or a Delta table), or directory when INPUT is one")
    cli.add_scoring_flags(p)
    p.add_argument("--input-version", type=cli.non_negative_int, default=None, metavar="N",
                   help="a Delta Lake INPUT: read the table as of version N (time travel; "
                        "default: its latest)")
    cli.add_state_flags(p)
    cli.add_table_flags(p)
    return p


def _on_sigterm(signum, frame) -> None:
    raise Interrupted("SIGTERM", EXIT_SIGTERM)


def _config(args: argparse.Namespace) -> JobConfig:
    from score.job import JobConfig
    from score.model import SessionConfig

    if args.quiet:
        progress = "none"
    elif sys.stderr.isatty():
        progress = "bar"
    else:
        progress = "lines"
    return JobConfig(**cli.run_fields(args), **cli.state_fields(args),
                     session=SessionConfig(threads=args.threads), progress=progress,
                     input_version=args.input_version, **cli.table_fields(args))


def main(argv: list[str] | None = None,
         adjust: Callable[[JobConfig], JobConfig] | None = None) -> int:
    """Parse ``argv``, run the job, return the exit code. ``adjust``, when given, replaces the
    config the command line built before the run (the benchmark switches optimisations off
    through it, e.g. ``dataclasses.replace(config, threaded_io=False)``)."""
    args = parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(args, adjust)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace, adjust: Callable[[JobConfig], JobConfig] | None) -> int:
    from score import delta_prefetch

    # Beside the imports and the model's load: what the run will ask of a local Delta table.
    delta_prefetch.start_for(args.input, args.input_version, args.output, args.output_format, args.txn_id)
    try:
        return _run(args, adjust)
    finally:
        delta_prefetch.stop()


def _run(args: argparse.Namespace, adjust: Callable[[JobConfig], JobConfig] | None) -> int:
    from score import job, monitor, pipeline, summary

    pipeline.keep_freed_memory()
    state = job.RunState()
    config = None
    exit_code, message = 0, None
    try:
        config = _config(args)
        if adjust is not None:
            config = adjust(config)
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
            summary.write(config.summary, job.summary_of(config, state, exit_code, message))
        except SeqscoreError as error:
            print(f"error: --summary {error}", file=sys.stderr)  # the message names the location
            exit_code = exit_code or error.exit_code
    return exit_code


if __name__ == "__main__":
    sys.meta_path.insert(0, cli.WithoutPandas())
    sys.exit(main())
