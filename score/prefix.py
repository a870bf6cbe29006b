"""Prefix-shared inference: a causal model computes each distinct prefix of a batch once.

The model is causal (a unidirectional LSTM with return_sequences): its state after step t
depends only on steps 0..t, so rows that begin alike share all the work for their common
beginning, even when no two rows are equal. The rows of a batch are sorted (rows that share a
prefix become neighbours) and the levels 0..L-1 (step positions) are cut into segments
[a, b). Each segment runs once per distinct *path*, a row's steps a..min(len, b)-1 among rows
that share their first min(len, b) steps, starting from the state its prefix of length a left
in the previous segment (the model exposes its LSTM states: spec.states). Each step's top-k is
then scattered to every row that has that prefix.

Where to cut is a small dynamic programme over a cost model, from counts of distinct prefixes
per level: a cut pays when the rows share their first levels (the default task, skewed event
data); on rows without common prefixes the single segment [0, L) wins and the batch runs
exactly as it would without this module.

Memory: the carried state is held for the paths of one cut at a time, and a cut is allowed only
where that state fits STATE_BUDGET; everything else follows the batch's steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from score.arrays import as_items, segment_gather
from score.model import Scorer
from score.ragged import MAX_PADDING, MIN_RUN_ROWS, key_length, length_chunks

# Levels the plan may cut at; rows longer than this run their remaining steps in one piece.
SHARE_LEVELS = 64
# Bytes of carried LSTM state one cut may hold (paths x layers x (h, c) x units x 4 bytes).
STATE_BUDGET = 48 << 20
# Runs of paths: at most this many padded steps and rows per session.run. Short paths need many
# rows to amortise a call, so these runs are larger than those of whole rows
# (score.ragged.ROW_RUN_STEPS, 8,192): the 12-step bench model ran at 1.27 us/step for 1,024
# one-step rows, 0.97 for 4,096, and 0.76 for 1,024 rows of 12 steps; the job on 1M rows of 12
# steps was fastest with runs of 12,288 steps (9.3-9.6 s, against 10.2 s at 4,096 and
# 9.6-10.5 s at 8,192).
PATH_RUN_STEPS = 12_288
PATH_RUN_ROWS = 8_192
# The cost model, in steps of one row (what onnxruntime spends per step of a 2 x 64-unit LSTM:
# about 0.8 us on the benchmark machine): one session.run costs about 1 ms besides its steps,
# a path half a step (gathering its carried state and storing the new one), and a segment a
# few hundred steps of numpy bookkeeping. The job's time moved within noise when these were
# halved or doubled.
CALL_COST = 1200.0
PATH_COST = 0.5
SEGMENT_COST = 500.0


@dataclass(frozen=True)
class Tree:
    """The rows of a batch in lexicographic order, and how their prefixes branch."""

    order: np.ndarray  # (rows,) positions of the rows given, sorted by their sequences
    starts: np.ndarray  # (rows,) flat start of each sorted row
    lengths: np.ndarray  # (rows,) length of each sorted row
    common: np.ndarray  # (rows,) steps each sorted row shares with the one before it (0 first)
    nodes: np.ndarray  # (L,) distinct prefixes that end at each level
    leaves: np.ndarray  # (L,) of those, the ones no longer row extends (where a row ends)
    width: int = 0  # the length of every row when the batch is a matrix (all rows, one length)


def build_tree(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, classes: int) -> Tree:
    """Sort ``rows`` of a flat batch by their sequences and count distinct prefixes per level.

    Sharing is looked for in the first min(SHARE_LEVELS, the levels an int64 key holds) steps;
    beyond them every row is its own path (correct, just not shared).
    """
    lengths = (offsets[rows + 1] - offsets[rows]).astype(np.int64)
    count = rows.size
    longest = int(lengths.max())
    depth = min(longest, SHARE_LEVELS, key_length(classes))
    # 1. Digits: class index + 1 over the first `depth` steps, 0 past a row's end, so that a
    # row sorts before its own extensions.
    digit_type = np.int16 if classes < 1 << 15 else np.int32
    matrix = (rows.size == offsets.size - 1 and offsets[0] == 0
              and offsets[-1] == rows.size * longest and bool((lengths == longest).all()))
    if matrix:  # rows of one length, back to back: the digits are a view of the batch
        digits = flat.reshape(count, longest)[:, :depth].astype(digit_type) + 1
    else:
        taken = np.minimum(lengths, depth)
        digits = np.zeros((count, depth), dtype=digit_type)
        positions = segment_gather(offsets[rows], taken)
        digits[np.repeat(np.arange(count), taken), positions - np.repeat(offsets[rows], taken)] = flat[positions] + 1
    weights = (classes + 1) ** np.arange(depth - 1, -1, -1, dtype=np.int64)
    order = np.argsort(digits.astype(np.int64) @ weights, kind="stable")
    digits, lengths = digits[order], lengths[order]
    # 2. Common prefix of each row with the one before it.
    common = np.zeros(count, dtype=np.int64)
    if count > 1:
        differs = digits[1:] != digits[:-1]
        first_difference = np.where(differs.any(axis=1), differs.argmax(axis=1), depth)
        common[1:] = np.minimum(first_difference, np.minimum(lengths[1:], lengths[:-1]))
    # 3. A row adds nodes at levels common..length-1; it ends a branch (a leaf) unless the next
    # row extends or repeats it.
    nodes = np.cumsum(np.bincount(common, minlength=longest + 1)
                      - np.bincount(lengths, minlength=longest + 1))[:longest]
    extended = np.zeros(count, dtype=bool)
    extended[:-1] = common[1:] >= lengths[:-1]
    leaves = np.bincount(lengths[~extended] - 1, minlength=longest)[:longest]
    starts = offsets[rows][order]
    return Tree(rows[order], starts, lengths, common, nodes.astype(np.int64), leaves.astype(np.int64),
                longest if matrix else 0)


def segment_costs(tree: Tree, starts: np.ndarray, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Paths and steps the segments [start, stop) run, for every start in ``starts`` (each <
    stop) at once, from running sums.

    A segment's paths are the prefixes that end at its last level plus the leaves inside it; a
    leaf at level s runs s - start + 1 steps.
    """
    ends = np.zeros(tree.leaves.size + 1, dtype=np.int64)
    np.cumsum(tree.leaves, out=ends[1:])
    weighted = np.zeros(tree.leaves.size + 1, dtype=np.int64)
    np.cumsum(np.arange(tree.leaves.size) * tree.leaves, out=weighted[1:])
    inner = ends[stop - 1] - ends[starts]  # leaves at levels start..stop-2
    paths = tree.nodes[stop - 1] + inner
    steps = ((stop - starts) * tree.nodes[stop - 1] + weighted[stop - 1] - weighted[starts]
             - (starts - 1) * inner)
    return paths, steps


def plan(tree: Tree, state_bytes: int) -> list[int]:
    """The cut levels [0, ..., L] that minimise the cost model; [0, L] when nothing pays."""
    longest = tree.nodes.size
    cuts = [level for level in range(1, min(longest, SHARE_LEVELS + 1))
            if tree.nodes[level - 1] * state_bytes <= STATE_BUDGET]
    points = np.asarray([0, *cuts, longest], dtype=np.int64)
    best = np.zeros(points.size)  # the cheapest cost of reaching each point
    came_from = np.zeros(points.size, dtype=np.int64)
    for index in range(1, points.size):
        paths, steps = segment_costs(tree, points[:index], int(points[index]))
        calls = np.maximum(-(-steps // PATH_RUN_STEPS), -(-paths // PATH_RUN_ROWS))
        costs = best[:index] + steps + PATH_COST * paths + CALL_COST * calls + SEGMENT_COST
        came_from[index] = int(np.argmin(costs))
        best[index] = costs[came_from[index]]
    boundaries = [points.size - 1]
    while boundaries[-1] > 0:
        boundaries.append(int(came_from[boundaries[-1]]))
    return [int(points[index]) for index in boundaries[::-1]]


@dataclass
class _Segment:
    """The paths of one segment: which sorted rows run them, and their carried state."""

    path_of: np.ndarray  # (alive rows,) path of each sorted row alive in the segment
    alive: np.ndarray  # (alive rows,) sorted row numbers with a step in the segment
    states: list[np.ndarray] | None  # final states per path (valid for full-width paths)


def infer(scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, k: int,
          best: np.ndarray, probabilities: np.ndarray, finite: np.ndarray,
          boundaries: list[int], tree: Tree, row_states: list[np.ndarray] | None = None) -> int:
    """Run ``rows`` segment by segment along ``boundaries``, writing each real step's top-k into
    ``best`` and ``probabilities`` (flat, like ``flat``) and each row's finiteness into
    ``finite``. Returns the steps the model computed, padding included.

    ``row_states``: one (rows of offsets, units) array per state tensor, to receive the state
    each row ends in (score.keyed). Its paths then run in runs of one width, unpadded, so that
    a path's final state is the one after its last real step.
    """
    computed = 0
    previous = None
    row_finite = np.ones(tree.order.size, dtype=bool)
    # Rows of one length are filled in sorted order, where each path's rows are neighbours (a
    # repeat, not a scatter per segment), and put back in their own order once at the end.
    in_order = ((np.empty((tree.order.size, tree.width, k), dtype=best.dtype),
                 np.empty((tree.order.size, tree.width, k), dtype=probabilities.dtype))
                if tree.width else None)
    for start, stop in zip(boundaries[:-1], boundaries[1:]):
        segment, path_finite, steps = _run_segment(
            scorer, flat, tree, start, stop, previous, k, best, probabilities,
            keep_states=stop < boundaries[-1] or row_states is not None, in_order=in_order,
            exact_widths=row_states is not None)
        row_finite[segment.alive] &= path_finite[segment.path_of]
        if row_states is not None:  # the rows that end in this segment end in their path's state
            ending = tree.lengths[segment.alive] <= stop
            for kept, state in zip(row_states, segment.states):
                kept[tree.order[segment.alive[ending]]] = state[segment.path_of[ending]]
        computed += steps
        previous = segment
    if in_order is not None:
        best.reshape(-1, tree.width, k)[tree.order] = in_order[0]
        probabilities.reshape(-1, tree.width, k)[tree.order] = in_order[1]
    finite[tree.order] = row_finite
    return computed


def _run_segment(scorer: Scorer, flat: np.ndarray, tree: Tree, start: int, stop: int,
                 previous: _Segment | None, k: int, best: np.ndarray, probabilities: np.ndarray,
                 keep_states: bool, in_order: tuple[np.ndarray, np.ndarray] | None = None,
                 exact_widths: bool = False) -> tuple[_Segment, np.ndarray, int]:
    """Run the distinct paths of levels [start, stop) and give their top-k to every row: into
    ``in_order`` (rows of one length, in sorted order) when given, else into ``best`` and
    ``probabilities`` at the rows' flat positions."""
    # 1. Paths: neighbours in sorted order with the same steps up to min(length, stop).
    alive = np.flatnonzero(tree.lengths > start)
    reach = np.minimum(tree.lengths[alive], stop)
    same = np.zeros(alive.size, dtype=bool)
    same[1:] = ((alive[1:] - 1 == alive[:-1]) & (reach[1:] == reach[:-1])
                & (tree.common[alive[1:]] >= reach[1:]))
    path_of = np.cumsum(~same) - 1
    leaders = np.flatnonzero(~same)
    widths = reach[leaders] - start
    path_starts = tree.starts[alive[leaders]] + start
    parents = previous_paths(previous, alive[leaders]) if start > 0 else None
    # 2. Run them in groups of similar width, each from its parent's state. States are kept
    # as (paths, units) so that a group's rows are contiguous to gather and to store. A run's
    # outputs stay as onnxruntime gave them; ``base`` says where each path's first step lies in
    # their concatenation, so that step 3 moves every result once.
    paths = leaders.size
    path_finite = np.ones(paths, dtype=bool)
    states = ([np.empty((paths, units), dtype=np.float32) for units in scorer.state_units()]
              if keep_states else None)
    one_width = bool(widths.size) and widths.min() == widths.max()
    by_width = np.arange(paths) if one_width else np.argsort(widths, kind="stable")
    base = np.empty(paths, dtype=np.int64)
    run_classes, run_probabilities = [], []
    filled = computed = 0
    padding, min_rows = (0.0, 1) if exact_widths else (MAX_PADDING, MIN_RUN_ROWS)
    for first, last in length_chunks(widths[by_width], PATH_RUN_ROWS, padding, PATH_RUN_STEPS,
                                     min_rows):
        chunk = slice(first, last) if one_width else by_width[first:last]
        chunk_widths = widths[chunk]
        width = int(chunk_widths.max())
        steps = np.arange(width)
        if one_width:  # every path fills the run: no padding
            positions = path_starts[chunk, None] + steps
        else:  # a shorter path repeats its last step: its real steps cannot see what follows
            positions = path_starts[chunk, None] + np.minimum(steps, chunk_widths[:, None] - 1)
        matrix = flat[positions].astype(scorer.encoder.index_dtype, copy=False)
        initial = None
        if parents is not None:
            initial = [np.take(state, parents[chunk], axis=0)[None] for state in previous.states]
        step_finite, top_probabilities, top_classes, final = scorer.resume_top_k(matrix, k, initial)
        base[chunk] = filled + np.arange(last - first, dtype=np.int64) * width
        filled += matrix.size
        run_classes.append(top_classes.reshape(-1, k))
        run_probabilities.append(top_probabilities.reshape(-1, k))
        if not one_width:
            step_finite = step_finite | (steps >= chunk_widths[:, None])
        path_finite[chunk] = step_finite.all(axis=1)
        if states is not None:
            for kept, computed_state in zip(states, final):
                kept[chunk] = computed_state[0]
        computed += matrix.size
    path_best = _joined(run_classes, k, best.dtype)
    path_probabilities = _joined(run_probabilities, k, probabilities.dtype)
    # 3. Every row gets its path's results for its steps in the segment.
    if in_order is not None:  # one width, paths in order: path p's steps are rows p*width...
        width = stop - start
        blocks = path_best.reshape(-1, width, k), path_probabilities.reshape(-1, width, k)
        if paths < path_of.size:  # some paths have several rows (else a repeat is a plain copy)
            repeats = np.bincount(path_of, minlength=paths)
            blocks = tuple(np.repeat(block, repeats, axis=0) for block in blocks)
        in_order[0][:, start:stop] = blocks[0]
        in_order[1][:, start:stop] = blocks[1]
        return _Segment(path_of, alive, states), path_finite, computed
    spans = reach - start
    destination = segment_gather(tree.starts[alive] + start, spans)
    source = segment_gather(base[path_of], spans)
    as_items(best)[destination] = as_items(path_best)[source]
    as_items(probabilities)[destination] = as_items(path_probabilities)[source]
    return _Segment(path_of, alive, states), path_finite, computed


def _joined(outputs: list[np.ndarray], k: int, dtype) -> np.ndarray:
    """The runs' (steps, k) outputs back to back, as ``dtype``, in one pass (no copy for a
    single run already of that type)."""
    if not outputs:
        return np.empty((0, k), dtype=dtype)
    if len(outputs) == 1:
        return outputs[0].astype(dtype, copy=False)
    return np.concatenate(outputs, dtype=dtype)


def previous_paths(previous: _Segment, sorted_rows: np.ndarray) -> np.ndarray:
    """The path each sorted row ran in the previous segment (every row alive now was then)."""
    where = np.searchsorted(previous.alive, sorted_rows)
    return previous.path_of[where]


def _tree_and_plan(scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray
                   ) -> tuple[Tree, list[int]]:
    """The prefix tree of ``rows`` and the cut levels that are cheapest for this model."""
    tree = build_tree(flat, offsets, rows, scorer.spec.x_classes)
    return tree, plan(tree, 4 * sum(scorer.state_units()))


def infer_shared(scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, k: int,
                 best: np.ndarray, probabilities: np.ndarray, finite: np.ndarray,
                 row_states: list[np.ndarray] | None = None) -> int | None:
    """infer() along the cheapest plan, or None (nothing run) when the plan does not cut: the
    model exposes no state, or the rows share too little for a cut to pay."""
    if not scorer.shares_prefixes or rows.size < 2:
        return None
    tree, boundaries = _tree_and_plan(scorer, flat, offsets, rows)
    if len(boundaries) <= 2:
        return None
    return infer(scorer, flat, offsets, rows, k, best, probabilities, finite, boundaries, tree,
                 row_states)


def infer_merged(scorer: Scorer, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, k: int,
                 best: np.ndarray, probabilities: np.ndarray, finite: np.ndarray) -> tuple[int, int]:
    """infer() along the cheapest plan, cut or not, for rows that were not de-duplicated first:
    equal rows are neighbours in the sorted tree and run as one path, so the tree does the
    de-duplication's work without its keys, its unique and its scatter. Needs a model that
    exposes its state (scorer.shares_prefixes). Returns the steps computed and the distinct rows
    the model ran (rows longer than the tree's depth are each their own)."""
    if rows.size == 0:
        return 0, 0
    tree, boundaries = _tree_and_plan(scorer, flat, offsets, rows)
    computed = infer(scorer, flat, offsets, rows, k, best, probabilities, finite, boundaries, tree)
    repeats = (tree.lengths[1:] == tree.lengths[:-1]) & (tree.common[1:] >= tree.lengths[1:])
    return computed, int(rows.size - repeats.sum())
