"""Swin Transformer backbone as Mask2Former's `D2SwinTransformer` (Flax NNX, NHWC).

Module paths mirror the torch attributes: `patch_embed.{proj, norm}`, `layers.{i}.blocks.{j}.{norm1,
attn.{qkv, proj, relative_position_bias_table}, norm2, mlp.{fc1, fc2}}`, `layers.{i}.downsample.{norm,
reduction}` and the per-output norms `norm{i}`. Linear layers are `nnx.Linear` (`kernel [in, out]`), norms
`nnx.LayerNorm` (`scale`, `bias`, eps 1e-5). `relative_position_index` is a constant recomputed from the window
size (the torch buffer is checked against it on conversion, see `visjax.convert.swin_rules`).

Behaviour matched to the reference: the image is zero-padded bottom/right to a multiple of the patch size;
each block pads its (normed) input bottom/right with zeros to a window multiple (padded tokens take part in
attention unmasked, as in the reference), shifted blocks (odd index) roll by `window // 2` and add the -100
region mask; patch merging pads odd sizes; GELU is the exact (erf) form; drop path is per-sample stochastic
depth with rates rising linearly from 0 to `drop_path_rate` over all blocks.

Call with `x [N, H, W, 3]` (normalised). Returns NHWC features `res2 [N, ceil(H/4), ceil(W/4), C]`,
`res3 [.., /8, 2C]`, `res4 [.., /16, 4C]`, `res5 [.., /32, 8C]` (only those in `out_features`).
Drop path is active only in train mode (`model.train()`; `model.eval()` for inference), and needs the
`dropout` RNG stream given at construction.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
import numpy as np

from visjax.models.layers import drop
from visjax.models.layers import norms

STAGE_NAMES = ('res2', 'res3', 'res4', 'res5')
Dtype = jnp.dtype | None
_MASK_VALUE = -100.0


@dataclasses.dataclass(frozen=True)
class SwinConfig:
  """Sizes of a Swin variant (Mask2Former `MODEL.SWIN.*`)."""

  embed_dim: int = 96
  depths: tuple[int, ...] = (2, 2, 6, 2)
  num_heads: tuple[int, ...] = (3, 6, 12, 24)
  window_size: int = 7
  patch_size: int = 4
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  drop_path_rate: float = 0.3
  patch_norm: bool = True


SWIN_T = SwinConfig(96, (2, 2, 6, 2), (3, 6, 12, 24), 7, drop_path_rate=0.3)
SWIN_S = SwinConfig(96, (2, 2, 18, 2), (3, 6, 12, 24), 7, drop_path_rate=0.3)
SWIN_B = SwinConfig(128, (2, 2, 18, 2), (4, 8, 16, 32), 12, drop_path_rate=0.3)
SWIN_L = SwinConfig(192, (2, 2, 18, 2), (6, 12, 24, 48), 12, drop_path_rate=0.3)


@functools.lru_cache(maxsize=None)
def relative_position_index(window_size: int) -> np.ndarray:
  """`[w*w, w*w]` int64 index into the `[(2w-1)^2, heads]` bias table, as the torch buffer of that name."""
  coords = np.stack(np.meshgrid(np.arange(window_size), np.arange(window_size), indexing='ij')).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window_size - 1)
  index = rel[..., 0] * (2 * window_size - 1) + rel[..., 1]
  index.flags.writeable = False
  return index


def _window_partition(x: jax.Array, w: int) -> jax.Array:
  """`[B, H, W, C]` (H, W multiples of w) -> `[B * nW, w*w, C]`, windows row-major."""
  b, h, wd, c = x.shape
  x = x.reshape(b, h // w, w, wd // w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, w * w, c)


def _window_reverse(windows: jax.Array, w: int, b: int, h: int, wd: int) -> jax.Array:
  """Inverse of `_window_partition`: `[B * nW, w*w, C]` -> `[B, H, W, C]`."""
  c = windows.shape[-1]
  x = windows.reshape(b, h // w, wd // w, w, w, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, wd, c)


@functools.lru_cache(maxsize=None)
def shift_attention_mask(hp: int, wp: int, window_size: int, shift_size: int) -> np.ndarray:
  """`[nW, w*w, w*w]` float32 additive mask (0 or -100) for shifted windows on a padded `hp x wp` map."""
  img = np.zeros((hp, wp), np.float32)
  cuts = (slice(0, -window_size), slice(-window_size, -shift_size), slice(-shift_size, None))
  for i, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
    img[hs, ws] = i
  regions = np.asarray(_window_partition(img[None, :, :, None], window_size))[..., 0]  # [nW, w*w]
  mask = np.where(regions[:, None, :] != regions[:, :, None], _MASK_VALUE, 0.0).astype(np.float32)
  mask.flags.writeable = False
  return mask


def _linear(din: int, dout: int, *, use_bias: bool = True, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """torch-like Linear; init trunc_normal(0.02), zero bias (the reference's `_init_weights`)."""
  return nnx.Linear(din, dout, use_bias=use_bias, kernel_init=nnx.initializers.truncated_normal(0.02),
                    dtype=dtype, rngs=rngs)


class WindowAttention(nnx.Module):
  """Window multi-head self-attention with a relative position bias (torch `WindowAttention`).

  Variables: `qkv` (`[C, 3C]`, output ordered q|k|v, heads contiguous), `proj`,
  `relative_position_bias_table [(2w-1)^2, heads]`.
  """

  def __init__(self, dim: int, window_size: int, num_heads: int, *, qkv_bias: bool, dtype: Dtype,
               rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
    self.window_size = window_size
    self.num_heads = num_heads
    self.scale = (dim // num_heads)**-0.5
    self.relative_position_bias_table = nnx.Param(nnx.initializers.truncated_normal(0.02)(
        rngs.params(), ((2 * window_size - 1)**2, num_heads)))
    self.qkv = _linear(dim, 3 * dim, use_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.proj = _linear(dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: np.ndarray | None = None) -> jax.Array:
    """`x [B * nW, N, C]` (N = w*w), optional additive `mask [nW, N, N]` -> `[B * nW, N, C]`."""
    bw, n, c = x.shape
    h = self.num_heads
    qkv = self.qkv(x).reshape(bw, n, 3, h, c // h).transpose(2, 0, 3, 1, 4)  # [3, B*nW, h, N, d]
    q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
    attn = q @ k.swapaxes(-1, -2)  # [B*nW, h, N, N]
    index = relative_position_index(self.window_size).reshape(-1)
    bias = self.relative_position_bias_table.get_value()[index].reshape(n, n, h).transpose(2, 0, 1)
    attn = attn + bias[None].astype(attn.dtype)
    if mask is not None:
      nw = mask.shape[0]
      attn = attn.reshape(bw // nw, nw, h, n, n) + jnp.asarray(mask, attn.dtype)[None, :, None]
      attn = attn.reshape(bw, h, n, n)
    attn = jax.nn.softmax(attn.astype(jnp.float32), axis=-1).astype(v.dtype)  # softmax in fp32
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(bw, n, c)
    return self.proj(out)


class Mlp(nnx.Module):
  """`fc1` -> exact GELU -> `fc2`."""

  def __init__(self, dim: int, hidden: int, *, dtype: Dtype, rngs: nnx.Rngs):
    self.fc1 = _linear(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = _linear(hidden, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwinBlock(nnx.Module):
  """Swin block: `x + drop_path(W-MSA(norm1 x))`, then `x + drop_path(mlp(norm2 x))` (torch
  `SwinTransformerBlock`)."""

  def __init__(self, dim: int, num_heads: int, *, window_size: int, shift_size: int, mlp_ratio: float,
               qkv_bias: bool, drop_path: float, dtype: Dtype, rngs: nnx.Rngs):
    self.window_size = window_size
    self.shift_size = shift_size
    self.norm1 = norms.layer_norm(dim, dtype=dtype, rngs=rngs)
    self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias=qkv_bias, dtype=dtype, rngs=rngs)
    self.drop_path = drop.drop_path(drop_path, 3, rngs=rngs)  # per-sample on [B, L, C] tokens
    self.norm2 = norms.layer_norm(dim, dtype=dtype, rngs=rngs)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)

  def _residual(self, x: jax.Array) -> jax.Array:
    return x if self.drop_path is None else self.drop_path(x)

  def __call__(self, x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """`x [B, H*W, C]` tokens of an `hw = (H, W)` map -> same shape."""
    b, _, c = x.shape
    h, w = hw
    ws = self.window_size
    y = self.norm1(x).reshape(b, h, w, c)
    pad_b, pad_r = (-h) % ws, (-w) % ws
    y = jnp.pad(y, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
    hp, wp = h + pad_b, w + pad_r
    mask = None
    if self.shift_size > 0:
      y = jnp.roll(y, (-self.shift_size, -self.shift_size), axis=(1, 2))
      mask = shift_attention_mask(hp, wp, ws, self.shift_size)
    y = _window_reverse(self.attn(_window_partition(y, ws), mask), ws, b, hp, wp)
    if self.shift_size > 0:
      y = jnp.roll(y, (self.shift_size, self.shift_size), axis=(1, 2))
    y = y[:, :h, :w].reshape(b, h * w, c)
    x = x + self._residual(y)
    return x + self._residual(self.mlp(self.norm2(x)))


class PatchMerging(nnx.Module):
  """2x2 patch merging: pad odd sizes, concat [x(0,0), x(1,0), x(0,1), x(1,1)] -> `norm` (4C) -> `reduction`
  (4C -> 2C, no bias)."""

  def __init__(self, dim: int, *, dtype: Dtype, rngs: nnx.Rngs):
    self.norm = norms.layer_norm(4 * dim, dtype=dtype, rngs=rngs)
    self.reduction = _linear(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, hw: tuple[int, int]) -> jax.Array:
    """`x [B, H*W, C]` -> `[B, ceil(H/2) * ceil(W/2), 2C]`."""
    b, _, c = x.shape
    h, w = hw
    x = jnp.pad(x.reshape(b, h, w, c), ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class BasicLayer(nnx.Module):
  """One stage: `blocks` (even index: regular windows, odd: shifted) and an optional `downsample`."""

  def __init__(self, dim: int, depth: int, num_heads: int, *, window_size: int, mlp_ratio: float,
               qkv_bias: bool, drop_path: Sequence[float], downsample: bool, dtype: Dtype, rngs: nnx.Rngs):
    self.blocks = nnx.List([
        SwinBlock(dim, num_heads, window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                  mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path[i], dtype=dtype, rngs=rngs)
        for i in range(depth)])
    self.downsample = PatchMerging(dim, dtype=dtype, rngs=rngs) if downsample else None

  def __call__(self, x: jax.Array, hw: tuple[int, int]):
    """Returns (stage output `[B, H*W, C]`, next-stage input, next-stage `(H, W)`)."""
    for block in self.blocks:
      x = block(x, hw)
    if self.downsample is None:
      return x, x, hw
    return x, self.downsample(x, hw), ((hw[0] + 1) // 2, (hw[1] + 1) // 2)


class PatchEmbed(nnx.Module):
  """`proj` (patch x patch conv, stride patch, with bias) then optional `norm` (LayerNorm)."""

  def __init__(self, patch_size: int, embed_dim: int, *, patch_norm: bool, dtype: Dtype, rngs: nnx.Rngs):
    self.patch_size = patch_size
    self.proj = nnx.Conv(3, embed_dim, (patch_size, patch_size), strides=(patch_size, patch_size),
                         padding='VALID', dtype=dtype, rngs=rngs)
    self.norm = norms.layer_norm(embed_dim, dtype=dtype, rngs=rngs) if patch_norm else None

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [B, H, W, 3]` -> `[B, ceil(H/p), ceil(W/p), C]`."""
    p = self.patch_size
    x = jnp.pad(x, ((0, 0), (0, (-x.shape[1]) % p), (0, (-x.shape[2]) % p), (0, 0)))
    x = self.proj(x)
    return x if self.norm is None else self.norm(x)


class SwinTransformer(nnx.Module):
  """D2SwinTransformer (no absolute position embedding, as every Mask2Former/VITA config)."""

  def __init__(self, config: SwinConfig = SWIN_L, *, out_features: Sequence[str] = STAGE_NAMES,
               dtype: Dtype = None, rngs: nnx.Rngs):
    """Builds the network.

    Args:
      config: sizes (`SWIN_T`, `SWIN_S`, `SWIN_B`, `SWIN_L` or custom).
      out_features: subset of ('res2', 'res3', 'res4', 'res5') returned by `__call__`.
      dtype: compute dtype (e.g. bfloat16; params stay float32, LayerNorm statistics and the attention softmax
        run in float32); None computes in float32.
      rngs: initialisation RNGs, and the `dropout` (or `default`) stream for drop path.
    """
    num_layers = len(config.depths)
    if num_layers != 4 or len(config.num_heads) != 4:
      raise ValueError(f'Swin needs 4 stages, got depths={config.depths} num_heads={config.num_heads}')
    unknown = [f for f in out_features if f not in STAGE_NAMES]
    if unknown or not out_features:
      raise ValueError(f'out_features must be a non-empty subset of {STAGE_NAMES}, got {tuple(out_features)}')
    self.config = config
    self.out_features = tuple(f for f in STAGE_NAMES if f in out_features)
    self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim, patch_norm=config.patch_norm, dtype=dtype,
                                  rngs=rngs)
    rates = np.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
    starts = np.cumsum((0,) + tuple(config.depths)).tolist()
    self.num_features = tuple(config.embed_dim * 2**i for i in range(num_layers))
    self.layers = nnx.List([
        BasicLayer(self.num_features[i], config.depths[i], config.num_heads[i], window_size=config.window_size,
                   mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                   drop_path=rates[starts[i]:starts[i + 1]], downsample=i < num_layers - 1, dtype=dtype, rngs=rngs)
        for i in range(num_layers)])
    for i in range(num_layers):  # the reference builds norm{i} for every out index (0..3 in D2Swin)
      setattr(self, f'norm{i}', norms.layer_norm(self.num_features[i], dtype=dtype, rngs=rngs))

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    """`x [N, H, W, 3]` (normalised) -> {name: `[N, h, w, C_i]`} for the names in `out_features`."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f'Swin expects NHWC input [N, H, W, 3], got shape {x.shape}')
    x = self.patch_embed(x)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    hw = (h, w)
    outputs = {}
    last = STAGE_NAMES.index(self.out_features[-1])
    for i in range(last + 1):
      out, x, next_hw = self.layers[i](x, hw)
      if STAGE_NAMES[i] in self.out_features:
        out = getattr(self, f'norm{i}')(out)
        outputs[STAGE_NAMES[i]] = out.reshape(b, hw[0], hw[1], self.num_features[i])
      hw = next_hw
    return outputs
