"""Normalisation layers matching PyTorch semantics, and the `Frozen` variable type.

Trainability is encoded in the variable type, so optimisers and `jax.grad` only ever see what should move:

* `nnx.Param`: trainable weights. `nnx.state(model, nnx.Param)` is exactly the trainable set.
* `Frozen`: weights that never receive updates: the four buffers of detectron2's `FrozenBatchNorm2d` and every
  weight of a frozen stage (`freeze_at` / `frozen_stages`), converted by `freeze()`.
* `nnx.BatchStat`: running statistics of an eval-mode BatchNorm (read, never updated here).

All norms take NHWC inputs and normalise over the last (channel) axis. Epsilons default to PyTorch's 1e-5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

TORCH_EPS = 1e-5


class Frozen(nnx.Variable):
  """A weight excluded from training (not an `nnx.Param`): FrozenBN buffers and frozen-stage weights."""


def _fold_bn(weight, bias, mean, var, eps: float):
  """Returns (scale, shift) with `x * scale + shift` == BN(x), in the order detectron2's FrozenBN applies them."""
  scale = weight * jax.lax.rsqrt(var + eps)
  return scale, bias - mean * scale


class FrozenBatchNorm2d(nnx.Module):
  """detectron2 `FrozenBatchNorm2d`: a fixed per-channel affine from BN statistics.

  Variables (all `Frozen`, shapes `[C]`): `weight`, `bias`, `running_mean`, `running_var`, named as the
  torch buffers. Output: `x * scale + shift` with `scale = weight / sqrt(running_var + eps)` and
  `shift = bias - running_mean * scale`.
  """

  def __init__(self, num_features: int, *, eps: float = TORCH_EPS):
    self.eps = eps
    self.weight = Frozen(jnp.ones((num_features,), jnp.float32))
    self.bias = Frozen(jnp.zeros((num_features,), jnp.float32))
    self.running_mean = Frozen(jnp.zeros((num_features,), jnp.float32))
    self.running_var = Frozen(jnp.ones((num_features,), jnp.float32) - eps)

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [..., C]` -> `[..., C]` (same dtype as `x`)."""
    scale, shift = _fold_bn(self.weight.get_value(), self.bias.get_value(), self.running_mean.get_value(),
                            self.running_var.get_value(), self.eps)
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


class BatchNorm2d(nnx.Module):
  """torch `nn.BatchNorm2d` in eval mode (mmdet `norm_eval=True`): normalises with the running statistics.

  Variables: `weight`, `bias` (`nnx.Param`, `[C]`; turned `Frozen` by `freeze()` in frozen stages),
  `running_mean`, `running_var` (`nnx.BatchStat`, `[C]`, never updated: training-mode batch statistics are not
  implemented because none of the ported methods trains them).
  """

  def __init__(self, num_features: int, *, eps: float = TORCH_EPS):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    """`x [..., C]` -> `[..., C]` (same dtype as `x`)."""
    scale, shift = _fold_bn(self.weight.get_value(), self.bias.get_value(), self.running_mean.get_value(),
                            self.running_var.get_value(), self.eps)
    return x * scale.astype(x.dtype) + shift.astype(x.dtype)


def layer_norm(num_features: int, *, rngs: nnx.Rngs, eps: float = TORCH_EPS,
               dtype: jnp.dtype | None = None) -> nnx.LayerNorm:
  """torch `nn.LayerNorm` over the last axis: eps 1e-5 and two-pass variance. Variables `scale`, `bias` `[C]`.

  `dtype` is the output/compute dtype (statistics are computed in at least float32); params stay float32.
  """
  return nnx.LayerNorm(num_features, epsilon=eps, use_fast_variance=False, dtype=dtype, rngs=rngs)


def group_norm(num_features: int, *, rngs: nnx.Rngs, num_groups: int = 32, eps: float = TORCH_EPS,
               dtype: jnp.dtype | None = None) -> nnx.GroupNorm:
  """torch `nn.GroupNorm(num_groups, C)` over the last axis (detectron2 `get_norm('GN', C)`): eps 1e-5, two-pass
  variance. Variables `scale`, `bias` `[C]` (torch `weight`, `bias`)."""
  if num_features % num_groups:
    raise ValueError(f'GroupNorm: {num_features} channels are not divisible into {num_groups} groups.')
  return nnx.GroupNorm(num_features, num_groups=num_groups, epsilon=eps, use_fast_variance=False, dtype=dtype,
                       rngs=rngs)


def freeze(module: nnx.Module) -> nnx.Module:
  """Turns every `nnx.Param` under `module` into a `Frozen` variable, in place; returns `module`.

  Values and paths are unchanged, so checkpoints load the same way; only the type (and so membership in
  `nnx.state(model, nnx.Param)`, the optimiser's and `jax.grad`'s view) changes.
  """
  for _, sub in nnx.iter_modules(module):
    for name, value in list(vars(sub).items()):
      if isinstance(value, nnx.Param):
        setattr(sub, name, Frozen(value.get_value()))
  return module
