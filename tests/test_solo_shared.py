"""Shared SOLO-style pieces: CoordConv channels, grid target assignment (vs a torch port of the official VISOLO
`getGridClassAndMask`), Matrix NMS (vs a float64 NumPy port of the official `matrix_nms`), squared-denominator dice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visjax import losses
from visjax.inference.matrix_nms import matrix_nms
from visjax.models.heads import grid_targets
from visjax.models.layers import coord


# ------------------------------------------------------------------------------------------------------ coordinates

@pytest.mark.torch
@pytest.mark.parametrize('h,w', [(1, 1), (4, 6), (7, 13), (22, 39)])
def test_add_coord_matches_official(h, w):
  torch = pytest.importorskip('torch')
  from torch_refs import visolo_ref  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).normal(size=(2, h, w, 3)).astype(np.float32)
  want = visolo_ref.add_coord(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
  got = np.moveaxis(np.asarray(coord.add_coord(jnp.asarray(x))), -1, 1)
  np.testing.assert_array_equal(got, want)  # bit-exact linspace
  if h > 1:
    assert got[0, 3, 0, 0] == -1 and got[0, 3, -1, 0] == 1 and got[0, 4, 0, -1] == 1  # y first, then x


# --------------------------------------------------------------------------------------------------- grid targets

def _random_clip(rng, frames=3, instances=4, h=48, w=80, overlap=True):
  """Random blob masks; instances overlap heavily (conflicting centre regions) when `overlap`."""
  masks = np.zeros((frames, instances, h, w), np.float32)
  yy, xx = np.mgrid[:h, :w]
  for f in range(frames):
    for n in range(instances):
      if rng.random() < 0.2:
        continue  # absent in this frame
      cy, cx = rng.uniform(0, h), rng.uniform(0, w)
      if overlap and n > 0 and rng.random() < 0.5:  # centre near another instance's
        cy, cx = np.clip(cy / 6 + h / 2, 0, h - 1), np.clip(cx / 6 + w / 2, 0, w - 1)
      ry, rx = rng.uniform(2, h / 2), rng.uniform(2, w / 2)
      masks[f, n] = (((yy - cy) / ry)**2 + ((xx - cx) / rx)**2 <= 1) & (rng.random((h, w)) < 0.9)
  return masks


@pytest.mark.torch
@pytest.mark.parametrize('seed', range(4))
def test_grid_targets_match_official(seed):
  torch = pytest.importorskip('torch')
  from torch_refs import visolo_ref  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  grid, num_classes = (12, 21), 5
  masks = _random_clip(rng)
  labels = rng.integers(0, num_classes, size=masks.shape[1]).astype(np.int32)
  want_cls, want_mask, want_match = (t.numpy() for t in visolo_ref.grid_class_and_mask(
      torch.from_numpy(masks), torch.from_numpy(labels), num_classes, grid))
  owner = jax.jit(jax.vmap(lambda m: grid_targets.assign_cells(m, grid=grid, eps=0.2)))(jnp.asarray(masks))
  owner = np.asarray(owner)
  cls = np.asarray(grid_targets.category_targets(jnp.asarray(owner), jnp.asarray(labels), num_classes))
  np.testing.assert_array_equal(cls.reshape(3, *grid, num_classes), np.moveaxis(want_cls, 0, -1))
  cell_masks = np.where(owner[..., None, None] >= 0, masks[np.arange(3)[:, None], np.maximum(owner, 0)], 0.)
  np.testing.assert_array_equal(cell_masks, np.moveaxis(want_mask, 0, 1))
  for p, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
    got = grid_targets.matching_targets(jnp.asarray(owner[a]), jnp.asarray(owner[b]))
    np.testing.assert_array_equal(np.asarray(got), want_match[p])
  assert (owner >= 0).sum() > 3 and want_match.sum() > 0  # not vacuous


def test_assign_cells_conflict_goes_to_nearer_centre():
  """Two instances claiming the same cell: the one whose centre of mass is nearer the cell centre wins; an
  exact tie keeps the lower index; the extent is last index + 1 (official quirk)."""
  h, w = 40, 40
  masks = np.zeros((3, h, w), np.float32)
  masks[0, 10:31, 10:31] = 1  # centre (20, 20)
  masks[1, 12:31, 12:31] = 1  # centre (21, 21): nearer to cell (2, 2)'s centre (22.5, 22.5)
  masks[2, 10:31, 10:31] = 1  # identical to 0: ties keep 0 wherever 0 beats 1
  owner = np.asarray(grid_targets.assign_cells(jnp.asarray(masks), grid=(4, 4), eps=0.2)).reshape(4, 4)
  # extent h = 31 (last row 30 + 1), delta 6.2: rows floor((20 -+ 3.1) / 10) = 1..2 for instance 0.
  assert owner[1, 1] == 0 and owner[2, 2] == 1
  assert not (owner == 2).any()
  assert (owner[0] == -1).all() and (owner[3] == -1).all()
  cy, cx, eh, ew = grid_targets.mask_center_and_extent(jnp.asarray(masks[:1]))
  np.testing.assert_allclose([cy[0], cx[0], eh[0], ew[0]], [20, 20, 31, 31])


# ------------------------------------------------------------------------------------------------------ matrix NMS

def _official_matrix_nms(seg_masks, labels, scores, kernel='gaussian', sigma=2.):
  """Float64 NumPy port of the official `Visolo.matrix_nms` (torch ops one to one)."""
  n = len(labels)
  sum_masks = seg_masks.reshape(n, -1).sum(1).astype(np.float64)
  m = seg_masks.reshape(n, -1).astype(np.float64)
  inter = m @ m.T
  sx = np.broadcast_to(sum_masks, (n, n))
  with np.errstate(divide='ignore', invalid='ignore'):
    iou = np.triu(inter / (sx + sx.T - inter), 1)
  lx = np.broadcast_to(labels, (n, n))
  label_matrix = np.triu((lx == lx.T).astype(np.float64), 1)
  comp = (iou * label_matrix).max(0)
  comp = np.broadcast_to(comp, (n, n)).T
  decay_iou = iou * label_matrix
  if kernel == 'gaussian':
    coeff = (np.exp(-1 * sigma * decay_iou**2) / np.exp(-1 * sigma * comp**2)).min(0)
  else:
    coeff = ((1 - decay_iou) / (1 - comp)).min(0)
  return scores * coeff


@pytest.mark.parametrize('kernel', ['gaussian', 'linear'])
def test_matrix_nms_matches_official(kernel):
  rng = np.random.default_rng(0)
  n = 40
  base = rng.random((5, 16, 20)) < 0.4
  masks = np.stack([base[i % 5] ^ (rng.random((16, 20)) < 0.1) for i in range(n)])  # overlapping groups
  labels = rng.integers(0, 3, size=n)
  scores = np.sort(rng.random(n).astype(np.float32))[::-1].copy()
  got = matrix_nms(masks.astype(np.float32), labels, scores, kernel=kernel, sigma=2.)
  want = _official_matrix_nms(masks, labels, scores.astype(np.float64), kernel)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert (got < scores - 1e-3).sum() > n // 2  # suppression happened


def test_matrix_nms_two_empty_masks_give_nan_everywhere():
  """Official quirk: 0/0 IoU of two empty masks propagates NaN through max/min into every updated score."""
  masks = np.zeros((4, 5, 5), np.float32)
  masks[0, :2] = 1
  masks[1, 1:3] = 1
  labels = np.array([0, 0, 1, 1])
  scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
  assert np.isnan(matrix_nms(masks, labels, scores)).all()
  assert np.isnan(_official_matrix_nms(masks, labels, scores)).all()
  masks[3, 4] = 1  # one empty mask only: finite
  assert np.isfinite(matrix_nms(masks, labels, scores)).all()


# ------------------------------------------------------------------------------------------------------------ dice

def test_dice_loss_squared():
  rng = np.random.default_rng(0)
  p = rng.random((3, 8, 9))
  t = (rng.random((3, 8, 9)) < 0.5).astype(np.float64)
  want = 1 - 2 * (p * t).sum((1, 2)) / ((p**2).sum((1, 2)) + (t**2).sum((1, 2)) + 1e-7)
  got = losses.dice_loss_squared(jnp.asarray(p, jnp.float32), jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert float(losses.dice_loss_squared(jnp.ones((1, 4)), jnp.ones((1, 4)))[0]) == pytest.approx(0., abs=1e-6)


# ---------------------------------------------------------------------------------------------------- mask resize

@pytest.mark.torch
@pytest.mark.parametrize('size', [(37, 50), (96, 160), (20, 20)])
def test_resize_binary_mask_matches_torch(size):
  torch = pytest.importorskip('torch')
  from visjax.inference.masks import resize_binary_mask  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  mask = np.zeros((32, 48), np.float32)
  mask[5:20, 7:30] = 1
  mask[rng.random(mask.shape) < 0.05] = 1
  want = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None], size, mode='bilinear',
                                         align_corners=False)[0, 0].numpy()
  got = resize_binary_mask(mask, size)
  fragile = np.abs(want - 0.5) < 1e-5  # float rounding at exactly 0.5 may differ
  assert got.shape == size and not fragile.all()
  np.testing.assert_array_equal(got[~fragile], (want >= 0.5)[~fragile])
