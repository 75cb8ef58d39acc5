"""A tiny VISOLO for tests and the CPU demo: ResNet-18 (indim 256), 64-channel heads, a 6 x 10 grid, on the synthetic
moving-shapes dataset (96 x 160 frames, 6 classes), generated and converted on demand under `/tmp/visjax_synthetic`.

Trains on CPU: `python -m visjax.main --config configs/visolo_tiny.py --workdir /tmp/visolo_tiny`.
"""

import ml_collections

from configs import common
from configs import visolo_common


def get_config() -> ml_collections.ConfigDict:
  c = visolo_common.visolo_config(num_classes=6)
  m = c.model
  m.backbone_depth = 18
  m.freeze_at = 0  # random init: train the whole backbone
  m.indim = 256  # R-18 res4
  m.outdim = 64
  m.grid_num = (6, 10)

  common.tiny_synthetic(c)
  c.input.test_fixed_size = (96, 160)
  c.input.augment.post_crop = (96, 160)
  c.input.augment.rotation = 0.0
  c.train.clip_grad_norm = 0.1
  return c
