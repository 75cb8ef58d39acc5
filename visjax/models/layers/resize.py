"""Static-shape resizes with PyTorch semantics, NHWC: `F.interpolate(mode='nearest')` and CondInst's
`aligned_bilinear`. Index tables and interpolation matrices are numpy constants built at trace time.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
  """Source index of every output index of `F.interpolate(size=out_size, mode='nearest')` (ATen `nearest_idx`).

  Returns:
    int32 `[out_size]`.
  """
  out = np.arange(out_size)
  if out_size == in_size:
    return out.astype(np.int32)
  if out_size == 2 * in_size:
    return (out >> 1).astype(np.int32)
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(out.astype(np.float32) * scale).astype(np.int64)
  return np.minimum(src, in_size - 1).astype(np.int32)


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """`F.interpolate(x, size, mode='nearest')` on `x [B, H, W, ...]` -> `[B, size[0], size[1], ...]`."""
  rows = nearest_indices(x.shape[1], size[0])
  cols = nearest_indices(x.shape[2], size[1])
  return x[:, rows][:, :, cols]


@functools.lru_cache(maxsize=None)
def _aligned_bilinear_matrix(n: int, factor: int) -> np.ndarray:
  """`[factor * n, n]` float32 matrix of one axis of `aligned_bilinear`.

  Output index `j` reads the align_corners=True bilinear sample at source coordinate `max(j - factor // 2, 0) / factor`
  of the input replicate-padded by one at the end (so index `n` reads `n - 1`).
  """
  j = np.arange(factor * n)
  src = np.maximum(j - factor // 2, 0).astype(np.float64) / factor
  i0 = np.floor(src).astype(np.int64)
  frac = src - i0
  i1 = np.minimum(i0 + 1, n - 1)
  i0 = np.minimum(i0, n - 1)
  mat = np.zeros((factor * n, n), np.float64)
  np.add.at(mat, (j, i0), 1. - frac)
  np.add.at(mat, (j, i1), frac)
  return mat.astype(np.float32)


def aligned_bilinear(x: jax.Array, factor: int) -> jax.Array:
  """CondInst `aligned_bilinear` upsampling by an integer `factor` on `x [B, H, W, C]` -> `[B, fH, fW, C]`.

  Official steps: replicate-pad bottom/right by 1, bilinear (align_corners=True) to `(f*H + 1, f*W + 1)`,
  replicate-pad top/left by `f // 2`, crop to `(f*H, f*W)`. It is separable, so it is applied as two
  interpolation matrices (exact up to float rounding).
  """
  if int(factor) != factor or factor < 1:
    raise ValueError(f'aligned_bilinear: factor must be a positive integer, got {factor}.')
  if x.ndim != 4:
    raise ValueError(f'aligned_bilinear: x must be [B, H, W, C], got shape {x.shape}.')
  if factor == 1:
    return x
  mh = jnp.asarray(_aligned_bilinear_matrix(x.shape[1], int(factor)), x.dtype)
  mw = jnp.asarray(_aligned_bilinear_matrix(x.shape[2], int(factor)), x.dtype)
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum('ih,bhwc->biwc', mh, x, precision=hp)
  return jnp.einsum('jw,biwc->bijc', mw, x, precision=hp)


@functools.lru_cache(maxsize=None)
def bilinear_matrix(in_size: int, out_size: int, align_corners: bool = False,
                    scale_factor: float | None = None) -> np.ndarray:
  """`[out_size, in_size]` float32 interpolation matrix of one axis of `F.interpolate(mode='bilinear')`.

  ATen's source index, computed in float32 as ATen does: `align_corners=True`: `dst * (in - 1) / (out - 1)`;
  else `max((dst + 0.5) * s - 0.5, 0)` with `s = 1 / scale_factor` when a scale factor was given (torch's default
  `recompute_scale_factor=None`) and `in / out` otherwise. No antialiasing.
  """
  dst = np.arange(out_size, dtype=np.float32)
  if align_corners:
    scale = np.float32((in_size - 1) / (out_size - 1)) if out_size > 1 else np.float32(0.)
    src = dst * scale
  else:
    scale = np.float32(1. / scale_factor) if scale_factor else np.float32(in_size / out_size)
    src = np.maximum((dst + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0.))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  frac = (src - i0.astype(np.float32)).astype(np.float32)
  i1 = np.minimum(i0 + 1, in_size - 1)
  mat = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(mat, (rows, i0), np.float32(1.) - frac)
  np.add.at(mat, (rows, i1), frac)
  return mat


def resize_bilinear(x: jax.Array, size: tuple[int, int], *, align_corners: bool = False,
                    scale_factor: float | None = None) -> jax.Array:
  """`F.interpolate(x, size, mode='bilinear', align_corners=...)` (no antialias) on `x [B, H, W, ...]`.

  Args:
    x: `[B, H, W, ...]` (trailing axes, e.g. channels or queries, are carried along).
    size: output `(H', W')`.
    align_corners: torch's flag.
    scale_factor: the `scale_factor` torch was called with, if it was (it sets the coordinate mapping; `size`
      must then be `floor(H * s), floor(W * s)`).

  Returns:
    `[B, H', W', ...]` in `x.dtype` (separable matrices, float32 accumulation at HIGHEST precision).
  """
  if x.ndim < 3:
    raise ValueError(f'resize_bilinear: x must be [B, H, W, ...], got shape {x.shape}.')
  out_h, out_w = int(size[0]), int(size[1])
  if (out_h, out_w) == tuple(x.shape[1:3]):
    return x
  mh = jnp.asarray(bilinear_matrix(x.shape[1], out_h, align_corners, scale_factor))
  mw = jnp.asarray(bilinear_matrix(x.shape[2], out_w, align_corners, scale_factor))
  hp = jax.lax.Precision.HIGHEST
  y = jnp.einsum('ih,bhw...->biw...', mh, x.astype(jnp.float32), precision=hp)
  y = jnp.einsum('jw,biw...->bij...', mw, y, precision=hp)
  return y.astype(x.dtype)
