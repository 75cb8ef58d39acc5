"""IDOL checkpoint conversion: parity of the whole forward with a torch CPU reference using the official key names
(detectron2 ResNet and D2SwinTransformer backbones), the full-size R50 / Swin-L key layouts, and strict failures
(missing / unexpected keys, differing duplicate box heads, wrong Swin window)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests import convert_layout
from flax import nnx

from visjax import convert
from visjax.convert import rules_idol
from visjax.models.backbones import swin
from visjax.models.idol import model as idol_model

torch = pytest.importorskip('torch')
from torch_refs import idol_ref, resnet_refs, swin_ref  # pylint: disable=g-import-not-at-top

D_MODEL, QUERIES, CLASSES, DEC = 64, 20, 7, 2
SIZES = ((64, 96), (50, 70))  # unpadded (h, w) of the two frames; the batch is 64 x 96
# Tiny Swin: patch grid 16 x 24 is not a multiple of the window 7, so window padding and shifted masks are exercised.
TINY_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)


def _config(backbone='resnet'):
  c = idol_model.default_model_config()
  c.update(backbone=backbone, backbone_depth=18, num_classes=CLASSES, d_model=D_MODEL, nheads=4, enc_layers=2,
           dec_layers=DEC, dim_feedforward=96, enc_n_points=2, dec_n_points=2, num_queries=QUERIES,
           reid_dim=D_MODEL, mask_dim=D_MODEL // 32, dropout=0.)  # dropout 0: train mode needs no rng
  c.swin.update(TINY_SWIN)
  return c


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def _torch_reference(backbone='resnet'):
  torch.manual_seed(0)
  if backbone == 'resnet':
    net = resnet_refs.randomize_(resnet_refs.D2ResNet(18, out_features=('res2', 'res3', 'res4', 'res5')))
    channels = (128, 256, 512)
  else:
    net = swin_ref.randomize_(swin_ref.D2SwinTransformer(**TINY_SWIN), seed=3)
    channels = (64, 128, 256)
  ref = idol_ref.IDOLRef(net, channels, num_classes=CLASSES, num_queries=QUERIES, d_model=D_MODEL, nhead=4,
                         enc_layers=2, dec_layers=DEC, dim_feedforward=96, enc_n_points=2, dec_n_points=2)
  return ref.eval()


def _abstract_model(config=None):
  """An IDOL with shape-only variables: conversion fills every one of them, so no random init is needed."""
  return nnx.eval_shape(lambda: idol_model.IDOL(config or _config(), rngs=nnx.Rngs(0)))


def _state_dict(ref):
  return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


@pytest.fixture(scope='module', params=['resnet', 'swin'])
def converted(request):
  ref = _torch_reference(request.param)
  config = _config(request.param)
  model = _abstract_model(config)
  report = convert.convert(_state_dict(ref), model, rules_idol.idol_rules(config))
  _fill_rng_state(model)
  return ref, model, report


def _fill_rng_state(model):
  """Conversion leaves RNG state (Swin drop path) alone; an abstract model needs values there to run."""

  def fill(x):
    return jax.random.key(0) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else jnp.zeros(x.shape, x.dtype)

  nnx.update(model, jax.tree.map(fill, nnx.state(model, nnx.RngState)))


def test_every_key_consumed(converted):
  ref, _, report = converted
  keys = set(ref.state_dict())
  assert any(k.startswith('detr.detr.transformer.decoder.bbox_embed.') for k in keys)  # duplicates present
  assert report.ok
  assert {k for k, _ in report.loaded} | set(report.dropped) == keys
  duplicates = {k for k in keys if k.startswith('detr.detr.transformer.decoder.bbox_embed.')}
  index_buffers = {k for k in keys if k.endswith('relative_position_index')}  # Swin only: checked, then dropped
  assert set(report.dropped) == duplicates | index_buffers
  assert any(p.endswith('self_attn.q_proj.kernel') for _, p in report.loaded)


def test_forward_matches_torch_reference(converted):
  ref, model, _ = converted
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(2, 64, 96, 3), dtype=np.uint8)
  normalised = np.zeros((2, 3, 64, 96), np.float32)
  for i, (h, w) in enumerate(SIZES):
    crop = (images[i, :h, :w].astype(np.float32) - idol_model.PIXEL_MEAN) / idol_model.PIXEL_STD
    normalised[i, :, :h, :w] = crop.transpose(2, 0, 1)
  with torch.no_grad():
    expected = {k: v.numpy() for k, v in ref(torch.from_numpy(normalised), list(SIZES)).items()}
  out = nnx.jit(lambda m, x, s: m(x, s))(model, jnp.asarray(images), jnp.asarray(SIZES, jnp.int32))
  assert out['pred_logits'].shape == (DEC, 2, QUERIES, CLASSES)
  assert out['pred_masks'].shape == (DEC, 2, QUERIES, 16, 24)
  assert out['pred_embeds'].shape == (2, QUERIES, D_MODEL)
  # Measured (2026-12, CPU, R18 and tiny Swin): every output within 6e-7 of torch, the masks' padded region too.
  # Frame 1 is 50 x 70 in a 64 x 96 batch: all-padding rows / columns at every level, where the official position
  # embedding takes sin/cos of ~ -3.1e6 / dim_t (both sides compute it, see tests/test_position.py).
  for key in ('pred_logits', 'pred_boxes', 'pred_masks', 'references'):
    for layer in range(DEC):
      err = rel_err(out[key][layer], expected[key][layer])
      assert err <= 3e-6, (key, layer, err)
  assert rel_err(out['pred_embeds'], expected['pred_embeds']) <= 3e-6
  h4, w4 = -(-SIZES[1][0] // 4), -(-SIZES[1][1] // 4)  # frame 1's unpadded extent at stride 4
  got, want = np.asarray(out['pred_masks'])[:, 1], expected['pred_masks'][:, 1]
  assert rel_err(got[..., h4:, :], want[..., h4:, :]) <= 3e-6  # all-padding rows
  assert rel_err(got[..., :, w4:], want[..., :, w4:]) <= 3e-6  # all-padding columns
  # The test is not vacuous: masks and boxes vary over queries and layers.
  assert np.std(expected['pred_masks']) > 0.1 and np.std(expected['pred_boxes'][1]) > 0.01


def test_swin_drop_path_only_in_training(converted):
  """The converted Swin IDOL is deterministic at inference although Swin-L's drop path (rate 0.3) is configured;
  `train=True` turns drop path on (dropout off here so only the backbone is stochastic)."""
  _, model, _ = converted
  if not isinstance(model.backbone, swin.SwinTransformer):
    pytest.skip('ResNet backbone: no drop path')
  assert model.config.swin.drop_path_rate > 0 and model.config.dropout == 0
  images = jnp.asarray(np.random.default_rng(1).integers(0, 256, size=(1, 64, 96, 3), dtype=np.uint8))
  sizes = jnp.asarray([[64, 96]], jnp.int32)
  run = nnx.jit(lambda m, train: m(images, sizes, train=train, mask_layers=(-1,))['pred_boxes'],
                static_argnums=1)
  evals = [np.asarray(run(model, False)) for _ in range(2)]
  np.testing.assert_array_equal(evals[0], evals[1])
  train = np.asarray(run(model, True))
  assert not np.allclose(train, evals[0])


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


def test_resnet_checkpoint_into_swin_model_fails():
  config = _config('swin')
  with pytest.raises(convert.ConversionError, match=r'detr\.detr\.backbone\.0\.backbone\.stem\.conv1\.weight'):
    convert.convert(_state_dict(_torch_reference('resnet')), _abstract_model(config), rules_idol.idol_rules(config))


def test_swin_wrong_window_size_fails():
  config = _config('swin')
  state = _state_dict(_torch_reference('swin'))
  config.swin.window_size = 6
  with pytest.raises(convert.ConversionError, match='relative_position_index'):
    convert.convert(state, _abstract_model(config), rules_idol.idol_rules(config))


def test_unknown_backbone_rejected():
  config = _config('vit')
  with pytest.raises(ValueError, match="config.model.backbone must be 'resnet' or 'swin'"):
    rules_idol.idol_rules(config)
  with pytest.raises(ValueError, match=r"config.model.backbone must be one of \('resnet', 'resnet_tv', 'swin'\)"):
    _abstract_model(config)


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


def test_swin_l_configs():
  """The three Swin-L configs differ from their R50 ones only in the backbone (official yaml: same solver/input)."""
  for name in ('ytvis19', 'ytvis21', 'ovis'):
    swin_config = importlib.import_module(f'configs.idol_{name}_swinl').get_config()
    r50_config = importlib.import_module(f'configs.idol_{name}').get_config()
    assert swin_config.model.backbone == 'swin' and r50_config.model.backbone == 'resnet'
    assert dict(swin_config.model.swin) == dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48),
                                                window_size=12, patch_size=4, mlp_ratio=4.0, qkv_bias=True,
                                                drop_path_rate=0.3, patch_norm=True)
    swin_config.model.backbone = 'resnet'
    swin_config.model.swin = r50_config.model.swin
    assert swin_config.to_dict() == r50_config.to_dict(), name


def _official_layout(ref, config) -> tuple[dict[str, tuple[int, ...]], list[str]]:
  """Maps every key and shape of `ref`'s state (torch meta tensors are enough) onto the abstract model of
  `config`, checking that every model variable is filled exactly once. Returns the model's variable shapes and
  the dropped keys."""
  return convert_layout.map_layout(rules_idol.idol_rules(config),
                                   {k: v.shape for k, v in ref.state_dict().items()}, _abstract_model(config))


def test_official_size_swin_l_layout():
  """Every key and shape of the official YTVIS19 Swin-L IDOL state (torch meta tensors, no memory) maps onto the
  abstract model of `idol_ytvis19_swinl`, and every model variable is filled exactly once."""
  from configs import idol_ytvis19_swinl  # pylint: disable=g-import-not-at-top
  config = idol_ytvis19_swinl.get_config().model
  with torch.device('meta'):
    ref = idol_ref.IDOLRef(swin_ref.D2SwinTransformer(192, (2, 2, 18, 2), (6, 12, 24, 48), 12), (384, 768, 1536),
                           num_classes=config.num_classes)
  shapes, dropped = _official_layout(ref, config)
  assert shapes['input_proj.levels.0.conv.kernel'] == (1, 1, 384, 256)
  assert shapes['backbone.norm0.scale'] == (192,)  # res2's output norm is in the checkpoint though unused
  assert len([k for k in dropped if k.endswith('relative_position_index')]) == 24
  assert len(dropped) == 24 + 6 * 3 * 2


def test_official_size_r101_layout():
  """The official YTVIS19 R101 IDOL (`ytvis19_r101.yaml`: the R50 config with RESNETS.DEPTH 101, i.e.
  `--config.model.backbone_depth=101`): every key and shape of its state (detectron2 R101, 3/4/23/3 bottleneck
  blocks; torch meta tensors) maps onto the abstract model, every variable filled once."""
  from configs import idol_ytvis19  # pylint: disable=g-import-not-at-top
  config = idol_ytvis19.get_config().model
  config.backbone_depth = 101
  with torch.device('meta'):
    ref = idol_ref.IDOLRef(resnet_refs.D2ResNet(101, out_features=('res2', 'res3', 'res4', 'res5')),
                           num_classes=config.num_classes)
  keys = ref.state_dict()
  assert 'detr.detr.backbone.0.backbone.res4.22.conv3.weight' in keys
  assert 'detr.detr.backbone.0.backbone.res4.23.conv3.weight' not in keys
  shapes, dropped = _official_layout(ref, config)
  assert shapes['backbone.res4.22.conv3.kernel'] == (1, 1, 256, 1024)
  assert shapes['input_proj.levels.2.conv.kernel'] == (1, 1, 2048, 256)
  assert len(dropped) == 6 * 3 * 2  # the duplicate box heads
