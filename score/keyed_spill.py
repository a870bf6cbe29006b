"""Putting rows scored in key order back in input order without holding them: a run with
--key over an input not sorted by key (score.keyed_job) spills each scored piece, sorted by its
rows' input positions, to a temporary Parquet file, then merges the pieces back a window of
positions at a time, reading each piece's small row groups in order.

Each piece is a run sorted by position, so the rows of a window [a, b) are a prefix of what is
left of every run: one pass over the file, holding one row group per piece and one window.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

POSITION = "_seqscore_position"  # each scored row's place in the input
SPILL_ROWS = 1_024  # rows per row group of the spill: what a piece holds in memory while merging


class Spill:
    """A temporary Parquet file of scored pieces, each sorted by input position."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="seqscore-spill-")
        self.path = os.path.join(self.folder, "scored.parquet")
        self.writer: pq.ParquetWriter | None = None
        self.runs: list[tuple[int, int]] = []  # each piece's row groups [first, last)
        self.groups = 0

    def add(self, piece: pa.Table, positions: np.ndarray) -> None:
        """Spill one scored piece (rows in any order) with each row's input position."""
        order = np.argsort(positions, kind="stable")
        table = piece.take(pa.array(order)).append_column(POSITION, pa.array(positions[order], pa.int64()))
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema, compression="lz4")
        first = self.groups
        for start in range(0, table.num_rows, SPILL_ROWS):
            self.writer.write_table(table.slice(start, SPILL_ROWS), row_group_size=SPILL_ROWS)
            self.groups += 1
        self.runs.append((first, self.groups))

    def reader(self) -> Merge:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        return Merge(pq.ParquetFile(self.path) if self.runs else None, self.runs)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        shutil.rmtree(self.folder, ignore_errors=True)


class Merge:
    """The spilled rows, window by window of input positions, in input order."""

    def __init__(self, parquet: pq.ParquetFile | None, runs: list[tuple[int, int]]) -> None:
        self.parquet = parquet
        self.next = [first for first, _ in runs]
        self.last = [last for _, last in runs]
        self.buffers: list[pa.Table | None] = [None] * len(runs)

    def until(self, stop: int) -> pa.Table:
        """Every row not yet returned whose position is below ``stop``, in position order,
        without the position column."""
        parts = []
        for run in range(len(self.next)):
            while True:
                buffer = self.buffers[run]
                if buffer is None or buffer.num_rows == 0:
                    if self.next[run] >= self.last[run]:
                        break
                    buffer = self.parquet.read_row_group(self.next[run])
                    self.next[run] += 1
                positions = buffer.column(POSITION).to_numpy()
                cut = int(np.searchsorted(positions, stop))
                parts.append(buffer.slice(0, cut))
                self.buffers[run] = buffer.slice(cut)
                if cut < buffer.num_rows:  # the rest of this run lies beyond the window
                    break
        window = pa.concat_tables(parts) if parts else None
        if window is None or window.num_rows == 0:
            return window
        order = np.argsort(window.column(POSITION).to_numpy(), kind="stable")
        return window.take(pa.array(order)).drop_columns([POSITION])
