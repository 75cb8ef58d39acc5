"""VISOLO loss (`visjax.models.visolo.criterion`) against a torch port of the official targets (`getGridClassAndMask`)
and losses (`CategoryLoss`, `MaskLoss`, `TrackingLoss`) on random predictions and instance masks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import visolo_common
from visjax.models.visolo import criterion

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import visolo_ref  # pylint: disable=g-import-not-at-top

B, T, N, C, D = 2, 3, 4, 5, 8
GRID = (4, 6)
H, W = 32, 48  # mask features 8 x 12


def _settings():
  return criterion.loss_settings(visolo_common.visolo_config(C).loss)


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
  cfg = _settings()
  total, terms = jax.jit(lambda o, b: criterion.visolo_loss(o, b, cfg))(outputs, batch)
  for key, value in want.items():
    assert abs(float(terms[key]) - value) <= 1e-5 * abs(value), (key, float(terms[key]), value)
  assert float(total) == pytest.approx(sum(want.values()), rel=1e-5)
  # Masks for the positive cells only (static cap >= the positives of every frame) give the same loss.
  owner = np.asarray(criterion.build_targets(jax.tree.map(jnp.asarray, batch), cfg, grid=GRID, num_classes=C)['owner'])
  cap = int((owner >= 0).sum(-1).max())
  assert 0 < cap < owner.shape[-1]
  capped = dataclasses.replace(cfg, max_mask_cells=cap)
  _, terms_capped = jax.jit(lambda o, b: criterion.visolo_loss(o, b, capped))(outputs, batch)
  assert float(terms_capped['loss_mask']) == pytest.approx(want['loss_mask'], rel=1e-5)


def test_loss_gradients_finite():
  batch, outputs = _batch(2)
  cfg = _settings()
  grads = jax.jit(jax.grad(lambda o: criterion.visolo_loss(o, batch, cfg)[0]))(outputs)
  for key, g in grads.items():
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.abs(g).sum() > 0, key


def test_no_instances_gives_zero_mask_and_tracking_loss():
  batch, outputs = _batch(3)
  batch['masks'][:] = 0
  cfg = _settings()
  _, terms = jax.jit(lambda o, b: criterion.visolo_loss(o, b, cfg))(outputs, batch)
  assert float(terms['loss_mask']) == 0 and float(terms['loss_tracking']) == 0 and float(terms['loss_cat']) > 0


@pytest.mark.slow  # ~30 s on 2 CPU cores: compiling a ResNet forward + backward
def test_train_step_through_model():
  """One jitted loss + gradient through a tiny half-width model: finite, heads and res3/res4 get gradients, the
  frozen stem / res2 (FREEZE_AT 2) do not."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from visjax.models.visolo import model as visolo_model  # pylint: disable=g-import-not-at-top
  c = visolo_model.default_model_config()
  c.update(backbone_depth=18, backbone_width=32, num_classes=C, grid_num=(2, 3), indim=128, outdim=64)
  model = nnx.eval_shape(lambda: visolo_model.VISOLO.from_model_config(c, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)

  def fill(path, x):  # random weights without the (slow on CPU) eager init
    ones = path[-1] in ('scale', 'running_var') or (path[-1] == 'weight' and path[-2] == 'norm')
    return jnp.ones(x.shape) if ones else jnp.asarray(rng.normal(scale=0.05, size=x.shape), jnp.float32)

  state = nnx.state(model)
  nnx.update(model, nnx.from_flat_state([(p, v.replace(fill(p, v.get_value()))) for p, v in nnx.to_flat_state(state)]))
  cfg = _settings()
  masks = np.zeros((1, 3, 2, 32, 48), np.uint8)
  masks[0, :, 0, 4:20, 6:30] = 1
  masks[0, 1:, 1, 18:30, 30:46] = 1
  batch = dict(image=rng.integers(0, 256, size=(1, 3, 32, 48, 3), dtype=np.uint8),
               image_size=np.full((1, 3, 2), (32, 48), np.int32), masks=masks,
               labels=np.array([[1, 3]], np.int32), instance_valid=np.ones((1, 2), bool))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def step(params, rest, batch):
    return jax.value_and_grad(lambda p: criterion.model_loss(nnx.merge(graphdef, p, rest), batch, cfg)[0])(params)

  loss, grads = step(params, rest, batch)
  assert np.isfinite(float(loss)) and float(loss) > 0
  flat = {'.'.join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
  assert all(np.isfinite(g).all() for g in flat.values())
  for prefix in ('Category_branch_post.pred', 'Kernel_branch.pred', 'Mask_branch.pred', 'Tracking_branch.track_Q',
                 'Memory_module.conv1', 'backbone.res3', 'backbone.res4'):
    assert any(np.abs(g).sum() > 0 for k, g in flat.items() if k.startswith(prefix)), prefix
  assert not any(k.startswith(('backbone.stem', 'backbone.res2')) for k in flat)  # frozen: not Params
