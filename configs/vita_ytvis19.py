"""VITA R-50 on YouTube-VIS 2019 (official `configs/youtubevis_2019/vita_R50_bs8.yaml`; 49.8 AP).

R-101: `--config.model.backbone_depth=101` (`vita_R101_bs8.yaml`, otherwise identical).
"""

import ml_collections

from configs import vita_common


def get_config() -> ml_collections.ConfigDict:
  c = vita_common.vita_config(num_classes=40)
  c.dataset.name = 'ytvis19'
  # youtubevis_2019/vita_R50_bs8.yaml: DATASETS.TRAIN ("coco2ytvis2019_train", "ytvis_2019_train"),
  # DATASET_RATIO [1.0, 0.75]
  vita_common.use_coco_joint(c, vis='ytvis_2019', coco_ratio=1.0, vis_ratio=0.75)
  return c
