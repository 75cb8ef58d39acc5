"""IAI R-50 on YouTube-VIS 2019 (official `ytvis2019_iai_condinst_r50.py`; 39.2 AP, 39.9 with multi-scale training:
`iai_common.multiscale`). R-101: `configs/iai_ytvis19_r101.py`."""

import ml_collections

from configs import iai_common


def get_config() -> ml_collections.ConfigDict:
  c = iai_common.iai_config(num_classes=40)
  c.dataset.name = 'ytvis19'
  return c
