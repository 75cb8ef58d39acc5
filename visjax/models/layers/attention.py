"""`torch.nn.MultiheadAttention` in Flax NNX (batch-first), on `jax.nn.dot_product_attention`.

Shared by every transformer in visjax (IDOL's decoder self-attention, Mask2Former's masked decoder, VITA's object
encoder/decoder, IAI's LSTT). Parameter names split torch's fused `in_proj_weight` / `in_proj_bias` into
`q_proj`, `k_proj`, `v_proj` (rows `[0:C]`, `[C:2C]`, `[2C:3C]`) and keep `out_proj`, so conversion rules are
three slices of one tensor (`visjax.convert.rules.mha_rules`).

Masks follow torch's conventions:
  * `key_padding_mask` bool `[B, K]`: True = ignore that key.
  * `attn_mask` `[Q, K]`, `[B, Q, K]` or `[B, H, Q, K]`: bool (True = not allowed) or float (added to the logits,
    e.g. Mask2Former's / VITA's additive -1000 shifted-window mask).
A query row whose keys are all disallowed gives NaN in torch; callers that need a defined result (Mask2Former's
masked attention) un-mask such rows before calling, as the official code does.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

_xavier = nnx.initializers.xavier_uniform()


def _as_bias(attn_mask: jax.Array | None, key_padding_mask: jax.Array | None, b: int, q: int, k: int,
             n_heads: int) -> jax.Array | None:
  """Additive float32 logits bias `[B, H, Q, K]` (broadcastable) from torch-style masks; None if neither."""
  bias = None
  if attn_mask is not None:
    m = attn_mask
    if m.ndim == 2:
      m = m[None, None]
    elif m.ndim == 3:
      if m.shape[0] == b * n_heads:  # torch's [B*H, Q, K] layout
        m = m.reshape(b, n_heads, q, k)
      else:
        m = m[:, None]
    bias = jnp.where(m, -jnp.inf, 0.).astype(jnp.float32) if m.dtype == jnp.bool_ else m.astype(jnp.float32)
  if key_padding_mask is not None:
    if key_padding_mask.shape != (b, k):
      raise ValueError(f'MultiheadAttention: key_padding_mask must be [B, K] = {(b, k)}, '
                       f'got {key_padding_mask.shape}.')
    kp = jnp.where(key_padding_mask[:, None, None, :], -jnp.inf, 0.).astype(jnp.float32)
    bias = kp if bias is None else bias + kp
  return bias


class MultiheadAttention(nnx.Module):
  """`torch.nn.MultiheadAttention(d_model, n_heads, dropout)` with `batch_first=True` semantics.

  Attention-probability dropout as torch; with dropout inactive the core is `jax.nn.dot_product_attention`
  (XLA implementation, float32 softmax).
  """

  def __init__(self, d_model: int, n_heads: int, dropout: float = 0., *, dtype: Any = None,
               kdim: int | None = None, vdim: int | None = None, rngs: nnx.Rngs):
    if d_model % n_heads:
      raise ValueError(f'MultiheadAttention: d_model {d_model} not divisible by n_heads {n_heads}.')
    self.n_heads = n_heads
    # xavier on the fused [3C, C] in_proj_weight == variance_scaling(0.5, fan_avg) on each [C, C] part.
    in_init = nnx.initializers.variance_scaling(0.5, 'fan_avg', 'uniform')
    zeros = nnx.initializers.zeros_init()
    self.q_proj = nnx.Linear(d_model, d_model, dtype=dtype, kernel_init=in_init, bias_init=zeros, rngs=rngs)
    self.k_proj = nnx.Linear(kdim or d_model, d_model, dtype=dtype, kernel_init=in_init, bias_init=zeros,
                             rngs=rngs)
    self.v_proj = nnx.Linear(vdim or d_model, d_model, dtype=dtype, kernel_init=in_init, bias_init=zeros,
                             rngs=rngs)
    self.out_proj = nnx.Linear(d_model, d_model, dtype=dtype, kernel_init=_xavier, bias_init=zeros, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array, *,
               key_padding_mask: jax.Array | None = None, attn_mask: jax.Array | None = None,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> jax.Array:
    """`query [B, Q, C]`, `key [B, K, kdim]`, `value [B, K, vdim]` -> `[B, Q, C]` (masks: module docstring)."""
    b, q, c = query.shape
    k = key.shape[1]
    h = self.n_heads
    d = c // h
    qh = self.q_proj(query).reshape(b, q, h, d)
    kh = self.k_proj(key).reshape(b, k, h, d)
    vh = self.v_proj(value).reshape(b, k, h, d)
    bias = _as_bias(attn_mask, key_padding_mask, b, q, k, h)
    if deterministic or self.dropout.rate == 0:
      out = jax.nn.dot_product_attention(qh, kh, vh, bias=None if bias is None else bias.astype(qh.dtype),
                                         implementation='xla')
    else:
      logits = jnp.einsum('bqhd,bkhd->bhqk', qh * (d ** -0.5), kh).astype(jnp.float32)
      if bias is not None:
        logits = logits + bias
      probs = jax.nn.softmax(logits, axis=-1).astype(vh.dtype)
      probs = self.dropout(probs, deterministic=False, rngs=rngs)
      out = jnp.einsum('bhqk,bkhd->bqhd', probs, vh)
    return self.out_proj(out.reshape(b, q, c))
