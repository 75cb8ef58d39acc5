"""VITA R-50 on OVIS (official `configs/ovis/vita_R50_bs8.yaml`; 19.6 AP): 25 classes, 6 frames within +-8,
150k steps with decays at 50k and 125k, top 20 detections per video."""

import ml_collections

from configs import input_recipes
from configs import vita_common


def get_config() -> ml_collections.ConfigDict:
  c = vita_common.vita_config(num_classes=25)
  c.dataset.name = 'ovis'
  input_recipes.vita(c, clip_len=6, frame_range=8)
  c.train.num_steps = 150000
  c.train.lr_steps = (50000, 125000)
  c.tracker.topk = 20  # TEST.DETECTIONS_PER_IMAGE
  # ovis/vita_R50_bs8.yaml: DATASETS.TRAIN ("coco2ovis_train", "ovis_train"),
  # DATASET_RATIO [1.0, 0.25]
  vita_common.use_coco_joint(c, vis='ovis', coco_ratio=1.0, vis_ratio=0.25)
  return c
