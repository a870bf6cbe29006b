"""python -m score.report SUMMARY.json REPORT.png: draw a run's drift and its accuracy.

Drift against the training baseline: one column per step (at most MAX_STEPS_SHOWN, evenly
spread); rows for input values, predicted classes and top-1 probability, and the sequence-length
histogram below for a model with a length baseline. Bars are shares of rows, baseline (training)
beside today (this run); each panel's title gives its PSI, "(drift)" above the warning level, or
"not checked (N rows)" where too few rows reach the step for the job to act on it.

Accuracy, in one more row at the bottom where the summary has it. A run with --labels
(`quality`): a reliability diagram (per confidence bin, the mean top-1 probability against the
accuracy; the diagonal is a perfectly calibrated model, the test split's curve from training is
drawn beside this run's, the steps per bin below) and the accuracy by position in the row. A run
without labels (`estimated_accuracy`): its estimated accuracy beside the test split's measured
accuracy and mean confidence, and the test split's reliability diagram. An older summary with
neither has no such row.

A summary without a drift baseline (the model carries none, or the run failed before scoring) is
refused, unless it has `quality`: then the picture is the accuracy row alone. Needs matplotlib
(the `train` extra); the scoring job itself does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

import numpy as np

from score.monitor import CONFIDENCE_BINS, PSI_WARNING

MAX_STEPS_SHOWN = 5  # evenly spread over a longer model: more panels would not stay legible
PANEL_INCHES = (4.4, 3.3)  # (width, height) of one panel
FONT_SIZE = 12
DPI = 100
ACCURACY_ROW_INCHES = 4.6  # the accuracy row: a reliability diagram over its steps-per-bin strip
NO_DRIFT = "no drift panels: the model carries no training baseline"
NO_BASELINE_QUALITY = "baseline quality: none\n(the model file carries no test-split figures)"


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


def accuracy_row(summary: dict) -> str | None:
    """What the bottom row draws: "quality" (a run with labels), "estimate" (a run without), or
    None for a summary from before either (its picture stays as it was)."""
    if isinstance(summary.get("quality"), dict):
        return "quality"
    if isinstance(summary.get("estimated_accuracy"), dict):
        return "estimate"
    return None


def _calibrated(summary: dict) -> bool:
    return bool((summary.get("estimated_accuracy") or {}).get("calibrated", True))


def _measured(summary: dict) -> dict | None:
    """The test split's figures from training, or None ("none": a model file from before them)."""
    baseline = summary.get("baseline_quality")
    return baseline if isinstance(baseline, dict) else None


def _ece(value: float | None) -> str:
    return "ECE n/a" if value is None else f"ECE {value:.3f}"


def reliability_title(quality: dict, calibrated: bool) -> str:
    """The reliability diagram's verdict: the labelled steps' ECE, accuracy and estimate."""
    uncalibrated = "" if calibrated else " (uncalibrated)"
    return (f"calibration over {quality.get('steps', 0):,} labelled steps: "
            f"{_ece(quality.get('ece'))}\naccuracy {_share(quality.get('accuracy'))}, "
            f"estimated accuracy {_share(quality.get('estimated_accuracy'))}{uncalibrated}")


def estimate_title(estimated: dict, measured: dict | None) -> str:
    """The estimate panel's title: what the estimate is, and what it is compared with."""
    uncalibrated = "" if estimated.get("calibrated", True) else (
        " (uncalibrated: renormalised scores, not probabilities)")
    against = "" if measured is None else (
        f"\nagainst the test split at training ({measured.get('steps', 0):,} labelled steps)")
    return (f"estimated accuracy: mean top-1 probability over {estimated.get('steps', 0):,} "
            f"steps{uncalibrated}{against}")


def estimate_bars(estimated: dict, measured: dict | None) -> list[tuple[str, float | None]]:
    """The estimate panel's bars, left to right: this run's estimate, then the test split's
    measured accuracy and mean confidence where the model carries them."""
    label = "this run: estimated accuracy"
    bars = [(label + ("" if estimated.get("calibrated", True) else " (uncalibrated)"),
             estimated.get("value"))]
    if measured is not None:
        bars += [("test split: accuracy", measured.get("accuracy")),
                 ("test split: mean confidence", measured.get("mean_confidence"))]
    return bars


def _reliability_points(bins: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(mean confidence, accuracy) of each bin with steps."""
    full = [entry for entry in bins if entry.get("steps") and entry.get("accuracy") is not None
            and entry.get("mean_confidence") is not None]
    return (np.asarray([entry["mean_confidence"] for entry in full], dtype=np.float64),
            np.asarray([entry["accuracy"] for entry in full], dtype=np.float64))


def _draw_reliability(axis, counts_axis, bins: list[dict] | None, measured_bins: list[dict] | None,
                      verdict: str) -> None:
    """The reliability diagram and, below it, the steps per confidence bin (this run's bins, or
    the test split's without them). Training in the drift panels' first colour, this run in
    their second."""
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    if measured_bins is not None:
        confidence, accuracy = _reliability_points(measured_bins)
        axis.plot(confidence, accuracy, color="C0", linestyle="--", marker="s",
                  label="test split (training)")
    if bins is not None:
        confidence, accuracy = _reliability_points(bins)
        axis.plot(confidence, accuracy, color="C1", marker="o", label="this run")
    axis.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy", title=verdict)
    axis.tick_params(labelbottom=False)
    axis.legend(loc="best", fontsize=FONT_SIZE - 2)
    counted, colour = (bins, "C1") if bins is not None else (measured_bins, "C0")
    low = np.asarray([entry["low"] for entry in counted], dtype=np.float64)
    high = np.asarray([entry["high"] for entry in counted], dtype=np.float64)
    steps = np.asarray([entry["steps"] for entry in counted], dtype=np.float64)
    counts_axis.bar(low, steps, width=0.9 * (high - low), align="edge", color=colour)
    if steps.any():  # a few steps in a low bin beside thousands in the top one
        counts_axis.set_yscale("log")
        counts_axis.set_ylim(bottom=0.5)
    else:
        counts_axis.set_yticks([])
    counts_axis.set(xlim=(0, 1), xlabel="top-1 probability (mean per bin)", ylabel="steps")


def _draw_positions(axis, quality: dict) -> None:
    """Accuracy by position in the row, against the accuracy of all labelled steps."""
    entries = quality.get("accuracy_by_position") or []
    overall = quality.get("accuracy")
    axis.set(xlabel="position in the row (0: its first step)", ylabel="accuracy",
             title="accuracy by position in the row")
    if not entries or overall is None:
        axis.set(xticks=[], ylim=(0, 1.01))
        axis.text(0.5, 0.5, "no labelled steps", ha="center", va="center", transform=axis.transAxes)
        return
    positions = [entry["position"] for entry in entries]
    accuracy = [entry["accuracy"] for entry in entries]
    axis.plot(positions, accuracy, color="C1", marker="o", label="steps at the position")
    axis.axhline(overall, color="black", linestyle="--",
                 label=f"all labelled steps: {_share(overall)}")
    # A line near 1.0 with its dips: from a tenth below the lowest point, not from 0.
    bottom = max(0.0, np.floor((min(*accuracy, overall) - 0.05) * 10) / 10)
    axis.set_ylim(bottom, 1.01)
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.legend(loc="best", fontsize=FONT_SIZE - 2)


def _draw_estimate(axis, estimated: dict, measured: dict | None) -> None:
    """The estimated accuracy beside the test split's measured figures, the value on each bar."""
    bars = estimate_bars(estimated, measured)
    places = np.arange(len(bars))
    values = [0.0 if value is None else value for _, value in bars]
    axis.bar(places, values, width=0.5, color=["C1"] + ["C0"] * (len(bars) - 1))
    for place, (_, value) in zip(places, bars):
        axis.text(place, (value or 0.0) + 0.02, _share(value), ha="center", va="bottom")
    axis.set_xticks(places, [textwrap.fill(label, 24) for label, _ in bars])
    if measured is None:  # where the test split's bars would stand
        axis.text(1.5, 0.5, NO_BASELINE_QUALITY, ha="center", va="center")
    axis.set(xlim=(-0.75, max(len(bars), 3) - 0.25), ylim=(0, 1.15),
             ylabel="accuracy, mean top-1 probability", title=estimate_title(estimated, measured))


def _draw_assumption(axis, estimated: dict) -> None:
    """What the estimate assumes, where no test split's reliability diagram stands beside it."""
    axis.axis("off")
    assumes = textwrap.fill(estimated.get("assumes", "n/a"), 44)
    axis.text(0, 1, f"what the estimate assumes:\n{assumes}", ha="left", va="top",
              transform=axis.transAxes)


def _draw_accuracy(figure, place, summary: dict, kind: str) -> None:
    """The bottom row: on the left the reliability diagram (of this run's labelled steps, else
    of the test split), on the right accuracy by position (a run with labels) or the estimate
    against the test split (a run without)."""
    measured = _measured(summary)
    quality = summary.get("quality") if kind == "quality" else None
    halves = place.subgridspec(1, 2, width_ratios=(2, 3), wspace=0.3)
    if quality is None and measured is None:  # nothing to draw a reliability diagram of
        _draw_assumption(figure.add_subplot(halves[0, 0]), summary["estimated_accuracy"])
        _draw_estimate(figure.add_subplot(halves[0, 1]), summary["estimated_accuracy"], None)
        return
    left = halves[0, 0].subgridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    diagram_axis = figure.add_subplot(left[0, 0])
    counts_axis = figure.add_subplot(left[1, 0], sharex=diagram_axis)
    measured_bins = measured.get("bins") if measured is not None else None
    if quality is not None:
        _draw_reliability(diagram_axis, counts_axis, quality.get("bins") or [], measured_bins,
                          reliability_title(quality, _calibrated(summary)))
        _draw_positions(figure.add_subplot(halves[0, 1]), quality)
        return
    _draw_reliability(diagram_axis, counts_axis, None, measured_bins or [],
                      f"test split at training: {_ece(measured.get('ece'))}")
    _draw_estimate(figure.add_subplot(halves[0, 1]), summary["estimated_accuracy"], measured)


def _draw_drift(figure, grid, summary: dict, drift: dict, shown: list[int], lengths: bool) -> None:
    """The drift rows: one panel per shown step for inputs, predictions and top-1 probability,
    then the length histogram across a row of its own."""
    baseline, today = drift["baseline_profile"], drift["profile"]
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


def render(summary: dict, path: str) -> None:
    """Write the PNG; raises ValueError if the summary carries neither a baseline comparison nor
    labelled quality."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    drift = summary.get("drift") or {}
    baseline, today = drift.get("baseline_profile"), drift.get("profile")
    kind = accuracy_row(summary)
    with_drift = bool(baseline and today)
    if not with_drift and kind != "quality":
        raise ValueError(
            "the summary has no baseline comparison (the model carries no training baseline, or "
            "the run failed before scoring)"
        )
    shown: list[int] = []
    lengths = False
    if with_drift:
        steps = len(today["input_counts"])
        # Up to MAX_STEPS_SHOWN steps, evenly spread: a 64-step model would draw a wall of panels.
        shown = sorted(set(np.linspace(0, steps - 1, min(steps, MAX_STEPS_SHOWN)).round().astype(int)))
        lengths = _several_lengths(baseline.get("length_counts"), today.get("length_counts"))
    drift_rows = (3 + lengths) if with_drift else 0
    height = PANEL_INCHES[1] * drift_rows + 1.0  # and the title and the legend above
    ratios = None  # an older summary's picture exactly as before
    if kind is not None:
        height += ACCURACY_ROW_INCHES
        ratios = [1.0] * drift_rows + [ACCURACY_ROW_INCHES / PANEL_INCHES[1]]
    heading = title(summary, drift) + ("" if with_drift else f"\n{NO_DRIFT}")
    with pyplot.rc_context({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE}):
        figure = pyplot.figure(figsize=(PANEL_INCHES[0] * max(len(shown), 3), height))
        grid = figure.add_gridspec(drift_rows + (kind is not None), max(len(shown), 1),
                                   height_ratios=ratios)
        if with_drift:
            _draw_drift(figure, grid, summary, drift, shown, lengths)
        if kind is not None:
            _draw_accuracy(figure, grid[drift_rows, :], summary, kind)
        figure.suptitle(heading, fontsize=FONT_SIZE + 2)
        if with_drift:
            figure.legend(*figure.axes[0].get_legend_handles_labels(), loc="upper center", ncols=2,
                          bbox_to_anchor=(0.5, 1 - 0.45 / height), frameon=False)
        # Room for the legend above the drift panels; tight_layout leaves room for the title.
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height) if with_drift else None)
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
