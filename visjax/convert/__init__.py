"""PyTorch checkpoint conversion: readers, rule tables, strict filling of NNX state, orbax export.

Typical use (a head adds its own table next to the backbone's):

  from visjax import convert
  rules = convert.resnet_d2_rules('detr.detr.backbone.0.backbone.', 'backbone') + my_head_rules
  report = convert.convert('official.pth', model, rules, allow_shape_mismatch=[r'.*class_embed.*'])
  convert.save_converted(model, workdir + '/converted')

Stable API: `load_state_dict`, `unwrap_state_dict`, `read_safetensors`, `write_safetensors`; `Rule`, `drop`,
`duplicate`, `COMMON_DROPS`, `RuleTable`, transforms (`identity`, `conv_kernel`, `linear_kernel`, `split`, `chunks`, `reshape`,
`chain`); `convert`, `ConversionReport`, `ConversionError`, `Issue`; `save_converted`, `load_converted`;
`resnet_d2_rules`, `resnet_tv_rules`, `resnet_tv_to_d2_rules`, `swin_rules`.
torch is imported only when a .pth file is read.
"""

from visjax.convert.backbone_rules import resnet_d2_rules, resnet_tv_rules, resnet_tv_to_d2_rules, swin_rules
from visjax.convert.orbax_io import load_converted, save_converted
from visjax.convert.rules import (COMMON_DROPS, Rule, RuleTable, chain, chunks, conv_kernel, drop, duplicate,
                                  identity, linear_kernel, prefixed, reshape, split)
from visjax.convert.strict import ConversionError, ConversionReport, Issue, convert, dotted, target_state
from visjax.convert.torch_ckpt import (CheckpointFormatError, load_state_dict, read_safetensors,
                                       unwrap_state_dict, write_safetensors)
