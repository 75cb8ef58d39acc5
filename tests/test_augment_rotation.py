"""Rotation of `data_pipeline.augment` against a float64 NumPy port of detectron2 `RotationTransform` (cv2
`getRotationMatrix2D` at centre - 0.5, `warpAffine` nearest for masks), with and without canvas expansion, and the
VITA pseudo-clip recipe (`RandomRotationClip`: +-15 degrees, sorted over the clip, centre in [0.4, 0.6], no expand)."""

import math

import ml_collections
import numpy as np
import pytest

pytest.importorskip('tensorflow')

from configs import input_recipes  # pylint: disable=g-import-not-at-top
from data_pipeline import augment


def _np_rotate_nearest(mask, degrees, center_rel, expand):
  """detectron2 RotationTransform.apply_image (INTER_NEAREST) on a [H, W] mask, float64."""
  h, w = mask.shape
  a, b = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
  if expand:
    bound_w = int(np.rint(h * abs(b) + w * abs(a)))
    bound_h = int(np.rint(h * abs(a) + w * abs(b)))
    cx, cy = w / 2 - 0.5, h / 2 - 0.5
  else:
    bound_w, bound_h = w, h
    cx, cy = w * center_rel[0] - 0.5, h * center_rel[1] - 0.5
  m = np.array([[a, b, (1 - a) * cx - b * cy], [-b, a, b * cx + (1 - a) * cy]])
  if expand:  # The image centre goes to the centre of the new bounds.
    m[:, 2] += np.array([bound_w / 2 - 0.5, bound_h / 2 - 0.5]) - (m[:, :2] @ [cx, cy] + m[:, 2])
  inv = np.linalg.inv(m[:, :2])
  ys, xs = np.mgrid[0:bound_h, 0:bound_w]
  src = inv @ (np.stack([xs.ravel(), ys.ravel()]).astype(np.float64) - m[:, 2:])
  sx, sy = np.rint(src[0]).astype(int), np.rint(src[1]).astype(int)
  inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
  out = np.zeros(bound_h * bound_w, mask.dtype)
  out[inside] = mask[sy[inside], sx[inside]]
  return out.reshape(bound_h, bound_w)


def _shapes(h, w):
  """An asymmetric mask: an L-shape and a bar, so that a wrong sign, centre or shift moves many pixels."""
  m = np.zeros((h, w), np.uint8)
  m[4:26, 5:11] = 1
  m[20:26, 5:30] = 1
  m[8:12, 24:38] = 1
  return m


@pytest.mark.parametrize('degrees, center, expand', [(12.0, (0.4, 0.6), False), (-9.0, (0.55, 0.45), False),
                                                     (20.0, None, True), (-14.0, None, True)])
def test_rotation_matches_detectron2_geometry(degrees, center, expand):
  mask = _shapes(30, 40)
  image = np.repeat(mask[..., None] * 200, 3, axis=-1).astype(np.uint8)
  got_image, got = augment.rotate(image, mask[..., None], degrees, center, expand)
  want = _np_rotate_nearest(mask, degrees, center or (0.5, 0.5), expand)
  got = got.numpy()[..., 0]
  assert got.shape == want.shape == got_image.shape[:2]
  mismatch = np.mean(got != want)
  assert mismatch < 0.01, mismatch  # Nearest-neighbour ties at exact .5 positions may round either way.
  assert np.sum(want) > 0.8 * np.sum(mask)


def test_vita_pseudo_recipe_is_the_official_rotation():
  c = ml_collections.ConfigDict({'input': {}})
  input_recipes.vita(c)
  recipe = augment.make_recipe(c.input.augment, min_sizes=(288,), max_size=768,
                               pseudo_overrides=c.input.augment_pseudo)
  assert (recipe.rotation, recipe.rotation_per, recipe.rotation_expand, recipe.rotation_center) == (
      15.0, 'sorted', False, (0.4, 0.6))
  assert (recipe.crop_per, recipe.resize_per, recipe.flip_per) == ('clip', 'clip', 'clip')  # clip_frame_cnt = T
  with pytest.raises(ValueError, match='rotation_center'):
    augment.Recipe(min_sizes=(8,), max_size=8, rotation=15.0, rotation_center=(0.4, 0.6))
