"""AdamW as the original trainers build it: per-parameter lr/decay multipliers, warmup multi-step lr, clipping.

The originals (detectron2 `build_optimizer` in IDOL/VITA/VISOLO) use torch AdamW with parameter groups:
  * lr × `train.backbone_lr_mult` for parameters whose name contains 'backbone';
  * weight decay `train.weight_decay` on every parameter, except those matching `train.no_weight_decay`
    regexes (VITA: norms, embeddings, relative position tables), and × `train.backbone_wd_mult` on the backbone;
  * parameters matching `train.frozen` regexes have `requires_grad=False`: they are not in the optimizer (no
    Adam state, no decay) and not clipped; `split_frozen` / `merge_frozen` separate them, the train step
    differentiates and updates only the trainable part;
  * full-model gradient L2 clipping at `train.clip_grad_norm` (≤ 0: off), applied to the raw gradients;
  * `WarmupMultiStepLR`: linear warmup from `warmup_factor` over `warmup_steps`, × `lr_gamma` at each of `lr_steps`.
torch AdamW applies decay as p ← p − lr·wd·p, i.e. decay scaled by the group's lr, which this reproduces.
"""

import bisect
import re
from typing import Any, NamedTuple, Sequence

from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax

from visjax.train import mesh as mesh_lib


def warmup_multistep_schedule(base_lr: float, *, warmup_steps: int, warmup_factor: float,
                              lr_steps: Sequence[int], lr_gamma: float) -> optax.Schedule:
  """detectron2 WarmupMultiStepLR ('linear' warmup) as an optax schedule of the update count (0-based).

  lr(i) = base_lr · w(i) · gamma^(number of lr_steps ≤ i), with w(i) = warmup_factor·(1 − i/W) + i/W for i < W
  and 1 afterwards.
  """
  milestones = sorted(int(s) for s in lr_steps)
  if list(milestones) != [int(s) for s in lr_steps]:
    raise ValueError(f'config.train.lr_steps={tuple(lr_steps)} must be increasing.')
  bounds = jnp.asarray(milestones, jnp.int32) if milestones else jnp.zeros((0,), jnp.int32)

  def schedule(count):
    count = jnp.asarray(count, jnp.int32)
    decay = lr_gamma ** jnp.sum(count >= bounds).astype(jnp.float32)
    if warmup_steps > 0:
      alpha = jnp.minimum(count.astype(jnp.float32) / warmup_steps, 1.0)
      warm = jnp.where(count < warmup_steps, warmup_factor * (1.0 - alpha) + alpha, 1.0)
    else:
      warm = 1.0
    return base_lr * warm * decay

  return schedule


def schedule_value_np(step: int, base_lr: float, *, warmup_steps: int, warmup_factor: float,
                      lr_steps: Sequence[int], lr_gamma: float) -> float:
  """The same schedule on the host in Python floats (for logs and tests)."""
  decay = lr_gamma ** bisect.bisect_right(sorted(lr_steps), step)
  warm = 1.0
  if step < warmup_steps:
    alpha = step / warmup_steps
    warm = warmup_factor * (1.0 - alpha) + alpha
  return base_lr * warm * decay


def schedule_from_config(config: ml_collections.ConfigDict) -> optax.Schedule:
  t = config.train
  return warmup_multistep_schedule(t.lr, warmup_steps=t.warmup_steps, warmup_factor=t.warmup_factor,
                                   lr_steps=tuple(t.lr_steps), lr_gamma=t.lr_gamma)


def split_frozen(params: dict, config: ml_collections.ConfigDict) -> tuple[dict, dict]:
  """(trainable, frozen): the leaves of the nested dict `params` whose path ('a/b/0/c', `mesh.path_str`) matches
  no / some `config.train.frozen` regex, each a nested dict of the same layout (frozen `{}` when none match).

  Raises:
    ValueError naming `config.train.frozen` when a regex matches no parameter or every parameter is frozen.
  """
  patterns = tuple(config.train.get('frozen', ()))
  flat = traverse_util.flatten_dict(params, keep_empty_nodes=True)
  name = lambda key: '/'.join(str(k) for k in key)
  names = {key: name(key) for key, value in flat.items() if value is not traverse_util.empty_node}
  regexes = [re.compile(r) for r in patterns]
  for text, regex in zip(patterns, regexes):
    if not any(regex.search(n) for n in names.values()):
      raise ValueError(f'config.train.frozen regex {text!r} matches no parameter (paths look like '
                       f'{next(iter(names.values()), "")!r}).')
  frozen_keys = {key for key, n in names.items() if any(r.search(n) for r in regexes)}
  if names and len(frozen_keys) == len(names):
    raise ValueError(f'config.train.frozen={patterns!r} freezes every parameter: nothing to train.')
  trainable = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k not in frozen_keys})
  frozen = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k in frozen_keys})
  return trainable, frozen


def merge_frozen(trainable: dict, frozen: dict) -> dict:
  """Inverse of `split_frozen`: the full nested parameter dict."""
  flat = lambda tree: traverse_util.flatten_dict(tree, keep_empty_nodes=True)
  return traverse_util.unflatten_dict({**flat(trainable), **flat(frozen)})


def param_multipliers(params: Any, config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """Per-leaf (lr multiplier, weight decay) trees for `params` (a pytree of arrays) from the config rules."""
  t = config.train
  no_wd = [re.compile(r) for r in t.get('no_weight_decay', ())]
  backbone_wd_mult = t.get('backbone_wd_mult', 1.0)

  def lr_mult(path, _):
    return t.backbone_lr_mult if 'backbone' in mesh_lib.path_str(path) else 1.0

  def decay(path, _):
    name = mesh_lib.path_str(path)
    if any(r.search(name) for r in no_wd):
      return 0.0
    return t.weight_decay * (backbone_wd_mult if 'backbone' in name else 1.0)

  return (jax.tree_util.tree_map_with_path(lr_mult, params),
          jax.tree_util.tree_map_with_path(decay, params))


class _EmptyState(NamedTuple):
  pass


def _decay_and_scale(lr_mults: Any, decays: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """u ← −lr(step)·mult·(u + wd·p), with per-leaf Python-float `mult`, `wd` (static, baked into the graph)."""

  def init_fn(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params):
    if params is None:
      raise ValueError('This optimizer applies weight decay and needs `params` in `update`.')
    lr = schedule(state.count)

    def one(u, p, mult, wd):
      if wd:
        u = u + wd * p
      return (-lr * mult * u).astype(u.dtype)

    new = jax.tree.map(one, updates, params, lr_mults, decays)
    return new, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """The training optimizer for the trainable `params` (pytree of arrays or ShapeDtypeStructs; frozen parameters
  are left out, see `split_frozen`) from `config.train`.

  Torch AdamW defaults: betas (0.9, 0.999), eps 1e-8 (overridable by `train.adam_b1/b2/eps`).
  """
  t = config.train
  lr_mults, decays = param_multipliers(params, config)
  parts = []
  if t.clip_grad_norm and t.clip_grad_norm > 0:
    parts.append(clip_by_global_norm_torch(t.clip_grad_norm))
  parts.append(optax.scale_by_adam(b1=t.get('adam_b1', 0.9), b2=t.get('adam_b2', 0.999),
                                   eps=t.get('adam_eps', 1e-8)))
  parts.append(_decay_and_scale(lr_mults, decays, schedule_from_config(config)))
  return optax.chain(*parts)


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
  """torch.nn.utils.clip_grad_norm_: g ← g · min(1, max_norm / (‖g‖₂ + 1e-6)) over all leaves."""

  def init_fn(params):
    del params
    return _EmptyState()

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: (g * coef).astype(g.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)

