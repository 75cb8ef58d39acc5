"""CoordConv coordinate channels (SOLO / VISOLO `addCoord`).

The official `addCoord` appends `torch.linspace(-1, 1, H)` (y) then `torch.linspace(-1, 1, W)` (x) as two extra
channels after the input channels. The coordinates are built here with torch's float32 `linspace` arithmetic
(`start + i * step` for the first half, `end - (steps - 1 - i) * step` for the second, each a fused multiply-add
with one rounding), so they match bit for bit.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """float32 `torch.linspace(start, end, steps)` (CPU kernel arithmetic), `[steps]`."""
  if steps == 1:
    return np.full((1,), start, np.float32)
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64((end32 - start32) / np.float32(steps - 1))
  i = np.arange(steps, dtype=np.float64)
  # float64 products of float32 operands are exact, so one rounding to float32 is torch's fmadd.
  return np.where(i < steps // 2, np.float64(start32) + step * i,
                  np.float64(end32) - step * (steps - 1 - i)).astype(np.float32)


def add_coord(x: jax.Array) -> jax.Array:
  """`x [B, H, W, C]` -> `[B, H, W, C + 2]`: channel C is y in [-1, 1] down the rows, channel C + 1 is x in
  [-1, 1] across the columns (official order: y then x)."""
  b, h, w, _ = x.shape
  ys = jnp.asarray(torch_linspace(-1., 1., h), x.dtype)
  xs = jnp.asarray(torch_linspace(-1., 1., w), x.dtype)
  coords = jnp.stack(jnp.broadcast_arrays(ys[:, None], xs[None, :]), axis=-1)  # [H, W, 2]
  return jnp.concatenate([x, jnp.broadcast_to(coords, (b, h, w, 2))], axis=-1)
