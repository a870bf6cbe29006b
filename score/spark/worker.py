"""The worker side of Spark scoring: the mapInArrow function that scores one partition.

Every task runs score.core.score_batch_with_stats, the very function the local job runs, with
the model loaded once per Python worker process and checked against the driver's sha256.
"""

from __future__ import annotations

import copy
import os
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from score import model as models
from score import storage
from score.core import BatchStats, ScoreOptions, empty_stats, new_cache, score_batch_with_stats
from score.errors import InvalidInput, InvalidRow, ModelError

# Where each row came from, added to the batches under on_invalid='error' only, so that the
# first invalid row is reported as `FILE: row N` exactly like the local job. Dropped before
# score_batch sees the batch.
FILE_COLUMN = "_seqscore_file"
ROW_COLUMN = "_seqscore_row"


@dataclass(frozen=True)
class WorkerPlan:
    """Everything a task needs; pickled into the mapInArrow function once per job."""

    model: str  # the model as the driver was given it (a path or a URI)
    shipped_name: str | None  # its name under SparkFiles when it was shipped, else None
    sha256: str  # what the driver loaded: a worker refuses any other model
    threads: int  # onnxruntime intra-op threads per task
    options: ScoreOptions
    locate: bool = False  # the batches end with FILE_COLUMN and ROW_COLUMN
    stats: object | None = None  # a Spark accumulator of BatchStats (StatsParam), or None


@dataclass(frozen=True)
class StatsParam:
    """Spark's AccumulatorParam for a run's BatchStats (PySpark needs only the two methods).

    Each task adds its partition's stats once, at the end of the partition; the driver merges
    the tasks' stats with BatchStats.merge, hence Profile.merge, exactly as the local job merges
    its batches. The rows themselves never travel to the driver.
    """

    empty: BatchStats  # the run's empty stats, whose shapes follow the model's spec

    def zero(self, value: BatchStats) -> BatchStats:
        del value  # the driver's running total, which a task must not start from
        return copy.deepcopy(self.empty)

    def addInPlace(self, total: BatchStats, more: BatchStats) -> BatchStats:  # PySpark's name
        total.merge(more)
        return total


# One loaded model per Python worker process and model: loading verifies and probes the model,
# which is worth doing once, not once per task. Spark reuses a worker for many tasks.
_SCORERS: dict[tuple[str, str, int], models.Scorer] = {}


def worker_scorer(plan: WorkerPlan) -> models.Scorer:
    """The plan's model, loaded on first use in this process and cached for every later task."""
    key = (plan.model, plan.sha256, plan.threads)
    scorer = _SCORERS.get(key)
    if scorer is None:
        scorer = _load_on_worker(plan)
        _SCORERS[key] = scorer
    return scorer


def _model_candidates(plan: WorkerPlan) -> list[str]:
    """The path as given (local mode, shared disks, URIs), then the copy shipped by SparkFiles."""
    candidates = [plan.model]
    if plan.shipped_name is not None:
        from pyspark import SparkFiles

        candidates.append(SparkFiles.get(plan.shipped_name))
    return candidates


def _load_on_worker(plan: WorkerPlan) -> models.Scorer:
    config = models.SessionConfig(threads=plan.threads)
    tried = []
    for location in _model_candidates(plan):
        if not storage.is_uri(location) and not os.path.isfile(storage.local_path(location)):
            tried.append(f"{location}: no such file")
            continue
        try:
            scorer = models.load(location, config)
        except ModelError as error:
            tried.append(str(error))
            continue
        if scorer.sha256 == plan.sha256:
            return scorer
        tried.append(f"{location} has sha256 {scorer.sha256}")
    raise ModelError(
        f"this executor cannot read the driver's model {plan.model} (sha256 {plan.sha256}): "
        f"{'; '.join(tried)}. Ship it with spark-submit --files, or put it where every "
        f"executor can read it"
    )


def score_partition(
    plan: WorkerPlan, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """The mapInArrow function: score every batch of one partition with the local job's
    score_batch_with_stats, then add the partition's merged stats to plan.stats once."""
    scorer = worker_scorer(plan)
    # One result cache per task, as the local job keeps one per run: a sequence repeated within
    # the partition runs through the model once. Tasks share nothing, so each has its own.
    cache = new_cache(scorer, plan.options)
    stats = empty_stats(scorer)  # stats.rows: rows already scored, for partition-relative messages
    for batch in batches:
        data = batch.drop_columns([FILE_COLUMN, ROW_COLUMN]) if plan.locate else batch
        try:
            scored, batch_stats = score_batch_with_stats(scorer, data, plan.options, cache)
        except InvalidRow as error:
            where = _row_location(batch, plan, error.row, stats.rows + error.row)
            raise InvalidInput(f"{where}: {error.detail}") from None
        stats.merge(batch_stats)
        yield scored
    # Once per partition, after its last batch: the update travels with the task's result, and
    # the scheduler applies a result task's update once per partition (see run()).
    if plan.stats is not None:
        plan.stats.add(stats)


def _row_location(
    batch: pa.RecordBatch, plan: WorkerPlan, batch_row: int, partition_row: int
) -> str:
    """`FILE: row N` (N counts from 0 in the file) when known, else the partition and its row."""
    if plan.locate:
        location = display_path(batch.column(FILE_COLUMN)[batch_row].as_py())
        return f"{location}: row {batch.column(ROW_COLUMN)[batch_row].as_py()}"
    from pyspark import TaskContext

    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    return f"partition {partition}: row {partition_row} of the partition"


def display_path(location: str) -> str:
    """Spark's percent-encoded URI (file:/a%20b/c.parquet) as the path a person typed."""
    location = urllib.parse.unquote(location)
    for prefix in ("file://", "file:"):
        if location.startswith(prefix):
            return location[len(prefix) :]
    return location
