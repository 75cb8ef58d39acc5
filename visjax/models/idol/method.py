"""IDOL on method contract v2 (docs/INTERFACES.md §3): `METHOD = IDOLMethod`.

* `loss_fn` flattens the `[B, 2, ...]` clips (key, reference) into `2B` frames, runs one forward pass up to the
  controller outputs (`IDOL.forward_heads`) and the criterion (`criterion.idol_loss`, with the `config.loss`
  settings read once at construction), which computes the dynamic mask head only for the key-frame queries its
  matcher selects (as the official criterion does).
* `make_predictor` returns an `IDOLPredictor`: frames arrive in chunks of any length; the detector runs on
  `config.tracker.batch_infer_len` frames at a time (jitted once per padded size, the last chunk zero-padded), then
  per frame on the host: query selection and box NMS, the IDOL tracker, output masks (bilinear to the padded size,
  sigmoid, crop, nearest to the original size, > 0.5) encoded to RLE as soon as each frame is tracked, and the
  short-track filter (`tracker.py`). Memory is bounded by the live tracks, whatever the video length.
* Records: every (track, class) with mean score > `apply_cls_thres` (`multi_cls`), else one label per track.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from visjax.evaluation import results as results_lib
from visjax.inference import postprocess
from visjax.inference import predictor as predictor_lib
from visjax.inference import tracks as tracks_lib
from visjax.models import registry
from visjax.models.idol import criterion
from visjax.models.idol import model as idol_model
from visjax.models.idol import tracker as tracker_lib

# `(images [n, Hp, Wp, 3], sizes [n, 2]) -> (logits, boxes, embeds, mask logits)` of the last decoder layer.
Detector = Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]


@functools.lru_cache(maxsize=8)
def _jitted_forward(graphdef: Any) -> Callable:
  """Jitted `(state, images, sizes) -> last-layer (logits, boxes, embeds, mask logits)` of one model structure."""

  def forward(state, images, sizes):
    out = nnx.merge(graphdef, state)(images, sizes, train=False, mask_layers=(-1,))
    return out['pred_logits'][-1], out['pred_boxes'][-1], out['pred_embeds'], out['pred_masks'][-1]

  return jax.jit(forward)


def model_detector(model: idol_model.IDOL) -> Detector:
  """The model's jitted last-layer forward pass as a `Detector`."""
  graphdef, state = nnx.split(model)
  return functools.partial(_jitted_forward(graphdef), state)


@jax.jit
def _take_masks(masks: jax.Array, frame: jax.Array, idx: jax.Array) -> jax.Array:
  """`masks [n, Q, h, w]` -> `[K, h, w]` of frame `frame`, queries `idx [K]`."""
  return masks[frame][idx]


def _bucket(n: int) -> int:
  """Index-list length padded to a power of two (>= 8), so the mask gather compiles for few shapes."""
  return max(8, 1 << (max(n, 1) - 1).bit_length())


class IDOLPredictor:
  """IDOL online inference on one video fed in any number of frame chunks (`visjax.inference.predictor`)."""

  def __init__(self, detector: Detector, tracker: tracker_lib.TrackerSettings, video: predictor_lib.VideoMeta, *,
               mask_stride: int):
    self.detector = detector
    self.tcfg = tracker
    self.video = video
    self.chunk = max(1, int(tracker.batch_infer_len))
    self.mask_stride = int(mask_stride)
    self.tracker = tracker_lib.IDOLTracker.from_settings(tracker)
    self.tracks = tracks_lib.VideoTracks(video.length)
    self.next_frame = 0

  def add_frames(self, frames: np.ndarray, image_sizes: np.ndarray) -> None:
    """Runs the next frames `[t, Hp, Wp, 3]` (sizes `[t, 2]`) through the detector and the tracker."""
    frames, image_sizes = predictor_lib.check_frames(self.video, self.next_frame, frames, image_sizes, 'IDOL')
    for start in range(0, len(frames), self.chunk):
      self._run_chunk(frames[start:start + self.chunk], image_sizes[start:start + self.chunk])

  def _run_chunk(self, images: np.ndarray, sizes: np.ndarray) -> None:
    n = len(images)
    images = np.concatenate([images, np.zeros((self.chunk - n,) + images.shape[1:], images.dtype)])
    sizes = np.concatenate([sizes, np.repeat(sizes[-1:], self.chunk - n, 0)])
    logits, boxes, embeds, masks = self.detector(jnp.asarray(images), jnp.asarray(sizes))
    probs = postprocess.sigmoid(np.asarray(logits[:n]))
    boxes, embeds = np.asarray(boxes[:n]), np.asarray(embeds[:n])
    tcfg = self.tcfg
    for f in range(n):
      idx = tracker_lib.select_detections(probs[f], boxes[f], tcfg.select_thres, tcfg.box_nms_thr)
      padded = np.zeros(_bucket(len(idx)), np.int32)
      padded[:len(idx)] = idx
      mask_logits = np.asarray(_take_masks(masks, f, jnp.asarray(padded)))[:len(idx)]
      det_probs = probs[f][idx]
      keep, ids = self.tracker.match(det_probs.max(1), det_probs.argmax(1),
                                     postprocess.sigmoid(mask_logits) > 0.5, embeds[f][idx], self.next_frame)
      out = ids >= 0
      final = self._final_masks(masks, f, idx[keep][out], tuple(int(s) for s in sizes[f]))
      tracker_lib.add_frame(self.tracks, self.next_frame, ids[out], det_probs[keep][out],
                            lambda k: results_lib.encode_mask(final[k]), filter_min_frames=tcfg.filter_min_frames,
                            filter_last_frames=tcfg.filter_last_frames, filter_min_seen=tcfg.filter_min_seen)
      self.next_frame += 1

  def _final_masks(self, masks: jax.Array, frame: int, queries: np.ndarray,
                   image_size: tuple[int, int]) -> np.ndarray:
    """bool `[len(queries), H, W]` output masks of `queries` in chunk frame `frame`, computed on the device."""
    if len(queries) == 0:
      return np.zeros((0,) + tuple(self.video.orig_size), bool)
    padded = np.zeros(_bucket(len(queries)), np.int32)
    padded[:len(queries)] = queries
    logits = _take_masks(masks, frame, jnp.asarray(padded))
    final = tracker_lib.final_masks(logits, image_size=image_size, orig_size=tuple(self.video.orig_size),
                                    stride=self.mask_stride, threshold=float(self.tcfg.mask_threshold))
    return np.asarray(final[:len(queries)])

  def finish(self) -> list[tracks_lib.Track]:
    predictor_lib.check_finished(self.video, self.next_frame, 'IDOL')
    return self.tracks.tracks()


class IDOLMethod(registry.Method):
  """IDOL (Wu et al., ECCV 2022): Deformable-DETR + CondInst masks + contrastive re-ID, online tracker."""

  name = 'idol'

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.loss_settings = criterion.loss_settings(config.get('loss'))
    self.tracker_settings = tracker_lib.tracker_settings(config.get('tracker'))

  def build_model(self, rngs: nnx.Rngs) -> idol_model.IDOL:
    return idol_model.IDOL.from_config(self.config, rngs=rngs)

  def loss_fn(self, model: nnx.Module, batch: dict[str, Any], *, rng: jax.Array,
              train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """IDOL loss of a batch of `[B, 2, ...]` clips (docs/INTERFACES.md §1); jittable."""
    images = batch['image']
    if images.ndim != 5 or images.shape[1] != 2:
      raise ValueError(f'IDOL loss_fn: batch["image"] must be [B, 2, H, W, 3] (key, reference), got '
                       f'{images.shape}.')
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
                               criterion.batched_take(outputs['mask_params'][layer, 0::2], queries), out_hw)

    return criterion.idol_loss(outputs, batch, rng=sample_rng, loss_config=self.loss_settings, mask_fn=key_masks)

  def make_predictor(self, model: nnx.Module, video: predictor_lib.VideoMeta,
                     detector: Detector | None = None) -> IDOLPredictor:
    """`detector` replaces the model's forward pass (e.g. precomputed outputs, `visjax.models.idol.oracle`)."""
    return IDOLPredictor(detector or model_detector(model), self.tracker_settings, video,
                         mask_stride=int(self.config.model.mask_out_stride))

  def record_rule(self) -> tracks_lib.RecordRule:
    t = self.tracker_settings
    return tracks_lib.RecordRule('threshold' if t.multi_cls else 'argmax', threshold=t.apply_cls_thres)

  def conversion_rules(self):
    from visjax.convert import rules_idol  # pylint: disable=g-import-not-at-top
    return rules_idol.idol_rules(self.config.model)


METHOD = IDOLMethod
