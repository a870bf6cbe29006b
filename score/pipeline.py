"""Reading and writing Parquet in threads of their own, beside inference.

pyarrow releases the GIL while it decodes and encodes Parquet, and onnxruntime while it runs,
so a reader thread and a writer thread, each behind a bounded queue, overlap the three. The
queues hold at most QUEUE_DEPTH batches, so memory stays bounded by --batch-size.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pyarrow.parquet as pq

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
