"""Shared IDOL settings (official VNext `projects/IDOL` defaults); the `idol_*.py` configs start from here.

Fields beyond `configs/common.py`:
  config.model.*   everything `visjax.models.idol.model.IDOL` needs (see `default_model_config`).
  config.loss.*    loss weights, focal parameters and the SimOTA / contrastive-selection constants.
  config.tracker.* inference thresholds of `IDOL_Tracker` and the per-frame detection filter.
"""

import dataclasses

import ml_collections

from configs import common
from configs import input_recipes
from visjax.models.backbones import swin
from visjax.models.idol import model as idol_model


def idol_config(num_classes: int) -> ml_collections.ConfigDict:
  """The official IDOL R50 YouTube-VIS 2019 recipe with `num_classes` classes (other datasets override)."""
  c = common.base_config()
  c.method = 'idol'
  c.dataset.num_classes = num_classes

  c.model = idol_model.default_model_config()
  c.model.num_classes = num_classes

  c.loss = ml_collections.ConfigDict()
  c.loss.class_weight = 2.0  # loss_ce: sigmoid focal
  c.loss.bbox_weight = 5.0  # loss_bbox: L1 on cxcywh
  c.loss.giou_weight = 2.0
  c.loss.mask_weight = 2.0  # loss_mask: sigmoid focal per pixel
  c.loss.dice_weight = 5.0
  c.loss.reid_weight = 2.0  # loss_reid (last decoder layer only)
  c.loss.reid_aux_weight = 3.0  # loss_reid_aux = 1.5 * reid_weight
  c.loss.focal_alpha = 0.25
  c.loss.focal_gamma = 2.0
  c.loss.deep_supervision = True  # losses on every decoder layer (suffix _i)
  c.loss.mask_out_stride = 4  # targets padded to /32 and sampled at [2::4, 2::4]
  # SimOTA (the official `HungarianMatcher`): cost = focal_cls + 3 * (-GIoU) + 100 * !(in box & in centre)
  # + 10000 * !(in box | in centre); centre = within 2.5 / 32 of the gt centre (normalised coordinates).
  c.loss.simota_giou_cost = 3.0
  c.loss.simota_center_cost = 100.0
  c.loss.simota_fg_cost = 10000.0
  c.loss.simota_center_radius = 2.5
  c.loss.simota_expanded_stride = 32
  c.loss.simota_candidate_k = 10  # dynamic k = max(1, int(sum of the top-10 IoUs))
  # Contrastive positive / negative selection on the reference frame (`pos_neg_select.py`).
  c.loss.contrast_pos_candidate_k = 10
  c.loss.contrast_neg_candidate_k = 100
  c.loss.contrast_aux_neg_ratio = 10  # aux loss keeps <= 10 * #pos negatives (10 if no positives)

  c.tracker = ml_collections.ConfigDict()
  c.tracker.select_thres = 0.1  # INFERENCE_SELECT_THRES: keep queries with max sigmoid > this (top-1 if none)
  c.tracker.box_nms_thr = 0.9  # class-aware box NMS per frame
  c.tracker.nms_thr_pre = 0.5  # NMS_PRE: mask NMS (sigmoid > 0.5 masks) inside the tracker
  c.tracker.nms_thr_post = 0.05  # backdrop: unmatched detections with mask IoU < this with all others
  c.tracker.init_score_thr = 0.2  # new tracks in the first frame
  c.tracker.obj_score_thr = 0.1
  c.tracker.addnew_score_thr = 0.2  # ADD_NEW_SCORE: new tracks after the first frame
  c.tracker.match_score_thr = 0.5  # bi-softmax score to accept a match
  c.tracker.memo_tracklet_frames = 10  # a track dies when frame - last >= this
  c.tracker.memo_momentum = 0.8
  c.tracker.memory_len = 3  # MEMORY_LEN: embeddings averaged for long_match
  c.tracker.long_match = True  # INFERENCE_TW
  c.tracker.frame_weight = True  # INFERENCE_TW | INFERENCE_FW
  c.tracker.temporal_weight = True  # INFERENCE_TW
  c.tracker.multi_cls = True  # MULTI_CLS_ON: one record per (track, class) with score > apply_cls_thres
  c.tracker.apply_cls_thres = 0.05
  c.tracker.temporal_score_type = 'mean'
  c.tracker.batch_infer_len = 10  # frames per detector call
  c.tracker.mask_threshold = 0.5
  # Video-level filter: after `filter_min_frames` frames, drop ids empty in the last `filter_last_frames` frames
  # and seen fewer than `filter_min_seen` times.
  c.tracker.filter_min_frames = 8
  c.tracker.filter_last_frames = 2
  c.tracker.filter_min_seen = 3

  c.input.batch_size = 32
  input_recipes.idol(c)  # key + reference frame within +-10; crop p=.5, resize and flip per clip
  c.input.min_size_train = (320, 352, 392, 416, 448, 480, 512, 544, 576, 608, 640)
  c.input.max_size_train = 768
  c.input.min_size_test = 480
  c.input.max_size_test = 1333
  c.input.size_divisibility = 32

  c.train.num_steps = 12000
  c.train.lr = 1e-4
  c.train.backbone_lr_mult = 0.1
  c.train.weight_decay = 1e-4
  c.train.lr_steps = (8000,)
  c.train.lr_gamma = 0.1
  c.train.warmup_steps = 10
  c.train.warmup_factor = 1.0
  c.train.clip_grad_norm = 0.01
  c.train.checkpoint_every = 1000
  c.init_from = ''  # official: cocopretrain_R50.pth (COCO pseudo-pair pretraining, see idol_coco_pseudo.py)
  return c


def use_swin_l(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Switches an IDOL config to the official Swin-L backbone (`configs/*_swinL.yaml`, `ovis_swin.yaml`).

  MODEL.SWIN: EMBED_DIM 192, DEPTHS [2, 2, 18, 2], NUM_HEADS [6, 12, 24, 48], WINDOW_SIZE 12, DROP_PATH_RATE 0.3,
  PATCH_NORM, no APE (PRETRAIN_IMG_SIZE 384 only sizes the unused APE), OUT_FEATURES res2..res5 (res3..res5
  feed IDOL, channels 384 / 768 / 1536). Nothing is frozen (frozen_stages -1); the solver and input settings equal
  the R50 yaml of the same dataset.
  """
  c.model.backbone = 'swin'
  c.model.swin = ml_collections.ConfigDict(dataclasses.asdict(swin.SWIN_L))
  c.init_from = ''  # official: cocopretrain_SWINL.pth
  return c
