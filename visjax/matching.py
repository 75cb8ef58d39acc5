"""In-graph assignment: exact Hungarian (linear sum assignment) and IDOL's SimOTA dynamic-k assigner.

Both run inside `jax.jit` with static shapes and no host callbacks, and batch with `jax.vmap`.

* `hungarian_match(cost [..., N, M])` solves the rectangular linear sum assignment problem exactly with the
  shortest-augmenting-path method (Jonker-Volgenant / Kuhn-Munkres with potentials, O(min·min·max)), the same
  problem `scipy.optimize.linear_sum_assignment` solves; rows come back sorted ascending like scipy's.
* `simota_assign(cost [Q, G], ious [Q, G], gt_valid [G])` is the dynamic-k matching of IDOL's `HungarianMatcher`
  (`dynamic_k_matching` in `projects/IDOL/idol/models/matcher.py` and `pos_neg_select.py`), reproduced step by
  step including its order of operations (see the function docstring).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


# ----------------------------------------------------------------------------------------------------------------
# Hungarian.
# ----------------------------------------------------------------------------------------------------------------


def _lsap_wide(cost: jax.Array) -> jax.Array:
  """Exact assignment of every row of a wide matrix.

  Args:
    cost: `[n, m]` finite float costs with `n <= m`.

  Returns:
    `[n]` int32: the column assigned to each row (all distinct), minimising the total cost.
  """
  n, m = cost.shape
  dtype = cost.dtype
  inf = jnp.asarray(jnp.inf, dtype)
  # 1-based columns with a virtual column 0, as in the classic formulation: p[j] is the (1-based) row owning
  # column j (0 = free), u / v are the row / column potentials, way[j] the previous column on the path.
  padded = jnp.concatenate([jnp.zeros((n, 1), dtype), cost], axis=1)  # [n, m + 1]
  col_ids = jnp.arange(m + 1)

  def add_row(i, carry):
    u, v, p = carry  # [n + 1], [m + 1], [m + 1]
    p = p.at[0].set(i)

    def search_cond(state):
      _, _, p_, _, _, _, j0 = state
      return p_[j0] != 0

    def search_body(state):
      u_, v_, p_, way, minv, used, j0 = state
      used = used.at[j0].set(True)
      i0 = p_[j0]
      cur = padded[i0 - 1] - u_[i0] - v_  # [m + 1]
      better = (~used) & (cur < minv)
      minv = jnp.where(better, cur, minv)
      way = jnp.where(better, j0, way)
      taken = used | (col_ids == 0)
      masked = jnp.where(taken, inf, minv)
      j1 = jnp.argmin(masked).astype(jnp.int32)
      # Non-finite costs (unsupported) could make argmin land on a taken column; moving on to a free one keeps
      # the loop finite (the result is then meaningless, never a hang).
      j1 = jnp.where(taken[j1], jnp.argmin(taken), j1).astype(jnp.int32)
      delta = masked[j1]
      u_ = u_.at[p_].add(jnp.where(used, delta, jnp.zeros_like(delta)))
      v_ = jnp.where(used, v_ - delta, v_)
      minv = jnp.where(used, minv, minv - delta)
      return u_, v_, p_, way, minv, used, j1

    init = (u, v, p, jnp.zeros(m + 1, jnp.int32), jnp.full(m + 1, inf), jnp.zeros(m + 1, bool),
            jnp.int32(0))
    u, v, p, way, _, _, j0 = jax.lax.while_loop(search_cond, search_body, init)

    def augment_cond(state):
      _, j = state
      return j != 0

    def augment_body(state):
      p_, j = state
      j_prev = way[j]
      return p_.at[j].set(p_[j_prev]), j_prev

    p, _ = jax.lax.while_loop(augment_cond, augment_body, (p, j0))
    return u, v, p

  init = (jnp.zeros(n + 1, dtype), jnp.zeros(m + 1, dtype), jnp.zeros(m + 1, jnp.int32))
  _, _, p = jax.lax.fori_loop(1, n + 1, add_row, init)
  # Invert column -> row into row -> column; unowned columns (p == 0) scatter to a dropped slot.
  row_of_col = p[1:] - 1  # [m], -1 for free columns
  target = jnp.where(row_of_col >= 0, row_of_col, n)
  assignment = jnp.zeros(n + 1, jnp.int32).at[target].set(jnp.arange(m, dtype=jnp.int32))
  return assignment[:n]


def _hungarian_single(cost: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`hungarian_match` for one `[N, M]` matrix."""
  n, m = cost.shape
  if n <= m:
    return jnp.arange(n, dtype=jnp.int32), _lsap_wide(cost)
  rows_of_cols = _lsap_wide(cost.T)  # [M]: row assigned to each column
  order = jnp.argsort(rows_of_cols)
  return rows_of_cols[order].astype(jnp.int32), order.astype(jnp.int32)


def hungarian_match(cost: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Minimum-cost linear sum assignment, like `scipy.optimize.linear_sum_assignment`, inside jit.

  Args:
    cost: `[..., N, M]` finite costs (float or int; ints are solved in float32, exact below 2**24). Leading
      dimensions are batch dimensions. Non-finite entries raise ValueError when called eagerly (under jit they
      are the caller's responsibility).

  Returns:
    `(rows, cols)`, each int32 `[..., min(N, M)]`: row `rows[k]` is assigned column `cols[k]`; rows ascending.
    The total `cost[rows, cols].sum()` is the optimum (ties may pick a different optimal assignment than scipy).
  """
  cost = jnp.asarray(cost)
  if cost.ndim < 2:
    raise ValueError(f'hungarian_match: cost must have shape [..., N, M], got shape {cost.shape}.')
  if not jnp.issubdtype(cost.dtype, jnp.floating):
    cost = cost.astype(jnp.float32)
  if not isinstance(cost, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(cost))):
    raise ValueError('hungarian_match: cost has inf/nan entries; use a large finite penalty instead.')
  n, m = cost.shape[-2:]
  if min(n, m) == 0:
    empty = jnp.zeros(cost.shape[:-2] + (0,), jnp.int32)
    return empty, empty
  batch_shape = cost.shape[:-2]
  flat = cost.reshape((-1, n, m))
  rows, cols = jax.vmap(_hungarian_single)(flat)
  return rows.reshape(batch_shape + (-1,)), cols.reshape(batch_shape + (-1,))


# ----------------------------------------------------------------------------------------------------------------
# SimOTA dynamic-k (IDOL).
# ----------------------------------------------------------------------------------------------------------------

# Penalty IDOL adds to already-matched queries while unmatched gts pick their argmin query.
_MATCHED_QUERY_PENALTY = 100000.0


class SimOTAResult(NamedTuple):
  """Output of `simota_assign` (Q queries, G gt slots).

  Attributes:
    matching: bool `[Q, G]`, IDOL's final `matching_matrix` (one-to-many per gt).
    query_gt: int32 `[Q]`, the gt each selected query is trained towards (the first gt of its row, as IDOL's
      `matching_matrix[selected].max(1)[1]`), −1 for unselected queries.
    matched_query: int32 `[G]`, the cheapest query among each gt's matches (IDOL's `matched_ids`: the key-frame
      query whose embedding anchors the contrastive loss); −1 for padding gts.
  """
  matching: jax.Array
  query_gt: jax.Array
  matched_query: jax.Array


def _stable_ranks(cost: jax.Array) -> jax.Array:
  """`[Q, G]` rank of each query in its column's ascending order (ties: lower query index first)."""
  order = jnp.argsort(cost, axis=0, stable=True)  # [Q, G]
  q, g = cost.shape
  ranks = jnp.zeros((q, g), jnp.int32)
  return ranks.at[order, jnp.arange(g)[None, :]].set(jnp.arange(q, dtype=jnp.int32)[:, None])


def simota_assign(cost: jax.Array, ious: jax.Array, gt_valid: jax.Array, candidate_k: int = 10) -> SimOTAResult:
  """IDOL's SimOTA dynamic-k assignment of Q queries to G (padded) gts, with static shapes.

  The steps and their order follow `dynamic_k_matching` of the official code:

  1. `k_g = max(1, int(sum of the top-candidate_k IoUs of gt g over queries))`.
  2. Each gt claims its `k_g` lowest-cost queries.
  3. A query claimed by more than one gt is re-assigned to the single gt with the lowest cost in its **whole** row
     (over all valid gts, not only the claimants).
  4. While some gt has no query: every matched query's cost row gets +1e5 (cumulatively), each unmatched gt takes
     its argmin query; if that creates a doubly-claimed row, the rows found doubly-claimed in step 3 (the official
     code reuses that stale mask) are reset to their row argmin again. Two unmatched gts may thus share one query;
     it is then trained towards the first of them (`query_gt`), as in the official code.
  5. `matched_query[g]` is the argmin of the (step-4-penalised) cost over gt g's matched queries.

  Ties in step 2 are broken towards the lower query index (torch.topk leaves them unspecified).

  Args:
    cost: `[Q, G]` float matching cost (lower is better); finite.
    ious: `[Q, G]` IoU between each query box and each gt box, in [0, 1].
    gt_valid: bool `[G]`; padding gts get no query and do not affect the others.
    candidate_k: how many top IoUs per gt sum to `k_g` (10 for IDOL's matcher and positives, 100 for negatives);
      clamped to Q.

  Returns:
    A `SimOTAResult`.
  """
  cost = jnp.asarray(cost)
  if cost.ndim != 2 or ious.shape != cost.shape or gt_valid.shape != cost.shape[1:]:
    raise ValueError(f'simota_assign: expected cost/ious [Q, G] and gt_valid [G], got {cost.shape}, '
                     f'{ious.shape}, {gt_valid.shape}.')
  num_q, num_g = cost.shape
  gt_valid = gt_valid.astype(bool)
  inf = jnp.asarray(jnp.inf, cost.dtype)
  k_top = min(candidate_k, num_q)

  # 1. Dynamic k per gt.
  topk_ious = jax.lax.top_k(ious.T, k_top)[0]  # [G, k]
  dynamic_k = jnp.maximum(jnp.sum(topk_ious, axis=1).astype(jnp.int32), 1)
  dynamic_k = jnp.where(gt_valid, dynamic_k, 0)

  # 2. Each gt claims its k lowest-cost queries.
  matching = _stable_ranks(cost) < dynamic_k[None, :]  # [Q, G]

  def row_argmin_onehot(c):
    best = jnp.argmin(jnp.where(gt_valid[None, :], c, inf), axis=1)  # [Q]
    return jax.nn.one_hot(best, num_g, dtype=bool)

  # 3. A query claimed by several gts keeps the cheapest gt of its row.
  multi = jnp.sum(matching, axis=1) > 1  # [Q]; kept stale, as in the official loop below
  matching = jnp.where(multi[:, None], row_argmin_onehot(cost), matching)

  # 4. Gts left with nothing take their argmin query (matched queries penalised).
  def unmatched_gts(m):
    return gt_valid & (jnp.sum(m, axis=0) == 0)

  def loop_cond(state):
    m, _, it = state
    return jnp.any(unmatched_gts(m)) & (it < num_g + 2)

  def loop_body(state):
    m, c, it = state
    c = c + jnp.where(jnp.any(m, axis=1), _MATCHED_QUERY_PENALTY, 0.).astype(c.dtype)[:, None]
    need = unmatched_gts(m)
    pick = jnp.argmin(c, axis=0)  # [G]
    m = m | (jax.nn.one_hot(pick, num_q, dtype=bool).T & need[None, :])
    has_double = jnp.any(jnp.sum(m, axis=1) > 1)
    reset = jnp.where(multi[:, None], row_argmin_onehot(c), m)
    m = jnp.where(has_double, reset, m)
    return m, c, it + 1

  matching, cost_final, _ = jax.lax.while_loop(loop_cond, loop_body, (matching, cost, jnp.int32(0)))

  selected = jnp.any(matching, axis=1)
  query_gt = jnp.where(selected, jnp.argmax(matching, axis=1), -1).astype(jnp.int32)
  # 5. The cheapest matched query per gt.
  matched_query = jnp.argmin(jnp.where(matching, cost_final, inf), axis=0)
  matched_query = jnp.where(gt_valid, matched_query, -1).astype(jnp.int32)
  return SimOTAResult(matching=matching, query_gt=query_gt, matched_query=matched_query)
