"""VISOLO online inference on the host (official `Visolo.forward` eval branch and `getTestResultV4`,
`getSegMaskV5`, `getTrackInfo`, `getAverageCat` of `projects/VISOLO/visolo/visolo.py`), numpy.

Per video, frame t is run through the network against the memory (see `MemorySchedule`), then frame t - 1 is
finalised (one frame of latency), because its links need the tracking scores from t - 1 to t:

1. `grid weight`: per cell of t - 1, the max sigmoid tracking score against the other frame's cells, averaged over
   the memory frames m[-2] and m[-3] (the memory before frame t is added; only m[-2] when the memory holds two
   frames, none for frame 0). It multiplies the category score *before* the score threshold.
2. `segment_frame` (getSegMaskV5): cell score = max class prob x grid weight, keep > `score_thr`, masks =
   mask probs > `mask_thr`, score x mean mask prob inside the mask, top `nms_pre`, Matrix NMS, keep >= `update_thr`,
   top `max_per_frame`, drop a mask j whose overlap with an earlier kept mask exceeds `overlap_thr` of its area.
3. Linking: each detection (in score order) takes the free instance of the previous frame's detections with the
   highest tracking score >= `tracking_thr`; the rest are tried against "lost" candidates (previous detections that
   found no successor, kept with their frame's tracking feature, searched newest first, never expired), re-scored
   through the tracking branch; anything left starts a new instance.
4. Video level: each instance's class is the argmax of its class-probability vectors averaged over the frames it
   appears in.

Official quirks kept: a frame whose only passing cell is cell 0 counts as empty (`valid_ind.sum() == 0`); an empty
mask gets a NaN score that sorts first (torch's descending argsort) and two of them make Matrix NMS return NaN for
every candidate, so the frame is dropped; after a frame without detections the next frame links only through the
lost candidates.

The network is reached through two callables, so this module is plain numpy: `track_fn(feature_a, feature_b)`
returns sigmoid tracking scores `[S, S]` (cell of a, cell of b) for two frames' tracking features (opaque objects,
e.g. device arrays), and each frame brings a `mask_fn(cells) -> [k, H, W]` mask probabilities of the given cells.
Masks are handed to `mask_encoder` as soon as their frame is final, so memory per track is what the encoder returns;
the official output step is `visjax.inference.masks.resize_binary_mask` to the original frame size (then RLE).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections
import numpy as np

from visjax.inference import tracks as tracks_lib
from visjax.inference.matrix_nms import matrix_nms
from visjax.models import settings

TrackFn = Callable[[Any, Any], np.ndarray]
MaskFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TrackerSettings:
  """The fields of `config.tracker` (official values and sources in `configs/visolo_common.py`)."""
  tracking_thr: float
  score_thr: float
  mask_thr: float
  update_thr: float
  kernel: str
  sigma: float
  nms_pre: int
  max_per_frame: int
  overlap_thr: float


def tracker_settings(section: ml_collections.ConfigDict | None) -> TrackerSettings:
  """`TrackerSettings` from `config.tracker`; every field is required."""
  return settings.from_config(TrackerSettings, section, 'config.tracker')


class MemorySchedule:
  """Which frames the memory holds, and in which slot of a fixed-capacity buffer.

  Official rule (`Visolo.forward`): frames 0, 1, 2 are appended; afterwards frame n is appended when
  `n % 5 == 2`, otherwise it replaces the second-to-last entry's place (`m[:-2] + m[-1:] + [n]`). So the memory
  holds frame 0, frames 5, 10, ... (kept from the appends at 7, 12, ...) and the last two frames. Frame 0 reads
  itself (the caller writes it before reading).
  """

  def __init__(self):
    self.frames: list[int] = []
    self.slots: list[int] = []

  def push(self, frame: int) -> int:
    """Adds `frame`; returns the buffer slot to write its features into (a freed slot is reused)."""
    if len(self.frames) < 3 or frame % 5 == 2:
      slot = len(self.frames)
    else:
      del self.frames[-2]
      slot = self.slots.pop(-2)
    self.frames.append(frame)
    self.slots.append(slot)
    return slot

  @staticmethod
  def capacity(num_frames: int) -> int:
    """Buffer slots a video of `num_frames` frames needs."""
    schedule = MemorySchedule()
    for t in range(num_frames):
      schedule.push(t)
    return max(schedule.slots, default=-1) + 1


def argsort_desc(x: np.ndarray) -> np.ndarray:
  """Indices sorting `x` descending, NaN first (torch's `argsort(descending=True)`), ties in index order."""
  x = np.asarray(x)
  nan = np.isnan(x)
  return np.lexsort((np.arange(len(x)), -np.where(nan, 0, x), ~nan))


@dataclasses.dataclass
class FrameDetections:
  """The kept detections of one frame (`getSegMaskV5`'s result), in descending score order."""

  masks: np.ndarray  # bool [k, H, W]
  labels: np.ndarray  # int [k]
  scores: np.ndarray  # float32 [k]
  class_probs: np.ndarray  # float32 [k, C] (not grid-weighted)
  cells: np.ndarray  # int [k] grid cell of each detection


def segment_frame(class_probs: np.ndarray, mask_fn: MaskFn, grid_weight: np.ndarray | None,
                  cfg: TrackerSettings) -> FrameDetections | None:
  """Official `getSegMaskV5` on one frame.

  Args:
    class_probs: float32 `[S, C]` sigmoid class probabilities per cell (row-major cells).
    mask_fn: cells int `[k]` -> float32 `[k, H, W]` mask probabilities.
    grid_weight: float32 `[S]` or None.
    cfg: thresholds.

  Returns:
    The kept detections, or None when the frame has none.
  """
  class_probs = np.asarray(class_probs, np.float32)
  scores = class_probs.max(axis=1)
  labels = class_probs.argmax(axis=1)
  if grid_weight is not None:
    scores = scores * np.asarray(grid_weight, np.float32)
  scores = np.where(scores < cfg.score_thr, np.float32(0), scores)
  cells = np.nonzero(scores)[0]
  if cells.sum() == 0:  # official: `valid_ind.sum() == 0`, so cell 0 alone counts as empty
    return None
  probs = np.asarray(mask_fn(cells), np.float32)
  masks = probs > cfg.mask_thr
  scores, labels = scores[cells], labels[cells]
  area = masks.sum(axis=(1, 2)).astype(np.float32)
  with np.errstate(divide='ignore', invalid='ignore'):
    scores = scores * ((probs * masks).sum(axis=(1, 2), dtype=np.float32) / area)
  order = argsort_desc(scores)[:cfg.nms_pre]
  masks, scores, labels, cells = masks[order], scores[order], labels[order], cells[order]
  scores = matrix_nms(masks, labels, scores, kernel=cfg.kernel, sigma=cfg.sigma)
  keep = scores >= cfg.update_thr
  if not keep.any():
    return None
  masks, scores, labels, cells = masks[keep], scores[keep], labels[keep], cells[keep]
  order = argsort_desc(scores)[:cfg.max_per_frame]
  masks, scores, labels, cells = masks[order], scores[order], labels[order], cells[order]
  alive = _remove_overlaps(masks, cfg.overlap_thr)
  return FrameDetections(masks[alive], labels[alive], scores[alive], class_probs[cells[alive]], cells[alive])


def _remove_overlaps(masks: np.ndarray, thr: float) -> np.ndarray:
  """bool `[k]`: the official sequential removal (mask j is zeroed when |m_i & m_j| / |m_j| > thr for a surviving
  earlier i), computed from one intersection matrix (surviving masks are unchanged, so this is exact)."""
  k = len(masks)
  flat = masks.reshape(k, -1).astype(np.float32)
  inter = flat @ flat.T
  area = flat.sum(axis=1)
  alive = area > 0
  for i in range(k - 1):
    if alive[i]:
      alive[i + 1:] &= ~(inter[i, i + 1:] / area[i + 1:] > thr)
  return alive


@dataclasses.dataclass
class _Instance:
  """One video instance being built. `masks` / `scores` / `class_probs` are keyed by frame index."""

  track_id: int
  masks: dict[int, Any] = dataclasses.field(default_factory=dict)
  scores: dict[int, float] = dataclasses.field(default_factory=dict)
  class_probs: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

  def class_scores(self) -> np.ndarray:
    """Official `getAverageCat`: class probabilities averaged over the frames where the instance is present."""
    probs = np.stack(list(self.class_probs.values())).astype(np.float32)
    present = np.count_nonzero(probs.sum(axis=1))
    return probs.sum(axis=0) / np.float32(present)


@dataclasses.dataclass
class _Candidate:
  """Lost detections of one frame: their cells, tracking feature and instances (official `tra_candidates`)."""

  frame: int
  cells: np.ndarray
  feature: Any
  instances: list[int]


@dataclasses.dataclass
class _Pending:
  frame: int
  class_probs: np.ndarray
  mask_fn: MaskFn
  feature: Any


class VisoloTracker:
  """Streaming official VISOLO association for one video; `add_frame` per frame, then `finish`."""

  def __init__(self, cfg: TrackerSettings, track_fn: TrackFn,
               mask_encoder: Callable[[np.ndarray, int], Any] | None = None):
    """`mask_encoder(mask bool [H, W], frame) -> stored mask` (default: the mask itself)."""
    self.cfg = cfg
    self.track_fn = track_fn
    self.mask_encoder = mask_encoder or (lambda mask, frame: mask)
    self.tracks: list[_Instance] = []
    self.memory = MemorySchedule()
    self._features: dict[int, Any] = {}  # tracking features of the memory frames
    self._pending: _Pending | None = None
    self._candidates: list[_Candidate] = []
    # The last finalised frame's detections: cells, instance of each, tracking scores to the next frame.
    self._prev_cells: np.ndarray | None = None
    self._prev_instances: list[int] = []
    self._prev_tracking: np.ndarray | None = None
    self.num_frames = 0

  def add_frame(self, class_probs: np.ndarray, mask_fn: MaskFn, feature: Any) -> None:
    """Frame t's network outputs: class probabilities `[S, C]`, its `mask_fn`, its tracking feature (frame_f).

    Finalises frame t - 1 (its links need the tracking scores from t - 1 to t)."""
    t = self.num_frames
    if self._pending is not None:  # the memory still ends with frame t - 1
      self._finalise(self.track_fn(self._pending.feature, feature))
    self._pending = _Pending(t, class_probs, mask_fn, feature)
    self.memory.push(t)
    self._features = {f: self._features.get(f, feature) for f in self.memory.frames}  # new frame: `feature`
    self.num_frames += 1

  def finish(self) -> list[tracks_lib.Track]:
    """Finalises the last frame; returns the tracks in creation order (track ids 0, 1, ...): per-frame masks as
    `mask_encoder` returned them (None where absent), per-frame scores, and the video-level class scores
    (`Track.class_scores`, official `getAverageCat`; the label is their argmax)."""
    if self._pending is not None:
      self._finalise(None)
      self._pending = None
    return [tracks_lib.Track(track_id=track.track_id, class_scores=track.class_scores(),
                             segmentations=[track.masks.get(t) for t in range(self.num_frames)],
                             frame_scores=[track.scores.get(t) for t in range(self.num_frames)])
            for track in self.tracks]

  def _grid_weight(self) -> np.ndarray | None:
    """Official `getGridWeight(m[-2], m[-1], m[-3])`; m[-1] is the frame being finalised."""
    frames = self.memory.frames
    if len(frames) < 2:
      return None
    current = self._features[frames[-1]]
    weights = [np.asarray(self.track_fn(current, self._features[f]), np.float32).max(axis=1)
               for f in frames[-2:-4:-1]]
    return weights[0] if len(weights) == 1 else (weights[0] + weights[1]) / np.float32(2)

  def _finalise(self, next_tracking: np.ndarray | None) -> None:
    """Official `getTestResultV4` for the pending frame, then the lost-candidate bookkeeping of the caller."""
    frame = self._pending
    dets = segment_frame(frame.class_probs, frame.mask_fn, self._grid_weight(), self.cfg)
    prev_cells, prev_instances = self._prev_cells, self._prev_instances
    unmatched_prev = None
    if prev_cells is None:  # previous frame had no detections (or this is the first frame)
      if dets is None:
        return
      instances = self._link_candidates(dets, np.arange(len(dets.cells)), frame.feature)
    elif dets is None:
      unmatched_prev = np.ones(len(prev_cells), bool)
      instances = None
    else:
      scores = self._prev_tracking[:, dets.cells]  # [k_prev, k]
      instances = [-1] * len(dets.cells)
      unmatched_prev = np.ones(len(prev_cells), bool)
      for i in range(len(dets.cells)):
        for j in argsort_desc(scores[:, i]):
          inst = prev_instances[j]
          if frame.frame not in self.tracks[inst].masks and scores[j, i] >= self.cfg.tracking_thr:
            self._assign(inst, dets, i, frame.frame)
            instances[i] = inst
            unmatched_prev[j] = False
            break
      rest = np.asarray([i for i in range(len(dets.cells)) if instances[i] == -1], int)
      for i, inst in zip(rest, self._link_candidates(dets, rest, frame.feature)):
        instances[i] = inst
    if unmatched_prev is not None and unmatched_prev.any():
      self._candidates.append(_Candidate(frame.frame - 1, prev_cells[unmatched_prev],
                                         self._features[frame.frame - 1],  # memory m[-2]
                                         [k for k, u in zip(prev_instances, unmatched_prev) if u]))
    if dets is None:
      self._prev_cells, self._prev_instances, self._prev_tracking = None, [], None
    else:
      self._prev_cells, self._prev_instances = dets.cells, instances
      self._prev_tracking = None if next_tracking is None else np.asarray(next_tracking, np.float32)[dets.cells]

  def _link_candidates(self, dets: FrameDetections, rows: np.ndarray, feature: Any) -> list[int]:
    """Official `getTrackInfo` for detections `rows`, then new instances for those still unmatched; each
    detection is assigned to its instance. Returns the instance of every row."""
    found = [-1] * len(rows)
    cells = dets.cells[rows]
    emptied = []
    for c in range(len(self._candidates) - 1, -1, -1):
      if not len(rows):
        break
      cand = self._candidates[c]
      scores = np.asarray(self.track_fn(cand.feature, feature), np.float32)[cand.cells][:, cells]
      taken = []
      for i in range(len(rows)):
        if found[i] == -1:
          for j in argsort_desc(scores[:, i]):
            if scores[j, i] >= self.cfg.tracking_thr and j not in taken:
              found[i] = cand.instances[j]
              taken.append(j)
              break
      keep = [j for j in range(len(cand.cells)) if j not in taken]
      cand.cells = cand.cells[keep]
      cand.instances = [cand.instances[j] for j in keep]
      if not cand.instances:
        emptied.append(c)
      if -1 not in found:
        break
    self._candidates = [cand for c, cand in enumerate(self._candidates) if c not in emptied]
    for i, row in enumerate(rows):
      if found[i] == -1:
        found[i] = len(self.tracks)
        self.tracks.append(_Instance(len(self.tracks)))
      elif self._pending.frame in self.tracks[found[i]].masks:
        raise RuntimeError(f'VISOLO tracker: instance {found[i]} already has a mask in frame {self._pending.frame} '
                           '(the official code exits here).')
      self._assign(found[i], dets, row, self._pending.frame)
    return found

  def _assign(self, inst: int, dets: FrameDetections, i: int, frame: int) -> None:
    track = self.tracks[inst]
    track.masks[frame] = self.mask_encoder(dets.masks[i], frame)
    track.scores[frame] = float(dets.scores[i])
    track.class_probs[frame] = dets.class_probs[i]
