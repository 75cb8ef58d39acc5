"""Shared VISOLO settings (official SuHoHan95/VISOLO `projects/VISOLO`: `visolo/config.py`, `configs/*.yaml`); the
`visolo_*.py` configs start from here.

Fields beyond `configs/common.py`:
  config.model.*   everything `visjax.models.visolo.model.VISOLO` needs (see `default_model_config`).
  config.loss.*    focal / dice constants, the mask-loss weight and the grid-target centre region.
  config.tracker.* the online inference thresholds (`MODEL.VISOLO.*` test settings, constants of visolo.py).
"""

import ml_collections

from configs import common
from configs import input_recipes
from visjax.models.visolo import model as visolo_model


def visolo_config(num_classes: int) -> ml_collections.ConfigDict:
  """The official VISOLO R-50 YouTube-VIS 2019 recipe (`base_ytvis_coco.yaml`) with `num_classes` classes."""
  c = common.base_config()
  c.method = 'visolo'
  c.dataset.num_classes = num_classes

  c.model = visolo_model.default_model_config()
  c.model.num_classes = num_classes

  c.loss = ml_collections.ConfigDict()
  c.loss.focal_alpha = 0.25  # MODEL.VISOLO.FOCAL_LOSS_ALPHA (category and tracking focal losses)
  c.loss.focal_gamma = 2.0  # MODEL.VISOLO.FOCAL_LOSS_GAMMA
  c.loss.dice_eps = 1e-7  # MODEL.VISOLO.DICE_LOSS_EPS
  c.loss.mask_weight = 3.0  # MODEL.VISOLO.MASK_WEIGHT
  c.loss.sampling_eps = 0.2  # INPUT.SAMPLING_EPS: centre region = centre of mass +- eps * extent / 2
  c.loss.max_mask_cells = 0  # 0: a mask for every grid cell (exact); k > 0: only the first k positive cells/frame

  c.tracker = ml_collections.ConfigDict()
  c.tracker.tracking_thr = 0.1  # MODEL.VISOLO.TRACKING_THR: link if sigmoid tracking score >= this
  c.tracker.score_thr = 0.1  # SCORE_THR: cell score (max class prob x grid weight) > this
  c.tracker.mask_thr = 0.5  # MASK_THR
  c.tracker.update_thr = 0.05  # UPDATE_THR: keep after Matrix NMS if score >= this
  c.tracker.kernel = 'gaussian'  # KERNEL (Matrix NMS)
  c.tracker.sigma = 2.0  # SIGMA
  c.tracker.nms_pre = 500  # NMS_PRE: candidates entering Matrix NMS
  c.tracker.max_per_frame = 100  # visolo.py getSegMaskV5: top 100 after Matrix NMS
  c.tracker.overlap_thr = 0.5  # getSegMaskV5: drop a mask covered > this by an earlier kept one

  c.input.batch_size = 16  # SOLVER.IMS_PER_BATCH (clips of 3 frames)
  input_recipes.visolo(c)  # 3 frames within +-20, shuffled; resize/flip per clip, rotation + 352x624 crop per frame
  c.input.min_size_train = (360, 480)  # INPUT.MIN_SIZE_TRAIN, choice_by_clip
  c.input.max_size_train = 1333  # detectron2 default INPUT.MAX_SIZE_TRAIN
  c.input.test_fixed_size = (352, 624)  # official test: T.Resize(INPUT.CROP.SIZE), MIN_SIZE_TEST ignored
  c.input.size_divisibility = 16
  c.input.size_buckets = ((352, 624),)  # every training frame is cropped to 352 x 624

  c.train.num_steps = 140000  # SOLVER.MAX_ITER
  c.train.lr = 1e-4  # SOLVER.BASE_LR, AdamW
  c.train.backbone_lr_mult = 0.1  # SOLVER.BACKBONE_MULTIPLIER
  c.train.weight_decay = 1e-4
  c.train.lr_steps = (60000, 100000)
  c.train.lr_gamma = 0.1
  c.train.warmup_steps = 10
  c.train.warmup_factor = 1.0
  c.train.clip_grad_norm = 0.01  # CLIP_GRADIENTS full_model, L2
  c.train.checkpoint_every = 10000
  c.init_from = ''  # official: the COCO-pretrained VISOLO (base_coco.yaml, 80 classes; reinit the class head)
  return c
