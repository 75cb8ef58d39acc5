"""Tests for visjax.matching: Hungarian vs scipy, SimOTA vs a NumPy port of IDOL's dynamic_k_matching."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from visjax.matching import hungarian_match, simota_assign

_hungarian = jax.jit(hungarian_match)


def _check_against_scipy(cost):
  rows, cols = (np.asarray(x) for x in _hungarian(cost))
  ref_rows, ref_cols = linear_sum_assignment(cost)
  n, m = cost.shape
  assert rows.shape == cols.shape == (min(n, m),)
  assert np.all(np.diff(rows) > 0), 'rows must be ascending and distinct'
  assert len(np.unique(cols)) == len(cols), 'columns must be distinct'
  total, ref_total = cost[rows, cols].astype(np.float64).sum(), cost[ref_rows, ref_cols].astype(np.float64).sum()
  scale = max(1., np.abs(cost).max())
  assert abs(total - ref_total) <= 1e-5 * scale * min(n, m), (total, ref_total)
  if n <= m:
    np.testing.assert_array_equal(rows, np.arange(n))


@pytest.mark.parametrize('shape', [(1, 1), (1, 6), (6, 1), (4, 4), (3, 9), (9, 3), (17, 17), (10, 64), (64, 10),
                                   (40, 33)])
def test_hungarian_random_float(shape):
  rng = np.random.default_rng(sum(shape))
  for _ in range(4):
    _check_against_scipy(rng.normal(size=shape).astype(np.float32))


@pytest.mark.parametrize('shape', [(5, 5), (6, 11), (11, 6), (20, 20)])
def test_hungarian_integer_costs_with_ties(shape):
  rng = np.random.default_rng(7 + shape[0])
  for high in (1, 2, 4):  # high=1: all zeros (every assignment optimal); small ranges: many ties
    cost = rng.integers(0, high, size=shape)
    rows, cols = (np.asarray(x) for x in _hungarian(cost))
    ref_rows, ref_cols = linear_sum_assignment(cost)
    assert cost[rows, cols].sum() == cost[ref_rows, ref_cols].sum()
    assert len(np.unique(cols)) == len(cols) and np.all(np.diff(rows) > 0)


def test_hungarian_large_values_and_offsets():
  rng = np.random.default_rng(3)
  # Large finite penalties like the ones matching costs use (no inf): an offset plus a few 1e4 penalties.
  cost = rng.uniform(0, 10, size=(12, 30)) + 1e4 * (rng.uniform(size=(12, 30)) < 0.5) + 1e3
  _check_against_scipy(cost.astype(np.float32))
  _check_against_scipy((-cost).astype(np.float32))  # negative costs


def test_hungarian_batched_and_vmap():
  rng = np.random.default_rng(5)
  cost = rng.normal(size=(2, 3, 7, 5)).astype(np.float32)
  rows, cols = _hungarian(cost)
  assert rows.shape == cols.shape == (2, 3, 5)
  vrows, vcols = jax.jit(jax.vmap(jax.vmap(hungarian_match)))(cost)
  np.testing.assert_array_equal(rows, vrows)
  np.testing.assert_array_equal(cols, vcols)
  for i in range(2):
    for j in range(3):
      r, c = linear_sum_assignment(cost[i, j])
      np.testing.assert_allclose(cost[i, j][np.asarray(rows[i, j]), np.asarray(cols[i, j])].sum(),
                                 cost[i, j][r, c].sum(), rtol=1e-5)


def test_hungarian_bad_input():
  with pytest.raises(ValueError, match=r'\[\.\.\., N, M\]'):
    hungarian_match(jnp.zeros(5))
  with pytest.raises(ValueError, match='inf/nan'):
    hungarian_match(jnp.array([[0., jnp.inf], [1., 2.]]))
  # Under jit non-finite costs cannot raise; they must still terminate (no hang) with well-formed output.
  rows, cols = _hungarian(np.array([[0., np.inf, 1.], [np.inf, np.inf, np.inf]], np.float32))
  assert rows.shape == cols.shape == (2,)


# ------------------------------------------------------------------------------------------------------------------
# SimOTA.
# ------------------------------------------------------------------------------------------------------------------


def _reference_dynamic_k(cost, ious, n_candidate_k, max_loops):
  """Line-by-line NumPy port of IDOL's `dynamic_k_matching` (matcher.py) on the valid gts only.

  `max_loops` bounds the unmatched-gt loop, which in the official code never ends when every query is taken and
  the stale reset keeps undoing a pick (only possible with very few queries); visjax stops at the same bound.
  """
  cost = cost.astype(np.float32).copy()
  num_q, num_gt = cost.shape
  matching = np.zeros_like(cost)
  topk_ious = -np.sort(-ious, axis=0)[:min(n_candidate_k, num_q)]
  dynamic_ks = np.maximum(topk_ious.sum(0, dtype=np.float32).astype(np.int32), 1)
  for g in range(num_gt):
    pos = np.argsort(cost[:, g], kind='stable')[:dynamic_ks[g]]
    matching[pos, g] = 1.
  anchor_matching_gt = matching.sum(1)
  loops = 0
  if (anchor_matching_gt > 1).sum() > 0:
    rows = np.nonzero(anchor_matching_gt > 1)[0]
    cost_argmin = cost[rows].argmin(1)
    matching[rows] = 0
    matching[rows, cost_argmin] = 1
  while (matching.sum(0) == 0).any() and loops < max_loops:
    loops += 1
    matched_query_id = matching.sum(1) > 0
    cost[matched_query_id] += np.float32(100000.0)
    for g in np.nonzero(matching.sum(0) == 0)[0]:
      matching[np.argmin(cost[:, g]), g] = 1.
    if (matching.sum(1) > 1).sum() > 0:
      rows = np.nonzero(anchor_matching_gt > 1)[0]  # the stale mask, as the official code
      cost_argmin = cost[rows].argmin(1)
      matching[rows] = 0
      matching[rows, cost_argmin] = 1
  selected = matching.sum(1) > 0
  gt_indices = matching[selected].argmax(1)
  cost[matching == 0] = np.inf
  matched_query = cost.argmin(0)
  return matching > 0, selected, gt_indices, matched_query, loops


def _random_problem(rng, num_q, num_g, iou_low):
  cost = rng.uniform(-2, 2, size=(num_q, num_g)) + 100. * (rng.uniform(size=(num_q, num_g)) < 0.3)
  cost += 10000. * (rng.uniform(size=(num_q, 1)) < 0.2)
  ious = rng.uniform(iou_low, 1., size=(num_q, num_g)) * (rng.uniform(size=(num_q, num_g)) < 0.7)
  return cost.astype(np.float32), ious.astype(np.float32)


_simota = jax.jit(simota_assign, static_argnames='candidate_k')


@pytest.mark.parametrize('num_q,num_g,iou_low,candidate_k', [(30, 4, 0., 10), (12, 5, 0.5, 10), (8, 6, 0.6, 10),
                                                           (40, 7, 0.3, 100), (6, 6, 0.9, 10)])
def test_simota_matches_official_algorithm(num_q, num_g, iou_low, candidate_k):
  rng = np.random.default_rng(num_q * 100 + num_g)
  total_loops = 0
  for trial in range(9):
    cost, ious = _random_problem(rng, num_q, num_g, iou_low)
    num_valid = num_g - (trial % 3)  # some trials with padding gts (random junk in their columns)
    valid = np.arange(num_g) < num_valid
    ref_matching, ref_selected, ref_gt, ref_matched, loops = _reference_dynamic_k(
        cost[:, :num_valid], ious[:, :num_valid], candidate_k, max_loops=num_g + 2)
    total_loops += loops
    out = _simota(cost, ious, valid, candidate_k=candidate_k)
    matching = np.asarray(out.matching)
    np.testing.assert_array_equal(matching[:, :num_valid], ref_matching)
    assert not matching[:, num_valid:].any(), 'padding gts must get no query'
    query_gt = np.asarray(out.query_gt)
    np.testing.assert_array_equal(query_gt >= 0, ref_selected)
    np.testing.assert_array_equal(query_gt[ref_selected], ref_gt)
    np.testing.assert_array_equal(np.asarray(out.matched_query)[:num_valid], ref_matched)
    assert np.all(np.asarray(out.matched_query)[num_valid:] == -1)
  if iou_low >= 0.5:
    assert total_loops > 0, 'these settings are meant to exercise the unmatched-gt loop'


def test_simota_properties_many_queries():
  rng = np.random.default_rng(11)
  num_q, num_g = 100, 12
  for trial in range(10):
    cost, ious = _random_problem(rng, num_q, num_g, 0.2)
    valid = rng.uniform(size=num_g) < 0.7
    out = _simota(cost, ious, valid)
    matching = np.asarray(out.matching)
    assert np.all(matching[:, valid].sum(0) >= 1), 'every valid gt gets at least one query'
    assert np.all(matching.sum(1) <= 1), 'no query claimed twice'
    assert not matching[:, ~valid].any(), 'padding gts get nothing'
    query_gt = np.asarray(out.query_gt)
    np.testing.assert_array_equal(query_gt, np.where(matching.any(1), matching.argmax(1), -1))
    mq = np.asarray(out.matched_query)
    assert np.all(matching[mq[valid], np.nonzero(valid)[0]]), 'matched_query is one of the gt matches'
    k = np.maximum(np.floor(np.sort(ious, 0)[-10:].sum(0)), 1)
    assert np.all(matching[:, valid].sum(0) <= k[valid])


def test_simota_hand_case():
  cost = np.array([[1., .5], [2., 1.], [3., 4.], [9., 9.]], np.float32)
  # gt0: top IoUs sum 1.8 -> k=1 (claims q0); gt1: 2.1 -> k=2 (claims q0, q1). q0 is double-claimed and goes to
  # gt1 (its row minimum), so gt0 has nothing: matched rows q0, q1 get +1e5 and gt0 takes q2.
  ious = np.array([[.9, .5], [.8, .9], [.1, .7], [0., 0.]], np.float32)
  out = _simota(cost, ious, np.array([True, True]))
  np.testing.assert_array_equal(out.matching, [[0, 1], [0, 1], [1, 0], [0, 0]])
  np.testing.assert_array_equal(out.query_gt, [1, 1, 0, -1])
  np.testing.assert_array_equal(out.matched_query, [2, 0])
  # No gts at all: nothing matched.
  out = _simota(cost, ious, np.array([False, False]))
  assert not np.asarray(out.matching).any() and np.all(np.asarray(out.query_gt) == -1)


def test_simota_vmap():
  rng = np.random.default_rng(2)
  problems = [_random_problem(rng, 20, 5, 0.3) for _ in range(3)]
  cost = np.stack([p[0] for p in problems])
  ious = np.stack([p[1] for p in problems])
  valid = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  out = jax.jit(jax.vmap(simota_assign))(cost, ious, valid)
  for i in range(3):
    single = _simota(cost[i], ious[i], valid[i])
    np.testing.assert_array_equal(out.matching[i], single.matching)
    np.testing.assert_array_equal(out.matched_query[i], single.matched_query)
