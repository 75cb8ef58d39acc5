"""Shape checks and static level tables shared by every MSDA implementation.

Notation used throughout `pallas_kernels.msda`:
  B batch, S = sum_l H_l * W_l value tokens (levels flattened level-major, row-major inside a level),
  M heads, D channels per head, Q queries, L levels, P points per level.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

SpatialShapes = tuple[tuple[int, int], ...]


def normalize_spatial_shapes(spatial_shapes) -> SpatialShapes:
  """Returns `spatial_shapes` as a hashable tuple of `(H_l, W_l)` python ints.

  Args:
    spatial_shapes: a sequence of `(H_l, W_l)` pairs, or a concrete `[L, 2]` integer array. It must be static
      (known at trace time): the kernels are specialised to it.

  Raises:
    TypeError: if it is a traced value.
    ValueError: if it is not `L` pairs of positive integers.
  """
  if isinstance(spatial_shapes, jax.core.Tracer):
    raise TypeError('ms_deform_attn: spatial_shapes must be static (a tuple of (H_l, W_l)), got a traced array.')
  shapes = np.asarray(spatial_shapes)
  if shapes.ndim != 2 or shapes.shape[1] != 2 or shapes.shape[0] < 1:
    raise ValueError(f'ms_deform_attn: spatial_shapes must be L >= 1 pairs (H_l, W_l), got shape {shapes.shape}.')
  if not np.issubdtype(shapes.dtype, np.integer) or (shapes < 1).any():
    raise ValueError(f'ms_deform_attn: spatial_shapes must be positive integers, got {spatial_shapes!r}.')
  return tuple((int(h), int(w)) for h, w in shapes)


def level_starts(spatial_shapes: SpatialShapes) -> tuple[int, ...]:
  """Offsets of each level in the flattened `S` axis (`level_start_index` in Deformable-DETR)."""
  starts, total = [], 0
  for h, w in spatial_shapes:
    starts.append(total)
    total += h * w
  return tuple(starts)


def check_inputs(value: jax.Array, spatial_shapes: SpatialShapes, sampling_locations: jax.Array,
                 attention_weights: jax.Array) -> tuple[int, ...]:
  """Validates shapes and dtypes; returns `(B, S, M, D, Q, L, P)`.

  Raises:
    ValueError: naming the offending argument and its shape.
  """
  if value.ndim != 4:
    raise ValueError(f'ms_deform_attn: value must be [B, S, M, D], got shape {value.shape}.')
  b, s, m, d = value.shape
  num_levels = len(spatial_shapes)
  expected_s = sum(h * w for h, w in spatial_shapes)
  if s != expected_s:
    raise ValueError(f'ms_deform_attn: value has S={s} tokens but spatial_shapes {spatial_shapes} sum to {expected_s}.')
  if sampling_locations.ndim != 6 or sampling_locations.shape[-1] != 2:
    raise ValueError('ms_deform_attn: sampling_locations must be [B, Q, M, L, P, 2], got shape '
                     f'{sampling_locations.shape}.')
  _, q, _, lvl, p, _ = sampling_locations.shape
  if (sampling_locations.shape[0], sampling_locations.shape[2], lvl) != (b, m, num_levels):
    raise ValueError(f'ms_deform_attn: sampling_locations shape {sampling_locations.shape} does not match '
                     f'B={b}, M={m}, L={num_levels} from value {value.shape} and spatial_shapes.')
  if attention_weights.shape != (b, q, m, num_levels, p):
    raise ValueError(f'ms_deform_attn: attention_weights must be [B, Q, M, L, P] = {(b, q, m, num_levels, p)}, '
                     f'got {attention_weights.shape}.')
  for name, x in (('value', value), ('sampling_locations', sampling_locations),
                  ('attention_weights', attention_weights)):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f'ms_deform_attn: {name} must be floating point, got {x.dtype}.')
  return b, s, m, d, q, num_levels, p


def level_constants(spatial_shapes: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
  """Per-level `(W_l, H_l)` as float32 `[L, 2]` and as int32 `[L, 2]` numpy constants (x first, like locations)."""
  wh = np.array([(w, h) for h, w in spatial_shapes], np.int32)
  return wh.astype(np.float32), wh


def accumulation_dtype(*arrays: jax.Array):
  """float32, or float64 when any input is float64 (gradient checks under x64)."""
  return jnp.result_type(jnp.float32, *(x.dtype for x in arrays))


def bilinear_corners(px, py, w, h):
  """The 4 bilinear corners of pixel coordinates `(px, py)` on a `h x w` map (arrays broadcast together).

  Returns a list of `(pos, valid, wx, wy, sx, sy)`: flat in-map position (clipped), in-map flag, the x and y
  bilinear factors, and the signs of d(factor)/d(px) and d(factor)/d(py).
  """
  wf, hf = (jnp.asarray(w).astype(px.dtype), jnp.asarray(h).astype(px.dtype))
  px = jnp.clip(px, -2.0, wf)  # Keeps floor() and the int cast finite; clipped samples are all-outside anyway.
  py = jnp.clip(py, -2.0, hf)
  x0f, y0f = jnp.floor(px), jnp.floor(py)
  fx, fy = px - x0f, py - y0f
  x0, y0 = x0f.astype(jnp.int32), y0f.astype(jnp.int32)
  corners = []
  for dy in (0, 1):
    for dx in (0, 1):
      xi, yi = x0 + dx, y0 + dy
      valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
      pos = jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)
      wx = fx if dx else 1.0 - fx
      wy = fy if dy else 1.0 - fy
      corners.append((pos, valid, wx, wy, 1.0 if dx else -1.0, 1.0 if dy else -1.0))
  return corners


def per_sample_levels(spatial_shapes: SpatialShapes, points: int) -> tuple[tuple[int, ...], ...]:
  """`(W, H, level_start)` of each of the `K = L * P` samples (level-major), as python int tuples."""
  starts = level_starts(spatial_shapes)
  return (tuple(w for _, w in spatial_shapes for _ in range(points)),
          tuple(h for h, _ in spatial_shapes for _ in range(points)),
          tuple(st for st in starts for _ in range(points)))


def pixel_coordinates(spatial_shapes: SpatialShapes, sampling_locations: jax.Array,
                      dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """Pixel coordinates `(px, py)`, each `[B, Q, M, K]` in `dtype`: `loc * (W_l, H_l) - 0.5` (grid_sample's)."""
  b, q, m, num_levels, p, _ = sampling_locations.shape
  wh_f, _ = level_constants(spatial_shapes)
  pix = sampling_locations.astype(dtype) * jnp.asarray(wh_f, dtype)[:, None, :] - 0.5
  return pix[..., 0].reshape(b, q, m, num_levels * p), pix[..., 1].reshape(b, q, m, num_levels * p)
