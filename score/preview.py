"""python -m score.preview SCORED.parquet [ROWS]: print the first scored rows in a readable form."""

from __future__ import annotations

import argparse
import sys

import pyarrow.parquet as pq

# A row longer than SHORT_ROW steps shows its first and last steps and its length: a 28-step row
# written out whole is one line of about 800 characters.
SHORT_ROW = 6
HEAD_STEPS, TAIL_STEPS = 3, 2  # the values shown of a long row's lists
TOP_K_HEAD, TOP_K_TAIL = 2, 1  # the steps whose top-k a long row shows


def _elided(items: list, head: int, tail: int) -> list:
    """The first `head` and last `tail` items of a long list with '...' between them."""
    return items if len(items) <= SHORT_ROW else [*items[:head], "...", *items[-tail:]]


def sequence(values: list | None) -> str:
    """A sequence, its middle left out when it is long."""
    if values is None or len(values) <= SHORT_ROW:
        return str(values)
    return f"[{', '.join(map(str, _elided(values, HEAD_STEPS, TAIL_STEPS)))}]"


def top_k(values: list[list[int]], probabilities: list[list[float]]) -> str:
    """Each step's top-k as value:probability; a long row's first and last steps, numbered."""
    steps = [" ".join(f"{value}:{probability:.3f}" for value, probability in zip(top, chances))
             for top, chances in zip(values, probabilities)]
    if len(steps) <= SHORT_ROW:
        return "; ".join(steps)
    numbered = [f"step {step}: {text}" for step, text in enumerate(steps)]
    return "; ".join(_elided(numbered, TOP_K_HEAD, TOP_K_TAIL))


def describe(row: dict, input_column: str) -> str:
    """One row: its input, its prediction, and the top-k values with probabilities per step."""
    inputs = row.get(input_column)
    length = f" ({len(inputs)} steps)" if inputs is not None and len(inputs) > SHORT_ROW else ""
    head = f"{input_column}={sequence(inputs)}{length}"
    if row.get("error"):
        return f"{head}  error: {row['error']}"
    target = f"  y={sequence(row['y'])}" if "y" in row else ""
    steps = top_k(row["top_k_values"], row["top_k_probs"])
    return f"{head}{target}  y_pred={sequence(row['y_pred'])}  top-k per step: {steps}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        batches = pq.ParquetFile(args.scored).iter_batches(batch_size=max(args.rows, 1))
        rows = next(batches).to_pylist()[: args.rows]
    except StopIteration:
        rows = []
    except (OSError, ValueError) as error:
        print(f"error: {args.scored}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 65
    for row in rows:
        print(describe(row, args.input_column))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m score.preview", description=__doc__.splitlines()[0])
    p.add_argument("scored", metavar="SCORED.parquet", help="a file written by python -m score")
    p.add_argument("rows", type=int, nargs="?", default=5, help="how many rows (default 5)")
    p.add_argument("--input-column", default="x", metavar="NAME", help="the sequence column (default x)")
    return p


if __name__ == "__main__":
    sys.exit(main())
