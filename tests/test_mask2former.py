"""Mask2Former pixel decoder + masked decoder (visjax/models/transformers/mask2former.py) vs a torch reference with
the official key names, loaded through the conversion rules (visjax/convert/rules_mask2former.py), every layer."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from visjax import convert
from visjax.convert import rules_mask2former
from visjax.models.transformers import mask2former

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import mask2former_ref  # pylint: disable=g-import-not-at-top
from torch_refs.parity import rel_err  # pylint: disable=g-import-not-at-top

CHANNELS = (8, 16, 24, 40)  # res2..res5
STRIDES = (4, 8, 16, 32)
D, Q, K, HEADS, DEC, MASK_DIM = 32, 10, 5, 2, 4, 16
H, W = 64, 96  # padded input; content 50 x 70 (bottom/right padding zero in every map)


def _torch_head(seed=0):
  torch.manual_seed(seed)
  pix = mask2former_ref.MSDeformAttnPixelDecoder(CHANNELS, D, MASK_DIM, nheads=HEADS, enc_layers=2, n_points=2)
  pred = mask2former_ref.VitaMultiScaleMaskedTransformerDecoder(D, K, Q, HEADS, 48, DEC, MASK_DIM)
  return mask2former_ref.randomize_(mask2former_ref.MaskFormerHead(pix, pred), seed).eval()


def _jax_head():
  rngs = nnx.Rngs(0)
  pix = mask2former.MSDeformAttnPixelDecoder(CHANNELS, STRIDES, conv_dim=D, mask_dim=MASK_DIM,
                                             transformer_nheads=HEADS, transformer_enc_layers=2, enc_n_points=2,
                                             rngs=rngs)
  pred = mask2former.MultiScaleMaskedTransformerDecoder(D, K, Q, HEADS, 48, DEC, MASK_DIM, rngs=rngs)
  return mask2former.MaskFormerHead(pix, pred)


def _features(seed=0):
  rng = np.random.default_rng(seed)
  feats = []
  for c, s in zip(CHANNELS, STRIDES):
    f = rng.normal(size=(2, H // s, W // s, c)).astype(np.float32)
    f[:, -(-50 // s):] = 0.  # padded rows / columns of the second image
    f[1, :, -(-70 // s):] = 0.
    feats.append(f)
  return feats


@pytest.fixture(scope='module')
def parity():
  ref = _torch_head()
  state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  model = _jax_head()
  report = convert.convert(state, model, rules_mask2former.mask_former_head_rules('', ''))
  feats = _features()
  with torch.no_grad():
    (logits, masks, fq), (mf, cmf, out) = ref([torch.from_numpy(f.transpose(0, 3, 1, 2)) for f in feats])
  expected = dict(pred_logits=logits.numpy(), pred_masks=masks.numpy(), frame_queries=fq.numpy(),
                  mask_features=mf.numpy().transpose(0, 2, 3, 1), clip_mask_features=cmf.numpy().transpose(0, 2, 3, 1),
                  out=[o.numpy().transpose(0, 2, 3, 1) for o in out])
  got_pred, got_pix = nnx.jit(lambda m, f: m(f))(model, [jnp.asarray(f) for f in feats])
  return ref, state, report, expected, got_pred, got_pix


def test_every_key_converted(parity):
  _, state, report, _, _, _ = parity
  assert report.ok and {k for k, _ in report.loaded} == set(state)
  assert 'pixel_decoder.adapter_1.norm.weight' in state and 'predictor.level_embed.weight' in state


def test_pixel_decoder_matches(parity):
  _, _, _, expected, _, pix = parity
  assert len(pix['out']) == 4 and pix['out'][0].shape == (2, 2, 3, D)
  for i, (o, e) in enumerate(zip(pix['out'], expected['out'])):
    assert rel_err(o, e) <= 1e-5, (i, rel_err(o, e))
  for key in ('mask_features', 'clip_mask_features'):
    assert rel_err(pix[key], expected[key]) <= 1e-5, key
  for a, b in zip(pix['multi_scale_features'], pix['out'][:3], strict=True):
    np.testing.assert_array_equal(a, b)


def test_masked_decoder_matches_every_layer(parity):
  ref, _, _, expected, pred, _ = parity
  assert pred['pred_logits'].shape == (DEC + 1, 2, Q, K + 1)
  assert pred['pred_masks'].shape == (DEC + 1, 2, Q, H // 4, W // 4)
  assert pred['frame_queries'].shape == (DEC, 2, Q, D)
  for key in ('pred_logits', 'pred_masks', 'frame_queries'):
    for layer in range(pred[key].shape[0]):
      err = rel_err(pred[key][layer], expected[key][layer])
      assert err <= 1e-5, (key, layer, err)
  # The "un-mask fully masked rows" rule was exercised, and masks vary.
  assert ref.predictor.num_unmasked_rows > 0
  assert np.std(expected['pred_masks'][-1]) > 0.05


def test_attention_mask_unmasks_full_rows():
  logits = jnp.asarray(np.stack([np.full((4, 4), -3.), np.full((4, 4), 2.)])[None], jnp.float32)  # [1, 2, 4, 4]
  logits = logits.at[0, 1, 0, 0].set(-1.)
  blocked = np.asarray(mask2former.attention_mask(logits, (2, 2)))
  assert blocked.shape == (1, 2, 4)
  assert not blocked[0, 0].any()  # all below 0.5 -> un-masked
  assert blocked[0, 1].sum() == 0  # 2 everywhere except one corner, whose bilinear average stays > 0


def test_legacy_static_query_key():
  ref = _torch_head()
  state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  state['predictor.static_query.weight'] = state.pop('predictor.query_feat.weight')
  model = _jax_head()
  convert.convert(state, model, rules_mask2former.mask_former_head_rules('', ''))
  np.testing.assert_array_equal(model.predictor.query_feat.embedding[...], state['predictor.static_query.weight'])
