"""Conversion rules for the official VITA checkpoints (sukjunhwang/VITA; detectron2 `{"model": state_dict}`),
and for plain Mask2Former instance-segmentation checkpoints loaded into VITA's frame detector.

  backbone.*                 -> backbone.*   (detectron2 ResNet FrozenBN rules, or D2SwinTransformer rules with the
                                             `relative_position_index` buffers checked and dropped)
  sem_seg_head.*             -> sem_seg_head.*   (`rules_mask2former.mask_former_head_rules`, incl. the legacy
                                             `static_query` -> `query_feat` rename)
  vita_module.enc_self_attn.{i}, enc_ffn.{i}, transformer_{self,cross}_attention_layers.{i},
    transformer_ffn_layers.{i}              -> same paths (in_proj split into q/k/v, Linear transposed,
                                               LayerNorm weight -> scale)
  vita_module.{decoder_norm, input_proj_dec, class_embed, mask_embed.layers.{j}, sim_embed_frame, sim_embed_clip}
  vita_module.{query_feat, query_embed, fq_pos}.weight -> .embedding
  vita_module.vita_mask_features.{weight,bias} -> .kernel (OIHW -> HWIO), .bias
  criterion.empty_weight, vita_criterion.empty_weight, *.num_batches_tracked: dropped (`COMMON_DROPS`)

`convert_checkpoint` adds the two tolerated differences: a checkpoint without `vita_module.*` (a Mask2Former
detector) leaves the VITA module at its init, and `reinit_class_heads=True` keeps the class heads at init when the
checkpoint has another class count; both are listed in the report's `allowed_*` fields. Through the CLI
(`--mode convert`) the same waivers are `--config.convert.allow_missing='vita_module[.].*'` and
`--config.convert.allow_shape_mismatch='.*class_embed.*'` (or convert with the checkpoint's own class count and
start training with `--config.init_reinit='.*class_embed.*'`).
"""

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from flax import nnx

from visjax.convert import torch_ckpt
from visjax.convert.backbone_rules import resnet_d2_rules, swin_rules
from visjax.convert.rules import COMMON_DROPS, Rule, RuleTable, conv_rules, identity, linear_rules, norm_rules, prefixed
from visjax.convert.rules_mask2former import attention_layer_rules, mask_former_head_rules
from visjax.convert.strict import ConversionReport, convert

CLASS_HEADS = r'(?:sem_seg_head\.predictor|vita_module)\.class_embed\.(?:weight|bias|kernel)'


def backbone_rules(model_config: ml_collections.ConfigDict) -> RuleTable:
  """`backbone.*` for `config.model.backbone` ('resnet' detectron2 layout or 'swin')."""
  kind = model_config.get('backbone', 'resnet')
  if kind == 'resnet':
    return resnet_d2_rules('backbone.', 'backbone', norm=model_config.get('backbone_norm', 'FrozenBN'))
  if kind == 'swin':
    return swin_rules('backbone.', 'backbone', window_size=model_config.swin.window_size)
  raise ValueError(f"VITA config.model.backbone must be 'resnet' or 'swin', got {kind!r}.")


def vita_module_rules(torch_prefix: str = 'vita_module.', nnx_prefix: str = 'vita_module.') -> RuleTable:
  """The VITA module (see module docstring)."""
  t, n = prefixed(torch_prefix, nnx_prefix)
  layers = (r'enc_self_attn\.\d+|enc_ffn\.\d+|transformer_(?:self|cross)_attention_layers\.\d+'
            r'|transformer_ffn_layers\.\d+')
  return RuleTable(
      attention_layer_rules(t, n, layers)
      + norm_rules(t, n, 'decoder_norm')
      + linear_rules(t, n, r'input_proj_dec|class_embed|mask_embed\.layers\.\d+|sim_embed_frame|sim_embed_clip')
      + [Rule(rf'{t}(query_feat|query_embed|fq_pos)\.weight', rf'{n}\1.embedding', identity)]
      + conv_rules(t, n, 'vita_mask_features'))


def vita_rules(model_config: ml_collections.ConfigDict) -> RuleTable:
  """The full table for `config.model` (see module docstring)."""
  return (COMMON_DROPS + backbone_rules(model_config) + mask_former_head_rules('sem_seg_head.', 'sem_seg_head.')
          + vita_module_rules())


def convert_checkpoint(state_dict: Mapping[str, Any] | str | os.PathLike, model: nnx.Module,
                       model_config: ml_collections.ConfigDict, *,
                       reinit_class_heads: bool = False) -> ConversionReport:
  """Fills `model` (a `VITA`) from an official VITA or Mask2Former checkpoint, strictly.

  Args:
    state_dict: state dict or checkpoint path (see `visjax.convert.convert`).
    model: the VITA model (concrete when something may stay at init).
    model_config: `config.model`.
    reinit_class_heads: allow `class_embed` of a different class count (fine-tuning to another dataset): those
      heads keep their init, as detectron2 skips mis-shaped keys.

  Returns:
    The report; a checkpoint without any `vita_module.*` key (Mask2Former detector) leaves the whole VITA module
    at init, listed in `report.allowed_missing`.
  """
  if isinstance(state_dict, (str, os.PathLike)):
    state_dict = torch_ckpt.load_state_dict(state_dict)
  else:
    state_dict = torch_ckpt.unwrap_state_dict(state_dict)
  detector_only = not any(k.startswith('vita_module.') for k in state_dict)
  return convert(state_dict, model, vita_rules(model_config),
                 allow_missing=(r'vita_module\..*',) if detector_only else (),
                 allow_shape_mismatch=(CLASS_HEADS,) if reinit_class_heads else ())
