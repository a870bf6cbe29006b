"""Prefix-shared inference: the tree against plain prefix sets, any plan against each row run
whole, and the job on real models against each row scored alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
from conftest import FIXTURE_MODEL, list_array, reference
from hypothesis import given, settings
from hypothesis import strategies as st

from score import prefix
from score.arrays import offsets_from_lengths
from score.core import ScoreOptions, score_batch_with_stats
from score.model import load
from score.ragged import key_length
from score.spec import Spec, StateTensors

OLD_MODEL = FIXTURE_MODEL.parent / "model_v1.onnx"  # exported before the model exposed its state


# A causal model in plain Python -----------------------------------------------------------------
class RunningSumScorer:
    """A stand-in for a loaded model whose state is exact: the running sum of (index + 1).

    Its top classes at a step are the sum and the next values mod CLASSES, with probabilities
    that depend on the sum; a sum equal to POISON gives a non-finite step, as NaN would. So a
    row's results depend on its whole prefix and any wrong state shows in them.
    """

    CLASSES = 7
    POISON = 23.0

    def __init__(self):
        self.spec = Spec(tuple(range(5)), tuple(range(self.CLASSES)), 40, min_len=1,
                         states=(StateTensors(1, "ih", "ic", "fh", "fc"),))
        self.encoder = dataclasses.make_dataclass("E", ["index_dtype"])(np.int32)
        self.steps_run = 0

    shares_prefixes = True

    def state_units(self) -> list[int]:
        return [1, 1]

    def resume_top_k(self, indices, k, initial):
        rows, steps = indices.shape
        start = np.zeros(rows) if initial is None else initial[0][0, :, 0].astype(np.float64)
        sums = start[:, None] + np.cumsum(indices + 1, axis=1)
        classes = (sums[..., None].astype(np.int64) + np.arange(k)) % self.CLASSES
        probabilities = (1.0 / (2.0 + np.arange(k)) / (1.0 + sums[..., None] / 100)).astype(np.float32)
        self.steps_run += indices.size
        final = sums[:, -1].astype(np.float32).reshape(1, rows, 1)
        return sums != self.POISON, probabilities, classes, [final, final.copy()]

    def whole(self, rows: list[list[int]], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row run alone from the start: the reference."""
        best, probabilities, finite = [], [], []
        for row in rows:
            step_finite, row_probabilities, row_best, _ = self.resume_top_k(np.asarray([row]), k, None)
            best.append(row_best[0])
            probabilities.append(row_probabilities[0])
            finite.append(bool(step_finite.all()))
        return np.concatenate(best), np.concatenate(probabilities), np.asarray(finite)


def flat_rows(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray([len(row) for row in rows], dtype=np.int64)
    flat = np.asarray([value for row in rows for value in row], dtype=np.int32)
    return flat, offsets_from_lengths(lengths)


def plain_counts(rows: list[list[int]]) -> tuple[list[int], list[int]]:
    """Distinct prefixes ending at each level, and those no row extends: with Python sets."""
    longest = max(len(row) for row in rows)
    prefixes = [{tuple(row[: level + 1]) for row in rows if len(row) > level} for level in range(longest)]
    leaves = [sum(1 for node in prefixes[level]
                  if level + 1 == longest or not any(other[:-1] == node for other in prefixes[level + 1]))
              for level in range(longest)]
    return [len(level) for level in prefixes], leaves


rows_strategy = st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=9), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy)
def test_the_tree_counts_the_distinct_prefixes_of_each_level(rows):
    flat, offsets = flat_rows(rows)
    tree = prefix.build_tree(flat, offsets, np.arange(len(rows)), 5)
    nodes, leaves = plain_counts(rows)
    assert tree.nodes.tolist() == nodes
    assert tree.leaves.tolist() == leaves
    ordered = [tuple(rows[row]) for row in tree.order]
    assert ordered == sorted(ordered)  # lexicographic: a row before its own extensions


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy, cuts=st.sets(st.integers(1, 8)), k=st.integers(1, 3))
def test_any_plan_gives_each_row_exactly_what_it_gets_run_whole(rows, cuts, k):
    scorer = RunningSumScorer()
    flat, offsets = flat_rows(rows)
    tree = prefix.build_tree(flat, offsets, np.arange(len(rows)), 5)
    longest = int(tree.lengths.max())
    boundaries = [0, *sorted(cut for cut in cuts if cut < longest), longest]
    best = np.full((flat.size, k), -1, dtype=np.int32)
    probabilities = np.full((flat.size, k), -1, dtype=np.float32)
    finite = np.zeros(len(rows), dtype=bool)
    computed = prefix.infer(scorer, flat, offsets, np.arange(len(rows)), k, best, probabilities,
                            finite, boundaries, tree)
    assert computed == scorer.steps_run
    want_best, want_probabilities, want_finite = scorer.whole(rows, k)
    assert np.array_equal(best, want_best)
    assert np.array_equal(probabilities, want_probabilities)
    assert np.array_equal(finite, want_finite)


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.lists(st.integers(0, 4), min_size=6, max_size=6), min_size=1, max_size=80))
def test_cut_at_every_level_each_distinct_prefix_runs_once(rows):
    scorer = RunningSumScorer()
    flat, offsets = flat_rows(rows)
    tree = prefix.build_tree(flat, offsets, np.arange(len(rows)), 5)
    best, probabilities = np.empty((flat.size, 2), np.int32), np.empty((flat.size, 2), np.float32)
    computed = prefix.infer(scorer, flat, offsets, np.arange(len(rows)), 2, best, probabilities,
                            np.empty(len(rows), bool), list(range(7)), tree)
    assert computed == sum(len({tuple(row[: level + 1]) for row in rows}) for level in range(6))


def test_rows_that_share_nothing_run_as_one_segment_and_shared_rows_are_cut():
    scorer = RunningSumScorer()
    distinct = [[value] + [0] * 5 for value in range(5)]  # differ at the first step
    flat, offsets = flat_rows(distinct)
    tree = prefix.build_tree(flat, offsets, np.arange(5), 5)
    assert prefix.plan(tree, 8) == [0, 6]
    best = np.empty((flat.size, 1), np.int32)
    assert prefix.infer_shared(scorer, flat, offsets, np.arange(5), 1, best, np.empty((flat.size, 1), np.float32),
                               np.empty(5, bool)) is None

    rng = np.random.default_rng(0)
    shared = np.concatenate([np.zeros((20_000, 6), np.int32), rng.integers(0, 5, (20_000, 6))], axis=1)
    flat, offsets = shared.reshape(-1), np.arange(20_001, dtype=np.int64) * 12
    tree = prefix.build_tree(flat, offsets, np.arange(20_000), 5)
    plan = prefix.plan(tree, 8)
    # The shared steps (and the few distinct paths just after them) run once, then the tails.
    assert 6 <= plan[1] <= 8 and plan[-1] == 12


def test_a_cut_never_holds_more_state_than_the_budget(monkeypatch):
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 5, (4096, 6)).astype(np.int32)
    rows[:, :3] = 0
    flat, offsets = rows.reshape(-1), np.arange(4097, dtype=np.int64) * 6
    tree = prefix.build_tree(flat, offsets, np.arange(4096), 5)
    assert prefix.plan(tree, 1024)[1] >= 3
    monkeypatch.setattr(prefix, "STATE_BUDGET", 0)
    assert prefix.plan(tree, 1024) == [0, 6]


# The job on real models ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fixed_scorer():
    return load(str(FIXTURE_MODEL))


def skewed(rng: np.random.Generator, shape: tuple[int, int], top: int) -> np.ndarray:
    """Values drawn the way event data is: a Zipf law, most rows starting alike."""
    return np.minimum(rng.zipf(1.5, size=shape) - 1, top)


def scored(scorer, column: pa.Array, **options) -> tuple[pa.RecordBatch, object]:
    batch = pa.RecordBatch.from_arrays([column], names=[scorer.spec.input_column])
    return score_batch_with_stats(scorer, batch, ScoreOptions(**options))


def assert_same_output(shared: pa.RecordBatch, alone: pa.RecordBatch):
    assert shared.column("y_pred").equals(alone.column("y_pred"))
    assert shared.column("top_k_values").equals(alone.column("top_k_values"))
    assert shared.column("error").equals(alone.column("error"))
    mine, theirs = (np.asarray(batch.column("top_k_probs").flatten().flatten()) for batch in (shared, alone))
    assert np.abs(mine - theirs).max() <= 1e-6


@pytest.mark.parametrize("draw", ["uniform", "skewed", "duplicates"])
def test_fixed_length_rows_score_as_each_row_alone(fixed_scorer, draw):
    assert fixed_scorer.shares_prefixes
    rng = np.random.default_rng(3)
    x = rng.integers(0, 11, (5000, 4)) if draw == "uniform" else skewed(rng, (5000, 4), 10)
    if draw == "duplicates":
        x = np.concatenate([x[:2500], x[:2500]])
    shared, stats = scored(fixed_scorer, list_array(x))
    want = reference(str(FIXTURE_MODEL), x)
    assert np.array_equal(np.asarray(shared.column("y_pred").to_pylist()), want.y_pred)
    assert np.array_equal(np.asarray(shared.column("top_k_values").to_pylist()), want.top_values)
    assert np.abs(np.asarray(shared.column("top_k_probs").to_pylist()) - want.top_probs).max() <= 1e-6
    assert stats.steps_computed < stats.scored_steps  # 5,000 rows over 11**4 sequences share prefixes
    plain, plain_stats = scored(fixed_scorer, list_array(x), share_prefixes=False, dedup=False)
    assert_same_output(shared, plain)
    assert plain_stats.steps_computed == plain_stats.scored_steps


@pytest.mark.parametrize("draw", ["uniform", "skewed", "duplicates"])
def test_rows_of_any_length_score_as_each_row_alone(ragged_scorer, draw):
    assert ragged_scorer.shares_prefixes
    rng = np.random.default_rng(4)
    lengths = rng.integers(1, ragged_scorer.spec.seq_len + 1, 4000)
    classes = (rng.integers(0, 11, int(lengths.sum())) if draw == "uniform"
               else skewed(rng, (int(lengths.sum()), 1), 10)[:, 0])
    offsets = offsets_from_lengths(lengths)
    if draw == "duplicates":
        offsets = np.concatenate([offsets[:2001], offsets[1:2001] + offsets[2000]])
        classes = np.concatenate([classes[: offsets[2000]], classes[: offsets[2000]]])
    x_values = np.asarray(ragged_scorer.spec.x_values)
    column = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(x_values[classes]))
    shared, stats = scored(ragged_scorer, column)  # no cache: the tree merges equal rows
    alone, _ = scored(ragged_scorer, column, share_prefixes=False, dedup=False)
    assert_same_output(shared, alone)
    if draw != "uniform":
        assert stats.steps_computed < stats.scored_steps
    # The model ran each distinct row once, whether the tree or the keys found them; a row
    # longer than a key holds (17 steps of 11 values in an int64) is never merged.
    keyable = key_length(ragged_scorer.spec.x_classes)
    rows = [tuple(classes[start:stop]) for start, stop in zip(offsets[:-1], offsets[1:])]
    distinct = len({row for row in rows if len(row) <= keyable}) + sum(len(row) > keyable for row in rows)
    keyed, keyed_stats = scored(ragged_scorer, column, share_prefixes=False)
    assert_same_output(keyed, alone)
    assert stats.distinct_rows == keyed_stats.distinct_rows == distinct
    assert distinct < len(rows)  # short rows repeat in every draw


def test_a_model_exported_before_states_scores_as_before():
    old = load(str(OLD_MODEL))
    assert not old.spec.states and not old.shares_prefixes
    assert not old.graph_top_k  # a file from before the heads: numpy's top-k
    x = np.random.default_rng(5).integers(0, 11, (3000, 4))
    out, stats = scored(old, list_array(x), dedup=False)
    want = reference(str(OLD_MODEL), x)
    assert np.array_equal(np.asarray(out.column("top_k_values").to_pylist()), want.top_values)
    assert stats.steps_computed == stats.scored_steps == x.size


def test_an_int8_model_is_run_whole(tmp_path):
    """Dynamic int8 takes each call's activation scale from its whole input: a resumed run would
    not equal the whole run, so such a file never shares prefixes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = tmp_path / "model.int8.onnx"
    quantize_dynamic(str(FIXTURE_MODEL), str(target), weight_type=QuantType.QInt8)
    quantized = load(str(target))
    assert quantized.spec.states and not quantized.shares_prefixes
    x = skewed(np.random.default_rng(6), (2000, 4), 10)
    _, stats = scored(quantized, list_array(x), dedup=False)
    assert stats.steps_computed == stats.scored_steps


@settings(max_examples=100, deadline=None)
@given(rows=rows_strategy)
def test_the_plan_prices_every_segment_as_the_plain_sums_do(rows):
    flat, offsets = flat_rows(rows)
    tree = prefix.build_tree(flat, offsets, np.arange(len(rows)), 5)
    longest = tree.nodes.size
    for stop in range(1, longest + 1):
        starts = np.arange(stop)
        paths, steps = prefix.segment_costs(tree, starts, stop)
        assert [(int(p), int(s)) for p, s in zip(paths, steps)] == [
            segment_cost(tree, start, stop) for start in starts]


def segment_cost(tree: prefix.Tree, start: int, stop: int) -> tuple[int, int]:
    """Paths and steps the segment [start, stop) runs, summed level by level: the plain
    reference for prefix.segment_costs."""
    leaves = tree.leaves[start : stop - 1]
    levels = np.arange(start, stop - 1)
    paths = int(tree.nodes[stop - 1] + leaves.sum())
    steps = int((stop - start) * tree.nodes[stop - 1] + ((levels - start + 1) * leaves).sum())
    return paths, steps
