"""What the local and the object-store sink share: the row-count check and the held signals.

Both sinks import this module and never the facade (score.sink), which imports them.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

from score.errors import StorageError


def check_row_count(location: str, rows: int, expected_rows: int, what: str = "file") -> None:
    """The footer of what was written must hold every row scored, or nothing is published."""
    if rows != expected_rows:
        raise StorageError(
            f"{location}: the written {what} holds {rows} rows, expected {expected_rows}; "
            f"nothing was published"
        )


@contextmanager
def signals_held():
    """Hold SIGTERM and SIGINT while the output is renamed, so a rename is never half-done."""
    held = {signal.SIGTERM, signal.SIGINT}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError):  # not the main thread, or no pthreads
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
