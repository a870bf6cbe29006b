"""The scoring job: Parquet in, scored Parquet out, one record batch at a time.

This module owns file access; the scoring itself is score.core.score_batch_with_stats.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from score import __version__, monitor, pipeline, storage
from score import model as models
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
from score.encoding import reasons_for
from score.errors import (
    InputMissing,
    InvalidInput,
    InvalidRow,
    SeqscoreError,
    StorageError,
    UsageError,
    first_line,
)
from score.sink import open_sink, write_error, write_small_file

DEFAULT_BATCH_SIZE = 65_536  # from the benchmark: with the run cache, memory stays ~300 MB at 5M rows
# Rows of any length: memory follows the steps of a batch, not its rows, so the default batch
# holds about this many steps (estimated from the file's footer), within 1,024..65,536 rows.
# On the ragged benchmark (1M rows, mean length 16) twice the steps of the fixed-length default
# batch shared more prefixes and ran fewer narrow runs: 16.3-16.5 s against 17.5-18.8 s at
# 131,072 steps, peak RSS 366 MB against 318 MB; 524,288 steps ran in 16.1 s but at 450 MB.
STEPS_PER_BATCH = 262_144
SUCCESS_FILE = "_SUCCESS"
# Limits on the Parquet footer's Thrift structures: a forged file cannot make the reader
# allocate gigabytes for metadata.
THRIFT_STRING_LIMIT = 64 << 20
THRIFT_CONTAINER_LIMIT = 1 << 20


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


@dataclass
class FileResult:
    input: str
    output: str
    rows: int
    rows_invalid: int
    seconds: float


@dataclass
class RunState:
    """Everything the summary reports, filled in as the run goes."""

    started: float = field(default_factory=time.perf_counter)
    started_at: str = field(default_factory=lambda: utc_now())
    files: list[FileResult] = field(default_factory=list)
    stats: BatchStats | None = None
    scorer: models.Scorer | None = None
    drift: dict | None = None
    warnings: list[str] = field(default_factory=list)  # said once, on stderr, after the run


def utc_now() -> str:
    """Now, in UTC, to the second: the summary's and the footer's timestamps."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# Inputs ------------------------------------------------------------------------------------------
def _same_location(first: str, second: str) -> bool:
    if storage.is_uri(first) or storage.is_uri(second):
        return first.rstrip("/") == second.rstrip("/")
    first, second = storage.local_path(first), storage.local_path(second)
    if os.path.exists(first) and os.path.exists(second):
        return os.path.samefile(first, second)
    return os.path.abspath(first) == os.path.abspath(second)


def _inside(child: str, parent: str) -> bool:
    if storage.is_uri(child) or storage.is_uri(parent):
        return child.rstrip("/").startswith(parent.rstrip("/") + "/")
    child = os.path.realpath(storage.local_path(child))
    parent = os.path.realpath(storage.local_path(parent))
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def plan(config: JobConfig) -> tuple[list[tuple[str, str, str]], bool]:
    """(input, output, relative name) for each file, and whether this is directory mode."""
    if _same_location(config.input, config.output):
        raise UsageError(f"OUTPUT is INPUT ({config.output}); choose another output path")
    if storage.kind(config.input) == "file":
        if storage.is_directory(config.output, for_output=True):
            raise _output_is_directory(config.output)
        return [(config.input, config.output, "")], False
    if _inside(config.output, config.input):
        raise UsageError(
            f"OUTPUT {config.output} is inside INPUT {config.input}; a later run would score "
            f"its own output. Choose a directory outside the input"
        )
    entries = storage.list_parquet(config.input)
    if not entries:
        raise InputMissing(f"{config.input}: no *.parquet files in this directory")
    return [(entry.location, storage.join(config.output, entry.relative), entry.relative)
            for entry in entries], True


def _output_is_directory(location: str) -> Exception:
    from score.errors import OutputError

    return OutputError(f"{location}: is a directory; INPUT is a file, so OUTPUT must be a file path")


def open_parquet(location: str) -> pq.ParquetFile:
    """Open a Parquet file with bounded Thrift sizes; any failure becomes a named error."""
    if not storage.is_uri(location):
        path = storage.local_path(location)
        try:
            if os.path.getsize(path) == 0:
                raise InvalidInput(f"{location}: the file is empty (0 bytes); expected a Parquet file")
        except OSError as error:
            raise storage.read_error(location, error) from None
    source = storage.open_input(location)
    try:
        return pq.ParquetFile(
            source,
            thrift_string_size_limit=THRIFT_STRING_LIMIT,
            thrift_container_size_limit=THRIFT_CONTAINER_LIMIT,
            arrow_extensions_enabled=False,
            page_checksum_verification=True,
            # On a store, fetch each row group's column chunks in a few coalesced range
            # requests rather than one per page; memory stays bounded by a row group.
            pre_buffer=storage.is_uri(location),
        )
    except Exception as error:  # noqa: BLE001  (every reader failure is classified below)
        source.close()
        raise read_failure(location, error) from None


def read_failure(location: str, error: BaseException) -> Exception:
    """A failure inside the Parquet reader: corrupt data (65) unless the storage failed (74)."""
    if isinstance(error, SeqscoreError):
        return error
    if isinstance(error, OSError) and getattr(error, "errno", None) is not None:
        return storage.read_error(location, error)
    if storage.is_uri(location) and isinstance(error, OSError):
        mapped = storage.read_error(location, error)
        if not isinstance(mapped, StorageError) or "AWS Error" in str(error):
            return mapped
    detail = first_line(error)
    if "magic bytes" in detail:
        return InvalidInput(f"{location}: not a Parquet file, or truncated (no Parquet footer: {detail})")
    return InvalidInput(f"{location}: corrupt or truncated Parquet file ({detail})")


# The job -------------------------------------------------------------------------------------------
class Reporter:
    """Progress: a bar on a terminal, one line per file in logs, or nothing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bar = None

    def start(self, location: str, rows: int) -> None:
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=rows, unit="rows", unit_scale=True, desc=os.path.basename(location.rstrip("/")),
                            file=sys.stderr, dynamic_ncols=True, leave=True)

    def advance(self, rows: int) -> None:
        if self.bar is not None:
            self.bar.update(rows)

    def finish(self, result: FileResult) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.mode == "lines":
            rate = result.rows / result.seconds if result.seconds else 0.0
            print(
                f"scored {result.input} -> {result.output}: {result.rows} rows "
                f"({result.rows_invalid} invalid) in {result.seconds:.2f} s, {rate:,.0f} rows/s",
                file=sys.stderr,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _output_metadata(scorer: models.Scorer, config: JobConfig, location: str, stats: BatchStats) -> dict:
    invalid = int(stats.rows - stats.reason_counts[0])
    return {
        "seqscore.model_sha256": scorer.sha256,
        "seqscore.model_version": scorer.version,
        "seqscore.spec": scorer.spec.to_json(),
        "seqscore.top_k": str(config.options.top_k),
        "seqscore.scorer_version": __version__,
        "seqscore.input": location,
        "seqscore.rows_in": str(stats.rows),
        "seqscore.rows_invalid": str(invalid),
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


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Every Parquet column but the probabilities, which are floats that rarely repeat: a
    dictionary for them is built and abandoned page after page. Without it the scored file of
    1M rows of 16 steps was written in 2.8 s instead of 5.4 s, and 20% smaller."""
    buffer = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buffer)
    parquet_schema = pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema
    paths = [parquet_schema.column(index).path for index in range(len(parquet_schema))]
    return [path for path in paths if path.split(".")[0] != "top_k_probs"]


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
    on_batch: Callable[[BatchStats], None] | None = None,
    cache: ResultCache | None = None,
) -> tuple[FileResult, BatchStats]:
    """Score one Parquet file into one atomically published Parquet file.

    Steps: 1. open the input and check its schema; 2. open a temporary output; 3. stream
    record batches through the core; 4. close, check drift, commit; on any failure, remove the
    temporary output so nothing partial is ever published.
    """
    started = time.perf_counter()
    options = config.options
    parquet = open_parquet(input_location)
    try:
        schema = parquet.schema_arrow
    except Exception as error:  # noqa: BLE001
        raise read_failure(input_location, error) from None
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
        background = pipeline.BackgroundWriter(writer)
        reporter.start(input_location, parquet.metadata.num_rows)
        rows_per_batch = batch_rows(parquet, scorer, config)
        batches = pipeline.prefetch(parquet.iter_batches(batch_size=rows_per_batch, use_threads=True))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001
                raise read_failure(input_location, error) from None
            try:
                scored, batch_stats = score_batch_with_stats(scorer, batch, options, cache)
            except InvalidRow as error:
                raise InvalidInput(f"{input_location}: row {stats.rows + error.row}: {error.detail}") from None
            try:
                background.write(scored)
            except OSError as error:
                raise write_error(output_location, error) from None
            stats.merge(batch_stats)
            reporter.advance(batch.num_rows)
            if on_batch is not None:
                on_batch(batch_stats)
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
        writer.add_key_value_metadata(_output_metadata(scorer, config, input_location, stats))
        try:
            writer.close()
        except OSError as error:
            raise write_error(output_location, error) from None
        writer = None
        check_max_psi(input_location, scorer, stats, config.max_psi)
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
    state = state if state is not None else RunState()
    if config.batch_size is not None and config.batch_size < 1:
        raise UsageError(f"--batch-size {config.batch_size}: expected a positive integer")
    scorer = models.load(config.model, config.session)
    state.scorer = scorer
    config.options.validate(scorer)
    state.stats = empty_stats(scorer)
    state.warnings.extend(length_warnings(scorer, config.options))

    pairs, directory_mode = plan(config)
    if directory_mode:
        _prepare_output_directory(config.output)
    reporter = Reporter(config.progress)
    # One cache for the whole run: a sequence scored in one file is not scored again in the next.
    cache = new_cache(scorer, config.options)
    try:
        for input_location, output_location, relative in pairs:
            if relative and "/" in relative:
                _ensure_parent(output_location)
            result, _ = score_file(scorer, config, input_location, output_location, reporter,
                                   on_batch=state.stats.merge, cache=cache)
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


def no_baseline_warning(scorer: models.Scorer) -> str:
    """What a run says of a model without a training baseline (an import without --reference)."""
    return (f"the model {scorer.location} carries no training baseline: drift is not monitored "
            f"(export or import it with --reference to add one)")


# Summary ------------------------------------------------------------------------------------------
def summary(config: JobConfig, state: RunState, exit_code: int, error: str | None) -> dict:
    """The --summary JSON: status, counts, speed, distributions and drift."""
    payload = summary_head(
        exit_code=exit_code, error=error, input_location=config.input, output_location=config.output,
        options=config.options, started=state.started, started_at=state.started_at,
        rows_in=state.stats.rows if state.stats is not None else 0,
        rows_out=sum(result.rows for result in state.files),
    )
    payload["files"] = [{"input": r.input, "output": r.output, "rows": r.rows, "rows_invalid": r.rows_invalid,
                         "seconds": round(r.seconds, 3)} for r in state.files]
    payload.update(summary_figures(config.options, state.scorer, state.stats, state.drift))
    payload["warnings"] = list(state.warnings)
    return payload


def summary_head(*, exit_code: int, error: str | None, input_location: str, output_location: str,
                 options: ScoreOptions, started: float, started_at: str, rows_in: int, rows_out: int) -> dict:
    """The summary's first keys, from status to on_invalid; the same for every kind of run."""
    seconds = time.perf_counter() - started
    return {
        "status": "succeeded" if exit_code == 0 else "failed",
        "exit_code": exit_code,
        "error": error,
        "input": input_location,
        "output": output_location,
        "started_at": started_at,
        "finished_at": utc_now(),
        "seconds": round(seconds, 3),
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_per_second": round(rows_in / seconds, 1) if seconds > 0 else None,
        "scorer_version": __version__,
        "top_k": options.top_k,
        "on_invalid": options.on_invalid,
    }


def summary_figures(options: ScoreOptions, scorer: models.Scorer | None, stats: BatchStats | None,
                    drift: dict | None) -> dict:
    """The model, the counts, the distributions and the drift of a run's merged statistics.

    Everything here follows from the stats alone, so a run that gathers them elsewhere (Spark's
    executors) reports them exactly as the local job does.
    """
    payload: dict = {}
    if scorer is not None:
        payload["model"] = {"location": scorer.location, "sha256": scorer.sha256, "version": scorer.version}
        payload["spec"] = json.loads(scorer.spec.to_json())
    if stats is None or scorer is None:
        return payload
    spec = scorer.spec
    rows_in = stats.rows
    invalid = int(rows_in - stats.reason_counts[0])
    payload["rows_invalid"] = invalid
    payload["invalid_by_reason"] = {name: int(stats.reason_counts[code])
                                    for code, name in reasons_for(spec).items()}
    payload["predicted_class_distribution"] = [
        {str(value): int(count) for value, count in zip(spec.y_values, row) if count}
        for row in stats.profile.prediction_counts
    ]
    payload["input_value_histogram"] = [
        {str(value): int(count) for value, count in zip(spec.x_values, row) if count}
        for row in stats.profile.input_counts
    ]
    report = dict(drift or {})
    baseline = models.baseline(scorer)
    report["has_baseline"] = baseline is not None
    report["baseline_profile"] = baseline
    report["profile"] = stats.profile.to_dict()
    report["low_confidence_threshold"] = options.low_confidence
    report["low_confidence_share"] = (
        round(stats.low_confidence_steps / stats.scored_steps, 6) if stats.scored_steps else None
    )
    report["invalid_share"] = round(invalid / rows_in, 6) if rows_in else None
    report["psi_warning_level"] = monitor.PSI_WARNING
    payload["drift"] = report
    payload["distinct_sequences_scored"] = stats.distinct_rows
    payload["steps_scored"] = stats.scored_steps
    payload["steps_computed"] = stats.steps_computed
    payload["max_length"] = options.length_limit(scorer)
    payload["sequence_length_histogram"] = length_histogram(stats.profile)
    return payload


def length_histogram(profile: monitor.Profile) -> dict[str, int]:
    """Rows per sequence length; the last key, '>N', counts rows longer than any training row."""
    counts = profile.length_counts
    if counts is None:
        return {}
    names = [str(length) for length in range(1, counts.size)] + [f">{counts.size - 1}"]
    return {name: int(count) for name, count in zip(names, counts) if count}


def write_summary(location: str, payload: dict) -> None:
    write_small_file(location, (json.dumps(payload, indent=2, default=_jsonable) + "\n").encode())


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


