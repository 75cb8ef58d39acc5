"""IDOL Swin-L on YouTube-VIS 2019 (official `configs/ytvis19_swinL.yaml`; 64.3 AP with the released weights).

The R50 recipe of `idol_ytvis19.py` (batch 32, lr 1e-4, 12k steps, same input sizes) with the Swin-L backbone.
"""

import ml_collections

from configs import idol_common
from configs import idol_ytvis19


def get_config() -> ml_collections.ConfigDict:
  return idol_common.use_swin_l(idol_ytvis19.get_config())
