"""Named exceptions, each carrying the exit code the command line turns it into.

The codes follow BSD sysexits(3), which schedulers and shell scripts already know; the README
has the table and says which ones are worth a retry.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # bad command line, or OUTPUT is INPUT
EXIT_DATAERR = 65  # the input data is bad (rows, schema, not Parquet); retrying will not help
EXIT_NOINPUT = 66  # INPUT does not exist
EXIT_SOFTWARE = 70  # a bug in seqscore itself
EXIT_CANTCREAT = 73  # OUTPUT cannot be created
EXIT_IOERR = 74  # disk full, network or storage error; may be transient
EXIT_NOPERM = 77  # no permission to read INPUT
EXIT_CONFIG = 78  # the model file is missing, corrupt or does not match its spec
EXIT_SIGINT = 130  # interrupted (Ctrl-C)
EXIT_SIGTERM = 143  # terminated (SIGTERM)


class SeqscoreError(Exception):
    """Base of every error a person can act on; ``str()`` is the one line to print.

    A subclass names its exit code in its class line: ``class X(SeqscoreError, exit_code=...)``.
    """

    exit_code = EXIT_SOFTWARE

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class UsageError(SeqscoreError, exit_code=EXIT_USAGE):
    """A bad command line, or OUTPUT is INPUT."""


class InvalidInput(SeqscoreError, exit_code=EXIT_DATAERR):
    """The data is not what the model takes: bad rows, a missing column, not Parquet."""


class InvalidRow(InvalidInput):
    """One row breaks the contract; ``row`` counts from 0 within the batch that was checked."""

    def __init__(self, row: int, reason: str, detail: str) -> None:
        super().__init__(f"row {row}: {detail}")
        self.row = row
        self.reason = reason
        self.detail = detail


class InputMissing(SeqscoreError, exit_code=EXIT_NOINPUT):
    """INPUT does not exist."""


class InputPermission(SeqscoreError, exit_code=EXIT_NOPERM):
    """No permission to read INPUT."""


class OutputError(SeqscoreError, exit_code=EXIT_CANTCREAT):
    """OUTPUT cannot be created: missing parent, a directory in the way, no permission."""


class StorageError(SeqscoreError, exit_code=EXIT_IOERR):
    """Disk full or another I/O error while reading or writing; may succeed on a retry."""


class ModelError(SeqscoreError, exit_code=EXIT_CONFIG):
    """The model file cannot be used: missing, corrupt, tampered with, or not matching its spec."""


class Interrupted(SeqscoreError):
    """A signal asked the job to stop; the temporary output has been removed."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(f"interrupted by {signal_name}; no output was published")
        self.exit_code = exit_code


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (libraries append tracebacks and hints), or its
    type's name when the message is empty."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
