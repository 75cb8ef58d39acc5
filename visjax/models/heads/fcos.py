"""FCOS building blocks (mmdet 2.11 layout, NHWC), shared by FCOS-style heads (IAI's CondInst head).

  * `Scale`: mmcv `Scale`, one learnable scalar `scale` (a 0-d tensor in the checkpoint) per FPN level.
  * `conv_tower`: `num_convs` x mmcv `ConvModule(3x3, norm GN(32), ReLU)`; the conv has no bias since a norm
    follows; submodules `{i}.conv` / `{i}.norm` (mmcv's `.gn`).
  * `level_points`: mmdet 2.11 `_get_points_single` with the `stride // 2` offset: `(x, y) = index * stride +
    stride // 2`, row-major over the map (numpy constants, built at trace time).
  * `distance2bbox`, `centerness_target`: mmdet's box decoding and FCOS centerness.
"""

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visjax.models.layers.conv import ConvNorm


class Scale(nnx.Module):
  """mmcv `Scale`: `x * scale` with one learnable scalar (torch `scale`, shape `[]`)."""

  def __init__(self, init: float = 1.):
    self.scale = nnx.Param(jnp.asarray(init, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * self.scale.get_value().astype(x.dtype)


def conv_tower(in_channels: int, feat_channels: int, num_convs: int, *, num_groups: int = 32,
               dtype: Any = None, rngs: nnx.Rngs) -> nnx.List:
  """`num_convs` 3x3 conv + GN + ReLU blocks (mmdet head towers); weights N(0, 0.01) as `normal_init`."""
  return nnx.List([
      ConvNorm(in_channels if i == 0 else feat_channels, feat_channels, 3, norm='GN', num_groups=num_groups,
               activation='relu', use_bias=False, kernel_init=nnx.initializers.normal(0.01), dtype=dtype,
               rngs=rngs)
      for i in range(num_convs)])


def run_tower(tower: nnx.List, x: jax.Array) -> jax.Array:
  for block in tower:
    x = block(x)
  return x


def level_points(height: int, width: int, stride: int) -> np.ndarray:
  """Points of one level: float32 `[H * W, 2]` `(x, y)`, row-major, `index * stride + stride // 2`."""
  ys, xs = np.meshgrid(np.arange(height, dtype=np.float32) * stride, np.arange(width, dtype=np.float32) * stride,
                       indexing='ij')
  return np.stack([xs.reshape(-1), ys.reshape(-1)], axis=-1) + np.float32(stride // 2)


def multilevel_points(sizes: Sequence[tuple[int, int]], strides: Sequence[int]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """All levels concatenated (level-major): points `[P, 2]`, stride per point `[P]`, level index per point `[P]`."""
  points = [level_points(h, w, s) for (h, w), s in zip(sizes, strides)]
  stride = np.concatenate([np.full(len(p), s, np.float32) for p, s in zip(points, strides)])
  level = np.concatenate([np.full(len(p), i, np.int32) for i, p in enumerate(points)])
  return np.concatenate(points), stride, level


def distance2bbox(points: jax.Array, distance: jax.Array, max_shape: tuple[int, int] | None = None) -> jax.Array:
  """`(x, y)` points `[..., 2]` and `(left, top, right, bottom)` distances `[..., 4]` -> xyxy `[..., 4]`, clipped to
  `[0, W] x [0, H]` of `max_shape = (H, W)` when given (mmdet `distance2bbox`)."""
  x1 = points[..., 0] - distance[..., 0]
  y1 = points[..., 1] - distance[..., 1]
  x2 = points[..., 0] + distance[..., 2]
  y2 = points[..., 1] + distance[..., 3]
  if max_shape is not None:
    x1, x2 = jnp.clip(x1, 0, max_shape[1]), jnp.clip(x2, 0, max_shape[1])
    y1, y2 = jnp.clip(y1, 0, max_shape[0]), jnp.clip(y2, 0, max_shape[0])
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def centerness_target(ltrb: jax.Array) -> jax.Array:
  """FCOS centerness `sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))` of `[..., 4]` distances -> `[...]`.

  Only meaningful on positive points (all distances > 0); other points may give NaN, as in mmdet, so callers
  select positives first (or mask, see `visjax.models.iai.criterion`).
  """
  lr = ltrb[..., jnp.array([0, 2])]
  tb = ltrb[..., jnp.array([1, 3])]
  ratio = (lr.min(-1) / lr.max(-1)) * (tb.min(-1) / tb.max(-1))
  return jnp.sqrt(ratio)
