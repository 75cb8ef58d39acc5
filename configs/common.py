"""Fields every visjax config has; method configs start from `base_config()`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Returns the shared defaults (overridden per method/dataset config)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = ''
  c.init_from = ''  # path to an official .pth/.npz, a converted orbax directory, or a visjax training run's workdir
  c.init_reinit = ()  # regexes of parameter paths left at init when loading init_from (e.g. class heads)

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all remaining devices
  c.mesh.model = 1
  c.mesh.fsdp_rules = []  # list of (regex, 'fsdp'|'replicate') applied to parameter paths
  c.mesh.distributed = False  # call jax.distributed.initialize() (also done when JAX_COORDINATOR_ADDRESS is set)
  c.mesh.coordinator_address = ''  # 'host:port'; '' = env JAX_COORDINATOR_ADDRESS or JAX's auto-detection
  c.mesh.num_processes = -1  # -1 = env JAX_NUM_PROCESSES or auto-detection
  c.mesh.process_id = -1  # -1 = env JAX_PROCESS_ID or auto-detection

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'synthetic'
  c.dataset.root = ''  # YTVIS-layout root (JPEGImages/, train.json, valid.json)
  c.dataset.tfrecords = ''  # directory of converted TFRecord shards (+ manifest)
  c.dataset.eval_tfrecords = ''  # converted eval split ('' = dataset.tfrecords)
  c.dataset.prepare = ''  # 'synthetic': generate + convert the dataset before training if absent
  c.dataset.train_json = ''
  c.dataset.valid_json = ''
  c.dataset.num_classes = 40
  c.dataset.category_ids = ()  # contiguous index -> json category_id, filled from the manifest
  c.dataset.category_names = ()  # contiguous index -> name (labels in predict overlays)

  # Method-neutral input settings; each method's common config sets its official sizes and its clip sampler /
  # augmentation recipe (`input.sampler`, `input.augment`, `input.augment_pseudo`: configs/input_recipes.py).
  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 8  # global clips per step
  c.input.max_instances = 16
  c.input.min_size_train = (480,)
  c.input.max_size_train = 800
  c.input.min_size_test = 480
  c.input.max_size_test = 800
  c.input.test_fixed_size = ()  # (h, w): resize every test frame to exactly this size instead
  c.input.size_divisibility = 32
  c.input.size_buckets = ()  # ((H, W), ...) static padded sizes; empty = derived from max sizes
  c.input.shuffle_buffer = 256
  c.input.prefetch = 2
  # The module with make_train_iterator(config, input_spec, process_index=, process_count=) and eval_video_chunks(...).
  c.input.source = 'data_pipeline.input'

  # Method-neutral defaults (plain AdamW, constant lr, no clipping); each method config sets its official recipe.
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep_checkpoints = 3
  c.train.lr = 1e-4
  c.train.backbone_lr_mult = 1.0
  c.train.weight_decay = 0.0
  c.train.lr_steps = ()
  c.train.lr_gamma = 0.1
  c.train.warmup_steps = 0
  c.train.warmup_factor = 1.0
  c.train.clip_grad_norm = 0.0  # <= 0: off
  c.train.grad_accum = 1
  c.train.compute_dtype = 'float32'  # passed to the model ('bfloat16' on TPU/GPU); params stay float32
  c.train.backbone_wd_mult = 1.0  # weight decay x this on 'backbone' parameters
  c.train.no_weight_decay = ()  # regexes of parameter paths without weight decay
  c.train.frozen = ()  # regexes of parameter paths that are never updated
  c.train.adam_b1 = 0.9
  c.train.adam_b2 = 0.999
  c.train.adam_eps = 1e-8

  c.eval = ml_collections.ConfigDict()
  c.eval.split = 'valid'
  c.eval.max_videos = -1
  c.eval.chunk_len = 32  # frames decoded and fed to the predictor at a time (bounded memory for long videos)
  c.eval.checkpoint_step = -1  # eval / predict the train checkpoint of this step (-1: the latest)

  c.predict = ml_collections.ConfigDict()
  c.predict.input = ''
  c.predict.output = ''
  c.predict.score_threshold = 0.3
  c.predict.max_tracks = 20  # tracks drawn in the overlay (best first); tracks.json keeps every track
  c.predict.fps = 6.0
  c.predict.after_eval = False  # train_and_eval: also predict on predict.input (default: first eval video)
  c.predict.ground_truth = ''  # YTVIS json holding the input video: the overlay shows ground truth | prediction

  c.convert = ml_collections.ConfigDict()  # regexes waiving strict-conversion errors (see visjax.convert)
  c.convert.allow_missing = ()
  c.convert.allow_unexpected = ()
  c.convert.allow_shape_mismatch = ()
  return c


def use_synthetic(c: ml_collections.ConfigDict, root: str, **options) -> ml_collections.ConfigDict:
  """Points `c.dataset` at a synthetic moving-shapes set under `root`, generated and converted on first use
  (`visjax.train.prepare`); `options` are `data_pipeline.synthetic` options (num_videos, seed, height, ...)."""
  c.dataset.name = 'synthetic'
  c.dataset.prepare = 'synthetic'
  c.dataset.root = root
  c.dataset.train_json = f'{root}/train.json'
  c.dataset.valid_json = f'{root}/valid.json'
  c.dataset.tfrecords = f'{root}/tfrecords_train'
  c.dataset.eval_tfrecords = f'{root}/tfrecords_valid'
  c.dataset.synthetic = ml_collections.ConfigDict(options)
  return c


def demo_synthetic(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The data and outputs every CPU demo config shares (`configs/demo_synthetic.py` for IDOL, `configs/*_demo.py`).

  400 synthetic videos (360 train / 40 valid, 96 x 160) under data/synthetic_demo with shapes of 0.15-0.3 x the
  short side (at 96 x 160 a perfect detector scores AP 0.80 on them, `benchmarks/eval_ceiling.py`); every
  validation video is evaluated and the first one drawn (ground truth | prediction) into WORKDIR/overlay.gif.
  Model sizes and input sizes come from the method's `*_tiny` config (96 x 160 inputs).
  """
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  use_synthetic(c, 'data/synthetic_demo', num_videos=400, seed=0, height=96, width=160, valid_fraction=0.1,
                min_radius=0.15, max_radius=0.3)
  cats = synthetic.categories()
  c.dataset.num_classes = len(cats)
  c.model.num_classes = len(cats)
  c.dataset.category_ids = tuple(x['id'] for x in cats)
  c.dataset.category_names = tuple(x['name'] for x in cats)
  c.mesh.data = 1  # one CPU device
  c.eval.max_videos = -1  # every validation video
  c.predict.after_eval = True  # overlay of the first validation video
  c.predict.output = 'overlay.gif'
  return c


def demo_schedule(c: ml_collections.ConfigDict, *, num_steps: int, lr_step: int) -> ml_collections.ConfigDict:
  """The training schedule the CPU demos share: lr 5e-4 on every part (the backbone starts from random weights
  too), x0.1 at `lr_step`, 4 checkpoints (all kept: RESULTS.md's learning curves evaluate each)."""
  c.train.num_steps = num_steps
  c.train.lr = 5e-4
  c.train.backbone_lr_mult = 1.0
  c.train.lr_steps = (lr_step,)
  c.train.log_every = 25
  c.train.checkpoint_every = num_steps // 4
  c.train.keep_checkpoints = 4
  return c


def tiny_synthetic(c: ml_collections.ConfigDict, *, batch_size: int = 4) -> ml_collections.ConfigDict:
  """The settings every `*_tiny` config shares: the 40-video synthetic set (96 x 160 frames) under
  /tmp/visjax_synthetic, 96 x 160 inputs, 4 instance slots, and a 300-step schedule with few logs and evals."""
  use_synthetic(c, '/tmp/visjax_synthetic', num_videos=40, seed=0, height=96, width=160)
  c.input.batch_size = batch_size
  c.input.max_instances = 4
  c.input.min_size_train = (96,)
  c.input.max_size_train = 160
  c.input.min_size_test = 96
  c.input.max_size_test = 160
  c.input.size_buckets = ((96, 160),)
  c.input.shuffle_buffer = 16
  c.train.num_steps = 300
  c.train.lr = 2e-4
  c.train.lr_steps = (250,)
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.eval.max_videos = 4
  return c
