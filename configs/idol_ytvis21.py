"""IDOL R50 on YouTube-VIS 2021 (official `configs/ytvis21_r50.yaml`: the YTVIS19 recipe on the 2021 data)."""

import ml_collections

from configs import idol_common


def get_config() -> ml_collections.ConfigDict:
  c = idol_common.idol_config(num_classes=40)
  c.dataset.name = 'ytvis21'
  return c
