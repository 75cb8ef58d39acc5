"""Optimizer rules against a float64 NumPy AdamW with torch semantics, the detectron2 schedule, sharding rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from visjax.train import mesh as mesh_lib
from visjax.train import optim


def _config(**train):
  c = common.base_config()
  c.train.update(train)
  return c


@pytest.mark.parametrize('step,expected', [
    (0, 0.001 * 1e-2), (5, (0.001 * 0.5 + 0.5) * 1e-2), (9, (0.001 * 0.1 + 0.9) * 1e-2), (10, 1e-2),
    (99, 1e-2), (100, 1e-3), (101, 1e-3), (199, 1e-3), (200, 1e-4), (10_000, 1e-4)])
def test_warmup_multistep_schedule(step, expected):
  kwargs = dict(warmup_steps=10, warmup_factor=0.001, lr_steps=(100, 200), lr_gamma=0.1)
  schedule = optim.warmup_multistep_schedule(1e-2, **kwargs)
  np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-6)
  np.testing.assert_allclose(optim.schedule_value_np(step, 1e-2, **kwargs), expected, rtol=1e-12)


def test_schedule_rejects_unsorted_steps():
  with pytest.raises(ValueError, match='lr_steps'):
    optim.warmup_multistep_schedule(1.0, warmup_steps=0, warmup_factor=1.0, lr_steps=(20, 10), lr_gamma=0.1)


def _numpy_adamw(params, grads_seq, *, lr_fn, mults, decays, clip, b1=0.9, b2=0.999, eps=1e-8):
  """torch.optim.AdamW + clip_grad_norm_ in float64, one group per leaf name."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v2 = {k: np.zeros_like(v) for k, v in p.items()}
  for t, grads in enumerate(grads_seq, start=1):
    g = {k: np.asarray(x, np.float64) for k, x in grads.items()}
    if clip > 0:
      norm = np.sqrt(sum(np.sum(x ** 2) for x in g.values()))
      coef = min(1.0, clip / (norm + 1e-6))
      g = {k: x * coef for k, x in g.items()}
    for k in p:
      lr = lr_fn(t - 1) * mults[k]
      p[k] = p[k] * (1 - lr * decays[k])
      m[k] = b1 * m[k] + (1 - b1) * g[k]
      v2[k] = b2 * v2[k] + (1 - b2) * g[k] ** 2
      mhat = m[k] / (1 - b1 ** t)
      vhat = v2[k] / (1 - b2 ** t)
      p[k] = p[k] - lr * mhat / (np.sqrt(vhat) + eps)
  return p


@pytest.mark.parametrize('clip', [0.0, 0.05])
def test_adamw_matches_torch_semantics(clip):
  config = _config(lr=0.1, backbone_lr_mult=0.1, weight_decay=0.01, warmup_steps=2, warmup_factor=0.5,
                   lr_steps=(3,), lr_gamma=0.1, clip_grad_norm=clip, backbone_wd_mult=0.5,
                   no_weight_decay=(r'norm',), frozen=(r'frozen',))
  rng = np.random.default_rng(0)
  params = {'backbone': {'conv': rng.normal(size=(3, 4)).astype(np.float32)},
            'head': {'kernel': rng.normal(size=(4,)).astype(np.float32),
                     'norm': rng.normal(size=(2,)).astype(np.float32)},
            'frozen': {'w': rng.normal(size=(2,)).astype(np.float32)}}
  grads_seq = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params) for _ in range(5)]
  # Frozen leaves (`requires_grad=False`) are left out of the optimizer, its state and the clipping norm.
  trainable, frozen = optim.split_frozen(params, config)
  assert list(frozen) == ['frozen']
  tx = optim.make_optimizer(config, trainable)
  state = tx.init(trainable)
  p = jax.tree.map(jnp.asarray, trainable)
  for g in grads_seq:
    updates, state = tx.update(optim.split_frozen(g, config)[0], state, p)
    p = jax.tree.map(lambda a, u: a + u, p, updates)

  flat = lambda tree: {mesh_lib.path_str(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  names = list(flat(trainable))
  mults = {'backbone/conv': 0.1, 'head/kernel': 1.0, 'head/norm': 1.0}
  decays = {'backbone/conv': 0.005, 'head/kernel': 0.01, 'head/norm': 0.0}
  assert sorted(names) == sorted(mults)
  lr_fn = lambda i: optim.schedule_value_np(i, 0.1, warmup_steps=2, warmup_factor=0.5, lr_steps=(3,),
                                            lr_gamma=0.1)
  want = _numpy_adamw(flat(trainable), [flat(optim.split_frozen(g, config)[0]) for g in grads_seq], lr_fn=lr_fn,
                      mults=mults, decays=decays, clip=clip)
  got = flat(optim.merge_frozen(p, frozen))
  for k in names:
    rel = np.linalg.norm(np.asarray(got[k], np.float64) - want[k]) / np.linalg.norm(want[k])
    assert rel < 1e-5, (k, rel)
  np.testing.assert_array_equal(got['frozen/w'], params['frozen']['w'])


def test_clipping_scales_to_max_norm():
  tx = optim.clip_by_global_norm_torch(1.0)
  g = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([12.0])}  # norm 13
  out, _ = tx.update(g, tx.init(g))
  norm = np.sqrt(sum(float(jnp.sum(x ** 2)) for x in jax.tree.leaves(out)))
  np.testing.assert_allclose(norm, 13.0 / (13.0 + 1e-6), rtol=1e-6)
  small = {'a': jnp.array([0.3, 0.4])}
  out, _ = tx.update(small, tx.init(small))
  np.testing.assert_allclose(out['a'], small['a'])


@pytest.mark.parametrize('data,model,n,expected', [(-1, 1, 8, (8, 1)), (4, -1, 8, (4, 2)), (2, 4, 8, (2, 4)),
                                                   (-1, 2, 8, (4, 2))])
def test_mesh_shape(data, model, n, expected):
  assert mesh_lib.mesh_shape(data, model, n) == expected


@pytest.mark.parametrize('data,model,n', [(3, 1, 8), (-1, -1, 8), (-1, 3, 8), (0, 1, 8), (2, 2, 8)])
def test_mesh_shape_errors(data, model, n):
  with pytest.raises(ValueError, match='(?i)mesh'):
    mesh_lib.mesh_shape(data, model, n)


def test_fsdp_spec_picks_largest_divisible_dim():
  assert mesh_lib._fsdp_spec((3, 16, 8), 4) == jax.P(None, 'data', None)
  assert mesh_lib._fsdp_spec((12, 6), 4) == jax.P('data', None)
  assert mesh_lib._fsdp_spec((3, 5), 4) == jax.P()
  assert mesh_lib._fsdp_spec((), 4) == jax.P()
  assert mesh_lib._fsdp_spec((16,), 1) == jax.P()


def test_infer_sharding_rules_apply_by_path():
  mesh = jax.make_mesh((1, 1), ('data', 'model'))
  tree = {'params': {'backbone': {'kernel': jnp.zeros((4, 4))}, 'head': {'kernel': jnp.zeros((4,))}}}
  out = mesh_lib.infer_sharding(tree, mesh, [(r'backbone', 'fsdp'), (r'.*', 'replicate')])
  assert out['params']['head']['kernel'].spec == jax.P()
  with pytest.raises(ValueError, match='fsdp_rules'):
    mesh_lib.infer_sharding(tree, mesh, [(r'x', 'shard_all')])
