"""VITA checkpoint conversion (visjax/convert/rules_vita.py): the full-size R-50 and Swin-L official key layouts
(torch meta tensors, no memory) against abstract models, Mask2Former-only checkpoints, class-count changes and
strict failures. Forward parity through the same rules is in test_vita_model.py."""

import numpy as np
import pytest
from tests import convert_layout
from flax import nnx

from visjax import convert
from visjax.convert import rules_vita
from visjax.models.vita import model as vita_model

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import mask2former_ref, resnet_refs, swin_ref, vita_ref  # pylint: disable=g-import-not-at-top


def _official_ref(config, backbone, channels=(256, 512, 1024, 2048)):
  """The official module tree at `config`'s sizes (`channels`: res2..res5 of `backbone`)."""
  pix = mask2former_ref.MSDeformAttnPixelDecoder(channels, config.conv_dim, config.mask_dim, nheads=config.nheads,
                                                 enc_layers=config.pixel_decoder_enc_layers,
                                                 n_points=config.enc_n_points,
                                                 d_ffn=config.pixel_decoder_dim_feedforward)
  pred = mask2former_ref.VitaMultiScaleMaskedTransformerDecoder(
      config.hidden_dim, config.num_classes, config.num_frame_queries, config.nheads, config.dim_feedforward,
      config.dec_layers - 1, config.mask_dim)
  v = config.vita
  module = vita_ref.VITA(config.num_classes, v.hidden_dim, config.num_frame_queries, v.num_queries, v.nheads,
                         v.dim_feedforward, v.enc_layers, v.dec_layers, v.enc_window_size, config.conv_dim,
                         config.mask_dim)
  return vita_ref.Vita(backbone, mask2former_ref.MaskFormerHead(pix, pred), module)


def _check_layout(config, state_shapes):
  """Every torch key maps (by rule and transform) onto a variable of the right shape; every variable once."""
  return convert_layout.map_layout(rules_vita.vita_rules(config), state_shapes,
                                   nnx.eval_shape(lambda: vita_model.VITA(config, rngs=nnx.Rngs(0))))


def _meta_state(config, backbone_fn):
  with torch.device('meta'):
    ref = _official_ref(config, *backbone_fn())
  state = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
  state['criterion.empty_weight'] = (config.num_classes + 1,)
  state['vita_criterion.empty_weight'] = (config.num_classes + 1,)
  return state


def test_official_r50_layout():
  """R-50 YTVIS19: 706 keys (492 parameters + 53 FrozenBN x 4 buffers + 2 empty_weight), 57.1 M parameters."""
  config = vita_model.default_model_config()
  state = _meta_state(config, lambda: (resnet_refs.D2ResNet(50),))
  assert len(state) == 706
  shapes, dropped = _check_layout(config, state)
  assert sorted(dropped) == ['criterion.empty_weight', 'vita_criterion.empty_weight']
  assert shapes['sem_seg_head.predictor.query_feat.embedding'] == (100, 256)
  assert shapes['vita_module.fq_pos.embedding'] == (100, 256)
  assert shapes['sem_seg_head.predictor.class_embed.kernel'] == (256, 41)
  params = sum(int(np.prod(s)) for k, s in state.items() if 'empty_weight' not in k and 'running_' not in k
               and not (k.startswith('backbone.') and '.norm.' in k))
  assert abs(params - 57.1e6) < 0.1e6, params


def test_official_swin_l_layout():
  config = vita_model.default_model_config()
  config.backbone = 'swin'
  config.num_frame_queries = 200
  swin_l = lambda: (swin_ref.D2SwinTransformer(192, (2, 2, 18, 2), (6, 12, 24, 48), 12), (192, 384, 768, 1536))
  state = _meta_state(config, swin_l)
  shapes, dropped = _check_layout(config, state)
  assert len([k for k in dropped if k.endswith('relative_position_index')]) == 24
  assert shapes['sem_seg_head.pixel_decoder.adapter_1.conv.kernel'] == (1, 1, 192, 256)
  assert shapes['vita_module.fq_pos.embedding'] == (200, 256)


def _tiny_config(num_classes=5):
  c = vita_model.default_model_config()
  c.update(backbone_depth=18, num_classes=num_classes, conv_dim=32, mask_dim=16, pixel_decoder_enc_layers=1,
           enc_n_points=2, hidden_dim=32, num_frame_queries=4, nheads=2, dim_feedforward=48, dec_layers=4,
           pixel_decoder_dim_feedforward=1024)
  c.vita.update(enc_layers=2, dec_layers=2, nheads=2, dim_feedforward=48, hidden_dim=32, num_queries=6)
  return c


def _tiny_state(config):
  torch.manual_seed(0)
  ref = _official_ref(config, resnet_refs.D2ResNet(18), (64, 128, 256, 512))
  return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


def test_mask2former_checkpoint_leaves_vita_module_at_init():
  config = _tiny_config()
  state = {k: v for k, v in _tiny_state(config).items() if not k.startswith('vita_module.')}
  state['criterion.empty_weight'] = np.ones(6, np.float32)
  model = vita_model.VITA(config, rngs=nnx.Rngs(0))
  before = np.asarray(model.vita_module.query_feat.embedding[...])
  report = rules_vita.convert_checkpoint(state, model, config)
  assert report.ok and report.allowed_missing
  assert all(i.nnx_path.startswith('vita_module.') for i in report.allowed_missing)
  assert 'vita_module.query_feat.embedding' in report.summary()
  np.testing.assert_array_equal(model.vita_module.query_feat.embedding[...], before)
  np.testing.assert_array_equal(model.sem_seg_head.predictor.query_feat.embedding[...],
                                state['sem_seg_head.predictor.query_feat.weight'])


def test_other_class_count_reinitialises_class_heads():
  state = _tiny_state(_tiny_config(num_classes=80))  # e.g. COCO weights
  config = _tiny_config(num_classes=5)
  with pytest.raises(convert.ConversionError, match='class_embed'):
    rules_vita.convert_checkpoint(state, vita_model.VITA(config, rngs=nnx.Rngs(0)), config)
  model = vita_model.VITA(config, rngs=nnx.Rngs(0))
  report = rules_vita.convert_checkpoint(state, model, config, reinit_class_heads=True)
  assert {i.nnx_path for i in report.allowed_mismatched} == {
      f'{m}.class_embed.{p}' for m in ('sem_seg_head.predictor', 'vita_module') for p in ('kernel', 'bias')}
  assert model.vita_module.class_embed.kernel[...].shape == (32, 6)
  np.testing.assert_array_equal(model.vita_module.mask_embed.layers[0].bias[...],
                                state['vita_module.mask_embed.layers.0.bias'])


def test_missing_and_unexpected_keys_fail():
  config = _tiny_config()
  state = _tiny_state(config)
  del state['vita_module.enc_ffn.1.norm.weight']
  state['vita_module.mystery.weight'] = np.zeros(3, np.float32)
  with pytest.raises(convert.ConversionError) as info:
    rules_vita.convert_checkpoint(state, nnx.eval_shape(lambda: vita_model.VITA(config, rngs=nnx.Rngs(0))), config)
  assert 'vita_module.enc_ffn.1.norm.scale' in str(info.value) and 'vita_module.mystery.weight' in str(info.value)


def test_unknown_backbone_rejected():
  config = _tiny_config()
  config.backbone = 'vit'
  with pytest.raises(ValueError, match="config.model.backbone must be 'resnet' or 'swin'"):
    rules_vita.vita_rules(config)
