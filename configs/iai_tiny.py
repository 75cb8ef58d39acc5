"""A tiny IAI for tests and the CPU demo: ResNet-18 (C5 512 = 64 + 64 + 384 channels), FPN 32, LSTT d 64 with a
5 x 5 window, on the synthetic moving-shapes dataset (96 x 160 frames, 6 classes) generated under
`/tmp/visjax_synthetic`."""

import ml_collections

from configs import iai_common


def get_config() -> ml_collections.ConfigDict:
  c = iai_common.iai_config(num_classes=6, max_obj_num=6)
  m = c.model
  m.backbone_depth = 18
  m.freeze_at = 0  # random init: train the whole backbone
  m.fpn_channels = 32
  m.stacked_convs = 2
  m.mask_channels = 16
  m.lstt_dim = 64
  m.dim_feedforward = 64
  m.max_dis = 2

  root = '/tmp/visjax_synthetic'
  c.dataset.name = 'synthetic'
  c.dataset.prepare = 'synthetic'
  c.dataset.root = root
  c.dataset.train_json = f'{root}/train.json'
  c.dataset.valid_json = f'{root}/valid.json'
  c.dataset.tfrecords = f'{root}/tfrecords_train'
  c.dataset.eval_tfrecords = f'{root}/tfrecords_valid'
  c.dataset.synthetic = ml_collections.ConfigDict(dict(num_videos=40, seed=0, height=96, width=160))

  c.input.batch_size = 2
  c.input.max_instances = 4
  c.input.min_size_train = (96,)
  c.input.max_size_train = 160
  c.input.min_size_test = 96
  c.input.max_size_test = 160
  c.input.size_buckets = ((96, 160),)
  c.input.shuffle_buffer = 16
  c.loss.max_mask_points = 32
  c.tracker.memory_capacity = 8

  c.train.num_steps = 300
  c.train.lr = 2e-4
  c.train.lr_steps = (250,)
  c.train.warmup_steps = 20
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.eval.max_videos = 4
  return c
