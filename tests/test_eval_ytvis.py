"""Tests of visjax.evaluation.ytvis: hand-computed video AP cases and a loop-based reference on random cases."""

import json

import numpy as np
from pycocotools import mask as mask_utils
import pytest

from visjax.evaluation import results as results_lib
from visjax.evaluation import ytvis

# pycocotools' decode triggers a NumPy 2 DeprecationWarning (copy keyword) that is not ours.
pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')

H, W = 10, 12


def _rle(mask):
  return results_lib.encode_mask(mask)


def _rows(top, bottom, h=H, w=W):
  """A mask [h, w] covering rows [top, bottom)."""
  m = np.zeros((h, w), bool)
  m[top:bottom] = True
  return m


def _gt(videos, tracks, categories=(1, 2)):
  """videos: {id: (T, h, w)}; tracks: list of (video_id, category_id, [mask or None per frame], iscrowd)."""
  anns = []
  for i, (video_id, category_id, masks, crowd) in enumerate(tracks):
    anns.append({'id': i + 1, 'video_id': video_id, 'category_id': category_id, 'iscrowd': crowd,
                 'segmentations': [None if m is None else _rle(m) for m in masks],
                 'areas': [None if m is None else int(m.sum()) for m in masks]})
  return {'videos': [{'id': v, 'length': t, 'height': h, 'width': w, 'file_names': [f'{v}/{i}.jpg' for i in range(t)]}
                     for v, (t, h, w) in videos.items()],
          'categories': [{'id': c, 'name': f'cat{c}'} for c in categories],
          'annotations': anns}


def _pred(video_id, category_id, score, masks):
  return {'video_id': video_id, 'category_id': category_id, 'score': score,
          'segmentations': [None if m is None else _rle(m) for m in masks]}


def _check(metrics, **expected):
  assert list(metrics) == list(ytvis.METRICS)
  assert all(type(v) is float for v in metrics.values())
  for k, v in expected.items():
    assert metrics[k] == pytest.approx(v, abs=1e-12), k


A = _rows(0, 4)      # 48 px
B = _rows(5, 9)      # 48 px, disjoint from A


def test_perfect_match_is_one():
  gt = _gt({1: (3, H, W), 2: (2, H, W)},
           [(1, 1, [A, None, A], 0), (1, 2, [B, B, None], 0), (2, 1, [None, B], 0)])
  res = [_pred(1, 1, 0.9, [A, None, A]), _pred(1, 2, 0.3, [B, B, None]), _pred(2, 1, 0.5, [None, B])]
  _check(ytvis.evaluate(gt, res), AP=1, AP50=1, AP75=1, APs=1, APm=-1, APl=-1, AR1=1, AR10=1, AR100=1, ARs=1,
         ARm=-1, ARl=-1)
  assert ytvis.evaluate_per_category(gt, res) == pytest.approx({'cat1': 1.0, 'cat2': 1.0}, abs=1e-12)


def test_per_category_ap_and_shared_names():
  gt = _gt({1: (1, H, W)}, [(1, 1, [A], 0), (1, 2, [B], 0)], categories=(1, 2, 3))
  res = [_pred(1, 1, 0.9, [A]), _pred(1, 2, 0.9, [A])]
  assert ytvis.evaluate_per_category(gt, res) == {'cat1': pytest.approx(1.0, abs=1e-12), 'cat2': 0.0, 'cat3': -1.0}
  gt['categories'][2]['name'] = 'cat1'
  assert list(ytvis.evaluate_per_category(gt, res)) == ['cat1 (id 1)', 'cat2', 'cat1 (id 3)']


def test_one_missed_gt():
  # Recall 0.5 at precision 1: the 51 recall points 0, 0.01, ..., 0.50 read 1, the other 50 read 0.
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, A], 0), (1, 1, [B, B], 0)])
  res = [_pred(1, 1, 0.9, [A, A])]
  _check(ytvis.evaluate(gt, res), AP=51 / 101, AP50=51 / 101, AR1=0.5, AR10=0.5, AR100=0.5)


@pytest.mark.parametrize('fp_score, expected_ap', [(0.95, 0.5), (0.5, 1.0)])
def test_false_positive_above_or_below_true_positive(fp_score, expected_ap):
  # FP first: precision [0, 1/2] -> interpolated 1/2 at every recall point. FP last: precision 1 up to recall 1.
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, A], 0)])
  res = [_pred(1, 1, 0.8, [A, A]), _pred(1, 1, fp_score, [B, B])]
  _check(ytvis.evaluate(gt, res), AP=expected_ap, AR1=1.0 if fp_score < 0.8 else 0.0, AR10=1.0)


def test_absent_frames_count_in_the_union():
  # gt present in frames 0-2, prediction in 1-3 and equal to the gt where both exist:
  # IoU = (48 + 48) / (12 + 48 + 48 + 48) = 96 / 156 = 0.615 -> matched at IoU 0.50, 0.55, 0.60 only.
  small = _rows(0, 1)  # 12 px
  gt = _gt({1: (4, H, W)}, [(1, 1, [small, A, A, None], 0)])
  res = [_pred(1, 1, 0.9, [None, A, A, A])]
  _check(ytvis.evaluate(gt, res), AP=0.3, AP50=1.0, AP75=0.0, AR100=0.3)


def test_video_iou_sums_over_frames():
  # Frame 0: I = 24, U = 48; frame 1: I = U = 12 -> IoU = 36 / 60 = 0.6, not the mean of frame IoUs (0.75).
  half, one = _rows(0, 2), _rows(0, 1)
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, one], 0)])
  res = [_pred(1, 1, 0.9, [half, one])]
  # Matched at 0.50, 0.55 and, depending on the exact doubles of the threshold grid, 0.60.
  passed = np.count_nonzero(36 / 60 >= ytvis.IOU_THRESHOLDS)
  assert passed in (2, 3)
  _check(ytvis.evaluate(gt, res), AP=passed / 10, AP50=1.0, AP75=0.0)


@pytest.mark.parametrize('tp_first, expected_ap', [(True, 1.0), (False, 0.5)])
def test_score_ties_keep_results_order(tp_first, expected_ap):
  gt = _gt({1: (1, H, W)}, [(1, 1, [A], 0)])
  tp, fp = _pred(1, 1, 0.7, [A]), _pred(1, 1, 0.7, [B])
  res = [tp, fp] if tp_first else [fp, tp]
  _check(ytvis.evaluate(gt, res), AP=expected_ap)


def test_score_ties_across_videos_follow_video_id_order():
  # Equal scores in two videos: the lower video id comes first after the stable sort, whatever the file order.
  gt = _gt({1: (1, H, W), 2: (1, H, W)}, [(1, 1, [A], 0), (2, 1, [A], 0)])
  res = [_pred(2, 1, 0.7, [A]), _pred(1, 1, 0.7, [B])]  # video 1: FP, video 2: TP.
  # Order FP, TP: precision [0, 1/2], recall [0, 1/2] -> 1/2 on the 51 points up to recall 0.5.
  _check(ytvis.evaluate(gt, res), AP=0.5 * 51 / 101, AR100=0.5)


def test_crowd_gt_is_ignored():
  # Predictions on a crowd region are neither TP nor FP (even several of them); crowd is not counted in recall.
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, A], 0), (1, 1, [B, B], 1), (1, 2, [B, B], 1)])
  res = [_pred(1, 1, 0.9, [B, B]), _pred(1, 1, 0.8, [B, B]), _pred(1, 1, 0.7, [A, A])]
  _check(ytvis.evaluate(gt, res), AP=1.0, AR100=1.0)
  # Category 2 has only crowd gt: undefined, left out of the mean.
  assert ytvis.evaluate_per_category(gt, res) == {'cat1': pytest.approx(1.0, abs=1e-12), 'cat2': -1.0}


def test_crowd_flag_changes_the_result():
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, A], 0), (1, 1, [B, B], 0)])
  res = [_pred(1, 1, 0.9, [B, B]), _pred(1, 1, 0.8, [B, B]), _pred(1, 1, 0.7, [A, A])]
  # Without crowd: TP, FP (duplicate), TP -> precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
  expected = (51 * 1.0 + 50 * 2 / 3) / 101
  _check(ytvis.evaluate(gt, res), AP=expected)


def test_empty_results():
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, A], 0)])
  _check(ytvis.evaluate(gt, []), AP=0, AP50=0, AP75=0, APs=0, APm=-1, APl=-1, AR1=0, AR10=0, AR100=0, ARs=0,
         ARm=-1, ARl=-1)


def test_predictions_in_a_video_without_gt_of_that_category_are_false_positives():
  gt = _gt({1: (1, H, W), 2: (1, H, W)}, [(1, 1, [A], 0)])
  res = [_pred(2, 1, 0.9, [A]), _pred(1, 1, 0.5, [A])]
  _check(ytvis.evaluate(gt, res), AP=0.5)


def test_area_ranges():
  # 140x140 frames: a small gt (100 px) found, a medium gt (130*130 = 16900 px > 128²) missed.
  size = 140
  small = np.zeros((size, size), bool)
  small[:10, :10] = True
  medium = np.zeros((size, size), bool)
  medium[10:140, 10:140] = True
  gt = _gt({1: (1, size, size)}, [(1, 1, [small], 0), (1, 1, [medium], 0)])
  res = [_pred(1, 1, 0.9, [small])]
  _check(ytvis.evaluate(gt, res), AP=51 / 101, APs=1.0, APm=0.0, APl=-1, ARs=1.0, ARm=0.0, ARl=-1, AR100=0.5)


def test_track_area_is_the_mean_of_its_json_areas():
  # json areas 20000, None, 14000: mean over the present frames 17000 -> medium (with None as 0 it would be
  # small, and so would the 10000-pixel masks); the prediction's own area does not matter once it is matched.
  size = 150
  m = np.zeros((size, size), bool)
  m[:100, :100] = True
  gt = _gt({1: (3, size, size)}, [(1, 1, [m, None, m], 0)])
  gt['annotations'][0]['areas'] = [20000, None, 14000]
  res = [_pred(1, 1, 0.9, [m, None, m])]
  _check(ytvis.evaluate(gt, res), APs=-1, APm=1.0, APl=-1)


def test_max_dets_limit_recall():
  # Two gts and two perfect predictions in one video: only the best one counts for AR1.
  gt = _gt({1: (1, H, W)}, [(1, 1, [A], 0), (1, 1, [B], 0)])
  res = [_pred(1, 1, 0.9, [A]), _pred(1, 1, 0.8, [B])]
  _check(ytvis.evaluate(gt, res), AR1=0.5, AR10=1.0, AR100=1.0, AP=1.0)


def test_max_100_predictions_per_video_and_category():
  # 100 false positives above the true positive push it out of the 100 kept per (video, category).
  gt = _gt({1: (1, H, W)}, [(1, 1, [A], 0)])
  res = [_pred(1, 1, 0.9, [B]) for _ in range(100)] + [_pred(1, 1, 0.1, [A])]
  _check(ytvis.evaluate(gt, res), AP=0.0, AR100=0.0)
  _check(ytvis.evaluate(gt, res[1:]), AR100=1.0)


def test_gt_annotation_id_zero_counts_as_a_miss_like_the_official_code():
  gt = _gt({1: (1, H, W)}, [(1, 1, [A], 0)])
  gt['annotations'][0]['id'] = 0
  with pytest.warns(UserWarning, match='annotation id 0'):
    metrics = ytvis.evaluate(gt, [_pred(1, 1, 0.9, [A])])
  _check(metrics, AP=0.0)


def test_polygon_and_uncompressed_gt():
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, A], 0)])
  seg = gt['annotations'][0]['segmentations']
  seg[0] = [[0.0, 0.0, 12.0, 0.0, 12.0, 4.0, 0.0, 4.0]]
  flat = A.T.reshape(-1).astype(int)
  change = np.flatnonzero(np.diff(np.r_[0, flat, 1 - flat[-1]]))
  seg[1] = {'size': [H, W], 'counts': np.diff(np.r_[0, change]).tolist()}
  poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(seg[0], H, W))).astype(bool)
  _check(ytvis.evaluate(gt, [_pred(1, 1, 0.9, [poly, A])]), AP=1.0)


def test_paths_and_objects_agree(tmp_path):
  gt, res = _random_case(np.random.default_rng(3))
  json_path, _ = results_lib.write_results(res, tmp_path)
  gt_path = tmp_path / 'gt.json'
  gt_path.write_text(json.dumps(gt))
  assert ytvis.evaluate(str(gt_path), json_path) == ytvis.evaluate(gt, res)


@pytest.mark.parametrize('mutate, message', [
    (lambda r: r[1].update(video_id=99), r"results\[1\] \(video_id=99\): field 'video_id'"),
    (lambda r: r[0]['segmentations'].pop(), r"results\[0\] \(video_id=1\): field 'segmentations': 1 frames"),
    (lambda r: r[1]['segmentations'][0].update(counts='zz'), r"results\[1\].*'segmentations'\[0\]: corrupt RLE"),
    (lambda r: r[0].pop('score'), r"results\[0\].*missing key\(s\) \['score'\]"),
])
def test_evaluate_rejects_malformed_results(mutate, message):
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, A], 0)])
  res = [_pred(1, 1, 0.9, [A, A]), _pred(1, 1, 0.5, [B, None])]
  mutate(res)
  with pytest.raises(ValueError, match=message):
    ytvis.evaluate(gt, res)


@pytest.mark.parametrize('frame, make_bad', [
    (1, lambda seg: seg.update(counts=seg['counts'][:-1] + 'P')),
    (0, lambda seg: seg.update(counts=[3, 4])),  # Uncompressed runs covering 7 of 120 pixels.
])
def test_corrupt_gt_rle_is_an_error_not_a_hang(frame, make_bad):
  gt = _gt({1: (2, H, W)}, [(1, 1, [A, A], 0), (1, 1, [B, B], 0)])
  make_bad(gt['annotations'][1]['segmentations'][frame])
  with pytest.raises(ValueError, match=rf"gt annotations\[1\] \(id=2, video_id=1\): field 'segmentations'"
                                       rf"\[{frame}\]: corrupt RLE"):
    ytvis.evaluate(gt, [_pred(1, 1, 0.9, [A, A])])


def test_gt_without_annotations_is_an_error():
  gt = _gt({1: (1, H, W)}, [])
  del gt['annotations']
  with pytest.raises(ValueError, match="gt: missing key 'annotations'"):
    ytvis.evaluate(gt, [])


# ----------------------------------------------------------------------------------------------------------------
# An independent, loop-based float64 reference written from the metric's definition, on random cases.


def _reference(gt, results):
  """Video AP/AR by definition: plain loops over decoded masks."""
  thresholds = np.linspace(0.5, 0.95, 10)
  recall_points = np.linspace(0.0, 1.0, 101)
  ranges = {'all': (0, 1e10), 'small': (0, 128**2), 'medium': (128**2, 256**2), 'large': (256**2, 1e10)}
  video_ids = sorted(v['id'] for v in gt['videos'])
  category_ids = sorted(c['id'] for c in gt['categories'])

  def decode(segs):
    return [None if s is None else mask_utils.decode(s).astype(bool) for s in segs]

  def mean_area(areas):
    kept = [a for a in areas if a]
    return float(np.mean(kept)) if kept else 0.0

  gts = [dict(id=a['id'], video=a['video_id'], cat=a['category_id'], crowd=bool(a['iscrowd']),
              area=mean_area(a['areas']), masks=decode(a['segmentations'])) for a in gt['annotations']]
  dts = []
  for i, r in enumerate(results):
    masks = decode(r['segmentations'])
    dts.append(dict(id=i + 1, video=r['video_id'], cat=r['category_id'], score=r['score'], masks=masks,
                    area=mean_area([0 if m is None else int(m.sum()) for m in masks])))

  cache = {}

  def video_iou(d, g):
    if (d['id'], g['id']) not in cache:
      cache[d['id'], g['id']] = frame_sum_iou(d, g)
    return cache[d['id'], g['id']]

  def frame_sum_iou(d, g):
    inter = union = 0
    for pm, gm in zip(d['masks'], g['masks']):
      pm = np.zeros(0, bool) if pm is None else pm.ravel()
      gm = np.zeros(0, bool) if gm is None else gm.ravel()
      if pm.size and gm.size:
        inter += int(np.sum(pm & gm))
        union += int(np.sum(pm | gm))
      else:
        union += int(pm.sum()) + int(gm.sum())
    return inter / union if union else 0.0

  # Per (category, range): per video, the score-sorted detections with their match / ignore per threshold.
  evals = {}
  for c in category_ids:
    for name, (lo, hi) in ranges.items():
      per_video = []
      for v in video_ids:
        vg = [g for g in gts if g['video'] == v and g['cat'] == c]
        vd = sorted([d for d in dts if d['video'] == v and d['cat'] == c], key=lambda d: -d['score'])[:100]
        if not vg and not vd:
          continue
        ignore = {g['id']: g['crowd'] or not lo <= g['area'] <= hi for g in vg}
        vg = [g for g in vg if not ignore[g['id']]] + [g for g in vg if ignore[g['id']]]
        rows = []
        for thr in thresholds:
          used = set()
          row = []
          for d in vd:
            best, best_iou = None, thr
            for g in vg:
              if id(g) in used and not g['crowd']:
                continue
              if best is not None and not ignore[best['id']] and ignore[g['id']]:
                break
              iou = video_iou(d, g)
              if iou >= best_iou:
                best, best_iou = g, iou
            if best is None:
              row.append((False, not lo <= d['area'] <= hi))
            else:
              used.add(id(best))
              hit = best['id'] != 0
              row.append((hit, ignore[best['id']] or (not hit and not lo <= d['area'] <= hi)))
          rows.append(row)
        per_video.append(([d['score'] for d in vd], rows, sum(not ignore[g['id']] for g in vg)))
      evals[c, name] = per_video

  def pr_curve(c, name, max_det):
    per_video = evals[c, name]
    num_gt = sum(n for _, _, n in per_video)
    if not per_video or not num_gt:
      return None
    precisions, recalls = [], []
    for t in range(len(thresholds)):
      dets = [(s, m, ig) for scores, rows, _ in per_video for s, (m, ig) in zip(scores[:max_det], rows[t][:max_det])]
      dets = sorted(dets, key=lambda x: -x[0])
      tp = fp = 0
      rc, pr = [], []
      for _, m, ig in dets:
        if not ig:
          tp += m
          fp += not m
        rc.append(tp / num_gt)
        pr.append(tp / (tp + fp) if tp + fp else 0.0)
      interp = []
      for r in recall_points:
        idx = [i for i, x in enumerate(rc) if x >= r]
        interp.append(max(pr[idx[0]:]) if idx else 0.0)
      precisions.append(np.mean(interp))
      recalls.append(rc[-1] if rc else 0.0)
    return np.array(precisions), np.array(recalls)

  def summary(ap, iou=None, area='all', max_det=100):
    values = []
    for c in category_ids:
      out = pr_curve(c, area, max_det)
      if out is None:
        continue
      s = out[0] if ap else out[1]
      values.extend(s if iou is None else s[np.isclose(thresholds, iou)])
    return float(np.mean(values)) if values else -1.0

  return dict(AP=summary(1), AP50=summary(1, 0.5), AP75=summary(1, 0.75), APs=summary(1, area='small'),
              APm=summary(1, area='medium'), APl=summary(1, area='large'), AR1=summary(0, max_det=1),
              AR10=summary(0, max_det=10), AR100=summary(0), ARs=summary(0, area='small'),
              ARm=summary(0, area='medium'), ARl=summary(0, area='large'))


def _blob(rng, h, w):
  """A random rectangle; in large frames often a large one (so that all area ranges occur)."""
  m = np.zeros((h, w), bool)
  if h > 100 and rng.random() < 0.6:
    m[:rng.integers(3 * h // 4, h + 1), :rng.integers(3 * w // 4, w + 1)] = True
  else:
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    m[y0:y0 + rng.integers(1, h + 1), x0:x0 + rng.integers(1, w + 1)] = True
  return m


def _random_case(rng):
  videos = {}
  tracks, results = [], []
  for v in rng.choice(np.arange(1, 1000), rng.integers(1, 4), replace=False):
    v = int(v)
    t = int(rng.integers(1, 5))
    h, w = ((8, 10), (12, 9), (140, 150), (300, 300))[rng.integers(4)]
    videos[v] = (t, h, w)
    gt_masks = []
    for _ in range(rng.integers(0, 4)):
      masks = [None if rng.random() < 0.3 else _blob(rng, h, w) for _ in range(t)]
      c = int(rng.integers(1, 3))
      tracks.append((v, c, masks, int(rng.random() < 0.15)))
      gt_masks.append((c, masks))
    scores = np.round(rng.random(3), 1)
    for _ in range(rng.choice([0, 2, 6, 12])):
      if gt_masks and rng.random() < 0.6:
        c, masks = gt_masks[rng.integers(len(gt_masks))]
        masks = [m if m is None or rng.random() < 0.5 else np.roll(m, 1, 0) for m in masks]
      else:
        c, masks = int(rng.integers(1, 3)), [None if rng.random() < 0.3 else _blob(rng, h, w) for _ in range(t)]
      results.append(_pred(v, c, float(rng.choice(scores)), masks))
  return _gt(videos, tracks), results


@pytest.mark.parametrize('seed', range(24))
def test_matches_loop_reference_on_random_cases(seed):
  gt, res = _random_case(np.random.default_rng(seed))
  expected = _reference(gt, res)
  got = ytvis.evaluate(gt, res)
  for k in ytvis.METRICS:
    assert got[k] == pytest.approx(expected[k], abs=1e-9), k
