"""The scoring job: Parquet in, scored Parquet out, one record batch at a time.

This module owns the run: planning (score.inputs), streaming each file's record batches through
score.core.score_batch_with_stats, publishing atomically (score.sink), and the drift gate. The
summary is score.summary's; the progress on stderr score.progress's.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from score import __version__, delta_output, inputs, monitor, pipeline, quality, storage, summary
from score import model as models
from score.columns import dictionary_columns
from score.core import (
    BatchStats,
    ResultCache,
    ScoreOptions,
    check_input_schema,
    empty_stats,
    length_warnings,
    new_cache,
    output_schema,
    score_batch_with_stats,
)
from score.errors import InvalidInput, InvalidRow, UsageError
from score.progress import Reporter
from score.sink import open_sink, write_error, write_small_file
from score.summary import utc_now

if TYPE_CHECKING:
    from score.keyed_checks import KeyedRecord

DEFAULT_BATCH_SIZE = 65_536  # from the benchmark: with the run cache, memory stays ~300 MB at 5M rows
# Rows of any length: memory follows the steps of a batch, not its rows, so the default batch
# holds about this many steps (estimated from the file's footer), within 1,024..65,536 rows.
# On the ragged benchmark (1M rows, mean length 16) twice the steps of the fixed-length default
# batch shared more prefixes and ran fewer narrow runs: 16.3-16.5 s against 17.5-18.8 s at
# 131,072 steps, peak RSS 366 MB against 318 MB; 524,288 steps ran in 16.1 s but at 450 MB.
STEPS_PER_BATCH = 262_144
SUCCESS_FILE = "_SUCCESS"


@dataclass(frozen=True)
class JobConfig:
    """One run of the scoring job."""

    input: str  # a Parquet file or a directory of them (path or URI)
    output: str  # a file (for a file) or a directory (for a directory)
    model: str = "artifacts/model.onnx"  # the exported ONNX file
    options: ScoreOptions = field(default_factory=ScoreOptions)
    batch_size: int | None = None  # rows per record batch, bounds memory; None: batch_rows()
    session: models.SessionConfig = field(default_factory=models.SessionConfig)
    summary: str | None = None  # where to write the JSON summary
    progress: str = "lines"  # 'bar' on a terminal, 'lines' for logs, 'none' with --quiet
    max_psi: float | None = None  # fail (65) when any step's input or prediction PSI exceeds it
    min_accuracy: float | None = None  # fail (65) below this top-1 accuracy (needs options.labels)
    min_estimated_accuracy: float | None = None  # fail (65) below this mean top-1 probability
    # A benchmark switch, never off for users: False reads and writes each batch in the scoring
    # thread (no prefetch thread, no background writer), to measure what the overlap pays.
    threaded_io: bool = True
    # Scheduled runs that remember (score.keyed_job): the entity column, and where the state
    # of the previous run is (None: every key starts from zero) and where this run's goes.
    key: str | None = None
    state_in: str | None = None
    state_out: str | None = None
    input_version: int | None = None  # a Delta Lake INPUT: the version to read (None: latest)
    # OUTPUT as a Delta Lake table (score.delta_output): what to do with one that exists
    # (None: refuse it), and the application's transaction that makes an append exactly-once.
    output_format: str = "parquet"
    mode: str | None = None
    txn_id: str | None = None


@dataclass
class FileResult:
    input: str
    output: str
    rows: int
    rows_invalid: int
    seconds: float


@dataclass
class RunState:
    """Everything the summary reports, filled in as the run goes (a summary.RunRecord)."""

    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=utc_now)
    files: list[FileResult] = field(default_factory=list)
    stats: BatchStats | None = None
    scorer: models.Scorer | None = None
    drift: dict | None = None
    warnings: list[str] = field(default_factory=list)  # said once, on stderr, after the run
    # Rows taken in: every row of the batches scored, and of a batch stopped by an invalid row
    # (--on-invalid error) the rows up to and including that row. A read failure counts the
    # batches read before it; their rows_in equals stats.rows once the run succeeds.
    rows_in: int = 0
    keyed: KeyedRecord | None = None  # a run with --key: its keys and state
    input_table: dict | None = None  # a Delta Lake INPUT: its format, version and files read
    output_table: dict | None = None  # a Delta Lake OUTPUT: the version committed, or why none


class InlineWriter:
    """pipeline.BackgroundWriter's interface, writing in the caller's thread (threaded_io off)."""

    def __init__(self, writer: pq.ParquetWriter) -> None:
        self.writer = writer

    def write(self, batch: pa.RecordBatch) -> None:
        self.writer.write_batch(batch)

    def finish(self) -> None:
        """Nothing is queued: every write() has written."""


def output_metadata(scorer: models.Scorer, config: JobConfig, location: str, rows: int, invalid: int
                    ) -> dict:
    """The scored file's key-value metadata: the model, the spec, the run, the counts."""
    return {
        "seqscore.model_sha256": scorer.sha256,
        "seqscore.model_version": scorer.version,
        "seqscore.spec": scorer.spec.to_json(),
        "seqscore.top_k": str(config.options.top_k),
        "seqscore.scorer_version": __version__,
        "seqscore.input": location,
        "seqscore.rows_in": str(rows),
        "seqscore.rows_invalid": str(invalid),
        "seqscore.probabilities": summary.probabilities(scorer),
        "seqscore.created_at": utc_now(),
    }


def drift_report(scorer: models.Scorer, stats: BatchStats) -> dict | None:
    """PSI per step against the training baseline embedded in the model (None without one)."""
    baseline_payload = models.baseline(scorer)
    if baseline_payload is None:
        return None
    return monitor.drift(monitor.Profile.from_dict(baseline_payload), stats.profile)


def check_max_psi(location: str, scorer: models.Scorer, stats: BatchStats, max_psi: float | None) -> None:
    """Refuse to publish (InvalidInput, 65) when a step's input or prediction PSI exceeds max_psi."""
    if max_psi is None:
        return
    report = drift_report(scorer, stats)
    if report is None:
        raise UsageError(f"--max-psi: the model {scorer.location} carries no training baseline")
    worst, where = monitor.max_psi(report)
    if worst > max_psi:
        raise InvalidInput(
            f"{location}: drift in {where}: PSI {worst:.3f} exceeds --max-psi {max_psi:g}; "
            f"nothing was published"
        )


def check_gates(location: str, scorer: models.Scorer, stats: BatchStats, config) -> None:
    """The run's floors before anything is published (InvalidInput, 65): --max-psi, then
    --min-accuracy and --min-estimated-accuracy (a JobConfig or Spark's config)."""
    check_max_psi(location, scorer, stats, config.max_psi)
    quality.check_floors(location, stats.quality, stats.confidence_sum, stats.scored_steps,
                         config.min_accuracy, config.min_estimated_accuracy)


def batch_rows(parquet: pq.ParquetFile, scorer: models.Scorer, config: JobConfig) -> int:
    """Rows per record batch: --batch-size; else the default, or for rows of any length as many
    as hold about STEPS_PER_BATCH steps at the file's mean length (from its footer)."""
    if config.batch_size is not None:
        return config.batch_size
    if not config.options.ragged(scorer):
        return DEFAULT_BATCH_SIZE
    metadata = parquet.metadata
    column = config.options.column(scorer)
    leaves = [index for index in range(metadata.num_columns)
              if parquet.schema.column(index).path.split(".")[0] == column]
    if not leaves or metadata.num_rows == 0:
        return DEFAULT_BATCH_SIZE
    steps = sum(metadata.row_group(group).column(leaves[0]).num_values
                for group in range(metadata.num_row_groups))
    mean = max(steps / metadata.num_rows, 1.0)
    return int(min(max(STEPS_PER_BATCH // mean, 1024), DEFAULT_BATCH_SIZE))


def score_file(
    scorer: models.Scorer,
    config: JobConfig,
    input_location: str,
    output_location: str,
    reporter: Reporter,
    state: RunState | None = None,
    cache: ResultCache | None = None,
) -> tuple[FileResult, BatchStats]:
    """Score one Parquet file into one atomically published Parquet file; each batch's stats
    are merged into ``state.stats`` and its rows counted in ``state.rows_in`` as it goes.

    Steps: 1. open the input and check its schema; 2. open a temporary output; 3. stream
    record batches through the core; 4. close, check drift, commit; on any failure, remove the
    temporary output so nothing partial is ever published.
    """
    started = time.perf_counter()
    options = config.options
    parquet = inputs.open_source(input_location, config.input_version)
    if state is not None and hasattr(parquet, "describe"):  # a Delta Lake table's snapshot
        state.input_table = parquet.describe()
    try:
        schema = parquet.schema_arrow
    except Exception as error:  # noqa: BLE001
        raise inputs.read_failure(input_location, error) from None
    try:
        check_input_schema(schema, scorer, options)
    except InvalidInput as error:
        raise InvalidInput(f"{input_location}: {error}") from None

    sink = open_sink(output_location)
    writer = None
    background = None
    batches = None
    stats = empty_stats(scorer)
    try:
        scored_schema = output_schema(schema, options)
        writer = pq.ParquetWriter(sink.target, scored_schema, use_dictionary=dictionary_columns(scored_schema))
        reporter.start(input_location, parquet.metadata.num_rows)
        read = parquet.iter_batches(batch_size=batch_rows(parquet, scorer, config), use_threads=True)
        if config.threaded_io:
            background, batches = pipeline.BackgroundWriter(writer), pipeline.prefetch(read)
        else:
            background, batches = InlineWriter(writer), read
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001
                raise inputs.read_failure(input_location, error) from None
            try:
                scored, batch_stats = score_batch_with_stats(scorer, batch, options, cache)
            except InvalidRow as error:
                if state is not None:
                    state.rows_in += error.row + 1  # the rows read up to the invalid one
                raise InvalidInput(f"{input_location}: row {stats.rows + error.row}: {error.detail}") from None
            try:
                background.write(scored)
            except OSError as error:
                raise write_error(output_location, error) from None
            stats.merge(batch_stats)
            reporter.advance(batch.num_rows)
            if state is not None:
                state.stats.merge(batch_stats)
                state.rows_in += batch.num_rows
        try:
            background.finish()
        except OSError as error:
            raise write_error(output_location, error) from None
        claimed = parquet.metadata.num_rows
        if stats.rows != claimed:
            raise InvalidInput(
                f"{input_location}: corrupt Parquet file (the footer claims {claimed} rows but "
                f"{stats.rows} were read)"
            )
        invalid = int(stats.rows - stats.reason_counts[0])
        writer.add_key_value_metadata(output_metadata(scorer, config, input_location, stats.rows, invalid))
        try:
            writer.close()
        except OSError as error:
            raise write_error(output_location, error) from None
        writer = None
        check_gates(input_location, scorer, stats, config)
        sink.commit(stats.rows)
    except BaseException:
        reporter.close()
        if batches is not None:
            batches.close()  # stops the reader thread
        if background is not None:
            try:
                background.finish()
            except BaseException:  # noqa: BLE001  (the first error is the one to report)
                pass
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001  (the first error is the one to report)
                pass
        sink.abort()
        raise
    finally:
        parquet.close()
    invalid = int(stats.rows - stats.reason_counts[0])
    result = FileResult(input_location, output_location, stats.rows, invalid, time.perf_counter() - started)
    reporter.finish(result)
    return result, stats


def _prepare_output_directory(location: str) -> None:
    """Create OUTPUT and remove a stale _SUCCESS, so its presence always means this run finished."""
    if storage.is_uri(location):
        from score.remote_sink import check_output_directory, remove_object

        check_output_directory(location)
        remove_object(storage.join(location, SUCCESS_FILE))
        return
    path = storage.local_path(location)
    if os.path.exists(path) and not os.path.isdir(path):
        raise write_error(location, IsADirectoryError(20, "not a directory"))
    try:
        os.makedirs(path, exist_ok=True)
        marker = os.path.join(path, SUCCESS_FILE)
        if os.path.exists(marker):
            os.unlink(marker)
    except OSError as error:
        raise write_error(location, error) from None


def _ensure_parent(output_location: str) -> None:
    if storage.is_uri(output_location):
        return
    parent = os.path.dirname(os.path.abspath(storage.local_path(output_location)))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as error:
        raise write_error(output_location, error) from None


def run(config: JobConfig, state: RunState | None = None) -> RunState:
    """Run the job; raises a SeqscoreError subclass on failure. ``state`` records progress.

    Steps: 1. load and verify the model (before any data is read); 2. plan the files;
    3. score each file; 4. in directory mode, write _SUCCESS last.
    """
    from score import keyed_checks

    state = state if state is not None else RunState()
    if config.batch_size is not None and config.batch_size < 1:
        raise UsageError(f"--batch-size {config.batch_size}: expected a positive integer")
    keyed_checks.check_flags(config.key, config.state_in, config.state_out, config.output,
                          config.options.input_columns)
    quality.check_gate_flags(config.options.labels, config.min_accuracy)
    delta_output.check_flags(config.output_format, config.mode, config.txn_id)
    scorer = models.load(config.model, config.session)
    state.scorer = scorer
    config.options.validate(scorer)
    state.stats = empty_stats(scorer)
    state.warnings.extend(length_warnings(scorer, config.options))

    if config.output_format == "delta":
        from score import delta_job

        delta_job.run(scorer, config, state)
        return state
    pairs, directory_mode = inputs.plan(config.input, config.output, config.input_version)
    if config.key is not None:
        keyed_checks.check_model(scorer)
        state.keyed = keyed_checks.KeyedRecord()
    if directory_mode:
        _prepare_output_directory(config.output)
    if config.key is not None:
        run_keyed(scorer, config, state, pairs, directory_mode)
        return state
    reporter = Reporter(config.progress)
    # One cache for the whole run: a sequence scored in one file is not scored again in the next.
    cache = new_cache(scorer, config.options)
    try:
        for input_location, output_location, relative in pairs:
            if relative and "/" in relative:
                _ensure_parent(output_location)
            result, _ = score_file(scorer, config, input_location, output_location, reporter,
                                   state=state, cache=cache)
            state.files.append(result)
    finally:
        # Also after a failure: the summary and the warnings then show what was read.
        state.drift = drift_report(scorer, state.stats)
    if directory_mode:
        manifest = {
            "status": "succeeded",
            "created_at": utc_now(),
            "model_sha256": scorer.sha256,
            "rows": sum(result.rows for result in state.files),
            "files": [{"path": relative, "rows": result.rows}
                      for (_, _, relative), result in zip(pairs, state.files)],
        }
        write_small_file(storage.join(config.output, SUCCESS_FILE),
                         (json.dumps(manifest, indent=2) + "\n").encode())
    if models.baseline(scorer) is None:  # said once, after a run that succeeded
        state.warnings.append(no_baseline_warning(scorer))
    return state


def run_keyed(scorer: models.Scorer, config: JobConfig, state: RunState,
               pairs: list[tuple[str, str, str]], directory_mode: bool, table=None) -> None:
    """A run with --key (score.keyed_job), with the same drift gate, report and warnings;
    ``table`` makes OUTPUT a Delta Lake table (score.delta_job)."""
    from score import keyed_job

    started = time.perf_counter()
    try:
        done = keyed_job.run(scorer, config, state, pairs, directory_mode,
                             lambda stats: check_gates(config.input, scorer, stats, config), table)
    finally:
        state.drift = drift_report(scorer, state.stats)
    seconds = time.perf_counter() - started
    state.files.extend(FileResult(source, target, rows, invalid, seconds / len(done))
                       for source, target, rows, invalid in done)
    if models.baseline(scorer) is None:
        state.warnings.append(no_baseline_warning(scorer))


def no_baseline_warning(scorer: models.Scorer) -> str:
    """What a run says of a model without a training baseline (an import without --reference)."""
    return (f"the model {scorer.location} carries no training baseline: drift is not monitored "
            f"(export or import it with --reference to add one)")


def summary_of(config: JobConfig, state: RunState, exit_code: int, error: str | None) -> dict:
    """The --summary JSON of a local run: score.summary's, with the files scored."""
    files = [{"input": r.input, "output": r.output, "rows": r.rows, "rows_invalid": r.rows_invalid,
              "seconds": round(r.seconds, 3)} for r in state.files]
    return summary.build(state, exit_code=exit_code, error=error, input_location=config.input,
                         output_location=config.output, options=config.options,
                         rows_in=state.rows_in, rows_out=sum(r.rows for r in state.files),
                         run={"files": files, **(state.keyed.to_dict() if state.keyed else {}),
                              **({"input_table": state.input_table} if state.input_table else {}),
                              **({"output_table": state.output_table} if state.output_table else {})},
                         keyed=state.keyed is not None)

