"""A tiny VITA for tests and the CPU demo: ResNet-18, 32 channels, 4+1 frame-decoder layers, 10 frame queries,
a 2+2-layer VITA module with 10 video queries, on the synthetic moving-shapes dataset (96 x 160 frames, 6 classes),
generated and converted on demand under `/tmp/visjax_synthetic`.

`python -m visjax.main --config configs/vita_tiny.py --workdir /tmp/vita_tiny`.
"""

import ml_collections

from configs import common
from configs import vita_common


def get_config() -> ml_collections.ConfigDict:
  c = vita_common.vita_config(num_classes=6)
  m = c.model
  m.backbone_depth = 18
  m.conv_dim = 32
  m.mask_dim = 32
  m.pixel_decoder_enc_layers = 2
  m.pixel_decoder_dim_feedforward = 64
  m.enc_n_points = 2
  m.hidden_dim = 32
  m.num_frame_queries = 10
  m.nheads = 2
  m.dim_feedforward = 64
  m.dec_layers = 5  # 4 layers built
  m.vita.update(enc_layers=2, dec_layers=2, nheads=2, dim_feedforward=64, hidden_dim=32, num_queries=10)
  c.loss.train_num_points = 256
  c.tracker.topk = 5

  common.tiny_synthetic(c)
  c.input.augment.crop_prob = 0.0
  c.train.clip_grad_norm = 0.1
  return c
