"""IDOL online inference on the host: per-frame detection selection, the `IDOL_Tracker` association, and the
video-level bookkeeping of `IDOL.inference`, with per-frame RLE streaming.

Everything here is host-side NumPy (except `final_masks`, jitted to run where the mask logits live) and follows
the official code (`projects/IDOL/idol/models/tracker.py` and `idol.py:IDOL.inference`) step by step:

Per frame (`select_detections`): queries with max sigmoid > `select_thres` (top-1 if none), class-aware box NMS
(IoU > 0.9 suppressed, score order).

`IDOLTracker.match` (bi-softmax long-match mode, the only mode IDOL uses):
  1. mask NMS on the sigmoid > 0.5 masks (a later mask with IoU > `nms_thr_pre` is dropped);
  2. track embedding = mean of the last ≤ `memory_len` embeddings weighted by (stored score + k/len);
  3. scores = (softmax over tracks + softmax over detections) / 2 of E_det·E_memᵀ;
  4. detections in order: if more than one track scores > 0.5, those tracks' scores are multiplied by their
     `exist_frame` counts and the others by the mean of those counts; the best track is accepted if its score >
     `match_score_thr`, and its column is zeroed for the other detections;
  5. unmatched detections with score > `addnew_score_thr` (`init_score_thr` when no track is alive) start tracks;
  6. the remaining ones whose mask IoU with every earlier detection is < `nms_thr_post` become backdrops (−1),
     the others stay −2; neither is output;
  7. tracks not seen for `memo_tracklet_frames` frames are forgotten.

`add_frame` stores each output id's per-frame RLE in the shared `visjax.inference.tracks.VideoTracks` (each
frame's mask is encoded as soon as it is final, so memory per track is its RLE strings, never a `[T, H, W]` stack)
with its full sigmoid score vector (the video-level score is their mean over the frames where the id is present);
after frame `filter_min_frames` it drops ids absent from the last `filter_last_frames` frames and seen fewer than
`filter_min_seen` times. The records are either every (id, class) pair above `apply_cls_thres` (`multi_cls`, the
'threshold' record rule) or one label per track ('argmax').
"""

import collections
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from visjax import losses
from visjax.inference import postprocess
from visjax.inference import tracks as tracks_lib
from visjax.models import settings
from visjax.models.layers import resize


def select_detections(probs: np.ndarray, boxes: np.ndarray, select_thres: float = 0.1,
                      nms_thr: float = 0.9) -> np.ndarray:
  """IDOL's per-frame query selection.

  Args:
    probs: `[Q, C]` class probabilities of one frame.
    boxes: `[Q, 4]` cxcywh.
    select_thres: keep queries whose max probability exceeds this (the best query alone if none does).
    nms_thr: class-aware box NMS threshold over the kept queries.

  Returns:
    int `[n]` query indices in detection order (decreasing score after NMS).
  """
  max_score = probs.max(1)
  idx = np.nonzero(max_score > select_thres)[0]
  if len(idx) == 0:
    return np.asarray([int(np.argmax(max_score))], np.int64)
  keep = postprocess.batched_nms(losses.box_cxcywh_to_xyxy(boxes[idx]), max_score[idx], probs[idx].argmax(1), nms_thr)
  return idx[keep]


@dataclasses.dataclass
class _Track:
  embed: np.ndarray  # momentum embedding (used when long_match is off)
  long_embeds: collections.deque  # last <= memory_len embeddings
  long_scores: collections.deque  # their detection scores
  label: int
  last_frame: int
  exist_frame: int = 1


@dataclasses.dataclass(frozen=True)
class TrackerSettings:
  """The fields of `config.tracker` (official values and meaning in `configs/idol_common.py`)."""
  select_thres: float
  box_nms_thr: float
  nms_thr_pre: float
  nms_thr_post: float
  init_score_thr: float
  obj_score_thr: float
  addnew_score_thr: float
  match_score_thr: float
  memo_tracklet_frames: int
  memo_momentum: float
  memory_len: int
  long_match: bool
  frame_weight: bool
  temporal_weight: bool
  multi_cls: bool
  apply_cls_thres: float
  temporal_score_type: str
  batch_infer_len: int
  mask_threshold: float
  filter_min_frames: int
  filter_last_frames: int
  filter_min_seen: int

  def __post_init__(self):
    if self.temporal_score_type != 'mean':
      raise ValueError(f'config.tracker.temporal_score_type={self.temporal_score_type!r}: only "mean" (IDOL\'s '
                       'setting) is implemented.')


def tracker_settings(section: ml_collections.ConfigDict | None) -> TrackerSettings:
  """`TrackerSettings` from `config.tracker`; every field is required."""
  return settings.from_config(TrackerSettings, section, 'config.tracker')


class IDOLTracker:
  """The official `IDOL_Tracker` (bi-softmax association with memory), host-side NumPy."""

  def __init__(self, *, nms_thr_pre: float, nms_thr_post: float, init_score_thr: float, addnew_score_thr: float,
               match_score_thr: float, memo_tracklet_frames: int, memo_momentum: float, memory_len: int,
               long_match: bool, frame_weight: bool, temporal_weight: bool):
    if not 0 <= memo_momentum <= 1:
      raise ValueError(f'IDOLTracker: memo_momentum must be in [0, 1], got {memo_momentum}.')
    if memo_tracklet_frames < 0 or memory_len < 1:
      raise ValueError(f'IDOLTracker: need memo_tracklet_frames >= 0 and memory_len >= 1, got '
                       f'{memo_tracklet_frames}, {memory_len}.')
    self.nms_thr_pre = nms_thr_pre
    self.nms_thr_post = nms_thr_post
    self.init_score_thr = init_score_thr
    self.addnew_score_thr = addnew_score_thr
    self.match_score_thr = match_score_thr
    self.memo_tracklet_frames = memo_tracklet_frames
    self.memo_momentum = memo_momentum
    self.memory_len = memory_len
    self.long_match = long_match
    self.frame_weight = frame_weight
    self.temporal_weight = temporal_weight
    self.num_tracklets = 0
    self.tracks: dict[int, _Track] = {}

  @classmethod
  def from_settings(cls, t: TrackerSettings) -> 'IDOLTracker':
    names = ('nms_thr_pre', 'nms_thr_post', 'init_score_thr', 'addnew_score_thr', 'match_score_thr',
             'memo_tracklet_frames', 'memo_momentum', 'memory_len', 'long_match', 'frame_weight', 'temporal_weight')
    return cls(**{n: getattr(t, n) for n in names})

  def _memory(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(track ids `[M]`, track embeddings `[M, E]`, exist_frame counts `[M]`) in insertion order."""
    ids, embeds, exist = [], [], []
    for tid, t in self.tracks.items():
      if self.long_match:
        weights = np.asarray(t.long_scores, np.float32)
        if self.temporal_weight:
          weights = weights + np.arange(1, len(weights) + 1, dtype=np.float32) / len(weights)
        embeds.append((np.stack(t.long_embeds) * weights[:, None]).sum(0) / weights.sum())
      else:
        embeds.append(t.embed)
      ids.append(tid)
      exist.append(t.exist_frame)
    return np.asarray(ids), np.stack(embeds).astype(np.float32), np.asarray(exist, np.float32)

  def _associate(self, embeds: np.ndarray) -> np.ndarray:
    """Greedy bi-softmax matching of detections to live tracks; −2 where unmatched."""
    ids = np.full(len(embeds), -2, np.int64)
    memo_ids, memo_embeds, exist = self._memory()
    feats = embeds.astype(np.float32) @ memo_embeds.T  # [n, M]
    scores = (_softmax(feats, axis=1) + _softmax(feats, axis=0)) / 2
    for i in range(len(embeds)):
      row = scores[i]
      above = row > 0.5
      if self.frame_weight and above.sum() > 1:
        row = np.where(above, row * exist, row * exist[above].mean())
      j = int(np.argmax(row))
      if row[j] > self.match_score_thr:
        ids[i] = memo_ids[j]
        scores[:i, j] = 0
        scores[i + 1:, j] = 0
    return ids

  def match(self, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray, embeds: np.ndarray,
            frame_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Associates one frame's detections (in detection order) with the tracks.

    Args:
      scores: `[n]` detection scores (max class probability).
      labels: int `[n]` argmax class.
      masks: bool `[n, h, w]` masks (sigmoid > 0.5 at stride 4).
      embeds: `[n, E]` re-ID embeddings.
      frame_id: frame index in the video.

    Returns:
      `(keep bool [n], ids int [n_kept])`: which detections survive the mask NMS, and their ids (≥ 0 tracks,
      −1 backdrops, −2 unmatched).
    """
    n = len(scores)
    if not (len(labels) == len(masks) == len(embeds) == n):
      raise ValueError(f'IDOLTracker.match: scores/labels/masks/embeds lengths differ: {n}, {len(labels)}, '
                       f'{len(masks)}, {len(embeds)}.')
    keep = postprocess.mask_nms(masks, self.nms_thr_pre)
    scores, labels, masks, embeds = scores[keep], labels[keep], masks[keep], embeds[keep]
    if len(scores) == 0:
      return keep, np.zeros(0, np.int64)
    if self.tracks:
      ids = self._associate(embeds)
      new_thr = self.addnew_score_thr
    else:
      ids = np.full(len(scores), -2, np.int64)
      new_thr = self.init_score_thr
    new = (ids == -2) & (scores > new_thr)
    ids[new] = np.arange(self.num_tracklets, self.num_tracklets + new.sum())
    self.num_tracklets += int(new.sum())
    unselected = np.nonzero(ids == -2)[0]
    if len(unselected):
      ious = postprocess.mask_iou(masks[unselected], masks)
      for row, ind in enumerate(unselected):
        if np.all(ious[row, :ind] < self.nms_thr_post):
          ids[ind] = -1
    self._update(ids, scores, labels, embeds, frame_id)
    return keep, ids

  def _update(self, ids, scores, labels, embeds, frame_id):
    for tid, score, label, embed in zip(ids, scores, labels, embeds):
      if tid < 0:
        continue
      tid = int(tid)
      track = self.tracks.get(tid)
      if track is None:
        self.tracks[tid] = _Track(embed=embed, long_embeds=collections.deque([embed], maxlen=self.memory_len),
                                  long_scores=collections.deque([score], maxlen=self.memory_len),
                                  label=int(label), last_frame=frame_id)
      else:
        track.long_scores.append(score)
        track.long_embeds.append(embed)
        track.embed = (1 - self.memo_momentum) * track.embed + self.memo_momentum * embed
        track.last_frame = frame_id
        track.label = int(label)
        track.exist_frame += 1
    for tid in [t for t, v in self.tracks.items() if frame_id - v.last_frame >= self.memo_tracklet_frames]:
      del self.tracks[tid]


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def add_frame(tracks: tracks_lib.VideoTracks, frame_id: int, ids: np.ndarray, scores: np.ndarray,
              encode: Callable[[int], Any], *, filter_min_frames: int, filter_last_frames: int,
              filter_min_seen: int) -> None:
  """Records one tracked frame in `tracks` and applies IDOL's short-track filter.

  Args:
    tracks: the video's tracks.
    frame_id: frame index.
    ids: int `[n]` output ids (>= 0) of the frame's tracked detections.
    scores: `[n, C]` their full class-probability vectors (the video score is their mean).
    encode: `encode(k)` -> RLE of the k-th detection's final mask; called once per id, right away.
    filter_min_frames, filter_last_frames, filter_min_seen: after frame `filter_min_frames`, ids absent from the
      last `filter_last_frames` frames and seen fewer than `filter_min_seen` times are dropped.
  """
  for k, tid in enumerate(ids):
    tracks.add(int(tid), frame_id, encode(k), scores[k])
  if frame_id > filter_min_frames:
    recent = set(range(frame_id - filter_last_frames + 1, frame_id + 1))
    for tid in tracks.track_ids:
      if tracks.count(tid) < filter_min_seen and not tracks.frames_seen(tid) & recent:
        tracks.remove(tid)


@functools.lru_cache(maxsize=64)
def _bilinear_taps(in_size: int, out_size: int, pick: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`(i0, i1, frac)` of output indices `pick` of `F.interpolate(bilinear, align_corners=False)` along one axis."""
  dst = np.asarray(pick, np.float64)
  src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.)
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, (src - i0).astype(np.float32)


@functools.partial(jax.jit, static_argnames=('image_size', 'orig_size', 'stride', 'threshold'))
def final_masks(mask_logits: jax.Array, image_size: tuple[int, int], orig_size: tuple[int, int], stride: int = 4,
                threshold: float = 0.5) -> jax.Array:
  """IDOL's output masks from stride-`stride` logits (jitted; run where the logits live).

  Bilinear (align_corners=False) upsampling by `stride` to the padded size, sigmoid, crop to `image_size`,
  nearest resize to `orig_size`, `> threshold`. Only the rows / columns the nearest resize reads are interpolated
  (two taps per axis), and the sigmoid test is done on the logit (`x > log(t / (1 - t))`).

  Args:
    mask_logits: `[n, h, w]` logits.
    image_size: `(h, w)` of the resized, unpadded input (static).
    orig_size: `(H, W)` of the original video (static).
    stride: mask output stride.
    threshold: probability threshold in (0, 1).

  Returns:
    bool `[n, H, W]`.
  """
  if not 0 < threshold < 1:
    raise ValueError(f'final_masks: threshold must be in (0, 1), got {threshold}.')
  x = jnp.asarray(mask_logits, jnp.float32)
  _, h, w = x.shape
  rows = resize.nearest_indices(int(image_size[0]), int(orig_size[0]))
  cols = resize.nearest_indices(int(image_size[1]), int(orig_size[1]))
  c0, c1, fc = _bilinear_taps(w, w * stride, tuple(int(c) for c in cols))
  r0, r1, fr = _bilinear_taps(h, h * stride, tuple(int(r) for r in rows))
  x = x[:, :, c0] * (1. - fc) + x[:, :, c1] * fc  # [n, h, W]
  x = x[:, r0] * (1. - fr)[:, None] + x[:, r1] * fr[:, None]  # [n, H, W]
  return x > np.float32(np.log(threshold / (1. - threshold)))
