"""IAI training loss: one frame's losses against a float64 NumPy port of the official `IAICondInstHead.loss`
(targets, focal cls / ID, centerness-weighted GIoU, centerness BCE, squared-denominator dice) and the clip
bookkeeping (per-clip id renumbering, "new" first appearances, min-area one-hot id masks, the padding quirk). The
loss through the whole model is tested in test_iai_method."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visjax.models.heads import fcos_targets
from visjax.models.iai import criterion
from visjax.models.iai import model as iai_model

from iai_numpy_ports import official_frame_loss

C, O, HP, WP = 5, 6, 64, 96
STRIDES = (8, 16, 32, 64, 128)


def _gt(rng, n):
  masks = np.zeros((n, HP, WP), np.float32)
  for i in range(n):
    h, w = rng.integers(10, 60), rng.integers(10, 90)
    y, x = rng.integers(0, HP - h + 1), rng.integers(0, WP - w + 1)
    masks[i, y:y + h, x:x + w] = rng.random((h, w)) > 0.2
  ys, xs = [np.nonzero(m.any(a))[0] for m in masks for a in (1, 0)][0::2], \
           [np.nonzero(m.any(a))[0] for m in masks for a in (1, 0)][1::2]
  boxes = np.array([[x[0], y[0], x[-1] + 1, y[-1] + 1] for y, x in zip(ys, xs)], np.float32)
  return dict(boxes=boxes, labels=rng.integers(0, C, n), ids=rng.integers(0, O, n), masks=masks)


@pytest.mark.torch
def test_frame_losses_match_official_port():
  torch = pytest.importorskip('torch')
  from torch_refs import iai_ref  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  points, strides, level = iai_model.fcos_point_table(HP, WP)
  p = len(points)
  b, n = 2, 4
  out = dict(cls_logits=rng.normal(-2, 1, (b, p, C)), id_logits=rng.normal(-2, 1, (b, p, O)),
             bbox_ltrb=rng.uniform(1, 40, (b, p, 4)), centerness_logits=rng.normal(0, 1, (b, p)),
             kernels=rng.normal(0, 0.3, (b, p, 169)), mask_feat=rng.normal(0, 1, (b, HP // 8, WP // 8, 8)))
  out = {k: v.astype(np.float32) for k, v in out.items()}
  gts = [_gt(rng, n - 1), _gt(rng, n - 1)]
  gts[0]['boxes'][0] = [0, 0, 96, 64]  # a large object: positives on coarser levels too
  pad = lambda x: np.concatenate([x, np.zeros((1,) + x.shape[1:], x.dtype)])
  gt = dict(boxes=np.stack([pad(g['boxes']) for g in gts]), labels=np.stack([pad(g['labels']) for g in gts]),
            ids=np.stack([pad(g['ids']) for g in gts]), masks=np.stack([pad(g['masks']) for g in gts]) > 0.5,
            visible=np.array([[True] * (n - 1) + [False]] * b))
  got = jax.jit(lambda o, g: criterion.frame_losses(
      o, g, points, strides, fcos_targets.point_regress_ranges(level), jax.random.key(0), num_classes=C,
      max_obj_num=O, max_mask_points=p))(out, gt)

  def mask_probs(mask_feat, pts, strd, kernels):
    return iai_ref.instance_mask_probs(torch.from_numpy(mask_feat).permute(2, 0, 1).float(), torch.from_numpy(pts),
                                       torch.from_numpy(strd), torch.from_numpy(kernels)).double().numpy()

  f64 = lambda x: np.asarray(x, np.float64)
  outs = [dict(cls=f64(out['cls_logits'][i]), id=f64(out['id_logits'][i]), ltrb=f64(out['bbox_ltrb'][i]),
               ctr=f64(out['centerness_logits'][i]), kernels=out['kernels'][i], mask_feat=out['mask_feat'][i])
          for i in range(b)]
  ports = [dict(boxes=f64(g['boxes']), labels=g['labels'], ids=g['ids'], masks=f64(g['masks'])) for g in gts]
  expected = official_frame_loss(outs, ports, f64(points), strides, np.bincount(level), STRIDES,
                                 f64(fcos_targets.point_regress_ranges(level)), C, O, mask_probs)
  for k, v in expected.items():
    assert abs(float(got[k]) - v) <= 1e-4 * abs(v) + 1e-6, (k, float(got[k]), v)
  assert all(v > 0.05 for v in expected.values())


def test_clip_targets_bookkeeping():
  t, n, h, w = 3, 3, 32, 32
  masks = np.zeros((1, t, n, h, w), np.uint8)
  masks[0, :, 0, 4:20, 4:20] = 1  # track 7: frames 0-2, large
  masks[0, 1:, 1, 8:12, 8:12] = 1  # track 3: frames 1-2, small, inside track 7
  batch = dict(track_ids=np.array([[7, 3, -1]]), instance_valid=np.array([[True, True, False]]),
               labels=np.array([[2, 4, -1]]), present=masks.any((-2, -1)), masks=masks,
               boxes=np.tile(np.array([0.5, 0.5, 0.2, 0.2], np.float32), (1, t, n, 1)),
               image_size=np.full((1, t, 2), 32, np.int32))
  # a 32 x 64 canvas; frame 2's content is 20 wide, so columns >= 32 of its id map hold id 0 (quirk)
  batch['masks'] = np.pad(masks, [(0, 0)] * 3 + [(0, 0), (0, 32)])
  batch['image_size'] = np.array([[[32, 64], [32, 64], [32, 20]]], np.int32)
  gt = criterion.clip_targets(criterion.sort_instances({k: jnp.asarray(v) for k, v in batch.items()}), O)
  np.testing.assert_array_equal(gt['labels'][0, 0], [4, 2, 0])  # sorted by track id: 3, 7, padding
  np.testing.assert_array_equal(gt['ids'][0, :, :2], [[O - 1, O - 1], [O - 1, 1], [0, 1]])
  np.testing.assert_array_equal(gt['visible'][0, :, :2], [[False, True], [True, True], [True, True]])
  ids = np.asarray(gt['id_masks'][0]).argmax(-1)
  assert ids[0, 10, 10] == 1 and ids[1, 10, 10] == 0 and ids[1, 5, 5] == 1 and ids[1, 30, 30] == O
  assert ids.shape == (t, 32, 64) and (ids[:2, :, 32:] == O).all() and (ids[2, :, 32:] == 0).all()
  np.testing.assert_allclose(gt['boxes'][0, 0, 0], [25.6, 12.8, 38.4, 19.2], rtol=1e-6)
