"""The benchmark's prefix section (issue 13): the job with and without prefix sharing against raw
onnxruntime, per workload, the least time the job could take, and where its time goes."""

from __future__ import annotations

import math
import os

from bench import measure, profiling
from bench.figures import (
    DEFAULT,
    LARGE,
    PREFIX_TARGETS,
    SKEWED,
    UNIFORM,
    BenchConfig,
    Floor,
    PrefixResults,
    Results,
)
from bench.workloads import DEFAULT_MODEL, DISTINCT_MODEL, Workload, prepare_model, prepare_workload

NO_PREFIX_SHARING = ("--no-prefix-sharing",)  # the section's "without" (bench.variant)


def run_prefix(results: Results, config: BenchConfig, log=print) -> PrefixResults:
    """Steps: 1. the models and the uniform, skewed and default workloads; 2. per workload, raw
    onnxruntime's batch sweep, then the job with and without prefix sharing in turns; 3. peak
    RSS at the large default file (the main section's run when it ran); 4. where the skewed
    job's time goes (cProfile)."""
    # 1. Models and data.
    os.makedirs(config.work, exist_ok=True)
    distinct_model = prepare_model(DISTINCT_MODEL, config.work, log)
    default_model = prepare_model(DEFAULT_MODEL, config.work, log)
    workloads = {
        UNIFORM: prepare_workload(
            distinct_model, UNIFORM, config.prefix_rows, config.work, "uniform", log=log
        ),
        SKEWED: prepare_workload(
            distinct_model, SKEWED, config.prefix_rows, config.work, "skewed", log=log
        ),
        DEFAULT: prepare_workload(
            default_model, DEFAULT, config.rows, config.work, "uniform", log=log
        ),
    }
    rows_timed = min(config.in_memory_rows, *(workload.rows for workload in workloads.values()))

    # 2. Raw onnxruntime, then the job with and without prefix sharing, per workload.
    raw, job, steps, unshared, unshared_steps = {}, {}, {}, {}, {}
    for name, rounds in (
        (UNIFORM, config.repeat),
        (SKEWED, config.repeat),
        (DEFAULT, config.prefix_default_rounds),
    ):
        workload = workloads[name]
        log(f"{name}: raw onnxruntime, batch sizes {', '.join(map(str, config.batch_sizes))}")
        raw[name] = measure.run_in_memory(
            "onnxruntime",
            workload,
            config.threads,
            list(config.batch_sizes),
            rows_timed,
            config.repeat,
        )
        log(f"{name}: the job with and without prefix sharing, {workload.rows:,} rows, x{rounds}")
        job[name], steps[name], unshared[name], unshared_steps[name] = with_and_without(
            workload, config, rounds
        )

    # 3. Peak RSS on the large default file.
    large = results.job.get(LARGE)
    if large is not None:
        workloads[LARGE] = results.workloads[LARGE]
    else:
        workloads[LARGE] = prepare_workload(
            default_model, LARGE, config.large_rows, config.work, "uniform", log=log
        )
        log(f"{LARGE}: the job, {config.large_rows:,} rows (peak RSS)")
        large = measure.run_job(workloads[LARGE], config.work, config.threads)
    prefix = PrefixResults(
        workloads,
        rows_timed,
        raw,
        job,
        steps,
        unshared,
        unshared_steps,
        large,
        LARGE in results.job,
    )

    # 4. Where the time goes, and the least time the targets' workloads could take.
    for name in PREFIX_TARGETS:
        log(f"{name}: the floor (distinct prefixes of the file; writing the job's output)")
        prefix.floors[name] = prefix_floor(workloads[name], config, raw[name], steps[name])
    log(f"{SKEWED}: profiling the job (cProfile, I/O in the main thread)")
    stats, prefix.profile_seconds = profiling.profiled_run(
        workloads[SKEWED], config.work, config.threads, "prefix-job.prof"
    )
    prefix.profile, prefix.profile_functions = profiling.where_time_goes(
        stats, profiling.PROFILE_FUNCTIONS
    )
    prefix.profile_total = stats.total_tt  # type: ignore[attr-defined]
    return prefix


def with_and_without(
    workload: Workload, config: BenchConfig, rounds: int
) -> tuple[measure.JobRun, dict[str, int], measure.JobRun | str, dict[str, int]]:
    """The job, and the job through bench.variant --no-prefix-sharing, in turns ``rounds`` times
    (so that a busy spell on the machine slows both): the fastest run of each, with its largest
    peak RSS and its --summary step counts. The run without is the reason it failed, if it did."""
    summary = os.path.join(config.work, "prefix-summary.json")
    shared: list[measure.JobRun] = []
    unshared: list[measure.JobRun] = []
    steps: dict[str, int] = {}
    unshared_steps: dict[str, int] = {}
    failure = ""
    for _ in range(rounds):
        shared.append(measure.run_job(workload, config.work, config.threads, summary=summary))
        steps = measure.summary_steps(summary)
        if failure:
            continue
        run = measure.try_job(
            workload, config.work, config.threads, NO_PREFIX_SHARING, summary=summary
        )
        if isinstance(run, str):
            failure = run
            if os.path.exists(summary):  # a failed job still writes its summary
                os.unlink(summary)
        else:
            unshared.append(run)
            unshared_steps = measure.summary_steps(summary)
    without = failure or measure.fastest(unshared)
    return measure.fastest(shared), steps, without, unshared_steps


def file_prefixes(workload: Workload) -> int:
    """Distinct prefixes of all the rows of ``workload`` (a fixed-length file), each counted
    once: the steps a model sharing prefixes across the whole file would compute."""
    import numpy as np
    import pyarrow.parquet as pq

    from score import prefix

    spec = workload.model.spec
    column = pq.read_table(workload.path, columns=[spec.input_column]).column(0).combine_chunks()
    flat = np.searchsorted(np.asarray(spec.x_values), column.values.to_numpy())
    offsets = column.offsets.to_numpy().astype(np.int64)
    tree = prefix.build_tree(flat, offsets, np.arange(offsets.size - 1), spec.x_classes)
    return int(tree.nodes.sum())


def write_seconds(workload: Workload, config: BenchConfig) -> float:
    """Score ``workload`` once more, keeping the output, and time writing that output again with
    the job's writer (score.columns.dictionary_columns, batches of the job's default size) in this
    process, best of config.repeat."""
    import time

    import pyarrow.parquet as pq

    from score.columns import dictionary_columns
    from score.job import DEFAULT_BATCH_SIZE

    scored = os.path.join(config.work, "floor-scored.parquet")
    again = os.path.join(config.work, "floor-written.parquet")
    measure.run_child(measure.job_command(workload, scored, config.threads))
    table = pq.read_table(scored)
    best = math.inf
    for _ in range(max(config.repeat, 1)):
        started = time.perf_counter()
        with pq.ParquetWriter(again, table.schema, use_dictionary=dictionary_columns(table.schema)) as writer:
            for batch in table.to_batches(max_chunksize=DEFAULT_BATCH_SIZE):
                writer.write_batch(batch)
        best = min(best, time.perf_counter() - started)
    for path in (scored, again):
        os.unlink(path)
    return best


def prefix_floor(
    workload: Workload, config: BenchConfig, raw: measure.InMemoryRun, steps: dict[str, int]
) -> Floor:
    seq_len = workload.model.spec.seq_len
    return Floor(
        rows=workload.rows,
        raw_seconds=workload.rows / raw.best,
        step_us=1e6 / (raw.best * seq_len),
        batch_steps=steps.get("steps_computed", workload.rows * seq_len),
        file_steps=file_prefixes(workload),
        write_seconds=write_seconds(workload, config),
        cores=min(config.threads, os.cpu_count() or 1),
    )
