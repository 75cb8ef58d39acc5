"""VITA Swin-L on YouTube-VIS 2019 (official `configs/youtubevis_2019/vita_SWIN_bs8.yaml`; 63.0 AP)."""

import ml_collections

from configs import vita_common
from configs import vita_ytvis19


def get_config() -> ml_collections.ConfigDict:
  return vita_common.use_swin_l(vita_ytvis19.get_config())
