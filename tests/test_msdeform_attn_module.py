"""MSDeformAttn NNX module: official init, shapes, padding mask, and parity with a torch reimplementation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from msda_reference import torch_core
from visjax.models.layers.msdeform_attn import MSDeformAttn

SHAPES = ((5, 7), (3, 4), (1, 2))


def test_init_values():
  module = MSDeformAttn(d_model=32, n_levels=3, n_heads=8, n_points=2, rngs=nnx.Rngs(0))
  # Head directions at theta = 2 pi m / 8 on the unit square, point p scaled by p + 1, same for every level.
  directions = np.array([(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)], np.float64)
  expected = directions[:, None, None, :] * np.array([1.0, 2.0])[None, None, :, None] * np.ones((1, 3, 1, 1))
  np.testing.assert_allclose(module.sampling_offsets.bias[...], expected.reshape(-1), atol=1e-6)
  np.testing.assert_array_equal(module.sampling_offsets.kernel[...], 0.0)
  np.testing.assert_array_equal(module.attention_weights.kernel[...], 0.0)
  np.testing.assert_array_equal(module.attention_weights.bias[...], 0.0)
  assert module.sampling_offsets.kernel.shape == (32, 8 * 3 * 2 * 2)
  assert module.attention_weights.kernel.shape == (32, 8 * 3 * 2)
  bound = math.sqrt(6.0 / (32 + 32))  # xavier_uniform
  for name in ('value_proj', 'output_proj'):
    layer = getattr(module, name)
    kernel = np.asarray(layer.kernel[...])
    assert kernel.shape == (32, 32) and np.abs(kernel).max() <= bound
    assert abs(kernel.std() - bound / math.sqrt(3.0)) < 0.1 * bound  # uniform(-a, a) has std a / sqrt(3)
    np.testing.assert_array_equal(layer.bias[...], 0.0)


def test_init_gives_uniform_weights_and_grid_locations():
  module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  s = sum(h * w for h, w in SHAPES)
  query = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
  ref = jnp.asarray(rng.random((2, 5, 3, 2)), jnp.float32)
  out, loc, weights = module(query, ref, jnp.zeros((2, s, 16)), SHAPES, return_sampling=True)
  assert out.shape == (2, 5, 16) and loc.shape == (2, 5, 4, 3, 2, 2) and weights.shape == (2, 5, 4, 3, 2)
  np.testing.assert_allclose(weights, 1.0 / 6.0, rtol=1e-6)
  # Head 1 (theta = pi / 2): offset (0, p + 1) pixels of each level.
  heights = np.array([h for h, _ in SHAPES], np.float64)[:, None]
  expected_y = np.asarray(ref)[:, :, None, :, None, 1] + np.array([1.0, 2.0]) / heights
  np.testing.assert_allclose(loc[:, :, 1, :, :, 1], expected_y[:, :, 0], rtol=1e-6)


def _torch_msdeform_attn(params, query, reference_points, input_flatten, spatial_shapes, padding_mask, n_heads,
                         n_levels, n_points):
  """Deformable-DETR MSDeformAttn.forward written against torch, with weights taken from the NNX module."""
  import torch  # pylint: disable=g-import-not-at-top

  def linear(name, x):
    return torch.nn.functional.linear(x, torch.tensor(np.asarray(params[name]['kernel']).T),
                                      torch.tensor(np.asarray(params[name]['bias'])))

  query, reference_points, input_flatten = (torch.tensor(np.asarray(x)) for x in
                                            (query, reference_points, input_flatten))
  n, lq, c = query.shape
  value = linear('value_proj', input_flatten)
  if padding_mask is not None:
    value = value.masked_fill(torch.tensor(np.asarray(padding_mask))[..., None], 0.0)
  value = value.view(n, -1, n_heads, c // n_heads)
  offsets = linear('sampling_offsets', query).view(n, lq, n_heads, n_levels, n_points, 2)
  weights = linear('attention_weights', query).view(n, lq, n_heads, n_levels * n_points)
  weights = torch.softmax(weights, -1).view(n, lq, n_heads, n_levels, n_points)
  shapes = torch.tensor(spatial_shapes)
  if reference_points.shape[-1] == 2:
    normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
    loc = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
  else:
    loc = reference_points[:, :, None, :, None, :2] + offsets / n_points * reference_points[:, :, None, :, None,
                                                                                              2:] * 0.5
  out = torch_core(value, spatial_shapes, loc, weights)
  return linear('output_proj', out).numpy()


@pytest.mark.parametrize('ref_dim, use_mask', [(2, True), (4, False)])
def test_matches_torch_reimplementation(ref_dim, use_mask):
  pytest.importorskip('torch')
  n_heads, n_levels, n_points, d_model = 4, 3, 3, 16
  module = MSDeformAttn(d_model, n_levels, n_heads, n_points, rngs=nnx.Rngs(1))
  # Random (non-init) offsets and attention logits so every term matters.
  rng = np.random.default_rng(2)
  for layer in (module.sampling_offsets, module.attention_weights):
    layer.kernel[...] = jnp.asarray(rng.standard_normal(layer.kernel.shape) * 0.3, jnp.float32)
    layer.bias[...] = jnp.asarray(rng.standard_normal(layer.bias.shape), jnp.float32)
  s = sum(h * w for h, w in SHAPES)
  query = jnp.asarray(rng.standard_normal((2, 6, d_model)), jnp.float32)
  ref = rng.random((2, 6, n_levels, ref_dim)).astype(np.float32)
  if ref_dim == 4:
    ref[..., 2:] = ref[..., 2:] * 0.5 + 0.05
  flat = jnp.asarray(rng.standard_normal((2, s, d_model)), jnp.float32)
  mask = jnp.asarray(rng.random((2, s)) < 0.3) if use_mask else None
  out = module(query, jnp.asarray(ref), flat, SHAPES, mask)
  params = nnx.to_pure_dict(nnx.state(module, nnx.Param))
  expected = _torch_msdeform_attn(params, query, ref, flat, SHAPES, mask, n_heads, n_levels, n_points)
  rel = np.linalg.norm(np.asarray(out) - expected) / np.linalg.norm(expected)
  assert rel < 1e-5


def test_padding_mask_zeroes_padded_tokens():
  module = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=2, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  query = jnp.asarray(rng.standard_normal((1, 3, 8)), jnp.float32)
  ref = jnp.asarray(rng.random((1, 3, 1, 2)), jnp.float32)
  flat = jnp.asarray(rng.standard_normal((1, 12, 8)), jnp.float32)
  mask = jnp.zeros((1, 12), bool).at[:, 6:].set(True)
  changed = flat.at[:, 6:].set(100.0)
  np.testing.assert_allclose(module(query, ref, flat, ((3, 4),), mask), module(query, ref, changed, ((3, 4),), mask),
                             rtol=1e-6)


def test_jit_and_grad_through_split_state():
  module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(module)
  rng = np.random.default_rng(0)
  s = sum(h * w for h, w in SHAPES)
  args = (jnp.asarray(rng.standard_normal((1, 4, 16)), jnp.float32), jnp.asarray(rng.random((1, 4, 3, 4)), jnp.float32),
          jnp.asarray(rng.standard_normal((1, s, 16)), jnp.float32))

  @jax.jit
  def loss(state):
    return jnp.sum(nnx.merge(graphdef, state)(*args, SHAPES) ** 2)

  grads = jax.grad(loss)(state)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  assert np.abs(np.asarray(grads['sampling_offsets']['kernel'][...])).sum() > 0


@pytest.mark.parametrize('kwargs, call_fix, message', [
    (dict(d_model=10, n_heads=4), None, 'divisible'),
    (dict(), dict(spatial_shapes=((5, 7), (3, 4))), 'n_levels'),
    (dict(), dict(reference_points=jnp.zeros((1, 2, 3, 3))), 'reference_points'),
    (dict(), dict(input_padding_mask=jnp.zeros((1, 5), bool)), 'input_padding_mask'),
    (dict(), dict(input_flatten=jnp.zeros((1, 5, 16))), 'tokens'),
])
def test_bad_inputs(kwargs, call_fix, message):
  config = dict(d_model=16, n_levels=3, n_heads=4, n_points=2) | kwargs
  with pytest.raises(ValueError, match=message):
    module = MSDeformAttn(**config, rngs=nnx.Rngs(0))
    s = sum(h * w for h, w in SHAPES)
    call = dict(query=jnp.zeros((1, 2, 16)), reference_points=jnp.zeros((1, 2, 3, 2)),
                input_flatten=jnp.zeros((1, s, 16)), spatial_shapes=SHAPES) | (call_fix or {})
    module(**call)


def test_pallas_implementation_matches_xla():
  rng = np.random.default_rng(3)
  s = sum(h * w for h, w in SHAPES)
  args = (jnp.asarray(rng.standard_normal((1, 5, 16)), jnp.float32), jnp.asarray(rng.random((1, 5, 3, 2)), jnp.float32),
          jnp.asarray(rng.standard_normal((1, s, 16)), jnp.float32))
  outs = []
  for implementation in ('xla', 'pallas'):
    module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, implementation=implementation,
                          rngs=nnx.Rngs(0))
    outs.append(np.asarray(module(*args, SHAPES)))
  np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_locations():
  rng = np.random.default_rng(4)
  s = sum(h * w for h, w in SHAPES)
  args = (jnp.asarray(rng.standard_normal((1, 5, 16)), jnp.float32), jnp.asarray(rng.random((1, 5, 3, 4)), jnp.float32),
          jnp.asarray(rng.standard_normal((1, s, 16)), jnp.float32))
  ref_module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, rngs=nnx.Rngs(0))
  bf16_module = MSDeformAttn(d_model=16, n_levels=3, n_heads=4, n_points=2, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  ref, ref_loc, _ = ref_module(*args, SHAPES, return_sampling=True)
  out, loc, weights = bf16_module(*args, SHAPES, return_sampling=True)
  assert out.dtype == jnp.bfloat16 and loc.dtype == jnp.float32 and weights.dtype == jnp.float32
  np.testing.assert_allclose(loc, ref_loc, atol=2e-3)  # only the bf16 query/offset rounding remains
  assert np.linalg.norm(np.asarray(out, np.float32) - ref) / np.linalg.norm(ref) < 2e-2
