"""IAI R-50 on YouTube-VIS 2021 (official `ytvis2021_iai_condinst_r50.py`; 38.0 AP): max_obj 25, multi-scale training,
2 clips per GPU."""

import ml_collections

from configs import iai_common


def get_config() -> ml_collections.ConfigDict:
  c = iai_common.multiscale(iai_common.iai_config(num_classes=40, max_obj_num=25))
  c.dataset.name = 'ytvis21'
  c.input.batch_size = 16
  return c
