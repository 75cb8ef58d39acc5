"""XLA multi-scale deformable attention: the reference semantics and the CPU/TPU default.

Bilinear sampling is exactly `torch.nn.functional.grid_sample(mode='bilinear', padding_mode='zeros',
align_corners=False)` per level: pixel = loc * W_l - 0.5, and corners outside the map contribute 0.

Formulations (compared on CPU by benchmarks/msda_xla_variants.py, numbers in benchmarks/RESULTS.md `## MSDA`):
  * four-corner (default): each sample reads its 4 corner rows of `D` channels straight from `value`. In the
    forward pass the 4 gathers fuse with the bilinear sum into one loop, so only the `[B, Q, M, L*P, D]` samples
    are materialised before a batched dot with the attention weights (3-4x faster than gathering the corners
    first, and faster than torch's grid_sample formulation). Its derivative (a `custom_jvp`) is that of the
    gather-then-dot form of the same function, whose transpose is a batched dot plus one scatter-add;
    differentiating the fused form instead let XLA fuse gathers into reductions, ~8x slower on CPU.
  * packed (scenic's): every level is zero-padded by one pixel and the 4 corners of each cell are packed on the
    channel axis, one table `[B, T, M, 4*D]`, `T = sum_l (H_l + 1) * (W_l + 1)`; a sample is one row gather of
    `4*D` channels (on TPU this puts 128 channels on the lanes), then a batched dot over `L*P*4` weights. The
    table costs O(S) to build; on CPU packed was never faster (equal on the IDOL encoder shape, 7x slower on
    the decoder shape), so it is only chosen on TPU for dense sampling (`Q * L * P >= 4 * S`), following
    scenic's TPU finding; that choice is not measured here.
  Both handle all levels in one gather with static per-level constants (no per-level work per call beyond
  building the packed table) and accumulate in float32 (float64 under x64).

Reverse mode saves only `value` (or the table), row indices and per-sample weights, never the gathered
`[.., D]` tensors: the gathers are rematerialised in the backward pass (`jax.checkpoint`). The value gradient is
XLA's scatter-add transpose of the gather, deterministic on CPU and TPU (on GPU only with
`--xla_gpu_deterministic_ops=true`; the Pallas GPU path has its own `deterministic` option).
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


@jax.checkpoint
def _gather_weighted_sum(table: jax.Array, rows: jax.Array, weights: jax.Array) -> jax.Array:
  """`out[b, q, m] = sum_j weights[b, q, m, j] * corner_j`, the corners read by one row gather.

  Args:
    table: `[N, C]` rows of `C = c * D` channels (`c` corners packed per row: 4 or 1).
    rows: `[B, Q, M, R]` int32 rows of `table`.
    weights: `[B, Q, M, J]` with `J = R * c`, in the accumulation dtype.

  Returns:
    `[B, Q, M, D]` in `weights.dtype`.
  """
  b, q, m, r = rows.shape
  j = weights.shape[-1]
  d = r * table.shape[1] // j
  gathered = jnp.take(table, rows, axis=0, mode='clip', unique_indices=False, indices_are_sorted=False)
  gathered = gathered.reshape(b, q, m, j, d).astype(weights.dtype)
  # A batched dot, not multiply + reduce: on CPU the fused reduce over a non-minor axis was 5-8x slower.
  # HIGHEST keeps the float32 accumulation on TPU, whose default matmul precision is bfloat16.
  return jnp.einsum('bqmjd,bqmj->bqmd', gathered, weights, precision=jax.lax.Precision.HIGHEST)


def _packed(value, spatial_shapes, sampling_locations, attention_weights, dtype):
  b, _, m, d = value.shape
  table = packed_corner_table(value, spatial_shapes)
  t = table.shape[1]
  cell, weights = cell_indices_and_weights(spatial_shapes, sampling_locations, attention_weights, dtype)
  rows = ((jnp.arange(b, dtype=jnp.int32)[:, None, None, None, None] * t + cell) * m
          + jnp.arange(m, dtype=jnp.int32)[None, None, :, None, None])
  return _gather_weighted_sum(table.reshape(b * t * m, 4 * d), rows.reshape(*rows.shape[:3], -1),
                              weights.reshape(*weights.shape[:3], -1))


@jax.custom_jvp
def _attend_corners(table: jax.Array, rows: jax.Array, corner_weights: jax.Array,
                    attention_weights: jax.Array) -> jax.Array:
  """`out[b, q, m] = sum_k attention[k] * sum_c corner_weights[k, c] * table[rows[k, c]]`.

  Args:
    table: `[N, D]` value rows.
    rows: `[B, Q, M, K, 4]` int32 rows of the 4 corners of each sample.
    corner_weights: `[B, Q, M, K, 4]` bilinear weights (0 for out-of-map corners), accumulation dtype.
    attention_weights: `[B, Q, M, K]`, accumulation dtype.

  Returns:
    `[B, Q, M, D]` in the accumulation dtype.
  """
  # The four gathers fuse with their bilinear sum, so only the `[B, Q, M, K, D]` samples are materialised
  # (4x less than gathering the corners first: 3-4x faster forward on CPU).
  sampled = sum(corner_weights[..., c, None] * jnp.take(table, rows[..., c], axis=0, mode='clip')
                .astype(corner_weights.dtype) for c in range(4))
  return jnp.einsum('bqmkd,bqmk->bqmd', sampled, attention_weights, precision=jax.lax.Precision.HIGHEST)


@_attend_corners.defjvp
def _attend_corners_jvp(primals, tangents):
  # Differentiating the fused sum directly makes XLA fuse gathers into reductions, which was ~8x slower on CPU;
  # the tangent (and so, transposed, the gradient) comes from the gather-then-dot form of the same function,
  # whose transpose is a batched dot and one scatter-add, and whose gather is rematerialised.
  table, rows, corner_weights, attention_weights = primals
  table_dot, _, corner_weights_dot, attention_weights_dot = tangents
  flat_rows = rows.reshape(*rows.shape[:3], -1)

  def gather_then_dot(t, cw, aw):
    return _gather_weighted_sum(t, flat_rows, (cw * aw[..., None]).reshape(flat_rows.shape))

  _, out_dot = jax.jvp(gather_then_dot, (table, corner_weights, attention_weights),
                       (table_dot, corner_weights_dot, attention_weights_dot))
  return _attend_corners(table, rows, corner_weights, attention_weights), out_dot


def _four_corner(value, spatial_shapes, sampling_locations, attention_weights, dtype):
  b, s, m, d = value.shape
  level_w, level_h, level_start = (np.asarray(x, np.int32)
                                   for x in common.per_sample_levels(spatial_shapes, sampling_locations.shape[4]))
  px, py = common.pixel_coordinates(spatial_shapes, sampling_locations, dtype)
  bi = jnp.arange(b, dtype=jnp.int32)[:, None, None, None]
  mi = jnp.arange(m, dtype=jnp.int32)[None, None, :, None]
  rows, weights = [], []
  for pos, valid, wx, wy, _, _ in common.bilinear_corners(px, py, level_w, level_h):
    rows.append((bi * s + level_start + pos) * m + mi)
    weights.append(jnp.where(valid, wx * wy, 0.0))
  return _attend_corners(value.reshape(b * s * m, d), jnp.stack(rows, -1), jnp.stack(weights, -1),
                         attention_weights.reshape(px.shape).astype(dtype))


def use_packed_table(spatial_shapes: common.SpatialShapes, num_queries: int, points: int,
                     backend: str | None = None) -> bool:
  """Packed on TPU when `Q * L * P >= 4 * S`, four-corner otherwise (see the module docstring)."""
  dense = num_queries * len(spatial_shapes) * points >= 4 * sum(h * w for h, w in spatial_shapes)
  return dense and (backend or jax.default_backend()) == 'tpu'


FORMULATIONS = {'packed': _packed, 'four_corner': _four_corner}


@functools.partial(jax.jit, static_argnums=1, static_argnames='formulation')
def ms_deform_attn_xla(value: jax.Array, spatial_shapes: common.SpatialShapes, sampling_locations: jax.Array,
                       attention_weights: jax.Array, *, formulation: str | None = None) -> jax.Array:
  """Multi-scale deformable attention in plain XLA.

  Args:
    value: `[B, S, M, D]`, levels flattened level-major.
    spatial_shapes: static `((H_l, W_l), ...)`.
    sampling_locations: `[B, Q, M, L, P, 2]`, (x, y) in [0, 1] of each padded map (any value allowed).
    attention_weights: `[B, Q, M, L, P]`.
    formulation: 'packed', 'four_corner', or None to choose by `use_packed_table` (see the module docstring).

  Returns:
    `[B, Q, M * D]` in `value.dtype`, accumulated in float32.
  """
  b, _, m, d, q, _, p = common.check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
  dtype = common.accumulation_dtype(value, sampling_locations, attention_weights)
  if formulation is None:
    formulation = 'packed' if use_packed_table(spatial_shapes, q, p) else 'four_corner'
  if formulation not in FORMULATIONS:
    raise ValueError(f'ms_deform_attn_xla: formulation must be one of {list(FORMULATIONS)} or None, '
                     f'got {formulation!r}.')
  out = FORMULATIONS[formulation](value, spatial_shapes, sampling_locations, attention_weights, dtype)
  return out.reshape(b, q, m * d).astype(value.dtype)
