"""Sine position encodings for 2-d feature maps (DETR family), NHWC: one implementation, variants as arguments.

Coordinates along each axis are the cumulative sums of the *non-pad* mask (1-based; 0-based with
`zero_based=True`), normalised as `(coord + offset) / (last coord + 1e-6) * scale`:
  * Deformable-DETR / IDOL (`PositionEmbeddingSine(normalize=True)`): masked, `offset = -0.5`;
  * DETR / Mask2Former / VITA: `offset = 0` (unmasked maps: `sine_position_embedding_unmasked`);
  * IAI / AOT LSTT (`lstt_block/position.py`): unmasked, 0-based (`arange(h)`), `offset = 0`, so the last row
    sits at exactly `scale`.

Channel layout (as the originals): `cat(pos_y, pos_x)`, each with sin/cos interleaved: for an axis value `v`,
`pos[2i] = sin(v / T^(2i/F))` and `pos[2i+1] = cos(v / T^(2i/F))` with `F = num_pos_feats`.

Bitwise fidelity to torch (float32). In a row or column that is entirely padding, the cumulative count is 0 and the
official formula gives `-0.5 / 1e-6 * 2pi ~ -3.1e6`, which is divided by `dim_t` and fed to sin/cos. Padded tokens
carry that value through the encoder into the mask branch, so it has to be the same number as torch's:
  * both divisions are IEEE divisions: XLA's algebraic simplifier rewrites `x / broadcast(b)` (and `x / constant`)
    into `x * (1 / b)`, which at 3e6 is off by up to 1 ulp = 0.25 rad. `_ieee_divide` hides the divisor's
    structure behind an optimisation barrier (tests/test_position.py checks the optimised HLO);
  * `dim_t = T ** (2 (i // 2) / F)` is the correctly rounded float32 power (torch's value; NumPy's float32 power
    is 1 ulp off for some i);
  * sin/cos of arguments up to ~3e6: XLA CPU's float32 sin/cos reduce the range exactly; measured against torch
    CPU over 10^4 arguments in [-3.2e6, 0] the largest difference is 6e-8 (1 ulp of the result), i.e. no
    formulation change is needed.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _ieee_divide(x: jax.Array, y: jax.Array | np.ndarray) -> jax.Array:
  """`x / y` (broadcasting) evaluated as a true division after XLA optimisation.

  The divisor is materialised at the full shape and passed through `optimization_barrier` together with the
  dividend, so the simplifier sees neither a broadcast nor a constant it could turn into a reciprocal multiply.
  """
  shape = jnp.broadcast_shapes(jnp.shape(x), jnp.shape(y))
  x, y = jax.lax.optimization_barrier((jnp.broadcast_to(x, shape), jnp.broadcast_to(jnp.asarray(y, x.dtype), shape)))
  return x / y


def frequencies(num_pos_feats: int, temperature: float) -> np.ndarray:
  """`dim_t [F]` float32: `temperature ** (2 * (i // 2) / F)`, the exponent in float32 and the power correctly
  rounded (what torch's `temperature ** tensor` gives)."""
  if num_pos_feats % 2:
    raise ValueError(f'sine position embedding: num_pos_feats must be even, got {num_pos_feats}.')
  exponent = (2 * (np.arange(num_pos_feats, dtype=np.float32) // 2) / np.float32(num_pos_feats)).astype(np.float32)
  return (np.float64(temperature) ** exponent.astype(np.float64)).astype(np.float32)


def _encode_axis(embed: jax.Array, num_pos_feats: int, temperature: float) -> jax.Array:
  """`embed [...]` coordinates -> `[..., num_pos_feats]` interleaved sin/cos features (float32)."""
  pos = _ieee_divide(embed[..., None], frequencies(num_pos_feats, temperature))
  # Interleave: even channels take sin of the even frequencies, odd channels cos of the odd ones.
  sin = jnp.sin(pos[..., 0::2])
  cos = jnp.cos(pos[..., 1::2])
  return jnp.stack([sin, cos], axis=-1).reshape(*pos.shape[:-1], num_pos_feats)


def sine_position_embedding(mask: jax.Array, num_pos_feats: int = 128, temperature: float = 10000.,
                            normalize: bool = True, scale: float = 2 * math.pi, offset: float = -0.5,
                            zero_based: bool = False) -> jax.Array:
  """Masked sine position embedding.

  Args:
    mask: bool `[B, H, W]`, True on padding.
    num_pos_feats: features per axis; the output has `2 * num_pos_feats` channels.
    temperature: frequency base.
    normalize: normalise the coordinates to `[0, scale]` (by the last coordinate of each row / column + 1e-6).
    scale: the normalised range (2π).
    offset: added to the coordinate before normalising (−0.5 in Deformable-DETR, 0 in DETR/Mask2Former/IAI).
    zero_based: coordinates start at 0 instead of 1 (IAI / AOT LSTT `arange(h)`).

  Returns:
    float32 `[B, H, W, 2 * num_pos_feats]`, channels `cat(pos_y, pos_x)`.
  """
  if mask.ndim != 3:
    raise ValueError(f'sine_position_embedding: mask must be [B, H, W], got shape {mask.shape}.')
  not_mask = jnp.logical_not(mask).astype(jnp.float32)
  y_embed = jnp.cumsum(not_mask, axis=1)
  x_embed = jnp.cumsum(not_mask, axis=2)
  if zero_based:
    y_embed, x_embed = y_embed - 1., x_embed - 1.
  if normalize:
    eps = np.float32(1e-6)
    y_embed = _ieee_divide(y_embed + np.float32(offset), y_embed[:, -1:, :] + eps) * np.float32(scale)
    x_embed = _ieee_divide(x_embed + np.float32(offset), x_embed[:, :, -1:] + eps) * np.float32(scale)
  pos_y = _encode_axis(y_embed, num_pos_feats, temperature)
  pos_x = _encode_axis(x_embed, num_pos_feats, temperature)
  return jnp.concatenate([pos_y, pos_x], axis=-1)


def sine_position_embedding_unmasked(batch: int, height: int, width: int, num_pos_feats: int = 128,
                                     temperature: float = 10000., normalize: bool = True,
                                     scale: float = 2 * math.pi, offset: float = 0.,
                                     zero_based: bool = False) -> jax.Array:
  """Sine position embedding of an unpadded `[height, width]` map (Mask2Former / VITA: `offset = 0`; IAI LSTT:
  `zero_based=True`).

  Returns:
    float32 `[batch, height, width, 2 * num_pos_feats]`.
  """
  mask = jnp.zeros((batch, height, width), bool)
  return sine_position_embedding(mask, num_pos_feats, temperature, normalize, scale, offset, zero_based)
