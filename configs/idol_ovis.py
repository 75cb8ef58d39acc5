"""IDOL R50 on OVIS (official `configs/ovis_r50.yaml`): 25 classes, batch 16, larger train/test sizes, stricter
tracker NMS and new-track thresholds."""

import ml_collections

from configs import idol_common


def get_config() -> ml_collections.ConfigDict:
  c = idol_common.idol_config(num_classes=25)
  c.dataset.name = 'ovis'
  c.input.batch_size = 16
  c.input.min_size_train = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
  c.input.max_size_train = 1333  # detectron2 default (the yaml leaves MAX_SIZE_TRAIN unset)
  c.input.min_size_test = 720
  c.tracker.nms_thr_pre = 0.3
  c.tracker.addnew_score_thr = 0.3
  return c
