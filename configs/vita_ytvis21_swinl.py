"""VITA Swin-L on YouTube-VIS 2021 (official `configs/youtubevis_2021/vita_SWIN_bs8.yaml`; 57.5 AP)."""

import ml_collections

from configs import vita_common
from configs import vita_ytvis21


def get_config() -> ml_collections.ConfigDict:
  return vita_common.use_swin_l(vita_ytvis21.get_config())
