"""python -m bench: measure the job against Keras predict and raw onnxruntime, write the report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from bench.figures import SECTIONS
from bench.workloads import REPO, BenchError

HERE = os.path.join(REPO, "bench")
EPILOG = """sections: main (every fixed-length section: side by side, de-duplication, batch size,
threads, cold start, variants), ragged (rows of any length, issue 12), prefix (prefix sharing,
issue 13), keyed (scheduled runs that carry each key's state: --key, --state-in,
--state-out), labels (the default run without and with --labels: what measuring accuracy
and calibration costs) and delta (the default run read from and written to Delta Lake tables,
against Parquet to Parquet). With --only, the report keeps the sections this run did not measure
from the report it replaces, and the plot (drawn from the main section) is left as it is
unless main ran."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a small, fast smoke run (100k rows, few points, no repeats)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="intra-op threads for every path (default: one per core)",
    )
    p.add_argument(
        "--no-variants",
        action="store_true",
        help="skip the job with each optimisation switched off (bench.variant)",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        default=None,
        metavar="SECTION",
        help="run only this section (main, ragged, prefix, keyed, labels or delta;"
        " repeatable; default: all)",
    )
    p.add_argument(
        "--work",
        default=None,
        metavar="DIR",
        help="where models, workloads and scratch files go (default bench/work)",
    )
    p.add_argument(
        "--results",
        default=None,
        metavar="PATH",
        help="where to write the report (default bench/results.md; --quick: bench/work/)",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="where to draw the plot (default bench/throughput.png; --quick: bench/work/)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from bench import report
    from bench.figures import QUICK, BenchConfig
    from bench.run import run_benchmark

    config = QUICK if args.quick else BenchConfig()
    if args.threads:
        config = replace(config, threads=args.threads)
    if args.no_variants:
        config = replace(config, variants=False)
    if args.only:
        config = replace(config, sections=tuple(dict.fromkeys(args.only)))
    if args.work:
        config = replace(config, work=os.path.abspath(args.work))
    # A quick run is a smoke test: it must not overwrite the committed figures.
    folder = config.work if args.quick else HERE
    results_path = args.results or os.path.join(folder, "results.md")
    plot_path = args.plot or os.path.join(folder, "throughput.png")

    started = time.perf_counter()
    try:
        results = run_benchmark(config, log=lambda line: print(f"bench: {line}", flush=True))
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    previous = None
    if os.path.exists(results_path):
        with open(results_path) as handle:
            previous = handle.read()
    os.makedirs(os.path.dirname(os.path.abspath(results_path)), exist_ok=True)
    with open(results_path, "w") as handle:
        handle.write(report.markdown(results, quick=args.quick, previous=previous))
    written = [os.path.relpath(results_path)]
    if results.workloads:
        report.plot(results, plot_path)
        written.append(os.path.relpath(plot_path))
    print()
    for line in report.summary_lines(results):
        print(line)
    print(f"\nwrote {' and '.join(written)} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
