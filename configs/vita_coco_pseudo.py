"""VITA R-50 pretraining on COCO (official `configs/coco/vita_R50_bs16_50ep.yaml` on
`Base-COCO-InstanceSegmentation.yaml`): 80 classes, one-frame clips, batch 16, 368,750 steps. Produces the
equivalent of `vita_r50_coco.pth`, the starting point of `vita_ytvis19.py` / `vita_ytvis21.py` / `vita_ovis.py`
(`--config.init_from=WORKDIR`; their class heads have 40 / 25 classes: add
`--config.init_reinit='(".*class_embed.*",)'`).

Data: `python -m data_pipeline.convert --format coco --json coco/annotations/instances_train2017.json --images
coco/train2017 --out datasets/tfrecords/coco_2017_train` (no category map: all 80 classes) and the same for val2017.

Official train_net_vita.py reads COCO with `CocoClipDatasetMapper(is_tgt=True)`, i.e. the real-clip augmentation
`build_augmentation` with LSJ_AUG: horizontal flip, `ResizeScale(0.1, 2.0, 1024, 1024)`, `FixedSizeCrop(1024)` (pad
value 128). LSJ is not in `data_pipeline/augment.py` yet: this config uses the closest existing recipe, detectron2's
multi-scale COCO recipe (shortest edge 480..800 step 32, longer edge <= 1333, flip), and no pseudo-clip rotation.
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
  input_recipes.vita(c, clip_len=1)  # INPUT.SAMPLING_FRAME_NUM: 1
  c.input.augment.crop_prob = 0.0  # LSJ path: no crop branch
  c.input.augment_pseudo = ml_collections.ConfigDict()  # is_tgt=True: COCO gets the real-clip augmentation
  c.input.min_size_train = tuple(range(480, 801, 32))  # LSJ stand-in (see the module docstring)
  c.input.max_size_train = 1333
  c.input.min_size_test = 800  # detectron2 default INPUT.MIN_SIZE_TEST (the base yaml does not set it)
  c.train.lr = 1e-4  # SOLVER.BASE_LR
  c.train.lr_steps = (327778, 355092)  # SOLVER.STEPS
  c.train.num_steps = 368750  # SOLVER.MAX_ITER
  c.train.checkpoint_every = 5000  # TEST.EVAL_PERIOD
  c.tracker.topk = 100  # TEST.DETECTIONS_PER_IMAGE
  return c
