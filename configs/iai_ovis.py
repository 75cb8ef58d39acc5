"""IAI R-50 on OVIS (official `ovis_iai_condinst_r50.py`; 20.6 AP): 25 classes, max_obj 25, 50 detections per frame
and records per video, multi-scale training, 2 clips per GPU, initialised from the YTVIS19 IAI model."""

import ml_collections

from configs import iai_common


def get_config() -> ml_collections.ConfigDict:
  c = iai_common.multiscale(iai_common.iai_config(num_classes=25, max_obj_num=25))
  c.dataset.name = 'ovis'
  c.input.batch_size = 16
  c.tracker.max_per_img = 50
  c.init_from = ''  # official: iai_condinst_r50.pth (the YTVIS19 model; class heads re-initialised)
  return c
