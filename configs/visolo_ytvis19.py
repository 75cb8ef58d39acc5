"""VISOLO R-50 on YouTube-VIS 2019 (official `configs/base_ytvis_coco.yaml`; README: 38.6 AP at 352 x 624)."""

import ml_collections

from configs import visolo_common


def get_config() -> ml_collections.ConfigDict:
  c = visolo_common.visolo_config(num_classes=40)
  c.dataset.name = 'ytvis_2019'
  # Official data: ytvis_2019_train + coco_ytvis_2019_train (COCO images of the YTVIS classes as pseudo-clips) at
  # DATASET_RATIO [0.75, 0.25]: --config.dataset.tfrecords=<ytvis>,<coco_ytvis> --config.input.dataset_ratios=...
  # Fine-tuning from the COCO-pretrained VISOLO (80 classes): --config.init_from=<converted coco checkpoint>
  # --config.init_reinit='("Category_branch_post\\.pred\\..*",)' (the class head is re-initialised).
  return c
