"""Shared IAI settings (official zfonemore/IAI `configs/iai/ytvis2019_iai_condinst_r50.py`); the `iai_*.py`
configs start from here.

Fields beyond `configs/common.py`:
  config.model.*   everything `visjax.models.iai.model.IAI` needs (`default_model_config`).
  config.loss.*    loss weights and constants (`visjax.models.iai.criterion.LossSettings`).
  config.tracker.* inference thresholds and the LSTT memory capacity (`visjax.models.iai.tracker.TrackerSettings`).

Schedule: mmdet epochs of 5 clips per training video (YTVIS19: 2238 videos -> 11190 clips = 350 steps of 32
clips), 12 epochs, lr x0.1 after epochs 8 and 11, linear warmup over 500 iterations from 1e-3; AdamW lr 1e-4,
weight decay 1e-4, backbone lr x0.1 and decay x0.9; no gradient clipping; 8 GPUs x 4 clips.
"""

import ml_collections

from configs import common
from configs import input_recipes
from visjax.models.iai import model as iai_model

STEPS_PER_EPOCH_YTVIS19 = 350  # 5 * 2238 videos / 32 clips


def loss_config() -> ml_collections.ConfigDict:
  """`config.loss` (`visjax.models.iai.criterion.LossSettings`): the official head losses, all weight 1."""
  return ml_collections.ConfigDict(dict(
      cls_weight=1., id_weight=1., bbox_weight=1., centerness_weight=1., mask_weight=1., focal_alpha=0.25,
      focal_gamma=2., center_sample_radius=1.5, max_mask_points=128))


def tracker_config() -> ml_collections.ConfigDict:
  """`config.tracker` (`visjax.models.iai.tracker.TrackerSettings`): the official R-50 `test_cfg`."""
  return ml_collections.ConfigDict(dict(
      nms_pre=200, cls_score_thr=0.1, id_score_thr=0.1, nms_iou_thr=0.5, max_per_img=10, mask_keep_ratio=0.1,
      video_score_thr=0.05, memory_capacity=64))


def iai_config(num_classes: int, max_obj_num: int = 20) -> ml_collections.ConfigDict:
  """The official IAI R-50 YouTube-VIS 2019 recipe with `num_classes` classes (other datasets override)."""
  c = common.base_config()
  c.method = 'iai'
  c.dataset.num_classes = num_classes

  c.model = iai_model.default_model_config()
  c.model.num_classes = num_classes
  c.model.max_obj_num = max_obj_num
  c.loss = loss_config()
  c.tracker = tracker_config()

  c.input.batch_size = 32
  input_recipes.iai(c)  # 5 annotated frames with gaps of 1-3
  c.input.max_instances = max_obj_num - 1  # ids 0..max_obj-2; channel max_obj-1 is "new"
  c.input.min_size_train = (360,)  # mmdet Resize img_scale (640, 360), keep_ratio
  c.input.max_size_train = 640
  c.input.min_size_test = 360
  c.input.max_size_test = 640
  c.input.size_divisibility = 32

  epoch = STEPS_PER_EPOCH_YTVIS19
  c.train.num_steps = 12 * epoch
  c.train.lr = 1e-4
  c.train.backbone_lr_mult = 0.1
  c.train.backbone_wd_mult = 0.9
  c.train.weight_decay = 1e-4
  c.train.lr_steps = (8 * epoch, 11 * epoch)
  c.train.lr_gamma = 0.1
  c.train.warmup_steps = 500
  c.train.warmup_factor = 1e-3
  c.train.clip_grad_norm = 0.0
  c.train.checkpoint_every = epoch
  c.init_from = ''  # official: condinst_r50.pth (mmdet CondInst; rules_iai.CONDINST_INIT_MISSING)
  c.convert.allow_missing = ()
  return c


def multiscale(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `_ms` / YTVIS21 / OVIS / R101 training sizes: mmdet `Resize(img_scale=[(649, 360), (960, 480)],
  multiscale_mode='range', keep_ratio=True)`: short side and longer-edge cap drawn independently and uniformly
  from the integers 360..480 and 649..960 (per clip, as the scale is carried over the clip's frames)."""
  c.input.min_size_train = tuple(range(360, 481))
  c.input.max_size_train = 960
  c.input.augment.max_size_choices = tuple(range(649, 961))
  return c
