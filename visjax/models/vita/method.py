"""VITA on method contract v2 (docs/INTERFACES.md §3): `METHOD = VITAMethod`.

* `loss_fn`: one forward pass of the `[B, T, ...]` clips in training mode (VITA reads the last `last_layer_num`
  frame-decoder layers) and both set criteria (`criterion.vita_loss`), with the `config.loss` settings read once.
* `make_predictor` returns a `VITAPredictor`, offline as the official `Vita.inference`: `add_frames` runs the
  per-frame detector on `config.tracker.run_chunk_size` frames at a time (jitted once per padded size, the last
  chunk zero-padded) and keeps each frame's last-layer frame queries and VITA mask features (in
  `config.tracker.mask_features_dtype`: float32 as the official code, or bfloat16, half the host memory) on the
  host; `finish` runs the VITA module once over the whole video (zero-padded to `inference.video_bucket` frames,
  the padding masked, so a few lengths are compiled), takes the top-k (query, class) pairs and computes their masks
  `interpolate_chunk_size` frames at a time on the device (`inference.chunk_masks_device`), encoding each frame's
  masks to RLE at once.
* Tracks: one per selected query, `class_scores` = prob x mask score at the selected classes (0 elsewhere);
  records: the top-k (track, class) pairs of the video (`RecordRule('topk')`), i.e. the official output.
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
from visjax.inference import predictor as predictor_lib
from visjax.inference import tracks as tracks_lib
from visjax.models import registry
from visjax.models.layers import preprocess
from visjax.models.vita import criterion
from visjax.models.vita import inference
from visjax.models.vita import model as vita_model


@functools.lru_cache(maxsize=8)
def _jitted_frames(graphdef: Any) -> Callable:
  """`(state, images [n, Hp, Wp, 3], sizes [n, 2]) -> (frame queries [n, fQ, C] of the last decoder layer,
  VITA mask features [n, Hp/4, Wp/4, D])`."""

  def forward(state, images, sizes):
    out = nnx.merge(graphdef, state).frame_forward(images, sizes)
    return out['frame_queries'][-1], out['vita_mask_features']

  return jax.jit(forward)


@functools.lru_cache(maxsize=8)
def _jitted_video(graphdef: Any) -> Callable:
  """`(state, frame queries [Tb, fQ, C], num_frames) -> (class logits [cQ, K+1], mask embeddings [cQ, D])` of the
  last VITA decoder layer (test mode: plain / shifted windows); the frames past `num_frames` are padding, so one
  compile serves every video length of a bucket (`inference.video_bucket`)."""

  def forward(state, frame_queries, num_frames):
    out = nnx.merge(graphdef, state).vita_module(frame_queries[None, None], train=False, num_frames=num_frames)
    return out['pred_logits'][-1, 0, 0], out['pred_mask_embed'][-1, 0, 0]

  return jax.jit(forward)


class VITAPredictor:
  """VITA offline inference on one video fed in any number of frame chunks (`visjax.inference.predictor`)."""

  def __init__(self, model: vita_model.VITA, settings: inference.InferenceSettings, video: predictor_lib.VideoMeta):
    graphdef, state = nnx.split(model)
    self.frames_fn = functools.partial(_jitted_frames(graphdef), state)
    self.video_fn = functools.partial(_jitted_video(graphdef), state)
    self.settings = settings
    self.video = video
    self.num_classes = model.config.num_classes
    self.window_size = model.config.vita.enc_window_size
    self.size_divisibility = model.config.size_divisibility
    self.frame_queries: list[np.ndarray] = []
    self.mask_features: list[np.ndarray] = []
    self.image_sizes: list[np.ndarray] = []
    self.padded_size: tuple[int, int] | None = None

  @property
  def seen(self) -> int:
    return sum(len(s) for s in self.image_sizes)

  def add_frames(self, frames: np.ndarray, image_sizes: np.ndarray) -> None:
    """Runs the per-frame detector on the next frames `[t, Hp, Wp, 3]` (sizes `[t, 2]`)."""
    frames, image_sizes = predictor_lib.check_frames(self.video, self.seen, frames, image_sizes, 'VITA')
    chunk = max(1, int(self.settings.run_chunk_size))
    for start in range(0, len(frames), chunk):
      images, sizes = frames[start:start + chunk], image_sizes[start:start + chunk]
      n = len(images)
      images = np.concatenate([images, np.zeros((chunk - n,) + images.shape[1:], images.dtype)])
      padded_sizes = np.concatenate([sizes, np.repeat(sizes[-1:], chunk - n, 0)])
      queries, features = self.frames_fn(jnp.asarray(images), jnp.asarray(padded_sizes))
      self.frame_queries.append(np.asarray(queries[:n]))
      self.mask_features.append(np.asarray(features[:n].astype(self.settings.mask_features_dtype)))
      self.image_sizes.append(sizes)
    self.padded_size = tuple(preprocess.round_up(int(s), self.size_divisibility) for s in frames.shape[1:3])

  def finish(self) -> list[tracks_lib.Track]:
    predictor_lib.check_finished(self.video, self.seen, 'VITA')
    s = self.settings
    queries = np.concatenate(self.frame_queries)
    pad = inference.video_bucket(len(queries), self.window_size) - len(queries)
    queries = np.concatenate([queries, np.zeros((pad,) + queries.shape[1:], queries.dtype)])
    logits, mask_embed = self.video_fn(jnp.asarray(queries), jnp.int32(self.seen))
    det = inference.select_topk(np.asarray(logits), s.topk)
    # As the official code: the crop size is that of the first frame of the last run chunk.
    sizes = np.concatenate(self.image_sizes)
    image_size = tuple(int(v) for v in sizes[(len(sizes) - 1) // s.run_chunk_size * s.run_chunk_size])
    features = [f for part in self.mask_features for f in part]  # per-frame views: no second copy of the video
    self.frame_queries, self.mask_features = [], []
    queries = np.unique(det.queries)
    # Padded to `topk` rows so the mask pass compiles once per frame-chunk length and video size.
    embed = np.zeros((s.topk,) + mask_embed.shape[1:], np.float32)
    embed[:len(queries)] = np.asarray(mask_embed)[queries]
    segmentations: list[list[dict]] = [[] for _ in queries]
    soft = np.zeros(len(queries), np.float64)
    hard = np.zeros(len(queries), np.float64)
    sizes = dict(interim_size=self.padded_size, image_size=image_size, out_size=tuple(self.video.orig_size))
    step = s.interpolate_chunk_size
    for start in range(0, len(features), step):
      part = inference.chunk_masks_device(jnp.asarray(embed), jnp.asarray(np.stack(features[start:start + step])),
                                          **sizes)
      soft += np.asarray(part.soft_sum)[:len(queries)]
      hard += np.asarray(part.hard_count)[:len(queries)]
      for i, masks in enumerate(np.asarray(part.masks)[:len(queries)]):
        segmentations[i].extend(results_lib.encode_mask(m) for m in masks)
    mask_scores = soft / (hard + 1e-6)
    tracks = []
    for i, q in enumerate(queries):
      class_scores = np.zeros(self.num_classes, np.float64)
      picked = det.queries == q
      class_scores[det.labels[picked]] = det.scores[picked] * mask_scores[i]
      tracks.append(tracks_lib.Track(track_id=int(q), class_scores=class_scores, segmentations=segmentations[i],
                                     frame_scores=[None] * self.video.length))
    return tracks


class VITAMethod(registry.Method):
  """VITA (Heo et al., NeurIPS 2022): Mask2Former frame detector + object-token video decoder, offline."""

  name = 'vita'

  def __init__(self, config: ml_collections.ConfigDict):
    super().__init__(config)
    self.loss_settings = criterion.loss_settings(config.get('loss'))
    self.inference_settings = inference.inference_settings(config.get('tracker'))

  def build_model(self, rngs: nnx.Rngs) -> vita_model.VITA:
    return vita_model.VITA.from_config(self.config, rngs=rngs)

  def loss_fn(self, model: nnx.Module, batch: dict[str, Any], *, rng: jax.Array,
              train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """VITA loss of a batch of `[B, T, ...]` clips (docs/INTERFACES.md §1); jittable."""
    images = batch['image']
    if images.ndim != 5:
      raise ValueError(f'VITA loss_fn: batch["image"] must be [B, T, H, W, 3], got {images.shape}.')
    outputs = model(images, batch['image_size'], train=train)
    return criterion.vita_loss(outputs, batch, rng=rng, s=self.loss_settings,
                               size_divisibility=int(self.config.model.size_divisibility))

  def make_predictor(self, model: nnx.Module, video: predictor_lib.VideoMeta) -> VITAPredictor:
    return VITAPredictor(model, self.inference_settings, video)

  def record_rule(self) -> tracks_lib.RecordRule:
    return tracks_lib.RecordRule('topk', k=int(self.inference_settings.topk))

  def conversion_rules(self):
    from visjax.convert import rules_vita  # pylint: disable=g-import-not-at-top
    return rules_vita.vita_rules(self.config.model)


METHOD = VITAMethod
