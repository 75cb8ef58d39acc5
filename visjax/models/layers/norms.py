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
  """torch `nn.BatchNorm2d`: eval mode (mmdet `norm_eval=True`, the default here) normalises with the running
  statistics; training mode (IAI's head BN) normalises with the batch statistics and updates the running ones.

  Variables: `weight`, `bias` (`nnx.Param`, `[C]`; turned `Frozen` by `freeze()` in frozen stages),
  `running_mean`, `running_var` (`nnx.BatchStat`, `[C]`; updated in place in training mode with torch's
  `momentum` and the unbiased batch variance; the engine carries them as non-trainable state).

  Batch statistics are over every axis but the channel axis. Under `jax.jit` with a batch sharded over the
  `data` mesh axis that is the global batch, i.e. torch's `SyncBatchNorm`; inside `shard_map` / `pmap`, pass
  `axis_name` to average the per-device moments over that axis (per-device statistics otherwise).
  """

  def __init__(self, num_features: int, *, eps: float = TORCH_EPS, momentum: float = 0.1):
    self.eps = eps
    self.momentum = momentum
    self.weight = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.running_mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.running_var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: jax.Array, *, use_running_average: bool = True, axis_name: str | None = None,
               update_stats: bool = True) -> jax.Array:
    """`x [..., C]` -> `[..., C]` (same dtype as `x`).

    Args:
      use_running_average: eval mode (True) or batch statistics (False, torch `train()`).
      axis_name: mapped axis to average the batch moments over (inside shard_map / pmap only).
      update_stats: in training mode, also update `running_mean` / `running_var`.
    """
    if use_running_average:
      mean, var = self.running_mean.get_value(), self.running_var.get_value()
    else:
      axes = tuple(range(x.ndim - 1))
      xf = x.astype(jnp.float32)
      mean = jnp.mean(xf, axes)
      if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
      var = jnp.mean(jnp.square(xf - mean), axes)  # two-pass, as torch
      if axis_name is not None:
        var = jax.lax.pmean(var, axis_name)
      if update_stats:
        n = x.size // x.shape[-1] * (1 if axis_name is None else jax.lax.psum(1, axis_name))
        unbiased = var * (n / jnp.maximum(n - 1, 1))
        m = self.momentum
        self.running_mean.set_value((1 - m) * self.running_mean.get_value() + m * jax.lax.stop_gradient(mean))
        self.running_var.set_value((1 - m) * self.running_var.get_value() + m * jax.lax.stop_gradient(unbiased))
    scale, shift = _fold_bn(self.weight.get_value(), self.bias.get_value(), mean, var, self.eps)
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
