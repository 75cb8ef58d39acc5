"""A tiny IDOL for tests and the CPU demo: ResNet-18, d_model 64, 2+2 layers, 30 queries, on the synthetic
moving-shapes dataset (96 x 160 frames, 6 classes), generated and converted on demand under `/tmp/visjax_synthetic`.

Trains on CPU in minutes: `python -m visjax.main --config configs/idol_tiny.py --workdir /tmp/idol_tiny`.
"""

import ml_collections

from configs import common
from configs import idol_common


def get_config() -> ml_collections.ConfigDict:
  c = idol_common.idol_config(num_classes=6)
  m = c.model
  m.backbone_depth = 18
  m.freeze_at = 0  # random init: train the whole backbone
  m.d_model = 64
  m.nheads = 4
  m.enc_layers = 2
  m.dec_layers = 2
  m.dim_feedforward = 128
  m.enc_n_points = 2
  m.dec_n_points = 2
  m.num_queries = 30
  m.reid_dim = 64
  m.mask_dim = 2  # d_model // 32

  common.tiny_synthetic(c)
  c.input.augment.crop_prob = 0.0
  c.train.clip_grad_norm = 0.1
  return c
