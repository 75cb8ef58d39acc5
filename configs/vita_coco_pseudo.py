"""VITA R-50 pretraining on COCO (official `configs/coco/vita_R50_bs16_50ep.yaml` on
`Base-COCO-InstanceSegmentation.yaml`): 80 classes, one-frame clips, batch 16, 368,750 steps. Produces the
equivalent of `vita_r50_coco.pth`, the starting point of `vita_ytvis19.py` / `vita_ytvis21.py` / `vita_ovis.py`
(`--config.init_from=WORKDIR`; their class heads have 40 / 25 classes: add
`--config.init_reinit='(".*class_embed.*",)'`).

Data: `python -m data_pipeline.convert --format coco --json coco/annotations/instances_train2017.json --images
coco/train2017 --out datasets/tfrecords/coco_2017_train` (no category map: all 80 classes) and the same for val2017.

Official train_net_vita.py reads COCO with `CocoClipDatasetMapper(is_tgt=True)`, i.e. the real-clip augmentation
`build_augmentation` with LSJ_AUG (`input_recipes.vita_lsj`): horizontal flip, `ResizeScale(0.1, 2.0, 1024, 1024)`,
`FixedSizeCrop(1024)`, no pseudo-clip rotation. Every training image is 1024 x 1024 (one size bucket): the resized
image at the top-left, grey (128) right of and below it, and that grey is image content for the model as in the
official run (image size 1024 x 1024). `input.min_size_train` / `max_size_train` are not read by this recipe.
Masks are rasters resized nearest (the official mapper transforms polygons and rasterises them at the end).
"""

import ml_collections

from configs import input_recipes
from configs import vita_common


def get_config() -> ml_collections.ConfigDict:
  c = vita_common.vita_config(num_classes=80)  # SEM_SEG_HEAD.NUM_CLASSES: 80
  c.dataset.name = 'coco'
  c.dataset.tfrecords = f'{vita_common.TFRECORDS}/coco_2017_train'  # DATASETS.TRAIN ("coco_2017_train",)
  c.dataset.eval_tfrecords = f'{vita_common.TFRECORDS}/coco_2017_val'  # DATASETS.TEST ("coco_2017_val",)
  c.input.batch_size = 16  # SOLVER.IMS_PER_BATCH
  # INPUT.SAMPLING_FRAME_NUM: 1; LSJ_AUG IMAGE_SIZE 1024, MIN_SCALE 0.1, MAX_SCALE 2.0.
  input_recipes.vita_lsj(c, clip_len=1, image_size=1024, scale=(0.1, 2.0))
  c.input.min_size_test = 800  # detectron2 default INPUT.MIN_SIZE_TEST (the base yaml does not set it)
  c.train.lr = 1e-4  # SOLVER.BASE_LR
  c.train.lr_steps = (327778, 355092)  # SOLVER.STEPS
  c.train.num_steps = 368750  # SOLVER.MAX_ITER
  c.train.checkpoint_every = 5000  # TEST.EVAL_PERIOD
  c.tracker.topk = 100  # TEST.DETECTIONS_PER_IMAGE
  return c
