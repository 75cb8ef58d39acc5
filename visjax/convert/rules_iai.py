"""Conversion rules for IAI checkpoints (zfonemore/IAI, mmcv `{"meta", "state_dict"}` files) and for plain
CondInst checkpoints in the same mmdet layout (`condinst_r50.pth`, IAI's training init).

Every key is consumed:

  backbone.*                                   -> backbone.*   (mmdet / torchvision ResNet, `resnet_tv_rules`)
  neck.{lateral,fpn}_convs.{i}.conv.*          -> neck.{lateral,fpn}_convs.{i}.conv.*
  bbox_head.{cls,reg,id}_convs.{i}.conv.weight -> bbox_head.*_convs.{i}.conv.kernel (no bias: GN follows)
  bbox_head.{cls,reg,id}_convs.{i}.gn.*        -> bbox_head.*_convs.{i}.norm.{scale,bias}
  bbox_head.{conv_cls,conv_id,conv_reg,conv_centerness,controller}.* -> the same 3x3 convs
  bbox_head.scales.{l}.scale (0-d)             -> bbox_head.scales.{l}.scale
  bbox_head.mask_refine.{j}.{0,1}.*            -> bbox_head.mask_refine.{j}.{conv,norm}.* (BatchNorm buffers kept)
  bbox_head.mask_head.{i}.{0,1}.* / .{n}.*     -> bbox_head.mask_head.{i}.{conv,norm}.* / .{n} (the final 1x1 conv)
  encoder_projector.*, backbone_projector.*    -> the 1x1 convs
  lstt.patch_wise_id_bank.*                    -> lstt.patch_wise_id_bank.*
  lstt.LSTT.layers.{l}.self_attn.linear_{Q,K,V} / .projection -> .self_attn.{q,k,v}_proj / .out_proj
  lstt.LSTT.layers.{l}.{linear_Q,linear_V,linear1,linear2,long_term_attn.projection,short_term_attn.fc}
  lstt.LSTT.layers.{l}.short_term_attn.relative_emb (grouped 1x1 conv), .V_bias (kept as [1, h, c, ws^2, 1])
  lstt.LSTT.layers.{l}.norm{1,2,3}, lstt.LSTT.decoder_norms.{l} (LayerNorm weight -> scale)
  lstt.LSTT.layers.{l}.activation.gn, .activation.GCT.{alpha,gamma,beta} ([1, C, 1, 1] -> [C]),
                                     .activation.conv (depthwise 5x5)
  *.num_batches_tracked                        dropped

Layouts: conv OIHW -> HWIO, Linear transposed, norm `weight` -> `scale`.

`CONDINST_INIT_MISSING` lists the parts a plain CondInst checkpoint lacks (identity branch, projectors, LSTT): pass
it as `allow_missing` to `visjax.convert.convert` so they stay at their init and are reported.
"""

from visjax.convert.backbone_rules import resnet_tv_rules
from visjax.convert.rules import (COMMON_DROPS, Rule, RuleTable, conv_kernel, conv_rules, linear_rules, norm_rules,
                                  prefixed, reshape)

CONDINST_INIT_MISSING = (r'bbox_head\.id_convs\..*', r'bbox_head\.conv_id\..*', r'encoder_projector\..*',
                         r'backbone_projector\..*', r'lstt\..*')


def _bn(t: str, src: str, n: str, dst: str) -> list[Rule]:
  """BatchNorm2d at torch `{src}` -> `norms.BatchNorm2d` at NNX `{dst}` (same variable names)."""
  return [Rule(rf'{t}{src}\.(?P<stat>weight|bias|running_mean|running_var)', rf'{n}{dst}.\g<stat>')]


def fpn_rules(torch_prefix: str = 'neck.', nnx_prefix: str = 'neck.') -> RuleTable:
  """mmdet `FPN` (`visjax.models.necks.fpn.FPN`)."""
  t, n = prefixed(torch_prefix, nnx_prefix)
  return RuleTable(conv_rules(t, n, r'(?:lateral|fpn)_convs\.\d+\.conv'))


def head_rules(torch_prefix: str = 'bbox_head.', nnx_prefix: str = 'bbox_head.') -> RuleTable:
  """`IAICondInstHead` (`visjax.models.iai.head.IAIHead`)."""
  t, n = prefixed(torch_prefix, nnx_prefix)
  tower = r'(?P<tw>(?:cls|reg|id)_convs\.\d+)'
  rules = [Rule(rf'{t}{tower}\.conv\.weight', rf'{n}\g<tw>.conv.kernel', conv_kernel)]
  rules += norm_rules(t, n, rf'{tower}\.gn', r'\g<tw>.norm')
  rules += conv_rules(t, n, r'conv_cls|conv_id|conv_reg|conv_centerness|controller')
  rules += [Rule(rf'{t}(?P<s>scales\.\d+\.scale)', rf'{n}\g<s>')]
  block = r'(?P<b>mask_refine\.\d+|mask_head\.\d+)'
  rules += [Rule(rf'{t}{block}\.0\.weight', rf'{n}\g<b>.conv.kernel', conv_kernel)]
  rules += _bn(t, rf'{block}\.1', n, r'\g<b>.norm')
  rules += conv_rules(t, n, r'mask_head\.\d+')  # the final 1x1 conv (`mask_head.{stacked_convs}`)
  return RuleTable(rules)


def lstt_rules(torch_prefix: str = 'lstt.', nnx_prefix: str = 'lstt.') -> RuleTable:
  """`LSTTBlock` (`visjax.models.iai.lstt.LSTTBlock`)."""
  t, n = prefixed(torch_prefix, nnx_prefix)
  layer = r'LSTT\.layers\.\d+'
  rules = conv_rules(t, n, r'patch_wise_id_bank')
  for src, dst in (('linear_Q', 'q_proj'), ('linear_K', 'k_proj'), ('linear_V', 'v_proj'), ('projection', 'out_proj')):
    rules += linear_rules(t, n, rf'(?P<l>{layer})\.self_attn\.{src}', rf'\g<l>.self_attn.{dst}')
  rules += linear_rules(t, n, rf'{layer}\.(?:linear_Q|linear_V|linear1|linear2|long_term_attn\.projection|'
                         rf'short_term_attn\.fc)')
  rules += conv_rules(t, n, rf'{layer}\.short_term_attn\.relative_emb')
  rules += [Rule(rf'{t}(?P<m>{layer}\.short_term_attn\.V_bias)', rf'{n}\g<m>')]
  rules += norm_rules(t, n, rf'{layer}\.norm[123]|LSTT\.decoder_norms\.\d+|{layer}\.activation\.gn')
  rules += [Rule(rf'{t}(?P<m>{layer}\.activation\.GCT\.(?:alpha|gamma|beta))', rf'{n}\g<m>', reshape(-1))]
  rules += [Rule(rf'{t}(?P<m>{layer}\.activation\.conv)\.weight', rf'{n}\g<m>.kernel', conv_kernel)]
  return RuleTable(rules)


def iai_rules() -> RuleTable:
  """The full IAI table (module docstring); also reads plain CondInst checkpoints (with `CONDINST_INIT_MISSING`)."""
  return (resnet_tv_rules('backbone.', 'backbone') + fpn_rules() + head_rules() + lstt_rules()
          + RuleTable(conv_rules('', '', r'encoder_projector|backbone_projector')) + COMMON_DROPS)
