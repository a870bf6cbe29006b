"""python -m score.spark --key: the local job's scheduled runs that remember, on Spark.

The state is a Parquet dataset joined to the input by key, so it scales with the cluster: each
row meets its key's state in the join, and every task runs score.keyed.score_resumed, the local
job's function, on its rows. The scored rows (with their keys' new states) are staged once, so
that the tasks' statistics are counted once; OUTPUT (in the input's order) and the new state
(the moved keys and every other key of --state-in, sorted by key and written by the tasks as
part files that the local job reads as well) are both made from what was staged. Nothing is
published until both are complete: the state first, then OUTPUT.

On Spark, --state-in and --state-out are paths the driver and every executor reach (a local
disk in local mode, a shared mount on a cluster): the tasks write the state's parts with
pyarrow, and the driver moves the folder into place.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from score import inputs, keyed, keyed_checks, keyed_files, state_store, state_writer, storage
from score.cache import new_cache
from score.encoding import DUPLICATE_KEY, NULL_KEY
from score.errors import InvalidInput, InvalidRow, UsageError
from score.spark import delta as spark_delta
from score.spark.dataframe import PANDAS_WARNING, arrow_schema, ship_model, with_row_location
from score.spark.worker import FILE_COLUMN, ROW_COLUMN, WorkerPlan, display_path, worker_scorer

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ORDER = "_seqscore_order"  # each input row's place, to write OUTPUT in the input's order
REPEATS = "_seqscore_rows_of_key"  # the rows the run's input has for the row's key
STATE = "_seqscore_state_"  # the joined --state-in columns: STATE + steps, STATE + tensor
NEW = "_seqscore_new_"  # the state after the row: NEW + steps, NEW + tensor
MOVED = "_seqscore_moved"  # the row was scored: its key's state moved on


@dataclass(frozen=True)
class KeyedPlan:
    """What a task needs beyond the worker's plan: the key and the state's layout."""

    worker: WorkerPlan
    layout: state_store.StateLayout
    state_folder: str = ""  # the staging folder of the new state's parts (writing tasks)
    lineage: tuple[tuple[str, str], ...] = ()


def check_state_locations(state_in: str | None, state_out: str) -> None:
    """The tasks write the state with pyarrow and the driver renames it: local paths only."""
    for flag, location in (("--state-in", state_in), ("--state-out", state_out)):
        if location and storage.is_uri(location):
            raise UsageError(
                f"{flag} {location}: on Spark the state must be a path the driver and every "
                f"executor reach (a shared mount); URIs are for the local job")


# The driver -----------------------------------------------------------------------------------
def score_keyed(session: SparkSession, config, scorer, state, accumulator, snapshot=None
                ) -> tuple[DataFrame, state_store.StateLayout]:
    """The scored rows with their keys' new states, planned (no task runs yet), and the state's
    layout. Null or repeated keys under --on-invalid error are refused here, as the local job
    refuses them, before any row is scored."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F  # noqa: N812

    keyed_checks.check_model(scorer)
    options, key = config.options, config.key
    df = session.read.parquet(config.input) if snapshot is None else \
        spark_delta.read_snapshot(session, snapshot)  # a Delta table's live files (score.spark.delta)
    arrow = arrow_schema(df.schema)
    _check_input(arrow, scorer, config)
    layout = state_store.StateLayout.for_model(scorer, key, state_store.check_key_type(
        arrow.field(key).type, key, config.input))
    record = state.keyed
    record.input_fingerprint = input_fingerprint(config.input, snapshot)
    reader = state_store.StateReader(config.state_in, layout) if config.state_in else None
    if reader is not None:
        record.keys_in_state, record.state_in_fingerprint = reader.rows, reader.fingerprint

    df = df.withColumn(ORDER, F.monotonically_increasing_id())
    located = with_row_location(df) if options.on_invalid == "error" else None
    if located is not None:
        _refuse_key_problems(located, key)
    df = (located if located is not None else df).withColumn(
        REPEATS, F.count(F.lit(1)).over(Window.partitionBy(key)))
    if reader is not None:
        prior = session.read.parquet(config.state_in)
        _refuse_repeated_state_keys(prior, key, config.state_in)
        prior = prior.select(key, *[F.col(name).alias(STATE + name)
                                    for name in (state_store.STEPS, *(t for t, _ in layout.tensors))])
        df = df.join(prior, on=key, how="left")
    plan = KeyedPlan(WorkerPlan(config.model, ship_model(session, config.model), scorer.sha256,
                                config.threads, options, locate=located is not None,
                                stats=accumulator), layout)
    schema = _staged_schema(df, options, layout)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PANDAS_WARNING)
        staged = df.mapInArrow(functools.partial(score_partition, plan), schema)
    return staged, layout


def _check_input(arrow: pa.Schema, scorer, config) -> None:
    from score.columns import check_input_schema

    try:
        check_input_schema(arrow, scorer, config.options)
    except InvalidInput as error:
        raise InvalidInput(f"{config.input}: {error}") from None
    if arrow.get_field_index(config.key) < 0:
        raise InvalidInput(f"{config.input}: key column {config.key!r} not found (the file has: "
                           f"{', '.join(arrow.names)}); name the entity column with --key")
    for name in (keyed.STEPS_BEFORE, *(name for name in arrow.names if name.startswith("_seqscore_"))):
        if name in arrow.names:
            raise InvalidInput(f"{config.input}: the input already has a column named {name!r}, "
                               f"which the run adds; rename or drop it")


def input_fingerprint(location: str, snapshot=None) -> str:
    """The local job's fingerprint of INPUT: its files' names and Parquet footers (a Delta
    table's: its location, version and rows, as the local job takes it)."""
    import hashlib

    if snapshot is not None:
        return hashlib.sha256(keyed_files.fingerprint_part("", snapshot)).hexdigest()
    if storage.kind(location) == "file":
        files = [(location, "")]
    else:
        files = [(entry.location, entry.relative) for entry in storage.list_parquet(location)]
    digest = hashlib.sha256()
    for file, relative in files:
        parquet = inputs.open_parquet(file)
        try:
            digest.update(keyed_files.fingerprint_part(relative, parquet))
        finally:
            parquet.close()
    return digest.hexdigest()


def _refuse_key_problems(located: DataFrame, key: str) -> None:
    """Under --on-invalid error, a null key or a key with two rows fails the run before any
    task scores, with the local job's line."""
    from pyspark.sql import functions as F  # noqa: N812

    null = (located.filter(F.col(key).isNull()).select(FILE_COLUMN, ROW_COLUMN)
            .orderBy(FILE_COLUMN, ROW_COLUMN).first())
    if null is not None:
        raise InvalidInput(f"{display_path(null[0])}: row {null[1]}: the key column {key!r} is "
                           f"null; every row needs a key")
    at = F.sort_array(F.collect_list(F.struct(F.col(FILE_COLUMN), F.col(ROW_COLUMN))))
    repeated = (located.filter(F.col(key).isNotNull()).groupBy(key)
                .agg(F.count(F.lit(1)).alias("rows"), at.alias("at")).filter("rows > 1")
                .select(key, F.col("at")[0].alias("first"), F.col("at")[1].alias("second"))
                .orderBy(F.col("second")[FILE_COLUMN], F.col("second")[ROW_COLUMN]).first())
    if repeated is not None:
        (location, first), (other, second) = repeated["first"], repeated["second"]
        location, other = display_path(location), display_path(other)
        rows = f"rows {first} and {second}" if other == location else f"row {first} and {other} row {second}"
        raise InvalidInput(f"{location}: {rows}: key {repeated[key]!r} appears twice in this run's "
                           f"input; a run takes one row per key (its new steps)")


def _refuse_repeated_state_keys(prior: DataFrame, key: str, location: str) -> None:
    from pyspark.sql import functions as F  # noqa: N812

    problem = (prior.groupBy(key).count().filter((F.col("count") > 1) | F.col(key).isNull())
               .orderBy(key).first())
    if problem is not None:
        raise InvalidInput(f"--state-in {location}: key {problem[key]!r} appears "
                           f"{'in a null row' if problem[key] is None else 'more than once'}; "
                           f"a state holds each key once")


def _staged_schema(df: DataFrame, options, layout):
    """The staged rows: the input's columns, the scored ones, steps_before, and the new state."""
    from pyspark.sql.pandas.types import from_arrow_type
    from pyspark.sql.types import StructField, StructType

    dropped = {REPEATS, *(STATE + name for name in (state_store.STEPS, *(t for t, _ in layout.tensors)))}
    kept = [field for field in df.schema.fields if field.name not in dropped]
    arrow = keyed.output_schema(arrow_schema(StructType(kept)), options)
    added = [StructField(f.name, from_arrow_type(f.type), f.nullable) for f in list(arrow)[len(kept):]]
    extra = [pa.field(MOVED, pa.bool_()), pa.field(NEW + state_store.STEPS, pa.int64())]
    extra += [pa.field(NEW + name, pa.list_(pa.float32())) for name, _ in layout.tensors]
    added += [StructField(f.name, from_arrow_type(f.type), True) for f in extra]
    return StructType(kept + added)


def write_state(session: SparkSession, staged: DataFrame, config, layout, record, folder: str
                ) -> list[tuple[int, str]]:
    """Write the new state's parts into ``folder`` (a staging folder beside --state-out); return
    (rows, digest) per part in key order."""
    from pyspark.sql import functions as F  # noqa: N812

    key = config.key
    tensors = [name for name, _ in layout.tensors]
    moved = staged.filter(F.col(MOVED)).select(
        key, F.col(NEW + state_store.STEPS).alias(state_store.STEPS),
        *[F.col(NEW + name).alias(name) for name in tensors])
    new_state = moved
    if config.state_in:
        prior = session.read.parquet(config.state_in).select(key, state_store.STEPS, *tensors)
        new_state = moved.unionByName(prior.join(moved.select(key), on=key, how="left_anti"))
    lineage = (("input_fingerprint", record.input_fingerprint),
               ("parent_fingerprint", record.state_in_fingerprint))
    plan = KeyedPlan(WorkerPlan("", None, "", 1, config.options), layout, folder, lineage)
    partitions = max(1, staged.rdd.getNumPartitions())
    ordered = new_state.repartitionByRange(partitions, key).sortWithinPartitions(key)
    schema = "part int, rows long, digest string"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PANDAS_WARNING)
        parts = ordered.mapInArrow(functools.partial(write_partition, plan), schema).collect()
    parts = sorted((row["part"], row["rows"], row["digest"]) for row in parts if row["rows"])
    return [(rows, digest) for _, rows, digest in parts]


# The tasks ------------------------------------------------------------------------------------
def score_partition(plan: KeyedPlan, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Score each batch from its rows' joined states, as the local job does; add the new states."""
    scorer = worker_scorer(plan.worker)
    options, layout = plan.worker.options, plan.layout
    cache = new_cache(scorer, options, states=True)
    stats = None
    for batch in batches:
        carried = _carried(batch, layout, scorer.state_units())
        state_columns = {REPEATS, *(STATE + name for name in (state_store.STEPS, *(t for t, _ in layout.tensors)))}
        data = batch.drop_columns([name for name in batch.schema.names
                                   if name in state_columns or name in (FILE_COLUMN, ROW_COLUMN, ORDER)])
        try:
            resumed = keyed.score_resumed(scorer, data, options, carried, cache)
        except InvalidRow as error:
            where = (f"{display_path(batch.column(FILE_COLUMN)[error.row].as_py())}: row "
                     f"{batch.column(ROW_COLUMN)[error.row].as_py()}" if plan.worker.locate
                     else f"row {error.row}")
            raise InvalidInput(f"{where} (key {batch.column(layout.key)[error.row].as_py()!r}): "
                               f"{error.detail}") from None
        if stats is None:
            stats = resumed.stats
        else:
            stats.merge(resumed.stats)
        yield _staged_batch(batch, resumed, layout)
    if plan.worker.stats is not None and stats is not None:
        plan.worker.stats.add(stats)


def _carried(batch: pa.RecordBatch, layout, units: list[int]) -> keyed.Carried:
    """Each row's state from the joined columns (none: a new key, the zero state)."""
    rows = batch.num_rows
    names = batch.schema.names
    key_null = np.asarray(batch.column(layout.key).is_null().to_numpy(zero_copy_only=False), dtype=bool)
    steps = np.zeros(rows, dtype=np.int64)
    states = [np.zeros((rows, width), dtype=np.float32) for width in units]
    if STATE + state_store.STEPS in names:
        column = batch.column(STATE + state_store.STEPS)
        known = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        steps[known] = np.asarray(column.drop_null().to_numpy(zero_copy_only=False), dtype=np.int64)
        for state, (name, width) in zip(states, layout.tensors):
            values = batch.column(STATE + name).drop_null().flatten().to_numpy(zero_copy_only=False)
            state[known] = np.asarray(values, dtype=np.float32).reshape(-1, width)
    repeats = np.asarray(batch.column(REPEATS).to_numpy(zero_copy_only=False))
    problems = np.zeros(rows, dtype=np.int8)
    problems[(repeats > 1) & ~key_null] = DUPLICATE_KEY
    problems[key_null] = NULL_KEY
    messages = None
    if problems.any():
        bad = np.flatnonzero(problems)
        texts = [None] * rows
        for row, key in zip(bad, batch.column(layout.key).take(pa.array(bad)).to_pylist()):
            texts[row] = (f"the key column {layout.key!r} is null; every row needs a key" if key is None
                          else f"key {key!r} has more than one row in this run's input; a run "
                               f"takes one row per key")
        messages = pa.array(texts, pa.string())
    return keyed.Carried(steps, states, problems, messages, key_null if key_null.any() else None)


def _staged_batch(batch: pa.RecordBatch, resumed: keyed.Resumed, layout) -> pa.RecordBatch:
    scored = resumed.scored
    columns = {name: scored.column(name) for name in scored.schema.names}
    for name in (ORDER, FILE_COLUMN, ROW_COLUMN):
        if name in batch.schema.names:
            columns[name] = batch.column(name)
    columns[MOVED] = pa.array(resumed.moved)
    columns[NEW + state_store.STEPS] = pa.array(resumed.steps_after, pa.int64(), mask=~resumed.moved)
    for (name, width), state in zip(layout.tensors, resumed.states):
        offsets = pa.array(np.arange(batch.num_rows + 1, dtype=np.int32) * width)
        columns[NEW + name] = pa.ListArray.from_arrays(offsets, pa.array(state.reshape(-1), pa.float32()),
                                                       mask=pa.array(~resumed.moved))
    ordered = [name for name in batch.schema.names if name in columns]
    ordered += [name for name in columns if name not in ordered]
    return pa.RecordBatch.from_arrays([columns[name] for name in ordered], names=ordered)


def write_partition(plan: KeyedPlan, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Write one range partition of the new state, sorted by key, as a part file."""
    from pyspark import TaskContext

    part = TaskContext.get().partitionId()
    layout = plan.layout
    writer = None
    rows = 0
    try:
        for batch in batches:
            if not batch.num_rows:
                continue
            if writer is None:
                writer = state_writer.StateWriter(plan.state_folder, layout, dict(plan.lineage),
                                                  part=f"part-{part:05d}.parquet")
            states = [np.asarray(batch.column(name).flatten().to_numpy(zero_copy_only=False),
                                 dtype=np.float32).reshape(-1, width) for name, width in layout.tensors]
            writer.write(state_store.StateChunk(state_store.key_numpy(batch.column(layout.key)),
                                                np.asarray(batch.column(state_store.STEPS), dtype=np.int64),
                                                states))
            rows += batch.num_rows
        if writer is not None:
            writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    yield pa.RecordBatch.from_pydict({"part": [part], "rows": [rows],
                                      "digest": [writer.digest if writer is not None else ""]},
                                     schema=pa.schema([("part", pa.int32()), ("rows", pa.int64()),
                                                       ("digest", pa.string())]))

