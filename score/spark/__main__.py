"""python -m score.spark INPUT OUTPUT: the scoring job on Apache Spark, from the command line.

Parses the flags (score.cli's scoring flags, plus --master), checks the locations and the model
before Spark starts, runs score.spark.job, turns every failure into one line and its exit code,
and turns SIGTERM and Ctrl-C into cancelled Spark jobs. Also `spark-submit score/spark/__main__.py`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING

from score import cli, errors, keyed_checks, monitor, quality, storage, summary
from score import model as models
from score.core import empty_stats, length_warnings
from score.delta_files import remove_run_files
from score.errors import EXIT_SIGINT, EXIT_SIGTERM, EXIT_SOFTWARE, Interrupted, SeqscoreError
from score.spark import delta_write
from score.spark import session as sessions
from score.spark.dataframe import DEFAULT_THREADS, PANDAS_WARNING
from score.spark.failures import describe
from score.spark.hadoop import remove_output
from score.spark.job import (
    SparkJobConfig,
    SparkRunState,
    check_baseline,
    check_locations,
    run,
    summary_of,
)
from score.spark.keyed import check_state_locations

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

DESCRIPTION = """\
Score a Parquet file or dataset on Apache Spark with the exported ONNX model: the same batch
function, output columns and validation as python -m score, through mapInArrow. OUTPUT is a new
Parquet dataset written by Spark's committer (_SUCCESS last); it must not exist. Every task
reports its counts and distributions beside its rows; the driver merges them into the local
job's --summary and drift check, and under --max-psi publishes OUTPUT only within the limit."""

EPILOG = """\
exit codes: 0 ok; 2 usage; 65 bad data (the first invalid row a task met, as FILE: row N; not
Parquet; wrong column; drift above --max-psi); 66 INPUT missing; 70 internal error (Spark's log is kept and named);
73 OUTPUT exists or cannot be created; 74 I/O error; 78 model missing, corrupt or not matching
its spec (checked on the driver before Spark starts); 130 Ctrl-C; 143 SIGTERM. A failed run
removes the OUTPUT it created, and still writes its --summary."""


def parser() -> argparse.ArgumentParser:
    p = cli.OneLineParser(prog="python -m score.spark", description=DESCRIPTION, epilog=EPILOG,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT",
                   help="Parquet file or dataset (path or URI Spark reads)")
    p.add_argument("output", metavar="OUTPUT",
                   help="the Parquet dataset to create (must not exist), or a Delta Lake table "
                        "(--output-format delta)")
    p.add_argument("--master", metavar="URL",
                   help="Spark master (default: spark-submit's, else local[*])")
    cli.add_scoring_flags(
        p,
        threads_default=DEFAULT_THREADS,
        model="the exported ONNX file (default $SCORE_MODEL, else artifacts/model.onnx); "
              "shipped to the executors unless spark-submit --files already did",
        on_invalid="error: the first invalid row fails the job, exit 65, no output (default); "
                   "null: keep every row, invalid ones get null predictions and an error",
        max_length="variable-length models: score rows of up to N steps (default: the longest "
                   "training length)",
        batch_size="rows per Arrow batch (spark.sql.execution.arrow.maxRecordsPerBatch, "
                   "default 10000)",
        threads="onnxruntime intra-op threads per task (default 1: tasks share the cores)",
        summary="write a JSON summary (status, counts, speed, distributions, drift, and "
                "Spark's master, application id and partitions), also when the run fails",
        max_psi="fail (exit 65, nothing published) if any step's input or prediction PSI "
                "exceeds X; the dataset is written beside OUTPUT, hidden, and moved to "
                "OUTPUT only within the limit (default: off)",
        quiet="no line when the job is done",
    )
    p.add_argument("--input-version", type=cli.non_negative_int, default=None, metavar="N",
                   help="a Delta Lake INPUT: read the table as of version N (time travel; "
                        "default: its latest)")
    cli.add_state_flags(p)
    cli.add_table_flags(p)
    return p


def _config(args: argparse.Namespace) -> SparkJobConfig:
    return SparkJobConfig(**cli.run_fields(args), **cli.state_fields(args), **cli.table_fields(args),
                          threads=args.threads, master=args.master, quiet=args.quiet,
                          input_version=args.input_version)


class _Signals:
    """SIGTERM and Ctrl-C. Before Spark starts they interrupt at once; while it runs, the main
    thread is inside a Py4J call that an exception would corrupt, so the jobs are cancelled from
    another thread and the failed write is then reported as the interruption."""

    def __init__(self) -> None:
        self.session: SparkSession | None = None
        self.received: Interrupted | None = None

    def handle(self, signum, frame) -> None:
        terminated = signum == signal.SIGTERM
        name, code = ("SIGTERM", EXIT_SIGTERM) if terminated else ("SIGINT", EXIT_SIGINT)
        if self.session is None:
            raise Interrupted(name, code)
        if self.received is None:
            self.received = Interrupted(name, code)
            threading.Thread(target=self._cancel_until_stopped, daemon=True).start()

    def _cancel_until_stopped(self) -> None:
        """Cancel the running job, and any the driver still starts (a write sets up its
        committer before it submits its job), until the main thread lets go of the session."""
        session = self.session
        while self.session is not None:
            try:
                session.sparkContext.cancelAllJobs()
            except Exception:  # noqa: BLE001  (the context is stopping: nothing left to cancel)
                return
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signals = _Signals()
    previous = {number: signal.signal(number, signals.handle)
                for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _main(args, signals)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _main(args: argparse.Namespace, signals: _Signals) -> int:
    """Steps: 1. check the locations and load the model (before Spark starts); 2. start Spark;
    3. run; 4. stop Spark, then remove what the failed run created; 5. the warnings and one
    line on stderr; 6. the summary, whatever happened."""
    warnings.filterwarnings("ignore", message=PANDAS_WARNING)
    state = SparkRunState()
    session, log_path, config = None, None, None
    exit_code, message = 0, None
    try:
        config = _config(args)
        check_locations(config)
        keyed_checks.check_flags(config.key, config.state_in, config.state_out, config.output,
                              config.options.input_columns)
        quality.check_gate_flags(config.options.labels, config.min_accuracy)
        if config.key is not None:
            check_state_locations(config.state_in, config.state_out)
        state.output_target = delta_write.check(config)
        scorer = models.load(config.model, models.SessionConfig(threads=1))
        if config.key is not None:
            keyed_checks.check_model(scorer)
            state.keyed = keyed_checks.KeyedRecord()
        state.scorer, state.stats = scorer, empty_stats(scorer)
        config.options.validate(scorer)
        check_baseline(config, scorer)
        state.warnings.extend(length_warnings(scorer, config.options))
        done = state.output_target is not None and delta_write.already_committed(config, state.output_target, state)
        for line in state.warnings:  # now: the run may take hours
            print(f"warning: {line}", file=sys.stderr)
        if done:  # --txn-id's transaction is in the table: nothing to run
            return _finish(config, state, 0, None, None)
        session, log_path = sessions.start_session(config)
        signals.session = session
        signal.signal(signal.SIGINT, signals.handle)  # SparkContext installed its own
        run(session, config, scorer, state)
    except KeyboardInterrupt:
        exit_code, message = EXIT_SIGINT, "interrupted by SIGINT; no output was published"
    except SeqscoreError as error:
        exit_code, message = error.exit_code, str(error)
    except Exception as error:  # a bug or an unknown Spark failure: still one line
        if os.environ.get("SCORE_DEBUG") and signals.received is None:
            raise
        exit_code = EXIT_SOFTWARE
        message = f"internal error ({describe(error)})"
    finally:
        signals.session = None
        if signals.received is not None and exit_code:  # whatever the cancelled job raised
            exit_code, message = signals.received.exit_code, str(signals.received)
        _shut_down(session, state.created if exit_code else [])
        if exit_code and state.orphans is not None:  # a Delta OUTPUT's files, never committed
            remove_run_files(*state.orphans)
    return _finish(config, state, exit_code, message, log_path)


def _finish(config: SparkJobConfig | None, state: SparkRunState, exit_code: int, message: str | None,
            log_path: str | None) -> int:
    """Steps 5-6 of _main: the warnings and one line on stderr; the summary."""
    if log_path is not None:
        if exit_code in (EXIT_SOFTWARE, errors.EXIT_IOERR):
            message = f"{message}; Spark's log: {log_path}"
        else:
            os.unlink(log_path)
    message = cli.one_line(message) if message else None
    if state.drift:
        for line in monitor.drift_warnings(state.drift):
            print(f"warning: {line}", file=sys.stderr)
    if message:
        print(f"error: {message}", file=sys.stderr)
    elif not config.quiet and state.published:
        seconds = time.perf_counter() - state.started
        committed = (f", committed as version {state.output_table['version']} of the Delta Lake table"
                     if state.output_table else "")
        print(f"scored {config.input} -> {config.output}: {state.rows} rows "
              f"({state.rows_invalid} invalid) in {seconds:.2f} s{committed}", file=sys.stderr)
    if config is not None and config.summary:
        try:
            summary.write(config.summary, summary_of(config, state, exit_code, message))
        except SeqscoreError as error:
            print(f"error: --summary {error}", file=sys.stderr)  # the message names the location
            exit_code = exit_code or error.exit_code
    return exit_code


def _shut_down(session: SparkSession | None, removing: list[str]) -> None:
    """Stop Spark; remove what a failed run created (``removing``) once no task can still write.

    A store is cleaned through Spark's own file system, so before stopping (jobs cancelled
    first); a local directory after stopping, when every task is gone.
    """
    if session is None:
        return
    remote = [location for location in removing if storage.is_uri(location)]
    try:
        if remote:
            session.sparkContext.cancelAllJobs()
            for location in remote:
                remove_output(session, location)
    finally:
        session.stop()
    for location in removing:
        if not storage.is_uri(location):
            remove_output(None, location)


if __name__ == "__main__":
    sys.exit(main())
