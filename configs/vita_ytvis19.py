"""VITA R-50 on YouTube-VIS 2019 (official `configs/youtubevis_2019/vita_R50_bs8.yaml`; 49.8 AP).

R-101: `--config.model.backbone_depth=101` (`vita_R101_bs8.yaml`, otherwise identical).
"""

import ml_collections

from configs import vita_common


def get_config() -> ml_collections.ConfigDict:
  c = vita_common.vita_config(num_classes=40)
  c.dataset.name = 'ytvis19'
  return c
