"""IAI checkpoint conversion: the full-size official R-50 layout (torch meta tensors: 463 keys, 45.4 M parameters)
maps key-for-key and shape-for-shape onto the abstract model; an mmcv `{"meta", "state_dict"}` file round-trips;
a plain CondInst checkpoint loads with the identity/LSTT parts left at init and reported; strict failures."""

import numpy as np
import pytest
from tests import convert_layout
from flax import nnx

from visjax import convert
from visjax.convert import rules_iai
from visjax.models.iai import model as iai_model

pytestmark = pytest.mark.torch
torch = pytest.importorskip('torch')
from torch_refs import iai_ref, resnet_refs  # pylint: disable=g-import-not-at-top

TINY = dict(num_classes=7, max_obj_num=5, backbone_depth=18, fpn_channels=32, stacked_convs=2, mask_channels=16,
            lstt_dim=64, dim_feedforward=64, max_dis=2)


def _tiny_ref():
  torch.manual_seed(0)
  ref = iai_ref.IAIRef(resnet_refs.TVResNet(18), (64, 128, 256, 512), num_classes=7, max_obj_num=5, d_model=64,
                       feat_channels=32, stacked_convs=2, mask_channels=16, dim_feedforward=64, max_dis=2)
  return iai_ref.randomize_(ref)


def _state(ref):
  return {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}


def test_official_size_r50_layout():
  with torch.device('meta'):
    ref = iai_ref.IAIRef(resnet_refs.TVResNet(50), (256, 512, 1024, 2048), num_classes=40, max_obj_num=20,
                         d_model=256, feat_channels=256, stacked_convs=4, mask_channels=128)
  state = ref.state_dict()
  assert len(state) == 463 and sum(k.endswith('num_batches_tracked') for k in state) == 60
  assert sum(p.numel() for p in ref.parameters()) == pytest.approx(45.4e6, rel=2e-3)
  assert tuple(state['lstt.patch_wise_id_bank.weight'].shape) == (256, 21, 33, 33)
  assert tuple(state['lstt.LSTT.layers.0.short_term_attn.V_bias'].shape) == (1, 2, 128, 225, 1)
  assert tuple(state['bbox_head.scales.0.scale'].shape) == ()
  m = iai_model.default_model_config()
  model = nnx.eval_shape(lambda: iai_model.IAI.from_config(m, rngs=nnx.Rngs(0)))
  _, dropped = convert_layout.map_layout(rules_iai.iai_rules(), {k: v.shape for k, v in state.items()}, model)
  assert len(dropped) == 60


def test_mmcv_file_round_trip(tmp_path):
  ref = _tiny_ref()
  path = tmp_path / 'iai.pth'
  torch.save({'meta': {'epoch': 12, 'CLASSES': ['a']}, 'state_dict': ref.state_dict()}, path)
  model = iai_model.IAI(**TINY, rngs=nnx.Rngs(1))
  report = convert.convert(str(path), model, rules_iai.iai_rules())
  assert report.ok
  state = _state(ref)
  np.testing.assert_array_equal(model.lstt.LSTT.layers[0].self_attn.q_proj.kernel.get_value(),
                                state['lstt.LSTT.layers.0.self_attn.linear_Q.weight'].T)
  np.testing.assert_array_equal(model.lstt.LSTT.layers[0].short_term_attn.relative_emb.kernel.get_value(),
                                state['lstt.LSTT.layers.0.short_term_attn.relative_emb.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.lstt.LSTT.layers[0].activation.GCT.gamma.get_value(),
                                state['lstt.LSTT.layers.0.activation.GCT.gamma'].reshape(-1))
  np.testing.assert_array_equal(model.bbox_head.mask_head[2].kernel.get_value(),
                                state['bbox_head.mask_head.2.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(model.bbox_head.mask_refine[1].norm.running_var.get_value(),
                                state['bbox_head.mask_refine.1.1.running_var'])
  assert float(model.bbox_head.scales[3].scale.get_value()) == float(state['bbox_head.scales.3.scale'])


def test_condinst_checkpoint_leaves_identity_parts_at_init():
  state = {k: v for k, v in _state(_tiny_ref()).items()
           if not k.startswith(('lstt.', 'encoder_projector.', 'backbone_projector.', 'bbox_head.id_convs.',
                                'bbox_head.conv_id.'))}
  model = iai_model.IAI(**TINY, rngs=nnx.Rngs(1))
  with pytest.raises(convert.ConversionError, match='lstt.patch_wise_id_bank.kernel'):
    convert.convert(state, model, rules_iai.iai_rules())
  report = convert.convert(state, model, rules_iai.iai_rules(), allow_missing=rules_iai.CONDINST_INIT_MISSING)
  missing = {i.nnx_path for i in report.allowed_missing}
  assert 'bbox_head.conv_id.kernel' in missing and 'encoder_projector.kernel' in missing
  assert all(p.startswith(('lstt.', 'encoder_projector', 'backbone_projector', 'bbox_head.id_convs',
                           'bbox_head.conv_id')) for p in missing)
  np.testing.assert_array_equal(model.bbox_head.conv_cls.bias.get_value(), state['bbox_head.conv_cls.bias'])


def test_strict_failures_listed():
  state = _state(_tiny_ref())
  del state['bbox_head.controller.bias']
  state['bbox_head.mystery.weight'] = np.zeros((3,), np.float32)
  model = nnx.eval_shape(lambda: iai_model.IAI(**TINY, rngs=nnx.Rngs(0)))
  with pytest.raises(convert.ConversionError) as info:
    convert.convert(state, model, rules_iai.iai_rules())
  assert 'bbox_head.controller.bias' in str(info.value) and 'bbox_head.mystery.weight' in str(info.value)
