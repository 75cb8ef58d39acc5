"""VITA Swin-L on OVIS (official `configs/ovis/vita_SWIN_bs8.yaml`; 27.7 AP)."""

import ml_collections

from configs import vita_common
from configs import vita_ovis


def get_config() -> ml_collections.ConfigDict:
  return vita_common.use_swin_l(vita_ovis.get_config())
