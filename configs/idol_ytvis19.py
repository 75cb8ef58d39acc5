"""IDOL R50 on YouTube-VIS 2019 (official `configs/ytvis19_r50.yaml`; 49.3 / 50.2 AP with the released weights).

R101: `--config.model.backbone_depth=101` (official `ytvis19_r101.yaml`, otherwise identical).
"""

import ml_collections

from configs import idol_common


def get_config() -> ml_collections.ConfigDict:
  c = idol_common.idol_config(num_classes=40)
  c.dataset.name = 'ytvis19'
  return c
