"""IDOL method interface (docs/INTERFACES.md §3): build_model, loss_fn, predict_video, conversion_rules.

* `loss_fn` flattens the `[B, 2, ...]` clips (key, reference) into `2B` frames, runs one forward pass up to the
  controller outputs (`IDOL.forward_heads`) and the criterion (`criterion.idol_loss`), which computes the dynamic
  mask head only for the key-frame queries its matcher selects (as the official criterion does); the loss
  settings (`config.loss`) travel with the model built by `build_model` (attribute `loss_config`).
* `predict_video` (or `VideoPredictor`, fed chunk by chunk for long videos) runs the detector in chunks of
  `config.tracker.batch_infer_len` frames (jitted, the last chunk zero-padded so one shape is compiled), then per
  frame on the host: query selection and box NMS,
  the IDOL tracker, output masks (bilinear to the padded size, sigmoid, crop, nearest to the original size,
  > 0.5) encoded to RLE as soon as each frame is tracked, and the video-level scores (`tracker.py`).
"""

import functools
from typing import Any, Callable
import weakref

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from visjax.evaluation import results as results_lib
from visjax.models.idol import criterion
from visjax.models.idol import model as idol_model
from visjax.models.idol import tracker as tracker_lib


def build_model(config: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> idol_model.IDOL:
  """The IDOL model of `config.model`, carrying `config.loss` (official defaults for missing fields)."""
  model = idol_model.IDOL.from_config(config, rngs=rngs)
  model.loss_config = criterion.resolve_loss_config(config.get('loss'))
  return model


def loss_fn(model: nnx.Module, batch: dict[str, Any], *, rng: jax.Array,
            train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
  """IDOL loss of a batch of `[B, 2, ...]` clips (docs/INTERFACES.md §1); jittable.

  Returns:
    `(total, terms)`: the weighted total and every weighted term (`loss_ce`, ..., `loss_ce_0`, ...).
  """
  images = batch['image']
  if images.ndim != 5 or images.shape[1] != 2:
    raise ValueError(f'IDOL loss_fn: batch["image"] must be [B, 2, H, W, 3] (key, reference), got {images.shape}.')
  b, t = images.shape[:2]
  frames = images.reshape((b * t,) + images.shape[2:])
  sizes = batch['image_size'].reshape(b * t, 2)
  dropout_rng, sample_rng = jax.random.split(rng)
  outputs = model.forward_heads(frames, sizes, train=train, rng=dropout_rng, mask_frames=slice(0, None, 2))
  key_feats = outputs['mask_feats']
  stride = model.config.mask_out_stride
  out_hw = (-(-images.shape[2] // stride), -(-images.shape[3] // stride))

  def key_masks(layer: int, queries: jax.Array) -> jax.Array:
    """Mask logits `[B, M, h, w]` of `queries [B, M]` of layer `layer` on the key frames."""
    return model.mask_logits(key_feats, criterion.batched_take(outputs['mask_centres'][layer, 0::2], queries),
                             criterion.batched_take(outputs['hs'][layer, 0::2], queries), out_hw)

  return criterion.idol_loss(outputs, batch, rng=sample_rng, loss_config=getattr(model, 'loss_config', None),
                             mask_fn=key_masks)


# `(images [n, Hp, Wp, 3], sizes [n, 2]) -> (logits, boxes, embeds, mask logits)` of the last decoder layer.
Detector = Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]

# Jitted forward per model object (its graphdef holds a ConfigDict, so it cannot key an lru_cache).
_FORWARD_CACHE: 'weakref.WeakKeyDictionary[nnx.Module, Any]' = weakref.WeakKeyDictionary()


def _forward_fn(model: nnx.Module):
  """`(forward, state)`: jitted `(state, images, sizes) -> last-layer (logits, boxes, embeds, mask logits)`."""
  graphdef, state = nnx.split(model)
  cached = _FORWARD_CACHE.get(model)
  if cached is None or cached[0] != graphdef:

    def forward(state, images, sizes):
      out = nnx.merge(graphdef, state)(images, sizes, train=False, mask_layers=(-1,))
      return out['pred_logits'][-1], out['pred_boxes'][-1], out['pred_embeds'], out['pred_masks'][-1]

    cached = _FORWARD_CACHE[model] = (graphdef, jax.jit(forward))
  return cached[1], state


@jax.jit
def _take_masks(masks: jax.Array, frame: jax.Array, idx: jax.Array) -> jax.Array:
  """`masks [n, Q, h, w]` -> `[K, h, w]` of frame `frame`, queries `idx [K]`."""
  return masks[frame][idx]


def _bucket(n: int) -> int:
  """Index-list length padded to a power of two (≥ 8), so the mask gather compiles for few shapes."""
  return max(8, 1 << (max(n, 1) - 1).bit_length())


def _tracker_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.tracker` over the official defaults (`configs/idol_common.py`)."""
  tcfg = ml_collections.ConfigDict(dict(
      select_thres=0.1, box_nms_thr=0.9, batch_infer_len=int(config.get('eval', {}).get('batch_infer_len', 10)),
      multi_cls=True, apply_cls_thres=0.05, temporal_score_type='mean', mask_threshold=0.5, filter_min_frames=8,
      filter_last_frames=2, filter_min_seen=3))
  tcfg.update(dict(config.get('tracker', ml_collections.ConfigDict()).items()))
  if tcfg.temporal_score_type != 'mean':
    raise ValueError(f'config.tracker.temporal_score_type={tcfg.temporal_score_type!r}: only "mean" (IDOL\'s '
                     'setting) is implemented.')
  return tcfg


def _category_table(config: ml_collections.ConfigDict, num_classes: int) -> np.ndarray:
  """Contiguous class index → json category_id (`config.dataset.category_ids`; 1-based if unset)."""
  ids = tuple(config.dataset.get('category_ids', ()))
  if not ids:
    logging.warning('config.dataset.category_ids is empty: reporting category_id = class index + 1.')
    return np.arange(1, num_classes + 1)
  if len(ids) != num_classes:
    raise ValueError(f'config.dataset.category_ids has {len(ids)} entries but the model predicts {num_classes} '
                     'classes.')
  return np.asarray(ids)


class VideoPredictor:
  """IDOL online inference on one video fed in any number of frame chunks (constant memory per track).

    predictor = VideoPredictor(model, config, video_id=..., length=T, image_size=(h, w), orig_size=(H, W))
    for frames in chunks:          # uint8 [c, Hp, Wp, 3], in order
      predictor.add_frames(frames)
    records = predictor.records()
  """

  def __init__(self, model: nnx.Module, config: ml_collections.ConfigDict, *, video_id: Any, length: int,
               image_size: tuple[int, int], orig_size: tuple[int, int], detector: Detector | None = None):
    """`detector` replaces the model's jitted forward pass (`(images, sizes)` -> last-layer `(logits, boxes, embeds,
    mask logits)`, see `_forward_fn`), e.g. by precomputed outputs (`visjax.models.idol.oracle`)."""
    self.model = model
    self.config = config
    self.video_id = video_id
    self.length = int(length)
    self.image_size = tuple(int(s) for s in image_size)
    self.orig_size = tuple(int(s) for s in orig_size)
    self.tcfg = _tracker_config(config)
    self.chunk = max(1, int(self.tcfg.batch_infer_len))
    if detector is None:
      forward, state = _forward_fn(model)
      detector = functools.partial(forward, state)
    self.detector = detector
    self.tracker = tracker_lib.IDOLTracker.from_config(self.tcfg)
    self.tracks = tracker_lib.VideoTracks(self.length, filter_min_frames=self.tcfg.filter_min_frames,
                                          filter_last_frames=self.tcfg.filter_last_frames,
                                          filter_min_seen=self.tcfg.filter_min_seen)
    self.mask_stride = int(model.config.get('mask_out_stride', 4))
    self.num_classes = int(model.config.num_classes)
    self.next_frame = 0

  def add_frames(self, frames: np.ndarray) -> None:
    """Runs the next frames `[c, Hp, Wp, 3]` (resized, zero-padded) through the detector and the tracker."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
      raise ValueError(f'IDOL predict: video {self.video_id}: frames must be [T, H, W, 3], got {frames.shape}.')
    if self.next_frame + len(frames) > self.length:
      raise ValueError(f'IDOL predict: video {self.video_id}: got {self.next_frame + len(frames)} frames, more than '
                       f'its length {self.length}.')
    for start in range(0, len(frames), self.chunk):
      self._run_chunk(frames[start:start + self.chunk])

  def _run_chunk(self, images: np.ndarray) -> None:
    n = len(images)
    images = np.concatenate([images, np.zeros((self.chunk - n,) + images.shape[1:], images.dtype)])
    sizes = np.tile(np.asarray(self.image_size, np.int32), (self.chunk, 1))
    logits, boxes, embeds, masks = self.detector(jnp.asarray(images), jnp.asarray(sizes))
    probs = tracker_lib.sigmoid(np.asarray(logits[:n]))
    boxes, embeds = np.asarray(boxes[:n]), np.asarray(embeds[:n])
    tcfg = self.tcfg
    for f in range(n):
      idx = tracker_lib.select_detections(probs[f], boxes[f], tcfg.select_thres, tcfg.box_nms_thr)
      padded = np.zeros(_bucket(len(idx)), np.int32)
      padded[:len(idx)] = idx
      mask_logits = np.asarray(_take_masks(masks, f, jnp.asarray(padded)))[:len(idx)]
      det_probs = probs[f][idx]
      keep, ids = self.tracker.match(det_probs.max(1), det_probs.argmax(1),
                                     tracker_lib.sigmoid(mask_logits) > 0.5, embeds[f][idx], self.next_frame)
      out = ids >= 0
      final = self._final_masks(masks, f, idx[keep][out])
      self.tracks.add_frame(self.next_frame, ids[out], det_probs[keep][out],
                            lambda k: results_lib.encode_mask(final[k]))
      self.next_frame += 1

  def _final_masks(self, masks: jax.Array, frame: int, queries: np.ndarray) -> np.ndarray:
    """bool `[len(queries), H, W]` output masks of `queries` in chunk frame `frame`, computed on the device."""
    if len(queries) == 0:
      return np.zeros((0,) + self.orig_size, bool)
    padded = np.zeros(_bucket(len(queries)), np.int32)
    padded[:len(queries)] = queries
    logits = _take_masks(masks, frame, jnp.asarray(padded))
    final = tracker_lib.final_masks(logits, image_size=self.image_size, orig_size=self.orig_size,
                                    stride=self.mask_stride, threshold=float(self.tcfg.mask_threshold))
    return np.asarray(final[:len(queries)])

  def records(self) -> list[dict]:
    """CodaLab records `{'video_id', 'score', 'category_id', 'segmentations': [RLE | None per frame]}`: one per
    (track, class) with mean score > `apply_cls_thres` (`config.tracker.multi_cls`), else one per track."""
    if self.next_frame != self.length:
      raise ValueError(f'IDOL predict: video {self.video_id}: {self.next_frame} of {self.length} frames were given.')
    category_ids = _category_table(self.config, self.num_classes)
    return [{'video_id': self.video_id, 'score': score, 'category_id': int(category_ids[label]),
             'segmentations': segs}
            for score, label, segs in self.tracks.results(multi_cls=self.tcfg.multi_cls,
                                                          apply_cls_thres=self.tcfg.apply_cls_thres)]


def predict_video(model: nnx.Module, video: dict[str, Any], config: ml_collections.ConfigDict) -> list[dict]:
  """IDOL online inference on one video (docs/INTERFACES.md §2) → CodaLab result records (see `VideoPredictor`)."""
  for key in ('video_id', 'frames', 'image_size', 'orig_size'):
    if key not in video:
      raise KeyError(f'IDOL predict_video: video dict lacks {key!r} (see docs/INTERFACES.md §2).')
  frames = np.asarray(video['frames'])
  predictor = VideoPredictor(model, config, video_id=video['video_id'], length=len(frames),
                             image_size=video['image_size'], orig_size=video['orig_size'])
  predictor.add_frames(frames)
  return predictor.records()


def conversion_rules(config: ml_collections.ConfigDict):
  """Official IDOL checkpoint keys → NNX state paths (`visjax.convert.rules_idol`)."""
  from visjax.convert import rules_idol  # pylint: disable=g-import-not-at-top
  return rules_idol.idol_rules(config.model)
