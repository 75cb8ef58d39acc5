"""VISOLO loss (`visjax.models.visolo.criterion`) against a torch port of the official targets (`getGridClassAndMask`)
and losses (`CategoryLoss`, `MaskLoss`, `TrackingLoss`) on random predictions and instance masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visjax.models.visolo import criterion

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import visolo_ref  # pylint: disable=g-import-not-at-top

B, T, N, C, D = 2, 3, 4, 5, 8
GRID = (4, 6)
H, W = 32, 48  # mask features 8 x 12


def _batch(seed):
  """Random ellipse instances; clip 1 has an empty frame 2 and a padding slot."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:H, :W]
  masks = np.zeros((B, T, N, H, W), np.uint8)
  for b in range(B):
    for t in range(T):
      for n in range(N):
        if rng.random() < 0.15 or (b == 1 and (t == 2 or n == N - 1)):
          continue
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(3, H / 2), rng.uniform(3, W / 2)
        masks[b, t, n] = ((yy - cy) / ry)**2 + ((xx - cx) / rx)**2 <= 1
  labels = rng.integers(0, C, size=(B, N)).astype(np.int32)
  valid = np.ones((B, N), bool)
  valid[1, N - 1] = False
  labels[1, N - 1] = -1
  outputs = dict(pred_cats=rng.normal(size=(B, T) + GRID + (C,)).astype(np.float32),
                 pred_kernels=rng.normal(size=(B, T) + GRID + (D,)).astype(np.float32) * 0.5,
                 pred_masks=rng.normal(size=(B, T, H // 4, W // 4, D)).astype(np.float32),
                 pred_tracking=rng.normal(size=(B, 3, GRID[0] * GRID[1], GRID[0] * GRID[1])).astype(np.float32) * 2)
  return dict(masks=masks, labels=labels, instance_valid=valid), outputs


def _official(batch, outputs):
  targets = [visolo_ref.grid_class_and_mask(torch.from_numpy(batch['masks'][b].astype(np.float32)),
                                            torch.from_numpy(np.maximum(batch['labels'][b], 0)), C, GRID)
             for b in range(B)]
  gt_cls, gt_masks, gt_track = (torch.stack(x) for x in zip(*targets))
  t = lambda x, perm: torch.from_numpy(np.ascontiguousarray(np.transpose(x, perm)))
  pred_cats = t(outputs['pred_cats'], (0, 4, 1, 2, 3))  # B, C, N, S1, S2
  pred_kernels = t(outputs['pred_kernels'], (0, 4, 1, 2, 3))
  pred_masks = t(outputs['pred_masks'], (0, 4, 1, 2, 3))
  return dict(loss_cat=visolo_ref.category_loss(pred_cats, gt_cls).item(),
              loss_mask=float(visolo_ref.mask_loss(pred_masks, pred_kernels, gt_masks)),
              loss_tracking=visolo_ref.tracking_loss(torch.from_numpy(outputs['pred_tracking']), gt_track).item())


@pytest.mark.parametrize('seed', [0, 1])
def test_loss_matches_official(seed):
  batch, outputs = _batch(seed)
  want = _official(batch, outputs)
  cfg = criterion.LossConfig(num_classes=C, grid=GRID)
  total, terms = jax.jit(lambda o, b: criterion.visolo_loss(o, b, cfg))(outputs, batch)
  for key, value in want.items():
    assert abs(float(terms[key]) - value) <= 1e-5 * abs(value), (key, float(terms[key]), value)
  assert float(total) == pytest.approx(sum(want.values()), rel=1e-5)
  # Masks for the positive cells only (static cap >= the positives of every frame) give the same loss.
  owner = np.asarray(criterion.build_targets(jax.tree.map(jnp.asarray, batch), cfg)['owner'])
  cap = int((owner >= 0).sum(-1).max())
  assert 0 < cap < owner.shape[-1]
  capped = criterion.LossConfig(num_classes=C, grid=GRID, max_mask_cells=cap)
  _, terms_capped = jax.jit(lambda o, b: criterion.visolo_loss(o, b, capped))(outputs, batch)
  assert float(terms_capped['loss_mask']) == pytest.approx(want['loss_mask'], rel=1e-5)


def test_loss_gradients_finite():
  batch, outputs = _batch(2)
  cfg = criterion.LossConfig(num_classes=C, grid=GRID)
  grads = jax.jit(jax.grad(lambda o: criterion.visolo_loss(o, batch, cfg)[0]))(outputs)
  for key, g in grads.items():
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.abs(g).sum() > 0, key


def test_no_instances_gives_zero_mask_and_tracking_loss():
  batch, outputs = _batch(3)
  batch['masks'][:] = 0
  cfg = criterion.LossConfig(num_classes=C, grid=GRID)
  _, terms = criterion.visolo_loss(outputs, batch, cfg)
  assert float(terms['loss_mask']) == 0 and float(terms['loss_tracking']) == 0 and float(terms['loss_cat']) > 0


def test_configs_from_default_model_config():
  from visjax.models.visolo import model as visolo_model  # pylint: disable=g-import-not-at-top
  from visjax.models.visolo import tracker  # pylint: disable=g-import-not-at-top
  c = visolo_model.default_model_config()
  loss_cfg = criterion.LossConfig.from_model_config(c)
  assert loss_cfg == criterion.LossConfig(num_classes=40, grid=(12, 21))
  assert tracker.TrackerConfig.from_model_config(c) == tracker.TrackerConfig(num_classes=40)
