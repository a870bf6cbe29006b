"""python -m bench: measure the job against Keras predict and raw onnxruntime, write the report."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace

from bench.workloads import REPO, BenchError

HERE = os.path.join(REPO, "bench")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
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
        help="skip the candidate changes to score/ (bench.variant)",
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
    from bench.run import QUICK, BenchConfig, run_benchmark

    config = QUICK if args.quick else BenchConfig()
    if args.threads:
        config = replace(config, threads=args.threads)
    if args.no_variants:
        config = replace(config, variants=False)
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
    with open(results_path, "w") as handle:
        handle.write(report.markdown(results, quick=args.quick))
    report.plot(results, plot_path)
    print()
    for line in report.summary_lines(results):
        print(line)
    print(
        f"\nwrote {os.path.relpath(results_path)} and {os.path.relpath(plot_path)} "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
