"""IAI's identity-association block: the AOT-style Long Short-Term Transformer (LSTT), NHWC / batch-first.

Official: zfonemore/IAI `mmdet/models/lstt_block/{lstt,transformer,basic,gct,position}.py` (sequence-first there;
batch-first `[B, HW, C]` tokens here, row-major over the `(h, w)` map).

One layer (`LSTTLayer`, pre-LayerNorm):
  1. self-attention on `norm2(x)` with `q = k = norm2(x) + pos` (shared `MultiheadAttention`; official names
     `self_attn.linear_{Q,K,V}` / `projection`), DropPath, residual;
  2. `n = norm1(x)`, `Q = K = linear_Q(n)`; long-term attention of `Q` over the long-term memory keys/values
     (global, `att_heads` heads, only an output `projection`) plus short-term attention over the previous frame
     (`LocalAttention`: 15x15 window, relative embedding, `V_bias`), both added to `x` (the long-term branch is not
     drop-pathed in layer 0);
  3. FFN on `norm3(x)`: linear1 -> GroupNorm(32) -> GELU -> GCT -> depthwise 5x5 conv -> linear2, DropPath, residual.
`decoder_norms.{l}` normalise each layer's output (the official `return_intermediate` list).

Memory: a memory frame stores `K = linear_Q(norm1(x))` and `V = linear_V(norm1(x) + id_emb)`, where `id_emb` is
`patch_wise_id_bank` (Conv2d(max_obj + 1 -> C, k33, s32, p16)) of the full-resolution one-hot id mask.
On the reference frame (no memory) the layer attends to its own K/V. `LSTTMemory` holds the long-term memory in a
fixed number of slots with a validity mask (see `write_memory` for the policy when full) and the short-term one.

DropPath quirk kept: the official tensors are `[HW, B, C]` and timm's `drop_path` draws one keep/drop per leading
index, i.e. per *token* shared over the batch, not per sample.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from visjax.models.layers import norms
from visjax.models.layers import position
from visjax.models.layers.attention import MultiheadAttention
from visjax.models.layers.drop import drop_path

_xavier = nnx.initializers.xavier_uniform()
_zeros = nnx.initializers.zeros_init()


def _linear(d_in: int, d_out: int, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
  # LongShortTermTransformer._init_weight: xavier_uniform on every >1-d parameter; torch default bias.
  return nnx.Linear(d_in, d_out, dtype=dtype, kernel_init=_xavier, bias_init=_zeros, rngs=rngs)


class GCT(nnx.Module):
  """Gated Channel Transformation, 'l2' mode: `x * (1 + tanh(e * gamma / sqrt(mean_c(e^2) + eps) + beta))` with
  `e = alpha * sqrt(sum_hw(x^2) + eps)`. Parameters `alpha` (ones), `gamma`, `beta` (zeros), `[C]`."""

  def __init__(self, channels: int, eps: float = 1e-5):
    self.eps = eps
    self.alpha = nnx.Param(jnp.ones((channels,), jnp.float32))
    self.gamma = nnx.Param(jnp.zeros((channels,), jnp.float32))
    self.beta = nnx.Param(jnp.zeros((channels,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [B, H, W, C]` -> `[B, H, W, C]`."""
    embedding = jnp.sqrt(jnp.sum(jnp.square(x), axis=(1, 2), keepdims=True) + self.eps) * self.alpha.get_value()
    norm = self.gamma.get_value() / jnp.sqrt(jnp.mean(jnp.square(embedding), axis=-1, keepdims=True) + self.eps)
    return x * (1. + jnp.tanh(embedding * norm + self.beta.get_value()))


class GNActGCTDWConv2d(nnx.Module):
  """The LSTT FFN's middle: GroupNorm(32) -> GELU (erf) -> GCT -> depthwise 5x5 conv (no bias)."""

  def __init__(self, channels: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.gn = norms.group_norm(channels, num_groups=32, dtype=dtype, rngs=rngs)
    self.GCT = GCT(channels)
    self.conv = nnx.Conv(channels, channels, (5, 5), padding=((2, 2), (2, 2)), feature_group_count=channels,
                         use_bias=False, dtype=dtype, kernel_init=_xavier, rngs=rngs)

  def __call__(self, x: jax.Array, size_2d: tuple[int, int]) -> jax.Array:
    """`x [B, HW, C]` tokens of an `size_2d` map -> `[B, HW, C]`."""
    b, n, c = x.shape
    x = x.reshape(b, *size_2d, c)
    x = self.conv(self.GCT(jax.nn.gelu(self.gn(x), approximate=False)))
    return x.reshape(b, n, c)


def global_attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int,
                     key_valid: jax.Array | None = None) -> jax.Array:
  """AOT `MultiheadAttention(use_linear=False)` core: `softmax(q k^T / sqrt(C / heads)) v` per head.

  `q [B, Q, C]`, `k`, `v` `[B, K, C]`, `key_valid` bool `[B, K]` (False keys are ignored) -> `[B, Q, C]`.
  """
  b, nq, c = q.shape
  d = c // num_heads
  bias = None
  if key_valid is not None:
    bias = jnp.where(key_valid[:, None, None, :], 0., -jnp.inf).astype(q.dtype)
  out = jax.nn.dot_product_attention(q.reshape(b, nq, num_heads, d), k.reshape(b, -1, num_heads, d),
                                     v.reshape(b, -1, num_heads, d), bias=bias, implementation='xla')
  return out.reshape(b, nq, c)


class LongTermAttention(nnx.Module):
  """`long_term_attn`: `global_attention` then `projection` (no input projections)."""

  def __init__(self, d_model: int, num_heads: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.projection = _linear(d_model, d_model, dtype, rngs)

  def __call__(self, q, k, v, key_valid=None):
    return self.projection(global_attention(q, k, v, self.num_heads, key_valid))


def window_index(height: int, width: int, max_dis: int) -> tuple[np.ndarray, np.ndarray]:
  """For every query position and window offset `(dy, dx)` (row-major, `w = dy * ws + dx`, `ws = 2 max_dis + 1`):
  the flat index of key `(y + dy - max_dis, x + dx - max_dis)` (clipped) and whether it is inside the map.

  Returns:
    int32 `[H*W, ws*ws]` indices and bool `[H*W, ws*ws]` validity.
  """
  off = np.arange(-max_dis, max_dis + 1)
  ky = np.arange(height)[:, None, None, None] + off[None, None, :, None]
  kx = np.arange(width)[None, :, None, None] + off[None, None, None, :]
  ky, kx = np.broadcast_arrays(ky, kx)
  valid = (ky >= 0) & (ky < height) & (kx >= 0) & (kx < width)
  index = np.clip(ky, 0, height - 1) * width + np.clip(kx, 0, width - 1)
  ws2 = (2 * max_dis + 1) ** 2
  return index.reshape(height * width, ws2).astype(np.int32), valid.reshape(height * width, ws2)


class LocalAttention(nnx.Module):
  """`short_term_attn` (`MultiheadLocalAttentionV2`, `use_linear=False`): windowed attention over the previous frame.

  Per head `h` and window offset `w` of query `n`:
    `logit[n, h, w] = <q_n / sqrt(C / heads), k_{n+w}> + relative_emb(q)[n, h, w]` (keys outside the map:
    -1e8), softmax over the window, output `sum_w a[n, h, w] (v_{n+w} + V_bias[h, :, w])` -> `fc`.
  `relative_emb` is a 1x1 conv with `heads` groups on the unscaled `q` (`[C] -> [heads * ws^2]`, head-major);
  `V_bias` keeps the official shape `[1, heads, C / heads, ws^2, 1]`.
  """

  def __init__(self, d_model: int, num_heads: int, max_dis: int = 7, *, dtype: Any = None, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.max_dis = max_dis
    ws2 = (2 * max_dis + 1) ** 2
    self.relative_emb = nnx.Conv(d_model, num_heads * ws2, (1, 1), feature_group_count=num_heads, dtype=dtype,
                                 kernel_init=_xavier, bias_init=_zeros, rngs=rngs)
    self.V_bias = nnx.Param(jnp.zeros((1, num_heads, d_model // num_heads, ws2, 1), jnp.float32))
    self.fc = _linear(d_model, d_model, dtype, rngs)

  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """`q`, `k`, `v`: `[B, h, w, C]` -> `[B, h*w, C]`."""
    b, h, w, c = v.shape
    nh, hd = self.num_heads, c // self.num_heads
    index, valid = window_index(h, w, self.max_dis)
    ws2 = index.shape[1]
    rel = self.relative_emb(q).reshape(b, h * w, nh, ws2)
    qs = (q / (c / nh) ** 0.5).reshape(b, h * w, nh, hd)
    hp = jax.lax.Precision.HIGHEST
    k_win = k.reshape(b, h * w, nh, hd)[:, index]  # [B, HW, ws2, nh, hd]
    logits = jnp.einsum('bnhd,bnwhd->bnhw', qs, k_win, precision=hp) + rel
    logits = jnp.where(jnp.asarray(valid)[None, :, None, :], logits, -1e8)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    v_win = v.reshape(b, h * w, nh, hd)[:, index]
    out = jnp.einsum('bnhw,bnwhd->bnhd', attn * jnp.asarray(valid, attn.dtype)[None, :, None, :], v_win,
                     precision=hp)
    v_bias = self.V_bias.get_value()[0, ..., 0].astype(v.dtype)  # [nh, hd, ws2]
    out = out + jnp.einsum('bnhw,hdw->bnhd', attn, v_bias, precision=hp)
    return self.fc(out.reshape(b, h * w, c))


class LSTTLayer(nnx.Module):
  """`LongShortTermTransformerBlock` (module docstring). Parameter names are the official ones."""

  def __init__(self, d_model: int, self_heads: int, att_heads: int, dim_feedforward: int, *, droppath: float,
               drop_long_term: bool, max_dis: int = 7, dtype: Any = None, rngs: nnx.Rngs):
    self.self_attn = MultiheadAttention(d_model, self_heads, dtype=dtype, rngs=rngs)
    self.linear_Q = _linear(d_model, d_model, dtype, rngs)
    self.linear_V = _linear(d_model, d_model, dtype, rngs)
    self.long_term_attn = LongTermAttention(d_model, att_heads, dtype=dtype, rngs=rngs)
    self.short_term_attn = LocalAttention(d_model, att_heads, max_dis, dtype=dtype, rngs=rngs)
    self.linear1 = _linear(d_model, dim_feedforward, dtype, rngs)
    self.linear2 = _linear(dim_feedforward, d_model, dtype, rngs)
    self.norm1 = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)
    self.norm2 = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)
    self.norm3 = norms.layer_norm(d_model, dtype=dtype, rngs=rngs)
    self.activation = GNActGCTDWConv2d(dim_feedforward, dtype=dtype, rngs=rngs)
    self.droppath = drop_path(droppath, 3, rngs=rngs)
    self.drop_long_term = drop_long_term

  def _drop(self, x: jax.Array, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Official DropPath on `[HW, B, C]` tensors: one draw per token, shared over the batch."""
    if self.droppath is None or not train:
      return x
    return jnp.swapaxes(self.droppath(jnp.swapaxes(x, 0, 1), deterministic=False, rngs=rngs), 0, 1)

  def __call__(self, x: jax.Array, pos: jax.Array, size_2d: tuple[int, int], *,
               long_kv: tuple[jax.Array, jax.Array, jax.Array] | None = None,
               short_kv: tuple[jax.Array, jax.Array] | None = None, id_emb: jax.Array | None = None,
               train: bool = False, rngs: nnx.Rngs | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One layer.

    Args:
      x: `[B, HW, C]` tokens; `pos`: `[1 or B, HW, C]` sine position.
      long_kv: long-term memory `(K [B, M, C], V [B, M, C], valid bool [B, M])`, or None on a reference frame.
      short_kv: short-term memory `(K, V)` `[B, HW, C]` (with `long_kv`).
      id_emb: `[B, HW, C]` id embedding of this frame (reference frame only).

    Returns:
      `(x [B, HW, C], curr_K [B, HW, C], curr_normed [B, HW, C])`: the output and this frame's key and
      `norm1` output (a memory frame's value is `linear_V(curr_normed + id_emb)`, `memory_value`).
    """
    b, n, c = x.shape
    t = self.norm2(x)
    qk = t + pos
    x = x + self._drop(self.self_attn(qk, qk, t), train, rngs)
    normed = self.norm1(x)
    curr_q = self.linear_Q(normed)
    if long_kv is None:
      if id_emb is None:
        raise ValueError('LSTTLayer: a reference frame (no memory) needs id_emb.')
      value = self.memory_value(normed, id_emb)
      long_k, long_v, valid = curr_q, value, None
      short_k, short_v = curr_q, value
    else:
      long_k, long_v, valid = long_kv
      short_k, short_v = short_kv
    long_out = self.long_term_attn(curr_q, long_k, long_v, valid)
    if self.drop_long_term:
      long_out = self._drop(long_out, train, rngs)
    as_map = lambda y: y.reshape(b, *size_2d, c)
    short_out = self._drop(self.short_term_attn(as_map(curr_q), as_map(short_k), as_map(short_v)), train, rngs)
    x = x + long_out + short_out
    ffn = self.linear2(self.activation(self.linear1(self.norm3(x)), size_2d))
    return x + self._drop(ffn, train, rngs), curr_q, normed

  def memory_value(self, normed: jax.Array, id_emb: jax.Array) -> jax.Array:
    return self.linear_V(normed + id_emb)


class LongShortTermTransformer(nnx.Module):
  """`layers.{l}` and `decoder_norms.{l}` (official `final_norm=True`, `return_intermediate=True`)."""

  def __init__(self, num_layers: int, d_model: int, self_heads: int, att_heads: int, dim_feedforward: int, *,
               droppath: float, max_dis: int = 7, dtype: Any = None, rngs: nnx.Rngs):
    self.layers = nnx.List([
        LSTTLayer(d_model, self_heads, att_heads, dim_feedforward, droppath=droppath, drop_long_term=idx > 0,
                  max_dis=max_dis, dtype=dtype, rngs=rngs) for idx in range(num_layers)])
    self.decoder_norms = nnx.List([norms.layer_norm(d_model, dtype=dtype, rngs=rngs) for _ in range(num_layers)])


@flax.struct.dataclass
class LSTTMemory:
  """Fixed-capacity LSTT memory (a pytree; every field has a leading layer axis L).

  Attributes:
    long_k, long_v: `[L, B, S, HW, C]` long-term memory in `S` slots.
    long_valid: bool `[S]` slots holding a frame.
    written: int32 `[]` frames written to the long-term memory so far.
    short_k, short_v: `[L, B, HW, C]` short-term memory (the previous frame).
  """

  long_k: jax.Array
  long_v: jax.Array
  long_valid: jax.Array
  written: jax.Array
  short_k: jax.Array
  short_v: jax.Array

  @property
  def capacity(self) -> int:
    return self.long_k.shape[2]


def init_memory(k: jax.Array, v: jax.Array, capacity: int) -> LSTTMemory:
  """Memory holding one frame (`k`, `v` `[L, B, HW, C]`) in long-term slot 0 and as the short-term memory
  (the official `reset_memory`)."""
  if capacity < 1:
    raise ValueError(f'LSTT memory capacity must be >= 1, got {capacity}.')
  long_k = jnp.zeros(k.shape[:2] + (capacity,) + k.shape[2:], k.dtype).at[:, :, 0].set(k)
  long_v = jnp.zeros(v.shape[:2] + (capacity,) + v.shape[2:], v.dtype).at[:, :, 0].set(v)
  valid = jnp.zeros((capacity,), bool).at[0].set(True)
  return LSTTMemory(long_k, long_v, valid, jnp.asarray(1, jnp.int32), k, v)


def write_memory(memory: LSTTMemory, k: jax.Array, v: jax.Array, add_long: jax.Array | bool) -> LSTTMemory:
  """The official `update_short_term_memory`: `(k, v)` becomes the short-term memory and, when `add_long`, is
  added to the long-term memory.

  The official long-term memory grows without bound. Here it has `capacity` slots: slot 0 keeps the first frame
  (the reference frame re-run with its predicted ids); once all slots are used, new frames overwrite slots
  1..S-1 in FIFO order (oldest first). With capacity >= the number of additions + 1 the result equals the
  official one (attention over the memory does not depend on slot order).
  """
  s = memory.capacity
  n = memory.written
  slot = jnp.where(n < s, n, 1 + (n - 1) % max(s - 1, 1)) if s > 1 else jnp.asarray(0)
  add = jnp.asarray(add_long)
  long_k = jnp.where(add, memory.long_k.at[:, :, slot].set(k), memory.long_k)
  long_v = jnp.where(add, memory.long_v.at[:, :, slot].set(v), memory.long_v)
  valid = jnp.where(add, memory.long_valid.at[slot].set(True), memory.long_valid)
  return LSTTMemory(long_k, long_v, valid, n + add.astype(jnp.int32), k, v)


class LSTTBlock(nnx.Module):
  """`LSTTBlock`: `LSTT` (the transformer) and `patch_wise_id_bank`; the per-frame computations of the official
  state machine (the schedule itself lives in the callers: the model's training loop and the tracker)."""

  def __init__(self, *, max_obj_num: int, num_layers: int = 1, d_model: int = 256, self_heads: int = 4,
               att_heads: int = 2, dim_feedforward: int = 1024, droppath: float = 0.1, max_dis: int = 7,
               dtype: Any = None, rngs: nnx.Rngs):
    self.d_model = d_model
    self.LSTT = LongShortTermTransformer(num_layers, d_model, self_heads, att_heads, dim_feedforward,
                                         droppath=droppath, max_dis=max_dis, dtype=dtype, rngs=rngs)
    self.patch_wise_id_bank = nnx.Conv(max_obj_num + 1, d_model, (33, 33), strides=32,
                                       padding=((16, 16), (16, 16)), dtype=dtype, kernel_init=_xavier,
                                       bias_init=_zeros, rngs=rngs)

  def id_embedding(self, one_hot: jax.Array) -> jax.Array:
    """`one_hot [B, Hp, Wp, max_obj + 1]` (background last) -> `[B, Hp/32 * Wp/32, C]`."""
    e = self.patch_wise_id_bank(one_hot.astype(jnp.float32))
    return e.reshape(e.shape[0], -1, e.shape[-1])

  def memory_values(self, normed: jax.Array, id_emb: jax.Array) -> jax.Array:
    """Per-layer memory values `linear_V(normed + id_emb)`: `normed [L, B, HW, C]` -> `[L, B, HW, C]`."""
    return jnp.stack([layer.memory_value(normed[i], id_emb) for i, layer in enumerate(self.LSTT.layers)])

  def __call__(self, x: jax.Array, *, memory: LSTTMemory | None = None, id_emb: jax.Array | None = None,
               train: bool = False, rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """One frame through the LSTT.

    Args:
      x: `[B, h, w, C]` projected C5 (`encoder_projector` output).
      memory: the memory (propagation), or None for a reference frame, which then needs `id_emb`.
      id_emb: `[B, h*w, C]` (`id_embedding`) of the reference frame's id mask.

    Returns:
      dict: `outputs` `[L, B, h, w, C]` (each layer's output after its `decoder_norms`), `keys` and `normed`
      `[L, B, h*w, C]` (this frame's memory keys and `norm1` outputs), and for a reference frame `values`
      `[L, B, h*w, C]` (its memory values).
    """
    b, h, w, c = x.shape
    pos = position.sine_position_embedding_unmasked(1, h, w, c // 2, zero_based=True).reshape(1, h * w, c)
    pos = pos.astype(x.dtype)
    tokens = x.reshape(b, h * w, c)
    outputs, keys, normed = [], [], []
    for i, layer in enumerate(self.LSTT.layers):
      if memory is None:
        tokens, k, n = layer(tokens, pos, (h, w), id_emb=id_emb, train=train, rngs=rngs)
      else:
        long_kv = (memory.long_k[i].reshape(b, -1, c), memory.long_v[i].reshape(b, -1, c),
                   jnp.broadcast_to(jnp.repeat(memory.long_valid, h * w)[None], (b, memory.capacity * h * w)))
        tokens, k, n = layer(tokens, pos, (h, w), long_kv=long_kv, short_kv=(memory.short_k[i], memory.short_v[i]),
                             train=train, rngs=rngs)
      outputs.append(self.LSTT.decoder_norms[i](tokens).reshape(b, h, w, c))
      keys.append(k)
      normed.append(n)
    out = dict(outputs=jnp.stack(outputs), keys=jnp.stack(keys), normed=jnp.stack(normed))
    if memory is None:
      out['values'] = self.memory_values(out['normed'], id_emb)
    return out
