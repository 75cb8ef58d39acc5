"""Conversion rules for the official IDOL checkpoints (wjf5203/VNext `projects/IDOL`, R50 / R101 / Swin-L).

The checkpoint is a detectron2 dict whose `model` entry holds the `IDOL` meta-architecture's state (`detr.*`).
Every key is consumed:

  detr.detr.backbone.0.backbone.*            -> backbone.*            (detectron2 ResNet rules, or the
                                             D2SwinTransformer rules when `config.model.backbone == 'swin'`:
                                             `patch_embed`, `layers.{i}.*`, `norm0..norm3` (all four exist in
                                             the checkpoint, res2's unused), `relative_position_index` checked
                                             against `swin.window_size` and dropped)
  detr.detr.input_proj.{i}.{0,1}.*           -> input_proj.levels.{i}.{conv,norm}.*
  detr.detr.query_embed.weight               -> query_embed.embedding
  detr.detr.transformer.*                    -> transformer.*         (`deformable_transformer_rules`)
  detr.detr.class_embed.{l}.*                -> class_embed.{l}.*
  detr.detr.bbox_embed.{l}.layers.{j}.*      -> bbox_embed.{l}.layers.{j}.*
  detr.detr.transformer.decoder.bbox_embed.* dropped after checking it equals detr.detr.bbox_embed.* (the
                                             official box-refinement hack registers the same heads twice)
  detr.controller.layers.{j}.*               -> controller.layers.{j}.*
  detr.mask_head.{lay1..lay4,dcn}.*          -> mask_head.*
  detr.reid_embed_head.layers.{j}.*          -> reid_embed_head.layers.{j}.*

Layouts: Linear weight transposed, Conv OIHW -> HWIO, LayerNorm/GroupNorm `weight` -> `scale`, the decoder
self-attention's fused `in_proj_weight [3C, C]` / `in_proj_bias [3C]` split into q/k/v (rows [0:C], [C:2C], [2C:3C]).
"""

import ml_collections

from visjax.convert.backbone_rules import resnet_d2_rules, swin_rules
from visjax.convert.rules import (Rule, RuleTable, chunks, conv_kernel, conv_rules, duplicate, identity, linear_kernel,
                                  linear_rules, norm_rules, prefixed)


def deformable_transformer_rules(torch_prefix: str = 'transformer.', nnx_prefix: str = 'transformer.') -> RuleTable:
  """`DeformableTransformer` (encoder, decoder, level_embed, reference_points); no box heads."""
  t, n = prefixed(torch_prefix, nnx_prefix)
  msda = r'(?:sampling_offsets|attention_weights|value_proj|output_proj)'
  enc = r'encoder\.layers\.\d+\.'
  dec = r'decoder\.layers\.\d+\.'
  rules = [Rule(rf'{t}level_embed', rf'{n}level_embed')]
  rules += linear_rules(t, n, 'reference_points')
  rules += linear_rules(t, n, rf'{enc}self_attn\.{msda}|{enc}linear[12]|{dec}cross_attn\.{msda}|{dec}linear[12]')
  rules += linear_rules(t, n, rf'{dec}self_attn\.out_proj')
  rules += norm_rules(t, n, rf'{enc}norm[12]|{dec}norm[123]')
  rules += [
      Rule(rf'{t}(?P<m>{dec}self_attn)\.in_proj_weight',
           (rf'{n}\g<m>.q_proj.kernel', rf'{n}\g<m>.k_proj.kernel', rf'{n}\g<m>.v_proj.kernel'),
           chunks(3, linear_kernel)),
      Rule(rf'{t}(?P<m>{dec}self_attn)\.in_proj_bias',
           (rf'{n}\g<m>.q_proj.bias', rf'{n}\g<m>.k_proj.bias', rf'{n}\g<m>.v_proj.bias'), chunks(3)),
  ]
  return RuleTable(rules)


def input_proj_rules(torch_prefix: str = 'input_proj.', nnx_prefix: str = 'input_proj.') -> RuleTable:
  """`input_proj.{i}.0` (conv) / `.1` (GroupNorm) -> `InputProjection.levels.{i}.conv` / `.norm`."""
  t, n = prefixed(torch_prefix, nnx_prefix)
  return RuleTable([
      Rule(rf'{t}(\d+)\.0\.weight', rf'{n}levels.\1.conv.kernel', conv_kernel),
      Rule(rf'{t}(\d+)\.0\.bias', rf'{n}levels.\1.conv.bias'),
      Rule(rf'{t}(\d+)\.1\.weight', rf'{n}levels.\1.norm.scale'),
      Rule(rf'{t}(\d+)\.1\.bias', rf'{n}levels.\1.norm.bias'),
  ])


def backbone_rules(model_config: ml_collections.ConfigDict | None = None) -> RuleTable:
  """`detr.detr.backbone.0.backbone.*` -> `backbone.*` for the backbone that `model_config` selects (None: ResNet)."""
  kind = 'resnet' if model_config is None else model_config.get('backbone', 'resnet')
  prefix = 'detr.detr.backbone.0.backbone.'
  if kind == 'resnet':
    norm = 'FrozenBN' if model_config is None else model_config.get('backbone_norm', 'FrozenBN')
    return resnet_d2_rules(prefix, 'backbone', norm=norm)
  if kind == 'swin':
    return swin_rules(prefix, 'backbone', window_size=model_config.swin.window_size)
  raise ValueError(f"IDOL config.model.backbone must be 'resnet' or 'swin', got {kind!r}.")


def idol_rules(model_config: ml_collections.ConfigDict | None = None) -> RuleTable:
  """The full IDOL table (see module docstring) for `config.model` (None: the ResNet backbone)."""
  rules = (backbone_rules(model_config)
           + input_proj_rules('detr.detr.input_proj.', 'input_proj')
           + deformable_transformer_rules('detr.detr.transformer.', 'transformer')
           + [duplicate(r'detr\.detr\.transformer\.decoder\.bbox_embed\.(.*)', r'detr.detr.bbox_embed.\1'),
              Rule(r'detr\.detr\.query_embed\.weight', 'query_embed.embedding', identity)]
           + linear_rules('detr\\.detr\\.', '', r'(?:class_embed\.\d+|bbox_embed\.\d+\.layers\.\d+)')
           + linear_rules('detr\\.', '', r'(?:controller|reid_embed_head)\.layers\.\d+')
           + conv_rules('detr\\.', '', r'mask_head\.(?:lay[1-4]|dcn)'))
  return RuleTable(rules)
