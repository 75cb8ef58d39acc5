"""IDOL checkpoint conversion: parity of the whole forward with a torch CPU reference using the official key names,
and strict failures (missing / unexpected keys, differing duplicate box heads)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visjax import convert
from visjax.convert import rules_idol
from visjax.models.idol import model as idol_model
from visjax.models.layers import position

torch = pytest.importorskip('torch')
from torch_refs import idol_ref, resnet_refs  # pylint: disable=g-import-not-at-top

D_MODEL, QUERIES, CLASSES, DEC = 64, 20, 7, 2
SIZES = ((64, 96), (50, 70))  # unpadded (h, w) of the two frames; the batch is 64 x 96


def _config():
  c = idol_model.default_model_config()
  c.update(backbone_depth=18, num_classes=CLASSES, d_model=D_MODEL, nheads=4, enc_layers=2, dec_layers=DEC,
           dim_feedforward=96, enc_n_points=2, dec_n_points=2, num_queries=QUERIES, reid_dim=D_MODEL,
           mask_dim=D_MODEL // 32)
  return c


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def _torch_reference():
  torch.manual_seed(0)
  backbone = resnet_refs.randomize_(resnet_refs.D2ResNet(18, out_features=('res2', 'res3', 'res4', 'res5')))
  ref = idol_ref.IDOLRef(backbone, (128, 256, 512), num_classes=CLASSES, num_queries=QUERIES, d_model=D_MODEL,
                         nhead=4, enc_layers=2, dec_layers=DEC, dim_feedforward=96, enc_n_points=2, dec_n_points=2)
  return ref.eval()


def _abstract_model(config=None):
  """An IDOL with shape-only variables: conversion fills every one of them, so no random init is needed."""
  return nnx.eval_shape(lambda: idol_model.IDOL(config or _config(), rngs=nnx.Rngs(0)))


def _state_dict(ref):
  return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


@pytest.fixture(scope='module')
def converted():
  ref = _torch_reference()
  model = _abstract_model()
  report = convert.convert(_state_dict(ref), model, rules_idol.idol_rules())
  return ref, model, report


def test_every_key_consumed(converted):
  ref, _, report = converted
  keys = set(ref.state_dict())
  assert any(k.startswith('detr.detr.transformer.decoder.bbox_embed.') for k in keys)  # duplicates present
  assert report.ok
  assert {k for k, _ in report.loaded} | set(report.dropped) == keys
  assert set(report.dropped) == {k for k in keys if k.startswith('detr.detr.transformer.decoder.bbox_embed.')}
  assert any(p.endswith('self_attn.q_proj.kernel') for _, p in report.loaded)


def test_forward_matches_torch_reference(converted):
  ref, model, _ = converted
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8)
  normalised = np.zeros((2, 3, 64, 96), np.float32)
  for i, (h, w) in enumerate(SIZES):
    crop = (images[i, :h, :w].astype(np.float32) - idol_model.PIXEL_MEAN) / idol_model.PIXEL_STD
    normalised[i, :, :h, :w] = crop.transpose(2, 0, 1)
  # Where a whole row/column is padding the official position formula takes sin/cos of ~1e6, on which float32
  # libraries disagree (see test_deformable_transformer); feed the reference visjax's embedding there.
  ref.detr.detr.backbone[1].forward = lambda m: torch.from_numpy(
      np.array(position.sine_position_embedding(jnp.asarray(m.numpy()), D_MODEL // 2))).permute(0, 3, 1, 2)
  with torch.no_grad():
    expected = {k: v.numpy() for k, v in ref(torch.from_numpy(normalised), list(SIZES)).items()}
  out = nnx.jit(lambda m, x, s: m(x, s))(model, jnp.asarray(images), jnp.asarray(SIZES, jnp.int32))
  assert out['pred_logits'].shape == (DEC, 2, QUERIES, CLASSES)
  assert out['pred_masks'].shape == (DEC, 2, QUERIES, 16, 24)
  assert out['pred_embeds'].shape == (2, QUERIES, D_MODEL)
  for key in ('pred_logits', 'pred_boxes', 'pred_masks', 'references'):
    for layer in range(DEC):
      err = rel_err(out[key][layer], expected[key][layer])
      assert err <= 1e-4, (key, layer, err)
  assert rel_err(out['pred_embeds'], expected['pred_embeds']) <= 1e-4
  # The test is not vacuous: masks and boxes vary over queries and layers.
  assert np.std(expected['pred_masks']) > 0.1 and np.std(expected['pred_boxes'][1]) > 0.01


def test_conversion_lists_missing_and_unexpected_keys():
  ref = _torch_reference()
  state = _state_dict(ref)
  del state['detr.detr.transformer.encoder.layers.1.norm2.weight']
  state['detr.detr.transformer.mystery.weight'] = np.zeros((3,), np.float32)
  model = _abstract_model()
  with pytest.raises(convert.ConversionError) as info:
    convert.convert(state, model, rules_idol.idol_rules())
  message = str(info.value)
  assert 'missing' in message and 'unexpected' in message
  assert 'transformer.encoder.layers.1.norm2.scale' in message
  assert 'detr.detr.transformer.mystery.weight' in message


def test_conversion_rejects_differing_duplicate_box_head():
  ref = _torch_reference()
  state = _state_dict(ref)
  state['detr.detr.transformer.decoder.bbox_embed.1.layers.0.bias'] = (
      state['detr.detr.bbox_embed.1.layers.0.bias'] + 1.)
  model = _abstract_model()
  with pytest.raises(convert.ConversionError, match=r'bbox_embed\.1\.layers\.0\.bias'):
    convert.convert(state, model, rules_idol.idol_rules())
  # Same with the duplicate arriving after the original.
  reordered = {k: v for k, v in state.items() if 'decoder.bbox_embed' not in k}
  reordered.update({k: v for k, v in state.items() if 'decoder.bbox_embed' in k})
  with pytest.raises(convert.ConversionError, match='values differ'):
    convert.convert(reordered, model, rules_idol.idol_rules())


def test_more_decoder_layers_in_checkpoint_fail():
  ref = _torch_reference()
  state = _state_dict(ref)
  config = _config()
  config.dec_layers = 1
  model = _abstract_model(config)
  with pytest.raises(convert.ConversionError, match=r'detr\.detr\.transformer\.decoder\.layers\.1\.'):
    convert.convert(state, model, rules_idol.idol_rules())


def test_official_size_r50_state_converts():
  """The full YTVIS19 R50 architecture (6+6 layers, 300 queries, 4 levels) takes every key of the official layout."""
  from configs import idol_ytvis19  # pylint: disable=g-import-not-at-top
  ref = idol_ref.IDOLRef(resnet_refs.D2ResNet(50, out_features=('res2', 'res3', 'res4', 'res5')))
  state = _state_dict(ref)
  model = _abstract_model(idol_ytvis19.get_config().model)
  report = convert.convert(state, model, rules_idol.idol_rules())
  assert report.ok and len(report.dropped) == 6 * 3 * 2
  assert state['detr.detr.query_embed.weight'].shape == (300, 512)
  assert report.num_values == sum(v.size for k, v in state.items() if 'decoder.bbox_embed' not in k)
