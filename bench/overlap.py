"""A prototype of score.job.score_file that reads and writes Parquet beside inference.

pyarrow releases the GIL while it decodes and encodes Parquet, and onnxruntime while it runs,
so a reader thread and a writer thread, each behind a bounded queue, can overlap the three.
The benchmark times it against the job (`python -m bench.variant --overlap`); the proposed
change to score/job.py is in the benchmark's report. Semantics are the job's: same output,
same errors, nothing published on failure.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

import pyarrow.parquet as pq

from score import model as models
from score.core import (
    BatchStats,
    check_input_schema,
    empty_stats,
    output_schema,
    score_batch_with_stats,
)
from score.errors import InvalidInput, InvalidRow
from score.job import (
    FileResult,
    JobConfig,
    Reporter,
    _check_max_psi,
    _output_metadata,
    open_parquet,
    read_failure,
)
from score.sink import open_sink, write_error

QUEUE_DEPTH = 1  # batches waiting on each side: bounds memory to a few batches
_END = object()


def prefetch(batches: Iterator, depth: int = QUEUE_DEPTH) -> Iterator:
    """Iterate ``batches`` in a reader thread, at most ``depth`` ahead of the consumer.

    An error in the reader is raised in the consumer, where the next batch was due.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
            put((_END, None))
        except BaseException as error:  # noqa: BLE001  (handed to the consumer)
            put((None, error))

    reader = threading.Thread(target=read, name="parquet-reader", daemon=True)
    reader.start()
    try:
        while True:
            batch, error = slots.get()
            if error is not None:
                raise error
            if batch is _END:
                return
            yield batch
    finally:
        stop.set()
        reader.join()


class BackgroundWriter:
    """ParquetWriter.write_batch in a writer thread behind a bounded queue.

    A write error is raised by the next write() or by close(), as the OSError it was.
    """

    def __init__(self, writer: pq.ParquetWriter, depth: int = QUEUE_DEPTH) -> None:
        self.writer = writer
        self.slots: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._drain, name="parquet-writer", daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        while True:
            batch = self.slots.get()
            if batch is _END:
                return
            if self.error is None:
                try:
                    self.writer.write_batch(batch)
                except BaseException as error:  # noqa: BLE001  (raised in the caller)
                    self.error = error

    def write(self, batch) -> None:
        if self.error is not None:
            raise self.error
        self.slots.put(batch)

    def finish(self) -> None:
        """Wait for every queued batch to be written; raise the first write error."""
        if self.thread.is_alive():
            self.slots.put(_END)
            self.thread.join()
        if self.error is not None:
            raise self.error


def score_file_overlapped(
    scorer: models.Scorer,
    config: JobConfig,
    input_location: str,
    output_location: str,
    reporter: Reporter,
    on_batch: Callable[[BatchStats], None] | None = None,
) -> tuple[FileResult, BatchStats]:
    """score.job.score_file, with the reading and the writing each in a thread of its own."""
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
        writer = pq.ParquetWriter(sink.target, output_schema(schema, options))
        background = BackgroundWriter(writer)
        reporter.start(input_location, parquet.metadata.num_rows)
        batches = prefetch(parquet.iter_batches(batch_size=config.batch_size, use_threads=True))
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as error:  # noqa: BLE001
                raise read_failure(input_location, error) from None
            try:
                scored, batch_stats = score_batch_with_stats(scorer, batch, options)
            except InvalidRow as error:
                raise InvalidInput(
                    f"{input_location}: row {stats.rows + error.row}: {error.detail}"
                ) from None
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
        _check_max_psi(input_location, scorer, stats, config.max_psi)
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
            except Exception:  # noqa: BLE001
                pass
        sink.abort()
        raise
    finally:
        parquet.close()
    invalid = int(stats.rows - stats.reason_counts[0])
    result = FileResult(
        input_location, output_location, stats.rows, invalid, time.perf_counter() - started
    )
    reporter.finish(result)
    return result, stats
