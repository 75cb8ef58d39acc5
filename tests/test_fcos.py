"""FCOS pieces: points (mmdet 2.11 `_get_points_single` with the stride // 2 offset), targets with centre sampling
around the mask's centre of mass against a float64 NumPy port of the official `_get_targets_single`, Scale,
centerness, and the shared FPN against a torch reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visjax import convert
from visjax.convert import rules_iai
from visjax.models.heads import fcos, fcos_targets
from visjax.models.necks.fpn import FPN

from iai_numpy_ports import official_fcos_targets

STRIDES = (8, 16, 32, 64, 128)


def test_points_have_stride_half_offset():
  pts = fcos.level_points(2, 3, 16)
  np.testing.assert_array_equal(pts, [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]])
  points, strides, level = fcos.multilevel_points([(2, 3), (1, 2)], (8, 16))
  assert points.shape == (8, 2) and list(strides) == [8] * 6 + [16] * 2 and list(level) == [0] * 6 + [1] * 2


def test_targets_match_official_port():
  h, w = 256, 320
  sizes = [(-(-h // s), -(-w // s)) for s in STRIDES]
  points, strides, level = fcos.multilevel_points(sizes, STRIDES)
  rr = fcos_targets.point_regress_ranges(level)
  rng = np.random.default_rng(0)
  n = 6
  masks = np.zeros((n, h, w), np.float32)
  boxes = np.zeros((n, 4), np.float32)
  for i in range(n):
    y0, x0 = rng.integers(0, h - 20), rng.integers(0, w - 20)
    y1, x1 = y0 + rng.integers(10, h - y0), x0 + rng.integers(10, w - x0)
    masks[i, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) > 0.3
    boxes[i] = [x0, y0, x1, y1]
  boxes[2] = boxes[1]  # equal areas: the first index wins
  labels, ids = rng.integers(0, 40, n), rng.integers(0, 19, n)
  valid = np.array([True] * 5 + [False])
  expected = official_fcos_targets(points.astype(np.float64), STRIDES, [a * b for a, b in sizes], rr.astype(np.float64),
                               boxes[:5].astype(np.float64), labels[:5], ids[:5], masks[:5].astype(np.float64),
                               40, 20)
  out = jax.jit(lambda *a: fcos_targets.fcos_targets(*a, num_classes=40, background_id=20))(
      points, strides, rr, boxes, labels, ids, valid, fcos_targets.mask_centers(jnp.asarray(masks)))
  np.testing.assert_array_equal(out['labels'], expected[0])
  np.testing.assert_array_equal(out['ids'], expected[1])
  pos = np.asarray(out['pos'])
  assert 20 < pos.sum() < len(points) // 4
  np.testing.assert_allclose(np.asarray(out['bbox_targets'])[pos], expected[2][pos], rtol=1e-6, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(out['gt_inds'])[pos], expected[3][pos])


def test_centerness_and_distance2bbox():
  ltrb = jnp.asarray([[2., 4., 6., 1.]])
  np.testing.assert_allclose(fcos.centerness_target(ltrb), [np.sqrt(2 / 6 * 1 / 4)], rtol=1e-6)
  box = fcos.distance2bbox(jnp.asarray([[10., 10.]]), jnp.asarray([[20., 2., 3., 50.]]), max_shape=(30, 40))
  np.testing.assert_allclose(box, [[0., 8., 13., 30.]])
  assert float(fcos.Scale(2.)(jnp.asarray(3.))) == 6.


@pytest.mark.torch
def test_fpn_matches_torch_reference():
  torch = pytest.importorskip('torch')
  from torch_refs import iai_ref  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  channels = (8, 16, 24, 40)
  ref = iai_ref.randomize_(iai_ref.FPN(list(channels), 32))
  model = FPN(channels, 32, 5, start_level=1, add_extra_convs='on_output', relu_before_extra_convs=True,
              rngs=nnx.Rngs(0))
  convert.convert({k: v.detach().numpy() for k, v in ref.state_dict().items()}, model,
                  rules_iai.fpn_rules('', ''))
  rng = np.random.default_rng(0)
  inputs = [rng.normal(size=(2, 80 // s, 112 // s, c)).astype(np.float32) for s, c in zip((4, 8, 16, 32), channels)]
  with torch.no_grad():
    expected = ref([torch.from_numpy(x.transpose(0, 3, 1, 2)) for x in inputs])
  got = model([jnp.asarray(x) for x in inputs])
  assert [g.shape[1:3] for g in got] == [(10, 14), (5, 7), (2, 3), (1, 2), (1, 1)]
  for g, e in zip(got, expected):
    e = e.numpy().transpose(0, 2, 3, 1)
    assert np.linalg.norm(np.asarray(g) - e) / np.linalg.norm(e) <= 1e-5
