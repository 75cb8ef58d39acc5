"""IAI R-101 on YouTube-VIS 2019 (official `ytvis2019_iai_condinst_r101.py`; 43.7 AP): multi-scale training, 2 clips
per GPU, 1000 candidates per level and class threshold 0.05 at test time, init from `condinst_r101.pth`."""

import ml_collections

from configs import iai_common


def get_config() -> ml_collections.ConfigDict:
  c = iai_common.multiscale(iai_common.iai_config(num_classes=40))
  c.dataset.name = 'ytvis19'
  c.model.backbone_depth = 101
  c.input.batch_size = 16
  c.tracker.nms_pre = 1000
  c.tracker.cls_score_thr = 0.05
  return c
