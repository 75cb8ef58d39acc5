"""IDOL Swin-L on YouTube-VIS 2021 (official `configs/ytvis21_swinL.yaml`: the YTVIS21 R50 recipe with Swin-L)."""

import ml_collections

from configs import idol_common
from configs import idol_ytvis21


def get_config() -> ml_collections.ConfigDict:
  return idol_common.use_swin_l(idol_ytvis21.get_config())
