"""The pieces every command line of the project shares: the one-line parser, the argparse
types and the one-line message. Each stage's ``__main__`` builds its parser from these."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from score.errors import EXIT_SIGINT, EXIT_USAGE, SeqscoreError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (schedulers keep the last line)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _number(text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def probability(text: str) -> float:
    value = _number(text, float)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a probability in [0, 1]")
    return value


def non_negative(text: str) -> float:
    value = _number(text, float)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def value_set(text: str) -> tuple[int, ...]:
    """A value set as training, the export and the import take it: '0..10' or '1,2,5'."""
    from score.spec import parse_values

    try:
        return parse_values(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def one_line(text: str) -> str:
    """Collapse whitespace and escape unprintable characters (file names and column names in
    messages come from files nobody checked)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in " ".join(text.split()))


def run_stage(stage: Callable[[], int], interrupted: str) -> int:
    """Run one stage's work: a named error becomes one `error: ...` line and its exit code,
    Ctrl-C the line ``interrupted`` (what was left as it was) and exit 130."""
    try:
        return stage()
    except SeqscoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return EXIT_SIGINT
