"""Multi-scale deformable attention module (Deformable-DETR `MSDeformAttn`, as vendored by IDOL), in Flax NNX.

Submodule names match Deformable-DETR's `models/ops/modules/ms_deform_attn.py` (`value_proj`,
`sampling_offsets`, `attention_weights`, `output_proj`), so checkpoints port by name; NNX kernels are `[in, out]`,
i.e. the transpose of torch's `weight`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pallas_kernels import msda
from pallas_kernels.msda import common


def sampling_offsets_bias(n_heads: int, n_levels: int, n_points: int) -> np.ndarray:
  """The official `sampling_offsets.bias` init, flattened `[M * L * P * 2]`.

  Head m points in direction theta_m = 2 pi m / M, normalised onto the unit square ((cos, sin) divided by
  max(|cos|, |sin|)); point p is that direction scaled by p + 1; identical across levels. Layout (M, L, P, xy).
  """
  thetas = np.arange(n_heads, dtype=np.float64) * (2.0 * math.pi / n_heads)
  grid = np.stack([np.cos(thetas), np.sin(thetas)], -1)
  grid = grid / np.abs(grid).max(-1, keepdims=True)
  scale = np.arange(1, n_points + 1, dtype=np.float64)[None, None, :, None]
  grid = np.broadcast_to(grid[:, None, None, :], (n_heads, n_levels, n_points, 2)) * scale
  return grid.reshape(-1).astype(np.float32)


class MSDeformAttn(nnx.Module):
  """Multi-scale deformable attention.

  Attributes:
    d_model: channels C of queries, values and output.
    n_levels: feature levels L.
    n_heads: heads M (C must be divisible by M).
    n_points: sampling points P per head and level.
    implementation: passed to `pallas_kernels.msda.ms_deform_attn` (None picks the best for the backend).
  """

  def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4, *,
               implementation: str | None = None, dtype=None, param_dtype=jnp.float32, rngs: nnx.Rngs):
    if d_model % n_heads:
      raise ValueError(f'MSDeformAttn: d_model ({d_model}) must be divisible by n_heads ({n_heads}).')
    self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
    self.implementation = implementation
    grid = sampling_offsets_bias(n_heads, n_levels, n_points)
    linear = lambda i, o, **kw: nnx.Linear(i, o, dtype=dtype, param_dtype=param_dtype, rngs=rngs, **kw)
    self.sampling_offsets = linear(
        d_model, n_heads * n_levels * n_points * 2, kernel_init=nnx.initializers.zeros_init(),
        bias_init=lambda key, shape, dtype=jnp.float32: jnp.asarray(grid, dtype).reshape(shape))
    self.attention_weights = linear(d_model, n_heads * n_levels * n_points,
                                    kernel_init=nnx.initializers.zeros_init(), bias_init=nnx.initializers.zeros_init())
    self.value_proj = linear(d_model, d_model, kernel_init=nnx.initializers.xavier_uniform(),
                             bias_init=nnx.initializers.zeros_init())
    self.output_proj = linear(d_model, d_model, kernel_init=nnx.initializers.xavier_uniform(),
                              bias_init=nnx.initializers.zeros_init())

  def __call__(self, query: jax.Array, reference_points: jax.Array, input_flatten: jax.Array, spatial_shapes,
               input_padding_mask: jax.Array | None = None, *, return_sampling: bool = False):
    """Attends from each query to P points per head and level around its reference point.

    Args:
      query: `[B, Q, C]`.
      reference_points: `[B, Q, L, 2]` (x, y) in [0, 1] of the padded maps, or `[B, Q, L, 4]` boxes
        (cx, cy, w, h) whose size scales the offsets.
      input_flatten: `[B, S, C]`, levels flattened level-major (S = sum_l H_l * W_l).
      spatial_shapes: static tuple of `(H_l, W_l)`.
      input_padding_mask: `[B, S]` bool, True at padded tokens (their values are zeroed), or None.
      return_sampling: also return the float32 sampling locations `[B, Q, M, L, P, 2]` and attention weights
        `[B, Q, M, L, P]` (IDOL's copy of the module returns them).

    Returns:
      `[B, Q, C]`, or `(output, sampling_locations, attention_weights)` if `return_sampling`.
    """
    shapes = common.normalize_spatial_shapes(spatial_shapes)
    b, q, _ = query.shape
    m, lvl, p = self.n_heads, self.n_levels, self.n_points
    if len(shapes) != lvl:
      raise ValueError(f'MSDeformAttn: spatial_shapes has {len(shapes)} levels, the module has n_levels={lvl}.')
    s = input_flatten.shape[1]
    if sum(h * w for h, w in shapes) != s:
      raise ValueError(f'MSDeformAttn: input_flatten has S={s} tokens, spatial_shapes {shapes} sum to '
                       f'{sum(h * w for h, w in shapes)}.')
    if reference_points.shape[:3] != (b, q, lvl) or reference_points.shape[-1] not in (2, 4):
      raise ValueError(f'MSDeformAttn: reference_points must be [B, Q, L, 2] or [B, Q, L, 4] = '
                       f'[{b}, {q}, {lvl}, 2|4], got {reference_points.shape}.')

    value = self.value_proj(input_flatten)
    if input_padding_mask is not None:
      if input_padding_mask.shape != (b, s):
        raise ValueError(f'MSDeformAttn: input_padding_mask must be [B, S] = {(b, s)}, '
                         f'got {input_padding_mask.shape}.')
      value = jnp.where(input_padding_mask[..., None], jnp.zeros((), value.dtype), value)
    value = value.reshape(b, s, m, self.d_model // m)

    # Locations and weights stay float32 even with a bfloat16 compute dtype: a bfloat16 location is off by up to
    # ~0.4 pixel on a 144-wide map.
    offsets = self.sampling_offsets(query).astype(jnp.float32).reshape(b, q, m, lvl, p, 2)
    weights = self.attention_weights(query).astype(jnp.float32).reshape(b, q, m, lvl * p)
    weights = jax.nn.softmax(weights, axis=-1).reshape(b, q, m, lvl, p)

    ref = reference_points.astype(jnp.float32)[:, :, None, :, None, :]
    if reference_points.shape[-1] == 2:
      wh = jnp.asarray([(w, h) for h, w in shapes], jnp.float32)
      locations = ref + offsets / wh[:, None, :]
    else:
      locations = ref[..., :2] + offsets / p * ref[..., 2:] * 0.5

    out = msda.ms_deform_attn(value, shapes, locations, weights, implementation=self.implementation)
    out = self.output_proj(out)
    if return_sampling:
      return out, locations, weights
    return out
