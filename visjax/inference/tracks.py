"""Video tracks, the output of every predictor, and the one rule set that turns them into CodaLab records.

A `Track` is one object through the video: per-frame RLE masks (None where absent), per-frame scores, and a
video-level class-score vector `[C]`. `tracks_to_records` applies a method's category rule:

  * 'threshold' (IDOL `MULTI_CLS_ON`): one record per class whose score exceeds `threshold`;
  * 'argmax': one record per track with its best class;
  * 'topk' (VITA, IAI): the `k` best (track, class) pairs of the whole video, in descending score order, those
    with score > `threshold` (IAI 0.05; VITA's 0 keeps every positive score).

`category_ids` maps the contiguous class index to the dataset's json `category_id` (the manifest's table).
`VideoTracks` accumulates tracks frame by frame with constant memory per track (RLE strings only).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np

RULES = ('threshold', 'argmax', 'topk')


@dataclasses.dataclass
class Track:
  """One tracked object. `segmentations[t]` is a json RLE `{'size', 'counts'}` or None; `frame_scores[t]` a float
  or None; `class_scores [C]` the video-level score of each class."""
  track_id: int
  class_scores: np.ndarray
  segmentations: list[dict | None]
  frame_scores: list[float | None]


@dataclasses.dataclass(frozen=True)
class RecordRule:
  """How a method turns a track's class scores into records (see the module docstring)."""
  kind: str = 'argmax'
  threshold: float = 0.0
  k: int = 10

  def __post_init__(self):
    if self.kind not in RULES:
      raise ValueError(f'RecordRule.kind must be one of {RULES}, got {self.kind!r}.')
    if self.kind == 'topk' and self.k < 1:
      raise ValueError(f'RecordRule: top-k needs k >= 1, got {self.k}.')


def category_table(category_ids: Sequence[int], num_classes: int) -> np.ndarray:
  """int `[C]` json category ids of the contiguous classes; raises if the table does not match the model."""
  ids = tuple(int(i) for i in category_ids)
  if not ids:
    raise ValueError('config.dataset.category_ids is empty: it is filled from the converted dataset\'s manifest '
                     '(data_pipeline.tfrecord.load_manifest(dir).category_ids); set it for a model without one.')
  if len(ids) != num_classes:
    raise ValueError(f'config.dataset.category_ids has {len(ids)} entries but the model predicts {num_classes} '
                     'classes.')
  return np.asarray(ids, np.int64)


def tracks_to_records(tracks: Sequence[Track], *, video_id: Any, rule: RecordRule,
                      category_ids: np.ndarray) -> list[dict]:
  """CodaLab records `{video_id, score, category_id, segmentations}` of one video's tracks under `rule`."""
  picks: list[tuple[float, int, Track]] = []
  for track in tracks:
    scores = np.asarray(track.class_scores, np.float64)
    if scores.shape != (len(category_ids),):
      raise ValueError(f'video {video_id}: track {track.track_id} has class_scores of shape {scores.shape}, '
                       f'expected ({len(category_ids)},).')
    if rule.kind == 'threshold':
      picks.extend((float(scores[c]), int(c), track) for c in np.nonzero(scores > rule.threshold)[0])
    elif rule.kind == 'argmax':
      picks.append((float(scores.max()), int(scores.argmax()), track))
    else:
      picks.extend((float(s), int(c), track) for c, s in enumerate(scores))
  if rule.kind == 'topk':
    order = sorted(range(len(picks)), key=lambda i: -picks[i][0])[:rule.k]
    picks = [picks[i] for i in order if picks[i][0] > rule.threshold]
  return [{'video_id': video_id, 'score': score, 'category_id': int(category_ids[label]),
           'segmentations': list(track.segmentations)} for score, label, track in picks]


@dataclasses.dataclass
class _Accum:
  segmentations: dict[int, dict]
  frame_scores: dict[int, float]
  score_sum: np.ndarray
  count: int = 0


class VideoTracks:
  """Per-track per-frame RLEs, frame scores and class-score sums of one video, filled frame by frame."""

  def __init__(self, num_frames: int):
    self.num_frames = int(num_frames)
    self._tracks: dict[int, _Accum] = {}

  def __contains__(self, track_id: int) -> bool:
    return int(track_id) in self._tracks

  @property
  def track_ids(self) -> list[int]:
    return list(self._tracks)

  def add(self, track_id: int, frame: int, rle: dict | None, class_scores: np.ndarray,
          frame_score: float | None = None) -> None:
    """Records `track_id` in `frame`: its mask RLE and its class scores `[C]` (summed for the video mean)."""
    if not 0 <= frame < self.num_frames:
      raise ValueError(f'frame index {frame} outside [0, {self.num_frames}).')
    scores = np.asarray(class_scores, np.float64)
    acc = self._tracks.get(int(track_id))
    if acc is None:
      acc = self._tracks[int(track_id)] = _Accum({}, {}, np.zeros(scores.shape, np.float64))
    if rle is not None:
      acc.segmentations[frame] = rle
    if frame_score is not None:
      acc.frame_scores[frame] = float(frame_score)
    acc.score_sum += scores
    acc.count += 1

  def frames_seen(self, track_id: int) -> set[int]:
    return set(self._tracks[int(track_id)].segmentations)

  def count(self, track_id: int) -> int:
    return self._tracks[int(track_id)].count

  def remove(self, track_id: int) -> None:
    del self._tracks[int(track_id)]

  def tracks(self, class_scores: Callable[[np.ndarray, int], np.ndarray] | None = None) -> list[Track]:
    """The tracks in insertion order; class scores = the mean of the added vectors, or
    `class_scores(score_sum, count)` when given."""
    out = []
    for tid, acc in self._tracks.items():
      scores = acc.score_sum / max(acc.count, 1) if class_scores is None else class_scores(acc.score_sum, acc.count)
      out.append(Track(track_id=tid, class_scores=scores,
                       segmentations=[acc.segmentations.get(f) for f in range(self.num_frames)],
                       frame_scores=[acc.frame_scores.get(f) for f in range(self.num_frames)]))
    return out
