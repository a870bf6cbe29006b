"""python -m score.preview SCORED.parquet [ROWS]: print the first scored rows in a readable form."""

from __future__ import annotations

import argparse
import sys

import pyarrow.parquet as pq


def describe(row: dict, input_column: str) -> str:
    """One row: its input, its prediction, and the top-k values with probabilities per step."""
    if row.get("error"):
        return f"{input_column}={row.get(input_column)}  error: {row['error']}"
    steps = "; ".join(
        " ".join(f"{value}:{probability:.3f}" for value, probability in zip(values, probabilities))
        for values, probabilities in zip(row["top_k_values"], row["top_k_probs"])
    )
    target = f"  y={row['y']}" if "y" in row else ""
    return f"{input_column}={row.get(input_column)}{target}  y_pred={row['y_pred']}  top-k per step: {steps}"


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
