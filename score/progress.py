"""Progress of the local job on stderr: a bar on a terminal, one line per file in logs, or nothing."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from score.job import FileResult


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
