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

  common.use_synthetic(c, '/tmp/visjax_synthetic', num_videos=40, seed=0, height=96, width=160)

  c.input.batch_size = 4
  c.input.max_instances = 4
  c.input.min_size_train = (96,)
  c.input.max_size_train = 160
  c.input.min_size_test = 96
  c.input.max_size_test = 160
  c.input.size_buckets = ((96, 160),)
  c.input.shuffle_buffer = 16
  c.input.augment.crop_prob = 0.0

  c.train.num_steps = 300
  c.train.lr = 2e-4
  c.train.lr_steps = (250,)
  c.train.clip_grad_norm = 0.1
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.eval.max_videos = 4
  return c
