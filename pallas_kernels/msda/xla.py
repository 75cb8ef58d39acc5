"""XLA multi-scale deformable attention: the reference semantics and the CPU/TPU default.

Bilinear sampling is exactly `torch.nn.functional.grid_sample(mode='bilinear', padding_mode='zeros',
align_corners=False)` per level: pixel = loc * W_l - 0.5, and corners outside the map contribute 0.

Formulation (picked by measurement, see benchmarks/RESULTS.md `## MSDA`):
  * Every level of `value` is zero-padded by one pixel and its four bilinear corners are packed next to each other
    on the channel axis, giving one table `[B, T, M, 4*D]` over all levels, `T = sum_l (H_l + 1) * (W_l + 1)`
    (as scenic does). A sample then needs a single row gather of `4*D` channels at the cell of its top-left
    corner; a sample whose cell lies outside the padded map gets weight 0 (all its corners are outside).
  * All levels are handled by one gather with static per-level constants (no per-level Python work per call
    beyond building the table), and the corner/attention weights are folded into one `[..., L*P*4]` weight, so
    the output is one batched dot `[.., L*P*4] x [.., L*P*4, D]` after a single gather.
  * The gather + reduce is wrapped in `jax.checkpoint`, so reverse mode stores only the table, the indices and the
    weights (never the `[B, Q, M, L*P, 4*D]` gathered tensor) and recomputes the gather in the backward pass.
    The value gradient is XLA's scatter-add transpose of the gather, deterministic on CPU and TPU. (On GPU, XLA
    scatter-add is deterministic only with `--xla_gpu_deterministic_ops=true`; the Pallas path has its own
    deterministic option.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.msda import common


def packed_corner_table(value: jax.Array, spatial_shapes: common.SpatialShapes) -> jax.Array:
  """Packs the 4 bilinear corners of every padded-map cell next to each other.

  Args:
    value: `[B, S, M, D]`.
    spatial_shapes: static `((H_l, W_l), ...)`.

  Returns:
    `[B, T, M, 4 * D]` with `T = sum_l (H_l + 1) * (W_l + 1)`; row `(y + 1) * (W_l + 1) + (x + 1)` of level l
    holds the pixels `(y, x), (y, x + 1), (y + 1, x), (y + 1, x + 1)` (zeros outside the map), for
    `y in [-1, H_l - 1]`, `x in [-1, W_l - 1]`.
  """
  b, _, m, d = value.shape
  parts = []
  for (h, w), start in zip(spatial_shapes, common.level_starts(spatial_shapes)):
    v = value[:, start:start + h * w].reshape(b, h, w, m, d)
    v = jnp.pad(v, ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0)))
    v = jnp.concatenate([v[:, :-1, :-1], v[:, :-1, 1:], v[:, 1:, :-1], v[:, 1:, 1:]], axis=-1)
    parts.append(v.reshape(b, (h + 1) * (w + 1), m, 4 * d))
  return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def cell_indices_and_weights(spatial_shapes: common.SpatialShapes, sampling_locations: jax.Array,
                             attention_weights: jax.Array, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Rows of the packed table and the combined corner weights of every sample.

  Args:
    spatial_shapes: static `((H_l, W_l), ...)`.
    sampling_locations: `[B, Q, M, L, P, 2]`, (x, y) normalised to the map.
    attention_weights: `[B, Q, M, L, P]`.
    dtype: compute dtype of the weights (float32, or float64 under x64).

  Returns:
    `cell [B, Q, M, L, P]` int32 row in `[0, T)` of the packed table (level offset included), and
    `weights [B, Q, M, L, P, 4]` in `dtype`: attention weight times the bilinear weight of each corner, in the
    table's corner order, 0 for samples that touch no pixel of the map.
  """
  wh_f, wh_i = common.level_constants(spatial_shapes)
  cells_per_level = (wh_i[:, 0] + 1) * (wh_i[:, 1] + 1)
  level_offset = np.concatenate([[0], np.cumsum(cells_per_level)[:-1]]).astype(np.int32)

  wh_f = wh_f.astype(dtype)
  pix = sampling_locations.astype(dtype) * wh_f[:, None, :] - 0.5
  # Clip before the cast so huge or infinite locations cannot overflow int32; clipped ones are invalid anyway.
  corner = jnp.clip(jnp.floor(pix), -2.0, wh_f[:, None, :])
  frac = pix - corner
  corner = corner.astype(jnp.int32)
  inside = jnp.all((corner >= -1) & (corner <= wh_i[:, None, :] - 1), axis=-1)
  cell_xy = jnp.clip(corner + 1, 0, wh_i[:, None, :])
  cell = level_offset[:, None] + cell_xy[..., 1] * (wh_i[:, None, 0] + 1) + cell_xy[..., 0]

  fx, fy = frac[..., 0], frac[..., 1]
  bilinear = jnp.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], axis=-1)
  # `where`, not a multiply by 0, so non-finite locations give 0 rather than NaN.
  weights = jnp.where(inside[..., None], bilinear * attention_weights.astype(dtype)[..., None], 0.0)
  return cell, weights


@functools.partial(jax.checkpoint, prevent_cse=False)
def _gather_reduce(table: jax.Array, cell: jax.Array, weights: jax.Array) -> jax.Array:
  """`out[b, q, m] = sum_{l, p, c} weights[b, q, m, l, p, c] * table[b, cell[b, q, m, l, p], m, c]`.

  Args:
    table: `[B, T, M, 4 * D]`.
    cell: `[B, Q, M, L, P]` int32.
    weights: `[B, Q, M, L, P, 4]`, the accumulation dtype (float32, or float64 under x64).

  Returns:
    `[B, Q, M, D]` in `weights.dtype`.
  """
  b, t, m, d4 = table.shape
  _, q, _, num_levels, p = cell.shape
  # One flat row index so XLA emits a plain 1-d row gather: row = (b * T + cell) * M + m.
  rows = ((jnp.arange(b, dtype=jnp.int32)[:, None, None, None, None] * t + cell) * m
          + jnp.arange(m, dtype=jnp.int32)[None, None, :, None, None])
  gathered = jnp.take(table.reshape(b * t * m, d4), rows, axis=0, mode='clip', unique_indices=False,
                      indices_are_sorted=False)
  gathered = gathered.reshape(b, q, m, num_levels * p * 4, d4 // 4).astype(weights.dtype)
  # A batched dot, not multiply + reduce: on CPU the fused reduce over a non-minor axis was 5-8x slower.
  # HIGHEST keeps the float32 accumulation on TPU, whose default matmul precision is bfloat16.
  return jnp.einsum('bqmkd,bqmk->bqmd', gathered, weights.reshape(b, q, m, num_levels * p * 4),
                    precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnums=1)
def ms_deform_attn_xla(value: jax.Array, spatial_shapes: common.SpatialShapes, sampling_locations: jax.Array,
                       attention_weights: jax.Array) -> jax.Array:
  """Multi-scale deformable attention in plain XLA.

  Args:
    value: `[B, S, M, D]`, levels flattened level-major.
    spatial_shapes: static `((H_l, W_l), ...)`.
    sampling_locations: `[B, Q, M, L, P, 2]`, (x, y) in [0, 1] of each padded map (any value allowed).
    attention_weights: `[B, Q, M, L, P]`.

  Returns:
    `[B, Q, M * D]` in `value.dtype`, accumulated in float32.
  """
  b, _, m, d, q, _, _ = common.check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
  table = packed_corner_table(value, spatial_shapes)
  cell, weights = cell_indices_and_weights(spatial_shapes, sampling_locations, attention_weights,
                                           common.accumulation_dtype(value, sampling_locations, attention_weights))
  out = _gather_reduce(table, cell, weights)
  return out.reshape(b, q, m * d).astype(value.dtype)
