"""Sine position encodings for 2-d feature maps (DETR family), NHWC.

The masked variant follows Deformable-DETR / IDOL: coordinates are the cumulative sums of the *non-pad* mask
(1-based), normalised as `(cum + offset) / (last + 1e-6) * scale` with `offset = -0.5`. Mask2Former / VITA use the
same formula with `offset = 0` and no mask; `sine_position_embedding_unmasked` covers that case.

Channel layout (as the originals): `cat(pos_y, pos_x)`, each with sin/cos interleaved: for an axis value `v`,
`pos[2i] = sin(v / T^(2i/F))` and `pos[2i+1] = cos(v / T^(2i/F))` with `F = num_pos_feats`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _encode_axis(embed: jax.Array, num_pos_feats: int, temperature: float) -> jax.Array:
  """`embed [..., ]` coordinates -> `[..., num_pos_feats]` interleaved sin/cos features (float32)."""
  if num_pos_feats % 2:
    raise ValueError(f'sine position embedding: num_pos_feats must be even, got {num_pos_feats}.')
  dim_t = np.arange(num_pos_feats, dtype=np.float32)
  dim_t = (np.float32(temperature) ** (2 * (dim_t // 2) / np.float32(num_pos_feats))).astype(np.float32)
  pos = embed[..., None] / dim_t
  # Interleave: even channels take sin of the even frequencies, odd channels cos of the odd ones.
  sin = jnp.sin(pos[..., 0::2])
  cos = jnp.cos(pos[..., 1::2])
  return jnp.stack([sin, cos], axis=-1).reshape(*pos.shape[:-1], num_pos_feats)


def sine_position_embedding(mask: jax.Array, num_pos_feats: int = 128, temperature: float = 10000.,
                            normalize: bool = True, scale: float = 2 * math.pi,
                            offset: float = -0.5) -> jax.Array:
  """Masked sine position embedding.

  Args:
    mask: bool `[B, H, W]`, True on padding.
    num_pos_feats: features per axis; the output has `2 * num_pos_feats` channels.
    temperature: frequency base.
    normalize: normalise the cumulative coordinates to `[0, scale]`.
    scale: the normalised range (2π).
    offset: added to the cumulative coordinate before normalising (−0.5 in Deformable-DETR, 0 in DETR/Mask2Former).

  Returns:
    float32 `[B, H, W, 2 * num_pos_feats]`, channels `cat(pos_y, pos_x)`.
  """
  if mask.ndim != 3:
    raise ValueError(f'sine_position_embedding: mask must be [B, H, W], got shape {mask.shape}.')
  not_mask = jnp.logical_not(mask).astype(jnp.float32)
  y_embed = jnp.cumsum(not_mask, axis=1)
  x_embed = jnp.cumsum(not_mask, axis=2)
  if normalize:
    eps = 1e-6
    y_embed = (y_embed + offset) / (y_embed[:, -1:, :] + eps) * scale
    x_embed = (x_embed + offset) / (x_embed[:, :, -1:] + eps) * scale
  pos_y = _encode_axis(y_embed, num_pos_feats, temperature)
  pos_x = _encode_axis(x_embed, num_pos_feats, temperature)
  return jnp.concatenate([pos_y, pos_x], axis=-1)


def sine_position_embedding_unmasked(batch: int, height: int, width: int, num_pos_feats: int = 128,
                                     temperature: float = 10000., normalize: bool = True,
                                     scale: float = 2 * math.pi, offset: float = 0.) -> jax.Array:
  """Sine position embedding of an unpadded `[height, width]` map (Mask2Former / VITA: `offset = 0`).

  Returns:
    float32 `[batch, height, width, 2 * num_pos_feats]`.
  """
  mask = jnp.zeros((batch, height, width), bool)
  return sine_position_embedding(mask, num_pos_feats, temperature, normalize, scale, offset)


def sine_position_embedding_index(height: int, width: int, num_pos_feats: int = 128, temperature: float = 10000.,
                                  scale: float = 2 * math.pi) -> jax.Array:
  """AOT / IAI `PositionEmbeddingSine` (lstt_block/position.py): 0-based indices divided by the last index
  (`i / (h - 1 + 1e-6) * scale`), no mask, no offset; same channel layout as `sine_position_embedding`.

  Returns:
    float32 `[height, width, 2 * num_pos_feats]`.
  """
  y = np.arange(height, dtype=np.float32)
  x = np.arange(width, dtype=np.float32)
  y = y / (y[-1] + np.float32(1e-6)) * np.float32(scale)
  x = x / (x[-1] + np.float32(1e-6)) * np.float32(scale)
  y_embed = jnp.broadcast_to(jnp.asarray(y)[:, None], (height, width))
  x_embed = jnp.broadcast_to(jnp.asarray(x)[None, :], (height, width))
  return jnp.concatenate([_encode_axis(y_embed, num_pos_feats, temperature),
                          _encode_axis(x_embed, num_pos_feats, temperature)], axis=-1)
