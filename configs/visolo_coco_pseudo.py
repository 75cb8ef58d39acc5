"""VISOLO R-50 pretraining on COCO pseudo-clips (official `configs/base_coco.yaml`): 80 classes, 450k iterations
with a step at 300k, short side 480-672 per clip, the same rotation + 352 x 624 crop per frame. Each clip is three
augmentations of one COCO image (datasets converted with `data_pipeline.convert --format coco`). Produces the
equivalent of the official COCO-pretrained VISOLO that `visolo_ytvis19.py` fine-tunes.
"""

import ml_collections

from configs import visolo_common


def get_config() -> ml_collections.ConfigDict:
  c = visolo_common.visolo_config(num_classes=80)
  c.dataset.name = 'coco'
  c.input.min_size_train = (480, 512, 544, 576, 608, 640, 672)  # INPUT.MIN_SIZE_TRAIN, choice_by_clip
  c.train.num_steps = 450000  # SOLVER.MAX_ITER
  c.train.lr_steps = (300000,)
  c.train.checkpoint_every = 10000
  return c
