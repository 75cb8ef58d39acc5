"""IDOL R50 step-2 pretraining on COCO pseudo-pairs (official `configs/coco_pretrain/r50_coco_sequence.yaml`).

Each clip is two independent augmentations of one COCO image (the input pipeline does this for datasets converted
with `data_pipeline.convert --format coco`). Produces the equivalent of `cocopretrain_R50.pth`.
"""

import ml_collections

from configs import idol_common


def get_config() -> ml_collections.ConfigDict:
  c = idol_common.idol_config(num_classes=80)
  c.dataset.name = 'coco'
  c.input.max_size_train = 1333
  c.input.min_size_test = 640
  c.train.lr = 2e-4
  c.train.lr_steps = (22200, 44400)
  c.train.num_steps = 59200
  c.train.checkpoint_every = 3700
  return c
