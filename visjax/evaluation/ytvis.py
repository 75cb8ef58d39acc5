"""YouTube-VIS video AP, numerically identical to the official evaluation (youtubevos/cocoapi `ytvoseval.py`).

The official definitions reproduced here:
- Video mask IoU of a prediction and a gt track = Σ_t |P_t ∩ G_t| / Σ_t |P_t ∪ G_t| over the frames of the video,
  an absent (None) mask counting as empty; 0 when the union is empty. Crowd gt uses the same IoU.
- A track's area is the mean of its non-zero per-frame areas (gt: the json `areas`; predictions: the RLE areas), 0
  when there is none; area ranges all [0, 1e10], small [0, 128²], medium [128², 256²], large [256², 1e10], bounds
  inclusive. gt is ignored when crowd or outside the range; unmatched predictions outside the range are ignored.
- Per (video, category), predictions are sorted by score (stable, so ties keep the results-file order) and cut to
  the 100 best. Greedy matching per IoU threshold (0.50:0.05:0.95): each prediction takes the unmatched (or crowd)
  gt of highest IoU ≥ threshold, ties to the later gt, regular gt before ignored gt. A match to a gt whose
  annotation id is 0 counts as unmatched, as in the official code.
- Per category and area range, predictions of all videos (in video-id order, each cut to maxDets 1/10/100) are
  sorted by score (stable); precision is made monotone and read at 101 recall points (0 past the last recall);
  recall is the final recall. Categories or ranges without non-ignored gt are -1 and left out of the means.

The one deliberate difference: an empty results list, which the official loader cannot read (IndexError), is
evaluated as "no predictions" (AP 0 where there is gt). Malformed results raise ValueError naming the entry
(see `results.validate_results`) where the official code would crash or silently truncate.

Usage: python -m visjax.evaluation.ytvis --gt GT.json (--results RES.json | --oracle) [--per-category]
"""

import argparse
from collections.abc import Mapping
import dataclasses
import warnings

import numpy as np
from pycocotools import mask as mask_utils

from visjax.evaluation import results as results_lib
from visjax.evaluation import rle as rle_lib

METRICS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # Same values as the official np.linspace(.5, .95, 10).
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETS = (1, 10, 100)
AREA_NAMES = ('all', 'small', 'medium', 'large')
AREA_RANGES = np.array([[0, 1e5**2], [0, 128**2], [128**2, 256**2], [256**2, 1e5**2]], np.float64)
# (metric, is AP, IoU threshold or None for the mean over all, area name, maxDets), as the official summarize().
_SUMMARY = (
    ('AP', True, None, 'all', 100), ('AP50', True, 0.5, 'all', 100), ('AP75', True, 0.75, 'all', 100),
    ('APs', True, None, 'small', 100), ('APm', True, None, 'medium', 100), ('APl', True, None, 'large', 100),
    ('AR1', False, None, 'all', 1), ('AR10', False, None, 'all', 10), ('AR100', False, None, 'all', 100),
    ('ARs', False, None, 'small', 100), ('ARm', False, None, 'medium', 100), ('ARl', False, None, 'large', 100))


@dataclasses.dataclass
class _Tracks:
  """The gt tracks or predictions of one video, in file order.

  ids [N] annotation ids (predictions: 1-based index in the results list), categories [N], scores [N],
  crowd [N] bool, avg_area [N], rles N lists of per-frame RLE or None, frame_areas [N, T] mask pixel counts.
  """
  ids: list = dataclasses.field(default_factory=list)
  categories: list = dataclasses.field(default_factory=list)
  scores: list = dataclasses.field(default_factory=list)
  crowd: list = dataclasses.field(default_factory=list)
  avg_area: list = dataclasses.field(default_factory=list)
  rles: list = dataclasses.field(default_factory=list)
  frame_areas: list = dataclasses.field(default_factory=list)

  def add(self, ann_id, category_id, score, crowd, avg_area, rles, frame_areas):
    self.ids.append(ann_id)
    self.categories.append(category_id)
    self.scores.append(score)
    self.crowd.append(crowd)
    self.avg_area.append(avg_area)
    self.rles.append(rles)
    self.frame_areas.append(frame_areas)


@dataclasses.dataclass
class Accumulated:
  """Official `accumulate()` output: precision [T, R, K, A, M], recall [T, K, A, M] (-1 where undefined)."""
  precision: np.ndarray
  recall: np.ndarray
  category_ids: list
  category_names: list


def _mean_nonzero(areas) -> float:
  """The official avg_area: mean of the truthy per-frame areas, 0 when none."""
  kept = [a for a in areas if a]
  return np.array(kept).mean() if kept else 0


def _frame_areas(rles: list) -> np.ndarray:
  """Pixel counts [T] of per-frame RLEs (0 where absent)."""
  areas = np.zeros(len(rles), np.int64)
  present = [t for t, r in enumerate(rles) if r is not None]
  if present:
    areas[present] = mask_utils.area([rles[t] for t in present])
  return areas


def _load_gt(gt: Mapping, table: Mapping) -> tuple[dict, list, list]:
  """gt tracks per video id, and the sorted category ids with their names."""
  for key in ('videos', 'annotations', 'categories'):
    if key not in gt:
      raise ValueError(f'gt: missing key {key!r} (a YouTube-VIS gt json with annotations is needed)')
  names = {c['id']: c.get('name', str(c['id'])) for c in gt['categories']}
  category_ids = sorted(names)
  seen = set()
  tracks = {}
  checks = []
  for i, ann in enumerate(gt['annotations']):
    where = f'gt annotations[{i}] (id={ann.get("id")!r}, video_id={ann.get("video_id")!r})'
    missing = [k for k in ('id', 'video_id', 'category_id', 'segmentations', 'areas', 'iscrowd') if k not in ann]
    if missing:
      raise ValueError(f'{where}: missing key(s) {missing}')
    if ann['id'] in seen:
      raise ValueError(f'{where}: duplicate annotation id')
    seen.add(ann['id'])
    if ann['video_id'] not in table or ann['category_id'] not in names:
      continue  # The official evaluation only looks at annotations of listed videos and categories.
    num_frames, height, width = table[ann['video_id']]
    if len(ann['segmentations']) != num_frames:
      raise ValueError(f"{where}: field 'segmentations': {len(ann['segmentations'])} frames, the video has "
                       f'{num_frames}')
    rles = [results_lib.segmentation_to_rle(s, height, width) for s in ann['segmentations']]
    for t, rle in enumerate(rles):
      if rle is not None and list(rle['size']) != [height, width]:
        raise ValueError(f"{where}: field 'segmentations'[{t}]: RLE size {rle['size']} differs from the video "
                         f'size {[height, width]}')
    if ann['id'] == 0:
      warnings.warn(f'{where}: annotation id 0; the official evaluation counts matches to it as misses')
    checks.extend((where, t, rle['counts'], height * width) for t, rle in enumerate(rles) if rle is not None)
    tracks.setdefault(ann['video_id'], _Tracks()).add(ann['id'], ann['category_id'], 0.0, bool(ann['iscrowd']),
                                                      _mean_nonzero(ann['areas']), rles, None)
  if checks:  # Corrupt RLEs would make pycocotools loop forever (see rle.py).
    valid = rle_lib.compressed_rle_valid([c[2] for c in checks], [c[3] for c in checks])
    if not valid.all():
      where, t, _, _ = checks[int(np.argmin(valid))]
      raise ValueError(f"{where}: field 'segmentations'[{t}]: corrupt RLE (its runs do not cover the frame)")
  for video_tracks in tracks.values():
    video_tracks.frame_areas = [_frame_areas(rles) for rles in video_tracks.rles]
  return tracks, category_ids, [names[c] for c in category_ids]


def _load_predictions(results: list) -> dict:
  """Predictions per video id; ids are 1-based positions in the results list, as the official loadRes sets."""
  tracks = {}
  for i, record in enumerate(results):
    rles = [s if s else None for s in record['segmentations']]
    areas = _frame_areas(rles)
    present = areas[[t for t, r in enumerate(rles) if r is not None]].astype(np.uint32)
    nonzero = present[present != 0]
    avg_area = nonzero.mean() if nonzero.size else 0
    tracks.setdefault(record['video_id'], _Tracks()).add(
        i + 1, record['category_id'], record['score'], False, avg_area, rles, areas)
  return tracks


def _video_ious(dts: _Tracks, d_sel: np.ndarray, gts: _Tracks, num_frames: int) -> np.ndarray:
  """Video IoU [len(d_sel), G] of the selected predictions with every gt track of one video (any category)."""
  d_rles = [dts.rles[d] for d in d_sel]
  d_areas = np.array([dts.frame_areas[d] for d in d_sel], np.int64).reshape(-1, num_frames)
  g_areas = np.array(gts.frame_areas, np.int64).reshape(-1, num_frames)
  inter = np.zeros((len(d_sel), len(gts.rles)), np.int64)
  crowd = [1] * len(gts.rles)
  for t in range(num_frames):
    di = [i for i, rles in enumerate(d_rles) if rles[t] is not None]
    gi = [j for j, rles in enumerate(gts.rles) if rles[t] is not None]
    if di and gi:
      # With iscrowd=1 pycocotools gives |P ∩ G| / |P| as a double; multiplying back recovers the exact integer.
      ratio = mask_utils.iou([d_rles[i][t] for i in di], [gts.rles[j][t] for j in gi], crowd[:len(gi)])
      frame_inter = np.rint(ratio * d_areas[di, t][:, None]).astype(np.int64)
      if len(di) == len(d_rles) and len(gi) == len(gts.rles):
        inter += frame_inter
      else:
        inter[np.array(di)[:, None], gi] += frame_inter
  union = d_areas.sum(1)[:, None] + g_areas.sum(1)[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _outside(areas: np.ndarray) -> np.ndarray:
  """[A, N] area outside each range (bounds inclusive)."""
  return (areas[None, :] < AREA_RANGES[:, :1]) | (areas[None, :] > AREA_RANGES[:, 1:])


def _match(ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray, gt_ids: np.ndarray):
  """Official greedy matching for all area ranges and IoU thresholds at once.

  Args:
    ious: [D, G] predictions sorted by score.
    gt_ignore: [A, G] gt ignored in each area range.
    crowd: [G] crowd gt (may be matched repeatedly).
    gt_ids: [G] gt annotation ids.

  Returns:
    matched [A, T, D] (matched to a gt with a non-zero id) and ignored [A, T, D] (matched to an ignored gt).
  """
  num_dt, num_gt = ious.shape
  num_t = len(IOU_THRESHOLDS)
  rows = gt_ignore.shape[0] * num_t
  thresholds = np.tile(IOU_THRESHOLDS, gt_ignore.shape[0])[:, None]
  ignore = np.repeat(gt_ignore, num_t, axis=0)
  taken = np.zeros((rows, num_gt), bool)
  matched = np.zeros((rows, num_dt), bool)
  ignored = np.zeros((rows, num_dt), bool)
  if num_gt:
    for d in range(num_dt):
      candidate = (~taken | crowd) & (ious[d] >= thresholds)
      regular = candidate & ~ignore
      candidate = np.where(regular.any(1, keepdims=True), regular, candidate & ignore)
      found = np.flatnonzero(candidate.any(1))
      if not found.size:
        continue
      values = np.where(candidate[found], ious[d], -1.0)
      best = num_gt - 1 - np.argmax(values[:, ::-1], axis=1)  # The last gt among equal IoUs.
      taken[found, best] = True
      matched[found, d] = gt_ids[best] != 0
      ignored[found, d] = ignore[found, best]
  shape = (gt_ignore.shape[0], num_t, num_dt)
  return matched.reshape(shape), ignored.reshape(shape)


def _evaluate_videos(gt_tracks: dict, dt_tracks: dict, table: Mapping, category_ids: list) -> dict:
  """Per category, the per-video results in video-id order: (scores [D], matched [A, T, D], ignored [A, T, D],
  number of non-ignored gt [A])."""
  max_det = MAX_DETS[-1]
  per_category = {c: [] for c in category_ids}
  empty = _Tracks()
  for video_id in sorted(table):
    gts = gt_tracks.get(video_id, empty)
    dts = dt_tracks.get(video_id, empty)
    if not gts.ids and not dts.ids:
      continue
    g_cat = np.array(gts.categories)
    d_cat = np.array(dts.categories)
    d_score = np.array(dts.scores, np.float64)
    selected = {}
    for c in set(dts.categories):
      idx = np.flatnonzero(d_cat == c)
      selected[c] = idx[np.argsort(-d_score[idx], kind='mergesort')][:max_det]
    d_sel = np.concatenate(list(selected.values())) if selected else np.zeros(0, np.int64)
    ious = _video_ious(dts, d_sel, gts, table[video_id][0]) if gts.ids else np.zeros((len(d_sel), 0))
    start = 0
    offsets = {}
    for c, idx in selected.items():
      offsets[c] = slice(start, start + len(idx))
      start += len(idx)
    for c in set(gts.categories) | set(selected):
      if c not in per_category:
        continue
      g_idx = np.flatnonzero(g_cat == c) if gts.ids else np.zeros(0, np.int64)
      d_rows = offsets.get(c, slice(0, 0))
      d_idx = d_sel[d_rows]
      crowd = np.array(gts.crowd, bool)[g_idx]
      gt_ignore = crowd[None, :] | _outside(np.array(gts.avg_area, np.float64)[g_idx])
      matched, ignored = _match(ious[d_rows][:, g_idx], gt_ignore, crowd, np.array(gts.ids)[g_idx])
      outside = _outside(np.array(dts.avg_area, np.float64)[d_idx])[:, None, :]
      ignored |= ~matched & outside
      per_category[c].append((d_score[d_idx], matched, ignored, np.count_nonzero(~gt_ignore, axis=1)))
  return per_category


def _precision_recall(evals: list, area: int, max_det: int) -> tuple[np.ndarray, np.ndarray] | None:
  """Official accumulate() for one category, area range and maxDets: precision [T, R], recall [T]."""
  num_gt = sum(int(e[3][area]) for e in evals)
  if num_gt == 0:
    return None
  scores = np.concatenate([e[0][:max_det] for e in evals])
  order = np.argsort(-scores, kind='mergesort')
  matched = np.concatenate([e[1][area][:, :max_det] for e in evals], axis=1)[:, order]
  ignored = np.concatenate([e[2][area][:, :max_det] for e in evals], axis=1)[:, order]
  tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
  fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
  num_det = tp.shape[1]
  num_t = len(IOU_THRESHOLDS)
  if not num_det:
    return np.zeros((num_t, len(RECALL_THRESHOLDS))), np.zeros(num_t)
  rc = tp / num_gt
  pr = tp / (fp + tp + np.spacing(1))
  pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
  precision = np.zeros((num_t, len(RECALL_THRESHOLDS)))
  for t in range(num_t):
    inds = np.searchsorted(rc[t], RECALL_THRESHOLDS, side='left')
    inside = inds < num_det
    precision[t, inside] = pr[t, inds[inside]]
  return precision, rc[:, -1]


def accumulate(gt, results) -> Accumulated:
  """Runs the official evaluate() + accumulate() on a gt (dict or path) and results (list or path)."""
  gt = results_lib.load_json(gt)
  results = results_lib.load_json(results)
  if not isinstance(gt, Mapping):
    raise ValueError(f'gt must be a YouTube-VIS json dict, got {type(gt).__name__}')
  results_lib.validate_results(results, gt)
  table = results_lib.video_table(gt)
  gt_tracks, category_ids, category_names = _load_gt(gt, table)
  per_category = _evaluate_videos(gt_tracks, _load_predictions(results), table, category_ids)
  shape = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(category_ids), len(AREA_NAMES), len(MAX_DETS))
  precision = -np.ones(shape)
  recall = -np.ones((shape[0],) + shape[2:])
  for k, c in enumerate(category_ids):
    if not per_category[c]:
      continue
    for a in range(len(AREA_NAMES)):
      for m, max_det in enumerate(MAX_DETS):
        out = _precision_recall(per_category[c], a, max_det)
        if out is not None:
          precision[:, :, k, a, m], recall[:, k, a, m] = out
  return Accumulated(precision, recall, category_ids, category_names)


def _mean_defined(values: np.ndarray) -> float:
  defined = values[values > -1]
  return float(np.mean(defined)) if defined.size else -1.0


def summarize(acc: Accumulated) -> dict[str, float]:
  """The 12 official summary metrics (fractions, -1 where undefined)."""
  metrics = {}
  for name, is_ap, iou, area, max_det in _SUMMARY:
    s = acc.precision if is_ap else acc.recall
    if iou is not None:
      s = s[np.where(iou == IOU_THRESHOLDS)[0]]
    metrics[name] = _mean_defined(s[..., AREA_NAMES.index(area), MAX_DETS.index(max_det)])
  return metrics


def per_category_ap(acc: Accumulated) -> dict[str, float]:
  """AP (IoU 0.50:0.95, area all, maxDets 100) per category name; -1 for categories without gt.

  A name that several categories share is suffixed with the category id, e.g. 'person (id 3)'.
  """
  names = acc.category_names
  keys = [f'{n} (id {c})' if names.count(n) > 1 else n for n, c in zip(names, acc.category_ids)]
  return {key: _mean_defined(acc.precision[:, :, k, 0, -1]) for k, key in enumerate(keys)}


def evaluate(gt, results) -> dict[str, float]:
  """The official YouTube-VIS metrics AP, AP50, ..., ARl of `results` (list or path) against `gt` (dict or path)."""
  return summarize(accumulate(gt, results))


def evaluate_per_category(gt, results) -> dict[str, float]:
  """Video AP per category name of `results` against `gt`."""
  return per_category_ap(accumulate(gt, results))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description='YouTube-VIS video AP (official-equivalent).')
  parser.add_argument('--gt', required=True, help='YouTube-VIS gt json (with annotations)')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--results', help='results.json (CodaLab format)')
  source.add_argument('--oracle', action='store_true', help='evaluate the gt itself as predictions')
  parser.add_argument('--per-category', action='store_true', help='also print AP per category')
  args = parser.parse_args(argv)
  try:
    gt = results_lib.load_json(args.gt)
    results = results_lib.oracle_results(gt) if args.oracle else results_lib.load_json(args.results)
    acc = accumulate(gt, results)
  except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError.
    raise SystemExit(f'error: {e}') from None
  metrics = summarize(acc)
  for name, value in metrics.items():
    print(f'{name}: {value:.4f}')
  if args.per_category:
    for name, value in per_category_ap(acc).items():
      print(f'AP[{name}]: {value:.4f}')
  print(f"video AP: {metrics['AP']:.4f}")


if __name__ == '__main__':
  main()
