"""VITA R-50 on YouTube-VIS 2021 (official `configs/youtubevis_2021/vita_R50_bs8.yaml`; 45.7 AP): 6 frames within
+-8, 187.5k steps with the decay at 100k."""

import ml_collections

from configs import input_recipes
from configs import vita_common


def get_config() -> ml_collections.ConfigDict:
  c = vita_common.vita_config(num_classes=40)
  c.dataset.name = 'ytvis21'
  input_recipes.vita(c, clip_len=6, frame_range=8)
  c.train.num_steps = 187500
  c.train.lr_steps = (100000,)
  # youtubevis_2021/vita_R50_bs8.yaml: DATASETS.TRAIN ("coco2ytvis2021_train", "ytvis_2021_train"),
  # DATASET_RATIO [1.0, 0.8]
  vita_common.use_coco_joint(c, vis='ytvis_2021', coco_ratio=1.0, vis_ratio=0.8)
  return c
