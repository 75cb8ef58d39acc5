"""Conversion rules for Mask2Former's `sem_seg_head` (`visjax.models.transformers.mask2former`), shared by every
method built on it (VITA; plain Mask2Former instance-segmentation checkpoints).

  pixel_decoder.input_proj.{i}.{0,1}.*            -> pixel_decoder.input_proj.levels.{i}.{conv,norm}.*
  pixel_decoder.transformer.{level_embed, encoder.layers.*}  (deformable encoder rules)
  pixel_decoder.{adapter,layer}_{k}.weight / .norm.* -> pixel_decoder.{adapter,layer}_{k}.conv.kernel / .norm.*
  pixel_decoder.mask_features.*                    -> pixel_decoder.mask_features.{kernel,bias}
  predictor.transformer_{self,cross}_attention_layers.{i}.{self_attn|multihead_attn}.in_proj_{weight,bias}
                                                   -> ... .{q,k,v}_proj.{kernel,bias}  (rows [0:C], [C:2C], [2C:3C])
  predictor.transformer_*_layers.{i}.{out_proj, linear1, linear2, norm}
  predictor.{decoder_norm, class_embed, mask_embed.layers.{j}}
  predictor.{query_feat, query_embed, level_embed}.weight -> .embedding
  predictor.static_query.weight                    -> predictor.query_feat.embedding (legacy name, renamed by the
                                                      official `_load_from_state_dict` of version-1 checkpoints)
"""

from visjax.convert.rules import (Rule, RuleTable, chunks, conv_kernel, conv_rules, identity, linear_kernel,
                                  linear_rules, norm_rules, prefixed)
from visjax.convert.rules_idol import deformable_transformer_rules, input_proj_rules


def attention_layer_rules(t: str, n: str, layers: str) -> list[Rule]:
  """Self/cross-attention and FFN layers (`SelfAttentionLayer`, `CrossAttentionLayer`, `FFNLayer`).

  Args:
    t, n: escaped torch prefix and NNX template prefix (`rules.prefixed`).
    layers: regex of the layer module paths, e.g. `transformer_(?:self|cross)_attention_layers\\.\\d+` or
      `enc_(?:self_attn|ffn)\\.\\d+`.
  """
  attn = rf'(?:{layers})\.(?:self_attn|multihead_attn)'
  return ([Rule(rf'{t}(?P<m>{attn})\.in_proj_weight',
                (rf'{n}\g<m>.q_proj.kernel', rf'{n}\g<m>.k_proj.kernel', rf'{n}\g<m>.v_proj.kernel'),
                chunks(3, linear_kernel)),
           Rule(rf'{t}(?P<m>{attn})\.in_proj_bias',
                (rf'{n}\g<m>.q_proj.bias', rf'{n}\g<m>.k_proj.bias', rf'{n}\g<m>.v_proj.bias'), chunks(3))]
          + linear_rules(t, n, rf'{attn}\.out_proj|(?:{layers})\.linear[12]')
          + norm_rules(t, n, rf'(?:{layers})\.norm'))


def pixel_decoder_rules(torch_prefix: str = 'sem_seg_head.pixel_decoder.',
                        nnx_prefix: str = 'sem_seg_head.pixel_decoder.') -> RuleTable:
  """`MSDeformAttnPixelDecoder` (see module docstring)."""
  t, n = prefixed(torch_prefix, nnx_prefix)
  fpn = r'(?:adapter|layer)_\d+'
  return (input_proj_rules(torch_prefix + 'input_proj.', nnx_prefix + 'input_proj.')
          + deformable_transformer_rules(torch_prefix + 'transformer.', nnx_prefix + 'transformer.')
          + [Rule(rf'{t}(?P<m>{fpn})\.weight', rf'{n}\g<m>.conv.kernel', conv_kernel)]
          + norm_rules(t, n, rf'{fpn}\.norm') + conv_rules(t, n, 'mask_features'))


def predictor_rules(torch_prefix: str = 'sem_seg_head.predictor.',
                    nnx_prefix: str = 'sem_seg_head.predictor.') -> RuleTable:
  """`MultiScaleMaskedTransformerDecoder` / `VitaMultiScaleMaskedTransformerDecoder` (see module docstring)."""
  t, n = prefixed(torch_prefix, nnx_prefix)
  return RuleTable(
      attention_layer_rules(t, n, r'transformer_(?:self|cross)_attention_layers\.\d+|transformer_ffn_layers\.\d+')
      + norm_rules(t, n, 'decoder_norm')
      + linear_rules(t, n, r'class_embed|mask_embed\.layers\.\d+')
      + [Rule(rf'{t}(query_feat|query_embed|level_embed)\.weight', rf'{n}\1.embedding', identity),
         Rule(rf'{t}static_query\.weight', rf'{n}query_feat.embedding', identity)])


def mask_former_head_rules(torch_prefix: str = 'sem_seg_head.', nnx_prefix: str = 'sem_seg_head.') -> RuleTable:
  """The whole `MaskFormerHead` (`pixel_decoder.*` and `predictor.*`)."""
  t = torch_prefix if not torch_prefix or torch_prefix.endswith('.') else torch_prefix + '.'
  n = nnx_prefix if not nnx_prefix or nnx_prefix.endswith('.') else nnx_prefix + '.'
  return pixel_decoder_rules(t + 'pixel_decoder.', n + 'pixel_decoder.') + predictor_rules(t + 'predictor.',
                                                                                            n + 'predictor.')
