"""VISOLO R-50 on YouTube-VIS 2019 (official `configs/base_ytvis_coco.yaml`; README: 38.6 AP at 352 x 624)."""

import ml_collections

from configs import visolo_common


def get_config() -> ml_collections.ConfigDict:
  c = visolo_common.visolo_config(num_classes=40)
  c.dataset.name = 'ytvis_2019'
  c.init_reinit = (r'Category_branch_post\.pred\..*',)  # the COCO-pretrained file has 80 classes
  return c
