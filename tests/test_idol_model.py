"""IDOL model (tiny config): output contract, padding handling, box-refinement chain, bf16 compute, dropout and
gradients (detached references)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import idol_tiny
from visjax.models.idol import model as idol_model

Q, C, E, L = 30, 6, 64, 2


@pytest.fixture(scope='module')
def model():
  return idol_model.IDOL(idol_tiny.get_config().model, rngs=nnx.Rngs(0))


def _forward(model, images, sizes, **kwargs):
  return nnx.jit(lambda m, x, s: m(x, s, **kwargs))(model, jnp.asarray(images), jnp.asarray(sizes, jnp.int32))


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def test_init_follows_the_official_recipe(model):
  np.testing.assert_allclose(np.asarray(model.class_embed[1].bias[...]), -np.log(99.), rtol=1e-6)
  last0, last1 = model.bbox_embed[0].layers[-1], model.bbox_embed[1].layers[-1]
  np.testing.assert_array_equal(np.asarray(last0.bias[...]), [0., 0., -2., -2.])
  np.testing.assert_array_equal(np.asarray(last1.bias[...]), [0., 0., 0., 0.])
  assert not np.asarray(last1.kernel[...]).any()
  assert model.controller.layers[-1].kernel.shape == (64, (2 + 2) * 8 + 64 + 8 + 17)
  # Parameters are float32 whatever the compute dtype.
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_outputs_on_unaligned_size_and_padding_content_is_ignored(model):
  """70 x 100 frames (padded internally to 96 x 128); pixels beyond image_size never matter."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 70, 100, 3), dtype=np.uint8)
  sizes = [(70, 100), (41, 77)]
  out = _forward(model, images, sizes)
  assert out['pred_logits'].shape == (L, 2, Q, C)
  assert out['pred_boxes'].shape == (L, 2, Q, 4)
  assert out['pred_masks'].shape == (L, 2, Q, 18, 25)  # ceil(70 / 4), ceil(100 / 4)
  assert out['pred_embeds'].shape == (2, Q, E)
  assert out['references'].shape == (L, 2, Q, 4)
  assert all(v.dtype == jnp.float32 for v in out.values())
  assert all(bool(jnp.isfinite(v).all()) for v in out.values())
  # Box refinement chain: layer 0 enters with a 2-d reference (wh padded with 0), layer l + 1 with the box of l.
  assert not np.asarray(out['references'][0, ..., 2:]).any()
  np.testing.assert_allclose(np.asarray(out['references'][1]), np.asarray(out['pred_boxes'][0]), rtol=1e-6)
  # Initial boxes: wh = sigmoid(-2) from the first head's bias, xy = the 2-d reference (zero kernel at init).
  np.testing.assert_allclose(np.asarray(out['pred_boxes'][0, ..., 2:]), 1 / (1 + np.exp(2.)), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out['pred_boxes'][0, ..., :2]), np.asarray(out['references'][0, ..., :2]),
                             rtol=1e-4)

  last = _forward(model, images, sizes, mask_layers=(-1,))
  assert last['pred_masks'].shape == (1, 2, Q, 18, 25)
  np.testing.assert_allclose(np.asarray(last['pred_masks'][0]), np.asarray(out['pred_masks'][-1]), rtol=1e-5,
                             atol=1e-5)

  noisy = images.copy()
  noisy[1, 41:] = rng.integers(0, 256, size=noisy[1, 41:].shape)
  noisy[1, :, 77:] = 255
  out_noisy = _forward(model, noisy, sizes)
  for key in out:
    np.testing.assert_array_equal(np.asarray(out_noisy[key]), np.asarray(out[key]), err_msg=key)


def test_aligned_size_bf16_compute_and_errors(model):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, size=(1, 64, 96, 3), dtype=np.uint8)
  out = _forward(model, images, [(64, 96)])
  assert out['pred_masks'].shape == (L, 1, Q, 16, 24)
  bf16 = nnx.eval_shape(lambda: idol_model.IDOL(idol_tiny.get_config().model, dtype=jnp.bfloat16,
                                                 rngs=nnx.Rngs(0)))
  nnx.update(bf16, nnx.state(model))  # same float32 parameters, bfloat16 compute
  out16 = _forward(bf16, images, [(64, 96)])
  for key in out:
    assert out16[key].dtype == jnp.float32
    assert bool(jnp.isfinite(out16[key]).all()), key
  assert rel_err(out16['pred_logits'], out['pred_logits']) < 0.05
  assert rel_err(out16['pred_boxes'], out['pred_boxes']) < 0.05
  assert rel_err(out16['pred_embeds'], out['pred_embeds']) < 0.1
  with pytest.raises(ValueError, match='image_size must be'):
    model(jnp.asarray(images), jnp.asarray([64, 96]))
  with pytest.raises(ValueError, match='needs a dropout `rng`'):
    model(jnp.asarray(images), jnp.asarray([[64, 96]]), train=True)
  config = idol_tiny.get_config().model
  config.mask_dim = 5  # free for small models (the official head fixes d_model // 32)
  config.backbone_norm, config.backbone_width = 'GN', 32  # the demo's from-scratch, half-width backbone
  small = nnx.eval_shape(lambda: idol_model.IDOL(config, rngs=nnx.Rngs(0)))
  assert small.mask_head.lay2.kernel.shape[-1] == 5
  assert small.input_proj.levels[0].conv.kernel.shape[2] == 64  # res3 of a width-32 ResNet-18
  out = nnx.eval_shape(lambda m: m(jnp.zeros((1, 64, 96, 3)), jnp.asarray([[64, 96]])), small)
  assert out['pred_masks'].shape[-2:] == (16, 24)


def test_train_mode_dropout_and_gradients(model):
  """Dropout is keyed by the rng in train mode; gradients are finite and reach every part of the model.

  (That the references of layers >= 1 are detached is tested on the transformer alone, in
  test_deformable_transformer.py.)
  """
  rng = np.random.default_rng(2)
  images = jnp.asarray(rng.integers(0, 256, size=(1, 64, 96, 3), dtype=np.uint8))
  sizes = jnp.asarray([[60, 90]], jnp.int32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  @jax.jit
  def run(params, key):
    def fwd(p):
      return nnx.merge(graphdef, p, rest)(images, sizes, train=True, rng=key)

    out, vjp = jax.vjp(fwd, params)
    cotangent = jax.tree.map(jnp.zeros_like, out)
    cotangent.update(pred_boxes=cotangent['pred_boxes'].at[1].set(1.),
                     pred_masks=jnp.full_like(out['pred_masks'], 1e-3), pred_embeds=jnp.ones_like(out['pred_embeds']),
                     pred_logits=jnp.ones_like(out['pred_logits']))
    return out, vjp(cotangent)[0]

  out_a, grads = run(params, jax.random.key(0))
  out_b, _ = run(params, jax.random.key(1))
  eval_out = _forward(model, images, sizes)
  assert rel_err(out_a['pred_embeds'], eval_out['pred_embeds']) > 1e-3
  assert rel_err(out_a['pred_embeds'], out_b['pred_embeds']) > 1e-3
  flat = {'.'.join(map(str, k)): np.asarray(v) for k, v in nnx.to_flat_state(grads)}
  assert all(np.isfinite(g).all() for g in flat.values())
  # (level_embed and the encoder queries get no gradient at init: sampling_offsets / attention_weights kernels are
  # zero-initialised, as officially.)
  for name in ('bbox_embed.1.layers.2.kernel', 'class_embed.0.kernel', 'controller.layers.0.kernel',
               'mask_head.lay2.kernel', 'reid_embed_head.layers.0.kernel', 'query_embed.embedding',
               'transformer.encoder.layers.0.self_attn.sampling_offsets.kernel',
               'transformer.decoder.layers.1.self_attn.q_proj.kernel', 'transformer.reference_points.kernel',
               'backbone.res5.0.conv1.kernel', 'input_proj.levels.3.conv.kernel'):
    assert np.abs(flat[name]).max() > 0, name


def test_intermediates_on_request_at_zero_cost(model):
  """`intermediates=True` adds the named intermediates to the same call with identical outputs; it is a Python
  switch, so the plain call traces the graph without them (it returns the outputs dict only)."""
  images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (2, 64, 96, 3)), jnp.uint8)
  sizes = jnp.asarray([[64, 96], [50, 70]], jnp.int32)
  plain = model(images, sizes)
  outputs, inter = model(images, sizes, intermediates=True)
  for k in plain:
    np.testing.assert_array_equal(np.asarray(outputs[k]), np.asarray(plain[k]))
  c = model.config
  ldec, q = c.dec_layers, c.num_queries
  assert inter['decoder.hs'].shape == (ldec, 2, q, c.d_model)
  assert inter['decoder.sampling_locations'].shape == (ldec, 2, q, c.nheads, c.num_feature_levels, c.dec_n_points, 2)
  assert inter['decoder.attention_weights'].shape == (ldec, 2, q, c.nheads, c.num_feature_levels, c.dec_n_points)
  np.testing.assert_allclose(np.asarray(inter['decoder.attention_weights']).sum((-1, -2)), 1., rtol=1e-5)
  assert set(k for k in inter if k.startswith('backbone.')) == {'backbone.res3', 'backbone.res4', 'backbone.res5'}
  assert inter['transformer.mask_0'].dtype == jnp.bool_ and bool(inter['transformer.mask_0'][1].any())
  assert inter['encoder.memory'].shape[:2] == (2, sum(inter[f'transformer.src_{l}'].shape[1] *
                                                      inter[f'transformer.src_{l}'].shape[2]
                                                      for l in range(c.num_feature_levels)))
  assert inter['controller.params'].shape[:3] == (ldec, 2, q)
  graphdef, state = nnx.split(model)
  plain_out = jax.eval_shape(lambda s: nnx.merge(graphdef, s)(images, sizes), state)
  assert set(plain_out) == set(plain), 'the plain call returns only the outputs'
