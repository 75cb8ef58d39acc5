"""Conversion rules for the official VISOLO checkpoints (SuHoHan95/VISOLO; YouTube-VIS 2019 R-50 and the COCO
pretraining, both detectron2 files whose `model` entry holds the `Visolo` meta-architecture's state).

Every key is consumed:

  model.backbone.{stem,res2,res3,res4}.*   -> backbone.*   (detectron2 ResNet rules; no res5 in the file)
  model.<branch>.<path>.weight / .bias     -> <branch>.<path>.conv.kernel / .conv.bias   (OIHW -> HWIO)
  model.<branch>.<path>.norm.weight / bias -> <branch>.<path>.norm.scale / .bias          (GroupNorm)
      <branch>: Category_branch_pre, Category_branch_post, Kernel_branch, Mask_branch, Tracking_branch,
      Memory_module; <path> is the official module path (e.g. `conv_layers.cat_pre_conv2`, `RefR3.ResSCF.conv1`),
      which the NNX modules mirror.
  tracking_module.*                        dropped after checking it equals model.Tracking_branch.* (the meta-arch
                                           registers `self.tracking_module = self.model.Tracking_branch`)

The COCO-pretrained file has 80 classes in `model.Category_branch_post.pred.*`; load it into a 40-class model
with `convert(..., allow_shape_mismatch=CLASS_HEAD)` (the class head keeps its init, as detectron2 does).
"""

import ml_collections

from visjax.convert.backbone_rules import resnet_d2_rules
from visjax.convert.rules import Rule, RuleTable, conv_kernel, duplicate

BRANCHES = ('Category_branch_pre', 'Category_branch_post', 'Kernel_branch', 'Mask_branch', 'Tracking_branch',
            'Memory_module')
CLASS_HEAD = (r'model\.Category_branch_post\.pred\..*',)


def head_rules() -> RuleTable:
  """The five branches and the memory module (`model.<branch>.*` -> `<branch>.*`)."""
  m = rf'model\.(?P<m>(?:{"|".join(BRANCHES)})\..+)'
  return RuleTable([
      Rule(rf'{m}\.norm\.weight', r'\g<m>.norm.scale'),
      Rule(rf'{m}\.norm\.bias', r'\g<m>.norm.bias'),
      Rule(rf'{m}\.weight', r'\g<m>.conv.kernel', conv_kernel),
      Rule(rf'{m}\.bias', r'\g<m>.conv.bias'),
  ])


def visolo_rules(model_config: ml_collections.ConfigDict | None = None) -> RuleTable:
  """The full VISOLO table (see module docstring) for `config.model` (None: FrozenBN ResNet)."""
  norm = 'FrozenBN' if model_config is None else model_config.get('backbone_norm', 'FrozenBN')
  return (resnet_d2_rules('model.backbone.', 'backbone', norm=norm)
          + head_rules()
          + [duplicate(r'tracking_module\.(.*)', r'model.Tracking_branch.\1')])
