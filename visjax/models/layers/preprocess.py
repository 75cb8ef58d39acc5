"""Input normalisation shared by every method: `(x - mean) / std`, padding zeroed, padded to a multiple of
`size_divisibility` (detectron2 / mmdet `ImageList` padding after normalisation). Each method passes its own
`pixel_mean` / `pixel_std` (`config.model`)."""

from typing import Sequence

import jax
import jax.numpy as jnp


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def pad_mask(image_size: jax.Array, height: int, width: int) -> jax.Array:
  """bool `[N, height, width]`, True where row >= h or col >= w of each frame's unpadded `image_size [N, 2]`."""
  rows = jnp.arange(height)[None, :, None]
  cols = jnp.arange(width)[None, None, :]
  return (rows >= image_size[:, 0, None, None]) | (cols >= image_size[:, 1, None, None])


def normalize_images(images: jax.Array, image_size: jax.Array, *, pixel_mean: Sequence[float],
                     pixel_std: Sequence[float], size_divisibility: int) -> tuple[jax.Array, jax.Array]:
  """Normalises, zeroes the padding and pads to `size_divisibility`.

  Args:
    images: uint8 or float `[N, H, W, 3]` RGB in 0..255, content at the top-left.
    image_size: int `[N, 2]` unpadded `(h, w)`.

  Returns:
    float32 `[N, Hp, Wp, 3]` normalised (zero on padding) and the pad mask bool `[N, Hp, Wp]` (True on padding).
  """
  n, h, w, _ = images.shape
  hp, wp = round_up(h, size_divisibility), round_up(w, size_divisibility)
  x = (images.astype(jnp.float32) - jnp.asarray(pixel_mean, jnp.float32)) / jnp.asarray(pixel_std, jnp.float32)
  x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
  mask = pad_mask(image_size, hp, wp)
  return jnp.where(mask[..., None], 0., x), mask
