"""Scoring rows that continue their key's history: the core of a run with --key.

A row holds only its key's new steps; the key's LSTM state after its earlier steps comes in
beside it (score.state_store keeps it between runs). The model is causal, so running the new
steps from that state gives exactly the outputs, and ends in exactly the state, of running the
whole history again. Like score.core, a pure function over one Arrow record batch: the run
(score.keyed_job) finds each row's state and keeps the states it gives back.

Rows of keys seen before run from their state, in runs of one length (score.resume); rows of
new keys start from the zero state and still share work: equal rows run once, and rows with a
common beginning share it (score.prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from score import columns, labels, prefix, ragged, resume
from score.arrays import offsets_from_lengths, segment_gather
from score.batch import BatchStats, Inferred, batch_stats, refuse_non_finite
from score.cache import ResultCache, ragged_key_length
from score.encoding import REASONS, TOO_LONG, VALID
from score.errors import InvalidRow
from score.model import Scorer
from score.options import ScoreOptions
from score.sequences import ragged_from_list

STEPS_BEFORE = "steps_before"  # the output column: the key's steps before this row
STEPS_BEFORE_FIELD = pa.field(STEPS_BEFORE, pa.int64())


@dataclass
class Carried:
    """What each row of a batch carries in from its key's history."""

    steps_before: np.ndarray  # (rows,) int64: the key's steps before this row (0: a new key)
    states: list[np.ndarray]  # per state tensor, (rows, units) float32: the key's state (zeros: new)
    key_reasons: np.ndarray  # (rows,) int8: VALID, or NULL_KEY / DUPLICATE_KEY found by the run
    key_messages: pa.Array | None = None  # (rows,) string: what is wrong with the key, else null
    key_null: np.ndarray | None = None  # (rows,) bool: the key is null (steps_before is null)


@dataclass
class Resumed:
    """A scored batch and where each of its keys' histories now stands."""

    scored: pa.RecordBatch  # the input columns, the scored columns, then steps_before
    stats: BatchStats
    moved: np.ndarray  # (rows,) bool: the row was scored, so its key's state moves on
    steps_after: np.ndarray  # (rows,) int64: the key's steps after this row (where moved)
    states: list[np.ndarray]  # per state tensor, (rows, units): the state after the row (where moved)
    steps_resumed: int  # history steps this batch did not compute again


def output_schema(input_schema: pa.Schema, options: ScoreOptions) -> pa.Schema:
    """The scored file of a run with --key: today's columns, then steps_before."""
    scored = columns.output_schema(input_schema, options)
    return scored.append(STEPS_BEFORE_FIELD)


def score_resumed(scorer: Scorer, batch: pa.RecordBatch, options: ScoreOptions, carried: Carried,
                  cache: ResultCache | None = None) -> Resumed:
    """Score one batch of rows that each continue their key's history. ``cache``: the run's
    results for sequences of new keys so far (new_cache(..., states=True)); None: none kept.

    Steps: 1. read and encode the new steps; the whole history (steps before plus new steps)
    must fit the length limit; 2. the first invalid row raises (--on-invalid error); 3. run the
    rows of known keys from their states and the rows of new keys from zero; 4. assemble.
    """
    # 1. Read and encode; a key problem is the row's first problem, then the history's length.
    name = options.column(scorer)
    limit = options.length_limit(scorer)
    raw = ragged_from_list(batch.column(name), name, limit)
    encoded = scorer.encoder.encode_ragged(raw)
    reasons = encoded.reasons
    history_long = (reasons == VALID) & (carried.steps_before + raw.lengths > limit)
    reasons[history_long] = TOO_LONG
    keyed_problem = carried.key_reasons != VALID
    reasons[keyed_problem] = carried.key_reasons[keyed_problem]
    messages = _history_messages(raw.column, raw.lengths, carried, history_long, limit, scorer)
    labelled = (labels.read(batch, options.labels, name, raw.lengths, scorer)
                if options.labels is not None else None)
    if labelled is not None:
        labelled.mark(reasons)

    # 2. With --on-invalid error the first invalid row stops the run.
    if options.on_invalid == "error" and labelled is not None:
        labelled.raise_first(reasons, scorer)
    if options.on_invalid == "error" and reasons.any():
        row = int(np.flatnonzero(reasons)[0])
        message = messages[row].as_py() if messages is not None else None
        if message is None:
            message = scorer.encoder.messages(raw, encoded, np.array([row]))[0].as_py()
        raise InvalidRow(row, REASONS[int(reasons[row])], message)

    # 3. Inference from each row's state.
    rows = np.flatnonzero(reasons == VALID)
    lengths = raw.gathered_lengths[rows]
    offsets = offsets_from_lengths(lengths)
    flat = encoded.indices[segment_gather(raw.offsets[rows], lengths)]
    k = options.run_k(scorer)
    best = np.empty((flat.size, k), dtype=np.int32)
    probabilities = np.empty((flat.size, k), dtype=np.float32)
    finite = np.ones(rows.size, dtype=bool)
    finals = [np.zeros((rows.size, units), dtype=np.float32) for units in scorer.state_units()]
    steps_before = carried.steps_before[rows]
    known = np.flatnonzero(steps_before > 0)
    initial = [state[rows] for state in carried.states]
    computed = resume.infer_states(scorer, flat, offsets, known, k, best, probabilities, finite,
                                   initial, finals)
    new = np.flatnonzero(steps_before == 0)
    computed_new, distinct_new = _infer_new(scorer, flat, offsets, new, k, best, probabilities,
                                            finite, finals, options, cache)
    inferred = Inferred(best, probabilities, finite, known.size + distinct_new, computed + computed_new)

    # 4. NaN or infinity fails the row (its key's state stays as it was); assemble.
    if not finite.all():
        refuse_non_finite(encoded, rows, finite, options)
        kept_steps = np.repeat(finite, lengths)
        flat, best, probabilities = flat[kept_steps], best[kept_steps], probabilities[kept_steps]
        rows, lengths, steps_before = rows[finite], lengths[finite], steps_before[finite]
        finals = [state[finite] for state in finals]
        offsets = offsets_from_lengths(lengths)
    resolved = None
    if labelled is not None:  # where each step's true class ranks (from every class); the top K
        every = best, probabilities
        best = np.ascontiguousarray(best[:, : options.top_k])
        probabilities = np.ascontiguousarray(probabilities[:, : options.top_k])
        resolved = labels.resolve(best, probabilities, labelled.truth(rows, lengths), *every)
    row_lengths = np.zeros(raw.rows, dtype=np.int64)
    row_lengths[rows] = lengths
    scored = columns.assemble(batch, scorer, options, raw, encoded, best, probabilities, row_lengths,
                              labelled, resolved)
    if messages is not None:
        error = scored.column("error")
        scored = scored.set_column(scored.schema.get_field_index("error"), "error",
                                   pc.if_else(messages.is_valid(), messages, error))
    steps_column = pa.array(carried.steps_before, pa.int64(), mask=carried.key_null)
    scored = pa.RecordBatch.from_arrays(list(scored.columns) + [steps_column],
                                        schema=output_schema(batch.schema, options))

    stats = batch_stats(scorer, options, batch.num_rows, reasons, probabilities[:, 0], inferred)
    history_positions = (np.arange(flat.size, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
                         + np.repeat(steps_before, lengths))
    stats.profile.add_flat_inputs(history_positions, flat, steps_before + lengths)
    stats.profile.add_flat_predictions(history_positions, best[:, 0], probabilities[:, 0])
    if resolved is not None:
        stats.quality = labels.measure(scorer, options.top_k, resolved, best[:, 0], probabilities[:, 0],
                                       lengths, history_positions, steps_before + lengths)

    moved = np.zeros(raw.rows, dtype=bool)
    moved[rows] = True
    steps_after = carried.steps_before.copy()
    steps_after[rows] += lengths
    states = [np.zeros((raw.rows, units), dtype=np.float32) for units in scorer.state_units()]
    for state, final in zip(states, finals):
        state[rows] = final
    return Resumed(scored, stats, moved, steps_after, states, int(steps_before.sum()))


def _infer_new(scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, new: np.ndarray, k: int,
               best: np.ndarray, probabilities: np.ndarray, finite: np.ndarray,
               finals: list[np.ndarray], options: ScoreOptions, cache: ResultCache | None
               ) -> tuple[int, int]:
    """Run the rows of new keys (``new``, from the zero state) as a run without --key does:
    equal rows once, rows found in the run's cache not at all, rows with a common beginning
    sharing it. Returns the steps computed and the distinct rows the model ran."""
    if new.size == 0:
        return 0, 0
    lengths = np.diff(offsets)
    leaders, inverse, keys = new, None, None
    if options.dedup:
        keys = ragged.row_keys(flat, offsets, scorer.spec.x_classes, ragged_key_length(scorer, options))
        first, inverse = ragged.distinct(keys[new])
        leaders = new[first]
    run = leaders
    use_cache = cache is not None and cache.enabled and keys is not None
    if use_cache:
        run = cache.serve(keys, leaders, offsets, best, probabilities, finals)
    computed = None
    if options.share_prefixes:
        computed = prefix.infer_shared(scorer, flat, offsets, run, k, best, probabilities, finite, finals)
    if computed is None:
        computed = resume.infer_states(scorer, flat, offsets, run, k, best, probabilities, finite, None, finals)
    if use_cache:
        cache.remember(keys, run, offsets, best, probabilities, finite, finals)
    if inverse is not None and leaders.size < new.size:  # each repeat takes its leader's results
        source_rows = leaders[inverse]
        source = segment_gather(offsets[source_rows], lengths[new])
        destination = segment_gather(offsets[new], lengths[new])
        best[destination] = best[source]
        probabilities[destination] = probabilities[source]
        finite[new] = finite[source_rows]
        for final in finals:
            final[new] = final[source_rows]
    return computed, int(run.size)


def _history_messages(column: str, lengths: np.ndarray, carried: Carried, history_long: np.ndarray,
                      limit: int, scorer: Scorer) -> pa.Array | None:
    """The error of each row whose key is bad or whose history outgrows the limit; null elsewhere."""
    if not history_long.any():
        return carried.key_messages
    rows = np.flatnonzero(history_long)
    limit_text = (f"the model takes at most {limit} (its longest training length; --max-length "
                  f"raises the limit for a run)" if limit == scorer.spec.seq_len
                  else f"this run takes at most {limit} (--max-length {limit})")
    def text(values: np.ndarray) -> pa.Array:
        return pa.array(values).cast(pa.string())

    before = carried.steps_before[rows]
    joined = pc.binary_join_element_wise(
        f"{column} has ", text(lengths[rows]), " new values after ", text(before),
        " steps of this key's history, ", text(before + lengths[rows]), f" in all; {limit_text}", "")
    slot = np.full(lengths.size, rows.size, dtype=np.int64)
    slot[rows] = np.arange(rows.size)
    history = pa.concat_arrays([joined, pa.nulls(1, pa.string())]).take(pa.array(slot))
    if carried.key_messages is None:
        return history
    return pc.if_else(carried.key_messages.is_valid(), carried.key_messages, history)
