"""A tiny test-only method and input source for the engine tests (not collected by pytest).

Method (contract v2, docs/INTERFACES.md §3; `METHOD = ToyMethod`): `backbone` 3×3 conv → ReLU → dropout (from the step rng) → `head` 1×1 conv giving
one foreground-mask logit and `C` class logits per pixel. Loss: `loss_mask` = BCE of the mask logit against the
union of the instance masks, `loss_ce` = softmax CE of the mask-pooled class logits against each valid instance's
label. A non-parameter variable `calls` (batch statistic) counts forward passes, so the non-param state is
exercised by resume tests. Setting `config.toy_nan_at_step` makes the loss NaN from that (1-based) step on.

Test helpers: `run_main` runs `python -m visjax.main` in a subprocess, `read_log` reads train_log.jsonl.

Input source: `make_train_iterator(config, input_spec, process_index, process_count)` yields the per-process share
of a deterministic global batch (a pure function of the batch index), `get_state` / `set_state` hold the index.
`eval_video_chunks(config, chunk_len, process_index, process_count, max_videos)` yields the chunks of
`config.toy_eval_videos` short videos.
"""

import json
import os
import signal
import subprocess
import sys
from typing import Any, Iterator

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import common
from visjax.evaluation import results as results_lib
from visjax.inference import predictor as predictor_lib
from visjax.inference import tracks as tracks_lib
from visjax.models import registry


def get_config() -> ml_collections.ConfigDict:
  c = common.base_config()
  c.method = 'tests.train_toy'
  c.input.source = 'tests.train_toy'
  c.input.batch_size = 8
  c.input.sampler = ml_collections.ConfigDict(dict(kind='reference', clip_len=2, frame_range=1))
  c.input.augment = ml_collections.ConfigDict()
  c.input.max_instances = 3
  c.input.size = (16, 16)
  c.dataset.num_classes = 4
  c.dataset.category_ids = (1, 2, 3, 4)
  c.train.num_steps = 3
  c.train.log_every = 1
  c.train.checkpoint_every = 100
  c.train.lr = 1e-2
  c.train.backbone_lr_mult = 0.1  # exercises the per-parameter lr multiplier
  c.train.weight_decay = 1e-4
  c.train.lr_steps = (8000,)
  c.train.warmup_steps = 0
  c.train.clip_grad_norm = 1.0
  c.toy_nan_at_step = -1
  c.toy_kill_at_batch = -1  # SIGKILL this process when asked for batch number N (0-based)
  c.toy_eval_videos = 2
  c.convert.allow_missing = ('calls',)
  return c


def idol_tiny_config() -> ml_collections.ConfigDict:
  """configs/idol_tiny.py fed by this module's deterministic batches (64×64 clips of 2 frames, 8 per step)."""
  from configs import idol_tiny  # pylint: disable=g-import-not-at-top
  c = idol_tiny.get_config()
  c.input.source = 'tests.train_toy'
  c.input.batch_size = 8
  c.input.max_instances = 3
  c.input.size = (64, 64)
  c.dataset.category_ids = tuple(range(1, c.dataset.num_classes + 1))
  c.train.num_steps = 3
  c.train.log_every = 1
  c.train.checkpoint_every = 100
  # Adam turns gradient noise on near-zero coordinates (float reduction order differs between meshes) into
  # ±lr steps; eps above that noise keeps step-2/3 losses comparable to rel 1e-5 (at 1e-8 they drift ~1e-3).
  c.train.adam_eps = 1e-4
  c.toy_kill_at_batch = -1
  c.toy_eval_videos = 1
  return c


class Calls(nnx.BatchStat):
  pass


class ToyModel(nnx.Module):
  """[N, H, W, 3] uint8 → ([N, H, W] mask logits, [N, H, W, C] class logits)."""

  def __init__(self, num_classes: int, dtype: str, nan_at_step: int = -1, *, rngs: nnx.Rngs):
    self.nan_at_step = nan_at_step
    self.backbone = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.head = nnx.Conv(8, 1 + num_classes, (1, 1), rngs=rngs)
    self.calls = Calls(jnp.zeros((), jnp.float32))
    self.dtype = jnp.dtype(dtype)

  def __call__(self, images, *, rng=None):
    x = images.astype(self.dtype) / 255.0
    x = jax.nn.relu(self.backbone(x))
    if rng is not None:
      keep = jax.random.bernoulli(rng, 0.9, x.shape)
      x = jnp.where(keep, x / 0.9, 0.0)
    y = self.head(x).astype(jnp.float32)
    self.calls.set_value(self.calls.get_value() + 1.0)
    return y[..., 0], y[..., 1:]


class ToyPredictor:
  """One track per video: per frame the thresholded mask logit (nearest-resized to the original size); class
  scores = softmax of the class logits averaged over all pixels of all frames."""

  def __init__(self, model: ToyModel, video: predictor_lib.VideoMeta):
    self.model, self.video = model, video
    self.tracks = tracks_lib.VideoTracks(video.length)
    self.logit_sum = 0.
    self.pixels = 0
    self.seen = 0

  def add_frames(self, frames: np.ndarray, image_sizes: np.ndarray) -> None:
    frames, image_sizes = predictor_lib.check_frames(self.video, self.seen, frames, image_sizes, 'toy')
    mask_logit, cls_logit = self.model(jnp.asarray(frames))
    oh, ow = self.video.orig_size
    for i, (h, w) in enumerate(image_sizes):
      m = np.asarray(mask_logit[i, :h, :w] > 0)[np.arange(oh) * h // oh][:, np.arange(ow) * w // ow]
      self.tracks.add(1, self.seen + i, results_lib.encode_mask(m) if m.any() else None,
                      np.zeros(cls_logit.shape[-1]))
    self.logit_sum = self.logit_sum + np.asarray(cls_logit, np.float64).sum(axis=(0, 1, 2))
    self.pixels += int(np.prod(cls_logit.shape[:3]))
    self.seen += len(frames)

  def finish(self) -> list[tracks_lib.Track]:
    predictor_lib.check_finished(self.video, self.seen, 'toy')
    probs = np.asarray(jax.nn.softmax(jnp.asarray(self.logit_sum / self.pixels, jnp.float32)))
    return self.tracks.tracks(class_scores=lambda *_: probs)


class ToyMethod(registry.Method):
  """The toy method on contract v2."""

  def build_model(self, rngs: nnx.Rngs) -> ToyModel:
    dtype = self.config.train.compute_dtype
    model = ToyModel(self.config.dataset.num_classes, dtype, int(self.config.get('toy_nan_at_step', -1)), rngs=rngs)
    if dtype != 'float32':
      model.backbone.dtype = jnp.dtype(dtype)
      model.head.dtype = jnp.dtype(dtype)
    return model

  def loss_fn(self, model: ToyModel, batch: dict, *, rng: jax.Array, train: bool = True):
    b, t, h, w, _ = batch['image'].shape
    mask_logit, cls_logit = model(batch['image'].reshape(b * t, h, w, 3), rng=rng if train else None)
    masks = batch['masks'].astype(jnp.float32)  # [B, T, N, H, W]
    union = jnp.max(masks, axis=2).reshape(b * t, h, w)
    loss_mask = jnp.mean(jnp.maximum(mask_logit, 0) - mask_logit * union
                         + jnp.log1p(jnp.exp(-jnp.abs(mask_logit))))
    cls_logit = cls_logit.reshape(b, t, h, w, -1)
    area = jnp.sum(masks, axis=(1, 3, 4)) + 1.0  # [B, N]
    pooled = jnp.einsum('btnhw,bthwc->bnc', masks, cls_logit) / area[..., None]
    logp = jax.nn.log_softmax(pooled, axis=-1)
    labels = jnp.maximum(batch['labels'], 0)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    valid = batch['instance_valid'].astype(jnp.float32)
    loss_ce = jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid), 1.0)
    total = loss_mask + 0.5 * loss_ce
    if model.nan_at_step >= 0:
      total = jnp.where(model.calls.get_value() >= model.nan_at_step, jnp.nan, total)
    return total, {'loss_mask': loss_mask, 'loss_ce': 0.5 * loss_ce}

  def make_predictor(self, model: ToyModel, video: predictor_lib.VideoMeta) -> ToyPredictor:
    return ToyPredictor(model, video)

  def record_rule(self) -> tracks_lib.RecordRule:
    return tracks_lib.RecordRule('argmax')

  def conversion_rules(self):
    """torch-layout keys of an equivalent nn.Conv2d pair → the NNX paths."""
    from visjax import convert  # pylint: disable=g-import-not-at-top
    return convert.RuleTable([
        convert.Rule(r'(backbone|head)\.weight', r'\1.kernel', convert.conv_kernel),
        convert.Rule(r'(backbone|head)\.bias', r'\1.bias'),
    ])


METHOD = ToyMethod


def _example(index: int, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """Clip `index` of the toy dataset: squares of class-dependent colour on noise, as a batch row (§1 format)."""
  rng = np.random.default_rng([config.seed, index])
  t, n = config.input.sampler.clip_len, config.input.max_instances
  h, w = config.input.size
  image = rng.integers(0, 60, (t, h, w, 3)).astype(np.uint8)
  masks = np.zeros((t, n, h, w), np.uint8)
  labels = np.full((n,), -1, np.int32)
  count = int(rng.integers(1, n + 1))
  for k in range(count):
    labels[k] = int(rng.integers(0, config.dataset.num_classes))
    y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
    masks[:, k, y:y + 5, x:x + 5] = 1
    image[:, y:y + 5, x:x + 5] = 80 + 40 * labels[k]
  present = masks.reshape(t, n, -1).any(-1)
  boxes = np.zeros((t, n, 4), np.float32)
  for k in range(count):
    ys, xs = np.nonzero(masks[0, k])
    boxes[:, k] = ((xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h,
                   (xs.max() + 1 - xs.min()) / w, (ys.max() + 1 - ys.min()) / h)
  return {
      'image': image, 'image_size': np.full((t, 2), (h, w), np.int32),
      'boxes': boxes, 'masks': masks, 'present': present,
      'labels': labels, 'track_ids': np.where(labels >= 0, np.arange(n), -1).astype(np.int32),
      'instance_valid': labels >= 0, 'is_crowd': np.zeros((n,), bool),
      'video_id': np.int32(index), 'frame_index': np.arange(t, dtype=np.int32)}


class ToyIterator:
  """Per-process share of deterministic global batches; state = number of batches consumed."""

  def __init__(self, config: ml_collections.ConfigDict, process_index: int, process_count: int):
    self.config = config
    self.local = config.input.batch_size // process_count
    self.offset = process_index * self.local
    self.position = 0

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.position == self.config.toy_kill_at_batch:
      os.kill(os.getpid(), signal.SIGKILL)
    first = self.position * self.config.input.batch_size + self.offset
    rows = [_example(first + i, self.config) for i in range(self.local)]
    self.position += 1
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

  def get_state(self) -> dict[str, Any]:
    return {'position': self.position}

  def set_state(self, state: dict[str, Any]) -> None:
    self.position = int(state['position'])


def make_train_iterator(config, input_spec=None, *, process_index: int = 0,
                        process_count: int = 1) -> ToyIterator:
  del input_spec  # The toy batches do not depend on the clip sampler or augmentation.
  return ToyIterator(config, process_index, process_count)


def eval_video_chunks(config, *, chunk_len: int = 0, process_index: int = 0, process_count: int = 1,
                      max_videos: int = -1) -> Iterator[dict[str, Any]]:
  h, w = config.input.size
  vids = list(range(process_index, config.toy_eval_videos, process_count))
  for vid in vids[:max_videos] if max_videos >= 0 else vids:
    frames = _example(10_000 + vid, config)['image']
    step = chunk_len if chunk_len > 0 else len(frames)
    for start in range(0, len(frames), step):
      yield {'video_id': vid + 1, 'length': len(frames), 'orig_size': (h, w), 'image_size': (h, w), 'start': start,
             'last': start + step >= len(frames), 'frames': frames[start:start + step]}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(workdir: str, *flags: str, mode: str = 'train', env: dict[str, str] | None = None,
             wait: bool = True, timeout: float = 300) -> subprocess.CompletedProcess | subprocess.Popen:
  """`python -m visjax.main --config tests/train_toy.py --workdir W --mode M FLAGS...` from the repo root."""
  cmd = [sys.executable, '-m', 'visjax.main', '--config', os.path.join(REPO, 'tests', 'train_toy.py'),
         '--workdir', workdir, '--mode', mode, *flags]
  full_env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='3', **(env or {}))
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_log(workdir: str) -> list[dict[str, float]]:
  with open(os.path.join(workdir, 'train_log.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]
