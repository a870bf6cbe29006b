"""python -m score.report SUMMARY.json REPORT.png: draw a run's drift against the training baseline.

One column per step (at most MAX_STEPS_SHOWN, evenly spread); rows for input values, predicted
classes and top-1 probability, and the sequence-length histogram below for a model with a length
baseline. Bars are shares of rows, baseline (training) beside today (this run); each panel's
title gives its PSI, "(drift)" above the warning level, or "not checked (N rows)" where too few
rows reach the step for the job to act on it. Needs matplotlib (the `train` extra); the scoring
job itself does not.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from score.monitor import CONFIDENCE_BINS, PSI_WARNING

MAX_STEPS_SHOWN = 5  # evenly spread over a longer model: more panels would not stay legible
PANEL_INCHES = (4.4, 3.3)  # (width, height) of one panel
FONT_SIZE = 12
DPI = 100


def _shares(counts: list[list[int]]) -> np.ndarray:
    array = np.asarray(counts, dtype=np.float64)
    totals = array.sum(axis=1, keepdims=True)
    return np.divide(array, totals, out=np.zeros_like(array), where=totals > 0)


def psi_label(psi: float | None, checked: bool, rows: int | None) -> str:
    """A panel's verdict: the PSI, '(drift)' above the warning level, or why it was not acted on.

    The job acts on a step only when enough rows reach it (monitor.drift's steps_checked): a
    late step of a ragged run, seen in a few dozen rows, can read PSI 1.9 and mean nothing.
    """
    if not checked:  # a summary from before step_rows says no count
        return "not checked" + (f" ({rows:,} rows)" if rows is not None else "")
    if psi is None:
        return "PSI n/a"
    return f"PSI {psi:.3f}" + (" (drift)" if psi > PSI_WARNING else "")


def _several_lengths(expected_counts: list[int] | None, actual_counts: list[int] | None) -> bool:
    """Whether a length histogram says anything: rows of more than one length on either side."""
    if expected_counts is None or actual_counts is None:
        return False
    return max(np.count_nonzero(expected_counts), np.count_nonzero(actual_counts)) > 1


def _draw_lengths(axis, expected_counts: list[int], actual_counts: list[int], verdict: str) -> None:
    """The sequence-length histogram, across the whole last row."""
    expected, actual = _shares([expected_counts])[0], _shares([actual_counts])[0]
    positions = np.arange(1, expected.size + 1, dtype=np.float64)  # the last bin: longer rows
    axis.bar(positions - 0.2, expected, width=0.4, label="training baseline")
    axis.bar(positions + 0.2, actual, width=0.4, label="this run")
    axis.set_title(f"sequence length: {verdict} (last bar: longer than trained)")
    axis.set_xlabel("steps in the row")
    axis.set_ylabel("share of rows")


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def title(summary: dict, drift: dict) -> str:
    """What was scored and its shares, each saying what it is a share of."""
    threshold = drift.get("low_confidence_threshold")
    below = f" (top-1 probability < {threshold:g})" if threshold is not None else ""
    checked = "" if drift.get("checked", True) else (
        f"\ntoo few rows for the PSI to be acted on ({drift.get('rows', 0):,} of "
        f"{drift.get('minimum_rows', 0):,} needed)")
    return (f"{summary.get('input', '')}: {summary.get('rows_in', 0):,} rows; "
            f"{_share(drift.get('low_confidence_share'))} of steps low-confidence{below}, "
            f"{_share(drift.get('invalid_share'))} of rows invalid{checked}")


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
    run_checked = drift.get("checked", True)
    steps_checked = drift.get("steps_checked") or [True] * steps
    rows_behind = drift.get("step_rows") or [None] * steps  # monitor.drift's
    # Up to MAX_STEPS_SHOWN steps, evenly spread: a 64-step model would draw a wall of panels.
    shown = sorted(set(np.linspace(0, steps - 1, min(steps, MAX_STEPS_SHOWN)).round().astype(int)))
    lengths = _several_lengths(baseline.get("length_counts"), today.get("length_counts"))
    height = PANEL_INCHES[1] * (3 + lengths) + 1.0  # and the title and the legend above
    with pyplot.rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE}):
        figure = pyplot.figure(figsize=(PANEL_INCHES[0] * max(len(shown), 3), height))
        grid = figure.add_gridspec(3 + lengths, len(shown))
        for row, (label, key, psi_key, values) in enumerate(rows):
            expected, actual = _shares(baseline[key]), _shares(today[key])
            bins = expected.shape[1]
            if values is None:  # confidence: bin centres over [0, 1]
                positions = (np.arange(CONFIDENCE_BINS) + 0.5) / CONFIDENCE_BINS
                width = 0.4 / CONFIDENCE_BINS
            elif len(values) >= bins:
                positions, width = np.asarray(values[:bins], dtype=np.float64), 0.4
            else:  # a spec without its value sets: class indices
                positions, width = np.arange(bins, dtype=np.float64), 0.4
            psi_values = drift.get(psi_key) or [None] * steps
            for column, step in enumerate(shown):
                axis = figure.add_subplot(grid[row, column])
                axis.bar(positions - width / 2, expected[step], width=width, label="training baseline")
                axis.bar(positions + width / 2, actual[step], width=width, label="this run")
                checked = run_checked and bool(steps_checked[step])
                verdict = psi_label(psi_values[step], checked, rows_behind[step])
                axis.set_title(f"{label}, step {step}:\n{verdict}")
                axis.set_xlabel(label)
                if column == 0:
                    axis.set_ylabel("share of rows")
        if lengths:
            verdict = psi_label(drift.get("length_psi"), run_checked, drift.get("rows", 0))
            _draw_lengths(figure.add_subplot(grid[3, :]), baseline["length_counts"],
                          today["length_counts"], verdict)
        figure.suptitle(title(summary, drift), fontsize=FONT_SIZE + 2)
        figure.legend(*figure.axes[0].get_legend_handles_labels(), loc="upper center", ncols=2,
                      bbox_to_anchor=(0.5, 1 - 0.45 / height), frameon=False)
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))
        figure.savefig(path, dpi=DPI)
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
