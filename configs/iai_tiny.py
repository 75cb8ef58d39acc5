"""A tiny IAI for tests and the CPU demo: ResNet-18 (C5 512 = 64 + 64 + 384 channels), FPN 32, LSTT d 64 with a
5 x 5 window, on the synthetic moving-shapes dataset (96 x 160 frames, 6 classes) generated under
`/tmp/visjax_synthetic`."""

import ml_collections

from configs import common
from configs import iai_common


def get_config() -> ml_collections.ConfigDict:
  c = iai_common.iai_config(num_classes=6, max_obj_num=6)
  m = c.model
  m.backbone_depth = 18
  m.freeze_at = 0  # random init: train the whole backbone
  m.fpn_channels = 32
  m.stacked_convs = 2
  m.mask_channels = 16
  m.lstt_dim = 64
  m.dim_feedforward = 64
  m.max_dis = 2

  common.tiny_synthetic(c, batch_size=2)
  c.loss.max_mask_points = 32
  c.tracker.memory_capacity = 8
  c.train.warmup_steps = 20
  return c
