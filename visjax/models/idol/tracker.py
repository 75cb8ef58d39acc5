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

`VideoTracks` keeps, per output id, its per-frame RLEs (each frame's mask is encoded as soon as it is final, so
memory per track is its RLE strings, never a `[T, H, W]` stack), the sum of its full sigmoid score vectors and its
frame count; after frame `filter_min_frames` it drops ids absent from the last `filter_last_frames` frames and
seen fewer than `filter_min_seen` times. `VideoTracks.results` gives the video-level score (mean over the frames
where the id is present) and either every (id, class) pair above `apply_cls_thres` (`multi_cls`) or one label per
track.
"""

import collections
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from visjax.models.layers import resize


def sigmoid(x: np.ndarray) -> np.ndarray:
  """float32 logistic function (stable for large |x|)."""
  x = np.asarray(x, np.float32)
  e = np.exp(-np.abs(x))
  return np.where(x >= 0, 1. / (1. + e), e / (1. + e)).astype(np.float32)


def mask_iou(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
  """Pairwise `(I + 1e-6) / (U + 1e-6)` of binary masks `[n, ...]` x `[m, ...]` -> `[n, m]` (IDOL's mask_iou)."""
  a = np.asarray(masks1, bool).reshape(len(masks1), -1).astype(np.float32)
  b = np.asarray(masks2, bool).reshape(len(masks2), -1).astype(np.float32)
  inter = a @ b.T
  union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
  return (inter + 1e-6) / (union + 1e-6)


def mask_nms(masks: np.ndarray, thr: float) -> np.ndarray:
  """IDOL's `mask_nms`: in the given order, a kept mask removes every later mask with IoU > `thr`.

  Args:
    masks: bool `[n, h, w]`.
    thr: IoU threshold.

  Returns:
    bool `[n]` keep flags.
  """
  n = len(masks)
  keep = np.ones(n, bool)
  if n == 0:
    return keep
  ious = mask_iou(masks, masks)
  for i in range(n - 1):
    if keep[i]:
      keep[i + 1:] &= ~(ious[i, i + 1:] > thr)
  return keep


def box_iou_xyxy(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
  """Pairwise IoU of xyxy boxes (torchvision `box_iou`)."""
  area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
  area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
  lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
  rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
  wh = np.clip(rb - lt, 0., None)
  inter = wh[..., 0] * wh[..., 1]
  return inter / (area1[:, None] + area2[None, :] - inter)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, thr: float) -> np.ndarray:
  """Class-aware NMS (torchvision `batched_nms`): indices kept, by decreasing score (stable for ties)."""
  order = np.argsort(-scores, kind='stable')
  keep = []
  suppressed = np.zeros(len(scores), bool)
  ious = box_iou_xyxy(boxes, boxes)
  for i in order:
    if suppressed[i]:
      continue
    keep.append(i)
    suppressed |= (ious[i] > thr) & (labels == labels[i])
  return np.asarray(keep, np.int64)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
  cx, cy, w, h = np.moveaxis(boxes, -1, 0)
  return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


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
  keep = batched_nms(cxcywh_to_xyxy(boxes[idx]), max_score[idx], probs[idx].argmax(1), nms_thr)
  return idx[keep]


@dataclasses.dataclass
class _Track:
  embed: np.ndarray  # momentum embedding (used when long_match is off)
  long_embeds: collections.deque  # last <= memory_len embeddings
  long_scores: collections.deque  # their detection scores
  label: int
  last_frame: int
  exist_frame: int = 1


class IDOLTracker:
  """The official `IDOL_Tracker` (bi-softmax association with memory), host-side NumPy."""

  def __init__(self, *, nms_thr_pre: float = 0.5, nms_thr_post: float = 0.05, init_score_thr: float = 0.2,
               addnew_score_thr: float = 0.2, match_score_thr: float = 0.5, memo_tracklet_frames: int = 10,
               memo_momentum: float = 0.8, memory_len: int = 3, long_match: bool = True, frame_weight: bool = True,
               temporal_weight: bool = True):
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
  def from_config(cls, tracker_config: ml_collections.ConfigDict) -> 'IDOLTracker':
    """Builds from `config.tracker` (fields as `configs/idol_common.py`)."""
    names = ('nms_thr_pre', 'nms_thr_post', 'init_score_thr', 'addnew_score_thr', 'match_score_thr',
             'memo_tracklet_frames', 'memo_momentum', 'memory_len', 'long_match', 'frame_weight', 'temporal_weight')
    return cls(**{n: tracker_config[n] for n in names if n in tracker_config})

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
    keep = mask_nms(masks, self.nms_thr_pre)
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
      ious = mask_iou(masks[unselected], masks)
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


@dataclasses.dataclass
class _VideoTrack:
  segmentations: dict  # frame index -> RLE
  score_sum: np.ndarray  # [C] float64
  count: int = 0


class VideoTracks:
  """Video-level bookkeeping of IDOL inference: per-id per-frame RLEs, score sums and the short-track filter."""

  def __init__(self, num_frames: int, *, filter_min_frames: int = 8, filter_last_frames: int = 2,
               filter_min_seen: int = 3):
    self.num_frames = num_frames
    self.filter_min_frames = filter_min_frames
    self.filter_last_frames = filter_last_frames
    self.filter_min_seen = filter_min_seen
    self.tracks: dict[int, _VideoTrack] = {}

  def add_frame(self, frame_id: int, ids: np.ndarray, scores: np.ndarray,
                encode: Callable[[int], Any]) -> None:
    """Records one frame.

    Args:
      frame_id: frame index.
      ids: int `[n]` output ids (≥ 0) of the frame's tracked detections.
      scores: `[n, C]` their full class-probability vectors.
      encode: `encode(k)` → RLE of the k-th detection's final mask; called once per id, right away.
    """
    for k, tid in enumerate(ids):
      tid = int(tid)
      track = self.tracks.get(tid)
      if track is None:
        track = self.tracks[tid] = _VideoTrack(segmentations={}, score_sum=np.zeros(scores.shape[1], np.float64))
      track.segmentations[frame_id] = encode(k)
      track.score_sum += scores[k]
      track.count += 1
    if frame_id > self.filter_min_frames:
      recent = range(frame_id - self.filter_last_frames + 1, frame_id + 1)
      for tid in [t for t, v in self.tracks.items()
                  if v.count < self.filter_min_seen and not any(f in v.segmentations for f in recent)]:
        del self.tracks[tid]

  def results(self, *, multi_cls: bool = True, apply_cls_thres: float = 0.05) -> list[tuple[float, int, list]]:
    """`(score, label, segmentations [RLE | None per frame])` per output, in id order then class order."""
    out = []
    for track in self.tracks.values():
      mean = track.score_sum / track.count
      segs = [track.segmentations.get(f) for f in range(self.num_frames)]
      if multi_cls:
        out.extend((float(mean[c]), int(c), segs) for c in np.nonzero(mean > apply_cls_thres)[0])
      else:
        out.append((float(mean.max()), int(mean.argmax()), segs))
    return out


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
