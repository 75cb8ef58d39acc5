"""VITA losses (visjax/models/vita/criterion.py) vs a torch port of the official criteria
(tests/torch_refs/vita_criterion_ref.py) fed the same random points; jit / gradient / padding checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import vita_common
from visjax.models.heads import point_sampling
from visjax.models.vita import criterion as vita_criterion

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import vita_criterion_ref  # pylint: disable=g-import-not-at-top

B, T, N, H, W = 2, 3, 4, 32, 40  # batch masks; the model input is padded to 32 x 64
HP, WP = 32, 64
Q, CQ, K, C = 6, 5, 4, 8
LF, L, D = 4, 3, 2  # frame-decoder predictions, frame layers fed to VITA, VITA decoder layers
POINTS = 16


def _batch(rng):
  masks = np.zeros((B, T, N, H, W), np.uint8)
  present = np.zeros((B, T, N), bool)
  for b in range(B):
    for n in range(3):  # slot 3 is padding
      for t in range(T):
        if (b, n, t) in ((0, 1, 1), (1, 2, 0), (1, 2, 2)):
          continue  # absent in that frame
        y, x = rng.integers(0, H - 8), rng.integers(0, W - 8)
        masks[b, t, n, y:y + rng.integers(4, 12), x:x + rng.integers(4, 16)] = 1
        present[b, t, n] = True
  return dict(masks=masks, present=present, labels=np.asarray([[1, 3, 0, -1], [2, 2, 1, -1]], np.int32),
              track_ids=np.asarray([[5, 9, 7, -1], [3, 4, 8, -1]], np.int32),
              instance_valid=np.asarray([[True, True, True, False]] * 2))


def _outputs(rng):
  f = lambda *s: rng.normal(size=s).astype(np.float32)
  return {'frame': {'pred_logits': f(LF, B * T, Q, K + 1), 'pred_masks': 3 * f(LF, B * T, Q, HP // 4, WP // 4)},
          'video': {'pred_logits': f(D, L, B, CQ, K + 1), 'pred_masks': 3 * f(D, L, B, CQ, T, HP // 4, WP // 4),
                    'pred_fq_embed': 0.5 * f(L, B, T, Q, C), 'pred_cq_embed': 0.5 * f(D, L, B, CQ, C)}}


def _settings():
  return vita_criterion.LossSettings(**dict(vita_common.loss_config().to_dict(), train_num_points=POINTS))


def _draws(rng):
  s, _, r = point_sampling.num_sampled_points(POINTS, 3.0, 0.75)
  u = lambda *shape: rng.uniform(size=shape).astype(np.float32)
  return vita_criterion.PointDraws(u(LF, B * T, POINTS, 2), u(LF, B * T, N, 1, s, 2), u(LF, B * T, N, 1, r, 2)), \
      vita_criterion.PointDraws(u(D, L * B, POINTS, 2), u(D, L * B, N, T, s, 2), u(D, L * B, N, T, r, 2))


def test_matches_official_criteria():
  rng = np.random.default_rng(0)
  batch, outputs = _batch(rng), _outputs(rng)
  frame_draws, video_draws = _draws(rng)
  targets = vita_criterion.prepare_targets({k: jnp.asarray(v) for k, v in batch.items()})
  assert targets.masks.shape == (B, T, N, HP, WP)
  run = jax.jit(lambda o, t, fd, vd: vita_criterion.criterion(o, t, fd, vd, _settings()))
  total, losses = run(jax.tree.map(jnp.asarray, outputs), targets, frame_draws, video_draws)

  ref = vita_criterion_ref.Criteria(K, POINTS, {
      'frame_match': frame_draws.match, 'frame_over': frame_draws.over, 'frame_extra': frame_draws.extra,
      'video_match': video_draws.match, 'video_over': video_draws.over, 'video_extra': video_draws.extra})
  ref_batch = dict(batch, masks=np.asarray(targets.masks))
  ref_batch.pop('instance_valid')
  expected = ref(jax.tree.map(torch.from_numpy, outputs['frame']), jax.tree.map(torch.from_numpy, outputs['video']),
                 dict(ref_batch, instance_valid=batch['instance_valid']))
  assert set(losses) == set(expected)
  assert len(expected) == 3 * LF + 3 * D + 1
  for key, value in expected.items():
    np.testing.assert_allclose(float(losses[key]), float(value), rtol=2e-5, atol=1e-6, err_msg=key)
  np.testing.assert_allclose(float(total), sum(float(v) for v in expected.values()), rtol=2e-5)
  assert float(losses['loss_vita_sim']) > 0 and float(losses['loss_mask']) > 0


def test_vita_loss_jits_with_gradients_and_padded_instances():
  """Drawn points, gradients finite and only from valid slots; a batch with no instance gives finite losses."""
  rng = np.random.default_rng(1)
  batch = {k: jnp.asarray(v) for k, v in _batch(rng).items()}
  outputs = jax.tree.map(jnp.asarray, _outputs(rng))

  def loss(o, b):
    return vita_criterion.vita_loss(o, b, rng=jax.random.key(0), s=_settings())

  run = jax.jit(jax.value_and_grad(loss, has_aux=True))
  (value, _), grads = run(outputs, batch)
  assert np.isfinite(float(value))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert float(np.abs(grads['video']['pred_fq_embed']).sum()) > 0  # the similarity loss reaches the embeddings
  empty = dict(batch, present=jnp.zeros_like(batch['present']), instance_valid=jnp.zeros_like(batch['instance_valid']))
  (value, losses), grads = run(outputs, empty)  # same shapes: no recompilation
  assert np.isfinite(float(value)) and float(losses['loss_mask']) == 0. and float(losses['loss_vita_sim']) == 0.
  assert float(losses['loss_ce']) > 0.  # every query is trained to no-object
  assert float(np.abs(grads['frame']['pred_masks']).sum()) == 0.


def test_settings_from_config():
  config = vita_common.loss_config()
  s = vita_criterion.loss_settings(config)
  assert s.train_num_points == 12544 and s.class_weight == 2.0 and s.sim_weight == 0.5
  del config['dice_weight']
  with pytest.raises(ValueError, match=r"config.loss: missing field\(s\) \['dice_weight'\]"):
    vita_criterion.loss_settings(config)


def test_more_slots_than_queries_rejected():
  rng = np.random.default_rng(2)
  outputs = jax.tree.map(jnp.asarray, _outputs(rng))
  batch = {k: jnp.asarray(v) for k, v in _batch(rng).items()}
  wide = {k: jnp.concatenate([v, v], axis=2 if k in ('masks', 'present') else 1) if k != 'image' else v
          for k, v in batch.items()}  # 8 slots > 6 frame queries
  with pytest.raises(ValueError, match='8 instance slots'):
    vita_criterion.vita_loss(outputs, wide, rng=jax.random.key(0), s=_settings())
