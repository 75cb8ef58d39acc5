"""SOLO-style grid target assignment (VISOLO `DataUtils.getGridClassAndMask`), in-graph with static shapes.

For every frame, each non-empty instance mask claims the grid cells of its centre region: with the mask's centre
of mass `(cy, cx)` and extent `(h, w)`, the cells `floor((cy -+ eps * h / 2) / cell_h)` (rows, clipped to the grid)
by `floor((cx -+ eps * w / 2) / cell_w)` (columns), `cell_h = H / S1`, `cell_w = W / S2`. A cell claimed by several
instances goes to the one whose centre of mass is nearest to the cell centre; ties keep the lower instance index
(the official loop visits instances in order and replaces the owner only when strictly nearer).

Official quirk kept: the extent is `max index + 1`, not `max - min + 1` (the official `amin` runs over the whole
map of `mask * index`, which is 0), so the region grows toward the bottom right for masks far from the origin.
All arithmetic is float32 as in the official code.
"""

import jax
import jax.numpy as jnp
import numpy as np


def mask_center_and_extent(masks: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`masks [..., H, W]` (0/1) -> centre y, centre x, extent h, extent w, each `[...]` float32 (official
  `getMaskCenterAndSize`: extent = last row / column index + 1; centre 0 for an empty mask)."""
  h, w = masks.shape[-2:]
  m = masks.astype(jnp.float32)
  ys = jnp.arange(h, dtype=jnp.float32)
  xs = jnp.arange(w, dtype=jnp.float32)
  area = jnp.maximum(m.sum(axis=(-2, -1)), 1e-6)
  rows = m.sum(axis=-1)  # [..., H]
  cols = m.sum(axis=-2)  # [..., W]
  center_y = (rows * ys).sum(axis=-1) / area
  center_x = (cols * xs).sum(axis=-1) / area
  extent_h = jnp.max(jnp.where(rows > 0, ys, 0.), axis=-1) + 1.
  extent_w = jnp.max(jnp.where(cols > 0, xs, 0.), axis=-1) + 1.
  return center_y, center_x, extent_h, extent_w


def assign_cells(masks: jax.Array, *, grid: tuple[int, int], eps: float = 0.2) -> jax.Array:
  """Owner instance of every grid cell of one frame.

  Args:
    masks: `[N, H, W]` 0/1 instance masks of one frame (all-zero for absent / padding instances).
    grid: `(S1, S2)` rows and columns of the grid.
    eps: centre-region scale (`INPUT.SAMPLING_EPS`).

  Returns:
    int32 `[S1 * S2]` (row-major cells): the owning instance index, -1 where no instance claims the cell.
  """
  s1, s2 = grid
  h, w = masks.shape[-2:]
  cell_h, cell_w = np.float32(h * 1. / s1), np.float32(w * 1. / s2)
  cy, cx, eh, ew = mask_center_and_extent(masks)
  dy, dx = eh * np.float32(eps), ew * np.float32(eps)
  start_y = jnp.maximum(jnp.floor((cy - dy / 2) / cell_h), 0.)
  end_y = jnp.minimum(jnp.floor((cy + dy / 2) / cell_h), s1 - 1.)
  start_x = jnp.maximum(jnp.floor((cx - dx / 2) / cell_w), 0.)
  end_x = jnp.minimum(jnp.floor((cx + dx / 2) / cell_w), s2 - 1.)
  rows = jnp.arange(s1, dtype=jnp.float32)
  cols = jnp.arange(s2, dtype=jnp.float32)
  nonempty = masks.reshape(masks.shape[0], -1).sum(axis=-1) > 0
  in_rows = (rows[None] >= start_y[:, None]) & (rows[None] <= end_y[:, None])  # [N, S1]
  in_cols = (cols[None] >= start_x[:, None]) & (cols[None] <= end_x[:, None])  # [N, S2]
  claims = nonempty[:, None, None] & in_rows[:, :, None] & in_cols[:, None, :]  # [N, S1, S2]
  # Cell centres as the official python-float arithmetic, then float32.
  grid_y = jnp.asarray(np.float32(np.float64(cell_h) * np.arange(s1) + np.float64(cell_h) / 2))
  grid_x = jnp.asarray(np.float32(np.float64(cell_w) * np.arange(s2) + np.float64(cell_w) / 2))
  dist = (grid_y[None, :, None] - cy[:, None, None])**2 + (grid_x[None, None, :] - cx[:, None, None])**2
  dist = jnp.where(claims, dist, jnp.inf)
  owner = jnp.argmin(dist, axis=0).astype(jnp.int32)  # first index on ties
  return jnp.where(claims.any(axis=0), owner, -1).reshape(s1 * s2)


def category_targets(owner: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """`owner [..., S]` (from `assign_cells`), `labels [N]` -> one-hot float32 `[..., S, num_classes]` (0 rows for
  unclaimed cells)."""
  cls = jnp.where(owner >= 0, jnp.take(labels, jnp.maximum(owner, 0)), -1)
  return jax.nn.one_hot(cls, num_classes, dtype=jnp.float32)


def matching_targets(owner_a: jax.Array, owner_b: jax.Array) -> jax.Array:
  """`[S]`, `[S]` -> float32 `[S, S]`: 1 where cell i of frame a and cell j of frame b belong to the same
  instance (VISOLO `grid_id_matching`)."""
  return ((owner_a[:, None] == owner_b[None, :]) & (owner_a[:, None] >= 0)).astype(jnp.float32)
