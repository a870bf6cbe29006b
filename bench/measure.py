"""Timing child processes: wall time and the peak RSS of that one child.

Every path runs in a process of its own, spawned by the small bench.launch process and reaped
there with os.wait4, whose rusage is the reaped child's alone. (resource.getrusage(RUSAGE_CHILDREN)
is the maximum over every child so far, so after the Keras child it would report TensorFlow's
memory for the job; and a child forked from this process would inherit this one's peak.)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

from bench.workloads import REPO, BenchError, Model, Workload, write_table


@dataclass(frozen=True)
class ChildRun:
    """One finished child process."""

    seconds: float  # wall time from spawn to exit
    peak_rss_mb: float  # the child's maximum resident set size
    stdout: str


def run_child(command: list[str], environment: dict[str, str] | None = None) -> ChildRun:
    """Run ``command`` from the repository root through bench.launch; BenchError unless it exits 0."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.update(environment or {})
    with (
        tempfile.TemporaryFile("w+") as stdout,
        tempfile.TemporaryFile("w+") as stderr,
        tempfile.NamedTemporaryFile("r", suffix=".json") as report,
    ):
        launcher = [sys.executable, "-m", "bench.launch", report.name, "--", *command]
        completed = subprocess.run(
            launcher, cwd=REPO, stdout=stdout, stderr=stderr, env=env, check=False
        )
        stdout.seek(0)
        stderr.seek(0)
        output, errors = stdout.read(), stderr.read()
        figures = json.loads(report.read() or "{}")
    exit_code = figures.get("exit_code", completed.returncode)
    if completed.returncode != 0 or exit_code != 0:
        tail = "\n  ".join(errors.strip().splitlines()[-5:])
        raise BenchError(f"`{' '.join(command[1:])}` exited with {exit_code}:\n  {tail}")
    return ChildRun(figures["seconds"], figures["peak_rss_kib"] / 1024, output)


# The job -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRun:
    """The job over one file: whole-process figures."""

    rows: int
    seconds: float
    peak_rss_mb: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds


def job_command(
    workload: Workload,
    output: str,
    threads: int,
    batch_size: int | None = None,
    variant: tuple[str, ...] | None = None,
    summary: str | None = None,
) -> list[str]:
    """`python -m score IN OUT --quiet ...`; or through bench.variant with ``variant``'s switches."""
    arguments = [
        workload.path,
        output,
        "--model",
        workload.model.onnx,
        "--threads",
        str(threads),
        "--quiet",
    ]
    if batch_size is not None:
        arguments += ["--batch-size", str(batch_size)]
    if summary is not None:
        arguments += ["--summary", summary]
    if variant is not None:
        return [sys.executable, "-m", "bench.variant", *variant, "--", *arguments]
    return [sys.executable, "-m", "score", *arguments]


def run_job(
    workload: Workload,
    work: str,
    threads: int,
    batch_size: int | None = None,
    variant: tuple[str, ...] | None = None,
    repeat: int = 1,
    summary: str | None = None,
) -> JobRun:
    """The fastest of ``repeat`` runs of the job; peak RSS is the largest seen. With ``summary``,
    every run writes its --summary JSON there (the last one stays)."""
    output = os.path.join(work, "scored.parquet")
    runs = []
    for _ in range(repeat):
        command = job_command(workload, output, threads, batch_size, variant, summary)
        child = run_child(command)
        os.unlink(output)
        runs.append(JobRun(workload.rows, child.seconds, child.peak_rss_mb))
    return fastest(runs)


def try_job(
    workload: Workload,
    work: str,
    threads: int,
    variant: tuple[str, ...],
    batch_size: int | None = None,
    summary: str | None = None,
) -> JobRun | str:
    """run_job through bench.variant, or the reason it failed (its last line), not fatal."""
    try:
        return run_job(workload, work, threads, batch_size=batch_size, variant=variant,
                       summary=summary)
    except BenchError as error:
        return f"failed: {str(error).splitlines()[-1].strip()}"


def summary_steps(summary_path: str) -> dict[str, int]:
    """The step and row counts of a job's --summary (and the file removed)."""
    with open(summary_path) as handle:
        summary = json.load(handle)
    os.unlink(summary_path)
    names = ("steps_scored", "steps_computed", "distinct_sequences_scored", "rows_in")
    return {name: int(summary[name]) for name in names if summary.get(name) is not None}


def fastest(runs: list[JobRun]) -> JobRun:
    """The fastest of several runs of one job over one file, with the largest peak RSS seen."""
    return JobRun(
        runs[0].rows,
        min(run.seconds for run in runs),
        max(run.peak_rss_mb for run in runs),
    )


@dataclass(frozen=True)
class ColdStart:
    """Process start to exit of `python -m score` on a 1-row file."""

    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def cold_start(
    model: Model, work: str, threads: int, runs: int, variant: tuple[str, ...] | None = None
) -> ColdStart:
    """Time the job on a 1-row file ``runs`` times (the first one also warms the page cache)."""
    import numpy as np

    path = os.path.join(work, f"one_row_{model.name}.parquet")
    row = np.full((1, model.spec.seq_len), model.spec.x_values[0], dtype=np.int64)
    write_table(path, {model.spec.input_column: row})
    one_row = Workload("one row", path, 1, model)
    output = os.path.join(work, "one_row_scored.parquet")
    command = job_command(one_row, output, threads, variant=variant)
    run_child(command)  # not counted: loads files into the page cache
    os.unlink(output)
    seconds = []
    for _ in range(runs):
        seconds.append(run_child(command).seconds)
        os.unlink(output)
    return ColdStart(seconds)


# In-memory paths ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InMemoryRun:
    """rows/s per batch size of an in-memory path (bench.paths), and its child's peak RSS."""

    rates: dict[int, float]
    peak_rss_mb: float
    padding: dict[int, float] = field(default_factory=dict)  # ragged: padded / real steps - 1
    real_steps: int = 0  # ragged: the real steps of the rows timed

    @property
    def best_batch_size(self) -> int:
        return max(self.rates, key=self.rates.__getitem__)

    @property
    def best(self) -> float:
        return self.rates[self.best_batch_size]


def run_in_memory(
    path: str, workload: Workload, threads: int, batch_sizes: list[int], rows: int, repeat: int
) -> InMemoryRun:
    """Time ``path`` (one of bench.paths') in a child over the first ``rows`` rows."""
    command = [
        sys.executable,
        "-m",
        "bench.paths",
        path,
        workload.model.folder,
        workload.path,
        "--threads",
        str(threads),
        "--batch-sizes",
        ",".join(map(str, batch_sizes)),
        "--rows",
        str(rows),
        "--repeat",
        str(repeat),
    ]
    child = run_child(command)
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    return InMemoryRun(
        {int(size): rate for size, rate in figures["rates"].items()},
        child.peak_rss_mb,
        {int(size): value for size, value in figures.get("padding", {}).items()},
        int(figures.get("real_steps", 0)),
    )
