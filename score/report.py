"""python -m score.report SUMMARY.json REPORT.png: draw a run's drift against the training baseline.

One column per step; rows for input values, predicted classes and top-1 probability. Bars are
shares of rows, baseline (training) beside today (this run), with each step's PSI in the title.
Needs matplotlib (the `train` extra); the scoring job itself does not.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from score.monitor import CONFIDENCE_BINS, PSI_WARNING

MAX_STEPS_SHOWN = 8


def _shares(counts: list[list[int]]) -> np.ndarray:
    array = np.asarray(counts, dtype=np.float64)
    totals = array.sum(axis=1, keepdims=True)
    return np.divide(array, totals, out=np.zeros_like(array), where=totals > 0)


def _draw_lengths(axes, expected_counts: list[int], actual_counts: list[int], psi: float | None) -> None:
    """The sequence-length histogram across the last row of panels."""
    for axis in axes[1:]:
        axis.set_visible(False)
    axis = axes[0]
    expected, actual = _shares([expected_counts])[0], _shares([actual_counts])[0]
    positions = np.arange(1, expected.size + 1, dtype=np.float64)  # the last bin: longer rows
    axis.bar(positions - 0.2, expected, width=0.4, label="training baseline")
    axis.bar(positions + 0.2, actual, width=0.4, label="this run")
    flag = " (drift)" if psi is not None and psi > PSI_WARNING else ""
    psi_text = "n/a" if psi is None else f"{psi:.3f}"
    axis.set_title(f"sequence length: PSI {psi_text}{flag} (last bar: longer than trained)", fontsize=9)
    axis.set_xlabel("steps in the row")
    axis.set_ylabel("share of rows")


def render(summary: dict, path: str) -> None:
    """Write the PNG; raises ValueError if the summary carries no baseline comparison."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    drift = summary.get("drift") or {}
    baseline, today = drift.get("baseline_profile"), drift.get("profile")
    if not baseline or not today:
        raise ValueError(
            "the summary has no baseline comparison (the model carries no training baseline, or "
            "the run failed before scoring)"
        )
    spec = json.loads(summary["spec"]) if isinstance(summary.get("spec"), str) else summary.get("spec", {})
    rows = [
        ("input values", "input_counts", "input_psi", spec.get("x_values")),
        ("predicted classes", "prediction_counts", "prediction_psi", spec.get("y_values")),
        ("top-1 probability", "confidence_counts", "confidence_psi", None),
    ]
    steps = len(today["input_counts"])
    # Up to MAX_STEPS_SHOWN steps, evenly spread: a 64-step model would draw a wall of panels.
    shown = sorted(set(np.linspace(0, steps - 1, min(steps, MAX_STEPS_SHOWN)).round().astype(int)))
    lengths = baseline.get("length_counts") is not None and today.get("length_counts") is not None
    figure, axes = pyplot.subplots(3 + lengths, len(shown), figsize=(4 * len(shown), 9 + 3 * lengths),
                                   squeeze=False)
    for row, (label, key, psi_key, values) in enumerate(rows):
        expected, actual = _shares(baseline[key]), _shares(today[key])
        bins = expected.shape[1]
        if values is None:  # confidence: bin centres over [0, 1]
            positions = (np.arange(CONFIDENCE_BINS) + 0.5) / CONFIDENCE_BINS
            width = 0.4 / CONFIDENCE_BINS
        else:
            positions = np.asarray(values[:bins], dtype=np.float64)
            width = 0.4
        psi_values = drift.get(psi_key) or [None] * steps
        for column, step in enumerate(shown):
            axis = axes[row][column]
            axis.bar(positions - width / 2, expected[step], width=width, label="training baseline")
            axis.bar(positions + width / 2, actual[step], width=width, label="this run")
            psi = psi_values[step]
            flag = " (drift)" if psi is not None and psi > PSI_WARNING else ""
            psi_text = "n/a" if psi is None else f"{psi:.3f}"
            axis.set_title(f"{label}, step {step}: PSI {psi_text}{flag}", fontsize=9)
            axis.set_xlabel(label)
            axis.set_ylabel("share of rows")
            if row == 0 and column == 0:
                axis.legend(fontsize=8)
    if lengths:
        _draw_lengths(axes[3], baseline["length_counts"], today["length_counts"], drift.get("length_psi"))
    checked = "" if drift.get("checked", True) else " (too few rows for the PSI to be acted on)"
    figure.suptitle(
        f"{summary.get('input', '')}: {summary.get('rows_in', 0)} rows, "
        f"low-confidence steps {drift.get('low_confidence_share')}, invalid rows "
        f"{drift.get('invalid_share')}{checked}",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m score.report", description=__doc__.splitlines()[0])
    p.add_argument("summary", metavar="SUMMARY.json", help="written by python -m score --summary")
    p.add_argument("report", metavar="REPORT.png", help="where to write the picture")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with open(args.summary) as handle:
            summary = json.load(handle)
    except FileNotFoundError:
        print(f"error: {args.summary}: no such file", file=sys.stderr)
        return 66
    except ValueError as error:
        print(f"error: {args.summary}: not a JSON summary ({error})", file=sys.stderr)
        return 65
    try:
        render(summary, args.report)
    except ImportError:
        print("error: drawing needs matplotlib: pip install 'seqscore[train]'", file=sys.stderr)
        return 1
    except (ValueError, KeyError) as error:
        print(f"error: {args.summary}: {error}", file=sys.stderr)
        return 65
    except OSError as error:
        print(f"error: {args.report}: cannot write ({error.strerror or error})", file=sys.stderr)
        return 73
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
