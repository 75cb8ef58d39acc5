"""Rule tables for the backbones in `visjax.models.backbones`, reusable by every head's table.

Each factory takes the prefix of the backbone in the torch checkpoint (e.g. 'backbone.' for VITA/VISOLO
detectron2 files, 'detr.detr.backbone.0.backbone.' for IDOL, 'backbone.' for mmdet/IAI) and in the NNX model
(the dotted path of the backbone module inside the model, '' for a bare backbone).
"""

from __future__ import annotations

import numpy as np

from visjax.convert.rules import Rule, RuleTable, conv_kernel, drop, linear_kernel, prefixed
from visjax.models.backbones.swin import relative_position_index

_BN = r'(weight|bias|running_mean|running_var)'


def resnet_d2_rules(torch_prefix: str = 'backbone.', nnx_prefix: str = '', *, norm: str = 'FrozenBN') -> RuleTable:
  """detectron2 ResNet (`stem.conv1`, `res{2-5}.{i}.conv{1-3}` / `.shortcut`, each with a `.norm`).

  `norm`: 'FrozenBN' (weight, bias, running_mean, running_var) or 'GN' (torch `weight` -> NNX `scale`, `bias`).
  """
  t, n = prefixed(torch_prefix, nnx_prefix)
  conv = r'(stem\.conv1|res[2-5]\.\d+\.(?:conv[1-3]|shortcut))'
  if norm == 'GN':
    norm_rules = [Rule(rf'{t}{conv}\.norm\.weight', rf'{n}\g<1>.norm.scale'),
                  Rule(rf'{t}{conv}\.norm\.bias', rf'{n}\g<1>.norm.bias')]
  elif norm == 'FrozenBN':
    norm_rules = [Rule(rf'{t}{conv}\.norm\.{_BN}', rf'{n}\g<1>.norm.\g<2>'),
                  drop(rf'{t}{conv}\.norm\.num_batches_tracked')]
  else:
    raise ValueError(f"resnet_d2_rules: norm must be 'FrozenBN' or 'GN', got {norm!r}")
  return RuleTable([Rule(rf'{t}{conv}\.weight', rf'{n}\g<1>.kernel', conv_kernel)] + norm_rules)


def resnet_tv_rules(torch_prefix: str = 'backbone.', nnx_prefix: str = '') -> RuleTable:
  """torchvision / mmdet ResNet (`conv1`, `bn1`, `layer{1-4}.{i}.conv{j}` / `.bn{j}` / `.downsample.{0,1}`).

  `num_batches_tracked` and torchvision's classifier `fc.*` are dropped.
  """
  t, n = prefixed(torch_prefix, nnx_prefix)
  block = r'layer[1-4]\.\d+\.'
  return RuleTable([
      Rule(rf'{t}((?:{block})?conv\d|{block}downsample\.0)\.weight', rf'{n}\g<1>.kernel', conv_kernel),
      Rule(rf'{t}((?:{block})?bn\d|{block}downsample\.1)\.{_BN}', rf'{n}\g<1>.\g<2>'),
      drop(rf'{t}((?:{block})?bn\d|{block}downsample\.1)\.num_batches_tracked'),
      drop(rf'{t}fc\.(weight|bias)'),
  ])


def resnet_tv_to_d2_rules(torch_prefix: str = '', nnx_prefix: str = '') -> RuleTable:
  """torchvision-layout weights (e.g. torchvision's ImageNet ResNets) into a detectron2-layout model.

  `conv1`/`bn1` -> `stem.conv1`(`.norm`), `layer{k}` -> `res{k+1}`, `bn{j}` -> `conv{j}.norm` (BatchNorm
  statistics become FrozenBN buffers), `downsample.{0,1}` -> `shortcut`(`.norm`); `fc.*` and
  `num_batches_tracked` are dropped. The networks compute the same function (eval-mode BN == FrozenBN).
  """
  t, n = prefixed(torch_prefix, nnx_prefix)
  rules = [
      Rule(rf'{t}conv1\.weight', rf'{n}stem.conv1.kernel', conv_kernel),
      Rule(rf'{t}bn1\.{_BN}', rf'{n}stem.conv1.norm.\g<1>'),
  ]
  for k in range(1, 5):
    src, dst = rf'{t}layer{k}\.(\d+)\.', rf'{n}res{k + 1}.\g<1>.'
    rules += [
        Rule(rf'{src}conv(\d)\.weight', rf'{dst}conv\g<2>.kernel', conv_kernel),
        Rule(rf'{src}bn(\d)\.{_BN}', rf'{dst}conv\g<2>.norm.\g<3>'),
        Rule(rf'{src}downsample\.0\.weight', rf'{dst}shortcut.kernel', conv_kernel),
        Rule(rf'{src}downsample\.1\.{_BN}', rf'{dst}shortcut.norm.\g<2>'),
    ]
  rules += [drop(rf'{t}.*num_batches_tracked'), drop(rf'{t}fc\.(weight|bias)')]
  return RuleTable(rules)


def swin_rules(torch_prefix: str = 'backbone.', nnx_prefix: str = '', *, window_size: int) -> RuleTable:
  """Mask2Former `D2SwinTransformer`. LayerNorm `weight` -> `scale`; Linear weights transposed.

  `relative_position_index` buffers are dropped after checking they equal the index recomputed for
  `window_size` (the model recomputes it), so a checkpoint for another window size fails loudly.
  """
  t, n = prefixed(torch_prefix, nnx_prefix)
  expected_index = relative_position_index(window_size)

  def check_index(key: str, array: np.ndarray) -> str | None:
    if array.shape != expected_index.shape or not np.array_equal(array, expected_index):
      return (f'relative_position_index {array.shape} differs from the one for window_size={window_size} '
              f'{expected_index.shape}')
    return None

  block = r'layers\.\d+\.blocks\.\d+\.'
  norm = rf'(patch_embed\.norm|{block}norm[12]|layers\.\d+\.downsample\.norm|norm\d)'
  linear = rf'({block}(?:attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)|layers\.\d+\.downsample\.reduction)'
  return RuleTable([
      Rule(rf'{t}patch_embed\.proj\.weight', rf'{n}patch_embed.proj.kernel', conv_kernel),
      Rule(rf'{t}patch_embed\.proj\.bias', rf'{n}patch_embed.proj.bias'),
      Rule(rf'{t}{norm}\.weight', rf'{n}\g<1>.scale'),
      Rule(rf'{t}{norm}\.bias', rf'{n}\g<1>.bias'),
      Rule(rf'{t}{linear}\.weight', rf'{n}\g<1>.kernel', linear_kernel),
      Rule(rf'{t}{linear}\.bias', rf'{n}\g<1>.bias'),
      Rule(rf'{t}({block}attn\.relative_position_bias_table)', rf'{n}\g<1>'),
      drop(rf'{t}{block}attn\.relative_position_index', check_index),
  ])
