"""The report's section on what measuring accuracy and calibration against labels (--labels)
costs."""

from __future__ import annotations

from bench import measure
from bench.figures import LABELS_COLUMN, QUICK, LabelsResults, Results, median_seconds
from bench.report_common import format_met, machine_lines, short_count
from bench.run_labels import LABELLED, MODULUS, SEED, WITHOUT
from score.quality import ECE_BINS

LABELS_HEADING = "## Accuracy and calibration against labels (--labels)"


def _figure(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def command(threads: int, labels: bool) -> str:
    """The command line of one run (files by their role)."""
    flags = f" --labels {LABELS_COLUMN}" if labels else ""
    return (
        f"python -m score labelled.parquet out.parquet --model default/model.onnx"
        f" --threads {threads} --quiet --summary S.json{flags}"
    )


def runs_table(labels: LabelsResults) -> list[str]:
    pairs = len(labels.without)
    lines = [
        "| run | "
        + " | ".join(f"s, pair {pair + 1}" for pair in range(pairs))
        + " | fastest s | median s | rows/s (fastest) | peak RSS MB |",
        "|---|" + "---:|" * (pairs + 4),
    ]
    for name, runs in ((WITHOUT, labels.without), (LABELLED, labels.labelled)):
        fastest = measure.fastest(runs)
        cells = [
            *(f"{run.seconds:.2f}" for run in runs),
            f"{fastest.seconds:.2f}",
            f"{median_seconds(runs):.2f}",
            f"{fastest.rows_per_second:,.0f}",
            f"{fastest.peak_rss_mb:.0f}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = labels.pair_ratios()
    lines.append(
        "| ratio | "
        + " | ".join(f"{ratio:.2f}x" for ratio in ratios)
        + f" | **{labels.ratio:.2f}x** | {labels.median_ratio:.2f}x | |"
        + f" {labels.fastest_labelled.peak_rss_mb / labels.fastest_without.peak_rss_mb:.2f}x |"
    )
    return lines


def quality_lines(labels: LabelsResults) -> list[str]:
    figures = labels.quality
    top_k = figures.get("top_k")
    expected = (
        f"; about (1 - {labels.noise:g}) x the test split's accuracy"
        f" = {(1 - labels.noise) * figures['baseline_accuracy']:.4f} expected"
        if figures.get("baseline_accuracy") is not None
        else ""
    )
    return [
        "| figure | this run | test split (`baseline_quality`) |",
        "|---|---:|---:|",
        f"| labelled steps | {figures.get('steps') or 0:,} | |",
        f"| accuracy (measured{expected}) | {_figure(figures.get('accuracy'))}"
        f" | {_figure(figures.get('baseline_accuracy'))} |",
        f"| top-{top_k or 'k'} accuracy | {_figure(figures.get('top_k_accuracy'))} | |",
        f"| sequence accuracy | {_figure(figures.get('sequence_accuracy'))} | |",
        f"| log loss | {_figure(figures.get('log_loss'))} | |",
        f"| estimated accuracy (mean top-1 probability) | {_figure(figures.get('estimated_accuracy'))}"
        f" | |",
        f"| ECE ({ECE_BINS} bins) | {_figure(figures.get('ece'))} | {_figure(figures.get('baseline_ece'))} |",
    ]


def profile_lines(labels: LabelsResults) -> list[str]:
    if not labels.profile:
        return []
    names = (WITHOUT, LABELLED)
    categories = list(dict.fromkeys(c for name in names for c in labels.profile[name]))
    lines = [
        "### Where the labelled run's extra time goes",
        "",
        "Both runs once more under cProfile (`python -m cProfile -o F -m bench.variant --serial-io"
        " -- ...`: reading and writing in the main thread, so that one profile sees all of a"
        " run; "
        + "; ".join(
            f"{name}: {labels.profile_seconds[name]:.1f} s wall,"
            f" {labels.profile_totals[name]:.1f} s seen by the profiler"
            for name in names
        )
        + "), their functions' own time counted by category as in the prefix section"
        " (bench.profiling).",
        "",
        f"| where | {WITHOUT} s | {LABELLED} s | extra s |",
        "|---|---:|---:|---:|",
    ]
    for category in categories:
        without, labelled = (labels.profile[name].get(category, 0.0) for name in names)
        lines.append(
            f"| {category} | {without:.2f} | {labelled:.2f} | {labelled - without:+.2f} |"
        )
    lines += [
        "",
        "The labelled run's functions with the most time of their own:",
        "",
        "| function | counted in | own s | cumulative s |",
        "|---|---|---:|---:|",
        *[
            f"| `{name}` | {category} | {own:.2f} | {cumulative:.2f} |"
            for name, category, own, cumulative in labels.profile_functions
        ],
    ]
    return lines


def labels_markdown(results: Results, quick: bool) -> list[str]:
    labels = results.labels
    assert labels is not None
    config = results.config
    spec = labels.workload.model.spec
    steps = labels.workload.rows * spec.seq_len
    return [
        LABELS_HEADING,
        "",
        *(
            ["**A `--quick` smoke run: small files, single runs; not a measurement.**", ""]
            if quick
            else []
        ),
        *machine_lines(results),
        f"- Code measured: {labels.source}",
        "",
        f"Workload: the default workload's {short_count(labels.workload.rows)} rows (x: "
        f"{spec.seq_len} steps uniform over {spec.x_values[0]}..{spec.x_values[-1]}, the same"
        f" x column) with a label column `{LABELS_COLUMN}` beside it: the default rule,"
        f" y_t = (x_0 + ... + x_t) mod {MODULUS}, with {labels.replaced_steps:,} of the"
        f" {steps:,} steps ({labels.noise:.0%}, drawn without replacement, seed {SEED}) given"
        f" another y value, uniform over the other {spec.y_classes - 1}, so that the accuracy"
        f" measured is realistic, not 1.0 (cached as"
        f" bench/work/labelled_default_{labels.workload.rows}.parquet). The model is the default"
        f" one (`make train`, 2 LSTM layers of 64 units).",
        "",
        f"Both runs read that same file and write a summary; they differ by `--labels"
        f" {LABELS_COLUMN}` alone (which asks the model for every class instead of the top 3,"
        f" checks the labels, adds the `label_prob` and `correct` columns and the summary's"
        f" `quality`). Each run is the whole process (bench.measure: wall time and the child's own"
        f" peak RSS). After one labelled run not counted (it warms the page cache), they run in"
        f" turns, without then with, {len(labels.without)} pair(s), so that a busy spell on the"
        f" machine slows both; the ratio is the fastest labelled run over the fastest run"
        f" without (the median ratio beside it), and peak RSS the largest of each.",
        "",
        "| run | command |",
        "|---|---|",
        f"| {WITHOUT} | `{command(config.threads, labels=False)}` |",
        f"| {LABELLED} | `{command(config.threads, labels=True)}` |",
        "",
        *runs_table(labels),
        "",
        "The labelled run's summary (a sanity check of what the runs measured; the runs without"
        " labels estimate"
        f" {_figure(labels.unlabelled_estimate)}, the same mean top-1 probability):",
        "",
        *quality_lines(labels),
        "",
        "### Targets (--labels)",
        "",
        "| target | measured | |",
        "|---|---:|---|",
        *[
            f"| {target} | {measured} | {format_met(met)} |"
            for target, measured, met in labels.targets()
        ],
        "",
        *profile_lines(labels),
        *([""] if labels.profile else []),
        f"Reproduce: `python -m bench --only labels` (`--quick`: {short_count(QUICK.rows)} rows,"
        f" {QUICK.labels_pairs} pair(s), report under bench/work/). On a shared machine rates move a lot from minute"
        f" to minute: the pairs' own ratios show how much, and a rerun before acting on one"
        f" is cheap (about a minute).",
    ]


def summary_lines(labels: LabelsResults) -> list[str]:
    lines = []
    for name, run in ((WITHOUT, labels.fastest_without), (LABELLED, labels.fastest_labelled)):
        lines.append(
            f"labels: {name:18s} {run.rows:>9,} rows {run.seconds:8.2f} s (fastest)"
            f" {run.peak_rss_mb:6.0f} MB"
        )
    figures = labels.quality
    lines.append(
        f"labels: with / without {labels.ratio:.2f}x (median {labels.median_ratio:.2f}x);"
        f" accuracy {_figure(figures.get('accuracy'))}, estimated"
        f" {_figure(figures.get('estimated_accuracy'))}, ECE {_figure(figures.get('ece'))}"
    )
    for target, measured, met in labels.targets():
        lines.append(f"{format_met(met)}  {target}: {measured}")
    return lines
