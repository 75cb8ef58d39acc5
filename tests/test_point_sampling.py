"""visjax/models/heads/point_sampling.py vs torch `grid_sample` and a torch port of detectron2's
`get_uncertain_point_coords_with_randomness` fed the same random draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from visjax.models.heads import point_sampling

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
F = torch.nn.functional


def _torch_point_sample(x_nchw, coords):
  return F.grid_sample(x_nchw, 2. * coords.unsqueeze(2) - 1., align_corners=False).squeeze(3)  # [N, C, P]


def test_point_sample_matches_grid_sample():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 7, 9, 2)).astype(np.float32)
  coords = rng.uniform(-0.1, 1.1, size=(3, 50, 2)).astype(np.float32)  # some outside the map
  coords[0, :4] = [[0., 0.], [1., 1.], [0.5, 0.5], [1. / 18, 1. / 14]]
  expected = _torch_point_sample(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(coords)).numpy()
  got = np.asarray(point_sampling.point_sample(jnp.asarray(x), jnp.asarray(coords)))
  np.testing.assert_allclose(got, expected.transpose(0, 2, 1), rtol=1e-5, atol=1e-6)
  # Channel-less maps and uint8 targets.
  masks = (x[..., 0] > 0).astype(np.uint8)
  expected = _torch_point_sample(torch.from_numpy(masks[:, None].astype(np.float32)), torch.from_numpy(coords))
  got = point_sampling.point_sample(jnp.asarray(masks), jnp.asarray(coords))
  np.testing.assert_allclose(np.asarray(got), expected[:, 0].numpy(), rtol=1e-5, atol=1e-6)


def test_point_sample_gradient_flows_to_values():
  x = jnp.ones((1, 4, 4))
  coords = jnp.asarray([[[0.5, 0.5], [0.1, 0.9]]])
  grad = jax.grad(lambda v: point_sampling.point_sample(v, coords).sum())(x)
  assert float(grad.sum()) == pytest.approx(1. + 0.9 * 0.9)  # second point: two corners fall outside


def test_uncertain_points_match_detectron2_port():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 6, 8)).astype(np.float32)
  s, k, r = point_sampling.num_sampled_points(20, 3.0, 0.75)
  assert (s, k, r) == (60, 15, 5)
  over = rng.uniform(size=(4, s, 2)).astype(np.float32)
  extra = rng.uniform(size=(4, r, 2)).astype(np.float32)
  # detectron2: topk of -|logits| at the oversampled points, gathered through the flattened index, then random.
  point_logits = _torch_point_sample(torch.from_numpy(logits[:, None]), torch.from_numpy(over))
  idx = torch.topk(-torch.abs(point_logits[:, 0]), k=k, dim=1)[1] + s * torch.arange(4)[:, None]
  expected = torch.cat([torch.from_numpy(over).view(-1, 2)[idx.view(-1)].view(4, k, 2), torch.from_numpy(extra)], 1)
  got = point_sampling.uncertain_point_coords(jnp.asarray(logits), jnp.asarray(over), jnp.asarray(extra), k)
  np.testing.assert_array_equal(np.asarray(got), expected.numpy())
  drawn = point_sampling.sample_uncertain_point_coords(jax.random.key(0), jnp.asarray(logits), 20, 3.0, 0.75)
  assert drawn.shape == (4, 20, 2) and float(drawn.min()) >= 0. and float(drawn.max()) <= 1.
