"""Benchmark of visjax.evaluation.ytvis.evaluate on a YouTube-VIS-sized synthetic gt / results pair.

Moving, scaling ellipses (entering and leaving the frame) at 360x640, 20-36 frames per video, 1-4 gt tracks of 40
categories per video, and a fixed number of predictions per video (jittered copies of the gt tracks plus random
tracks). RLEs are built directly from the ellipses' column intervals, so generating the data is quick.

  python benchmarks/eval_bench.py --videos 1000 --preds 10
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
from pycocotools import mask as mask_utils

from visjax.evaluation import results as results_lib
from visjax.evaluation import ytvis

HEIGHT, WIDTH = 360, 640
NUM_CATEGORIES = 40


def ellipse_rle(cy: float, cx: float, ry: float, rx: float) -> tuple[dict, int] | tuple[None, int]:
  """Compressed RLE of a filled ellipse in a HEIGHT x WIDTH frame (None when it is outside), and its area."""
  cols = np.arange(max(0, int(cx - rx)), min(WIDTH, int(np.ceil(cx + rx)) + 1))
  u = (cols + 0.5 - cx) / rx
  half = ry * np.sqrt(np.clip(1 - u * u, 0, None))
  top = np.clip(np.ceil(cy - half - 0.5), 0, HEIGHT).astype(np.int64)
  bottom = np.clip(np.floor(cy + half - 0.5) + 1, 0, HEIGHT).astype(np.int64)
  keep = bottom > top
  cols, top, bottom = cols[keep], top[keep], bottom[keep]
  if not cols.size:
    return None, 0
  bounds = np.stack([cols * HEIGHT + top, cols * HEIGHT + bottom], 1).reshape(-1)
  # A run ending where the next starts (full-height columns) is one run: drop the zero-length gap.
  touching = np.flatnonzero(bounds[1:-1:2] == bounds[2::2])
  bounds = np.delete(bounds, np.r_[2 * touching + 1, 2 * touching + 2])
  counts = np.diff(np.r_[0, bounds, HEIGHT * WIDTH]).tolist()
  rle = mask_utils.frPyObjects({'size': [HEIGHT, WIDTH], 'counts': counts}, HEIGHT, WIDTH)
  return {'size': [HEIGHT, WIDTH], 'counts': rle['counts'].decode('ascii')}, int((bottom - top).sum())


def _track(rng, num_frames, base=None, jitter=0.0):
  """Per-frame ellipse parameters [T, 4] (cy, cx, ry, rx) of a moving, scaling object (or a jittered copy)."""
  if base is None:
    start = np.array([rng.uniform(0, HEIGHT), rng.uniform(0, WIDTH), rng.uniform(10, 120), rng.uniform(10, 200)])
    velocity = np.array([rng.normal(0, 4), rng.normal(0, 8), rng.normal(0, 0.5), rng.normal(0, 0.8)])
    params = start + velocity * np.arange(num_frames)[:, None]
    params[:, 2:] = np.maximum(params[:, 2:], 3)
    return params
  noise = rng.normal(0, jitter, base.shape) * np.array([1, 1, 0.3, 0.3])
  return base + noise


def make_pair(num_videos: int, preds_per_video: int, seed: int = 0) -> tuple[dict, list]:
  rng = np.random.default_rng(seed)
  categories = [{'id': c, 'name': f'category_{c}', 'supercategory': 'object'} for c in range(1, NUM_CATEGORIES + 1)]
  videos, annotations, results = [], [], []
  for v in range(1, num_videos + 1):
    num_frames = int(rng.integers(20, 37))
    videos.append({'id': v, 'height': HEIGHT, 'width': WIDTH, 'length': num_frames,
                   'file_names': [f'video{v:04d}/{t:05d}.jpg' for t in range(num_frames)]})
    gt_tracks = []
    for _ in range(int(rng.integers(1, 5))):
      params = _track(rng, num_frames)
      hidden = rng.random(num_frames) < 0.1
      segs, areas = [], []
      for t in range(num_frames):
        rle, area = (None, 0) if hidden[t] else ellipse_rle(*params[t])
        segs.append(rle)
        areas.append(area if rle else None)
      category = int(rng.integers(1, NUM_CATEGORIES + 1))
      annotations.append({'id': len(annotations) + 1, 'video_id': v, 'category_id': category, 'iscrowd': 0,
                          'segmentations': segs, 'areas': areas, 'bboxes': [None] * num_frames,
                          'height': HEIGHT, 'width': WIDTH, 'length': 1})
      gt_tracks.append((category, params, hidden))
    for p in range(preds_per_video):
      if p < 2 * len(gt_tracks):
        category, base, hidden = gt_tracks[p % len(gt_tracks)]
        params = _track(rng, num_frames, base, jitter=rng.uniform(1, 15))
        category = category if rng.random() < 0.8 else int(rng.integers(1, NUM_CATEGORIES + 1))
      else:
        params, hidden = _track(rng, num_frames), np.zeros(num_frames, bool)
        category = int(rng.integers(1, NUM_CATEGORIES + 1))
      segs = [None if hidden[t] and rng.random() < 0.8 else ellipse_rle(*params[t])[0] for t in range(num_frames)]
      results.append({'video_id': v, 'category_id': category, 'score': float(rng.random()), 'segmentations': segs})
  gt = {'info': {}, 'licenses': [], 'videos': videos, 'categories': categories, 'annotations': annotations}
  return gt, results


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--videos', type=int, default=1000)
  parser.add_argument('--preds', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()

  tic = time.perf_counter()
  gt, results = make_pair(args.videos, args.preds, args.seed)
  print(f'generated {args.videos} videos, {len(gt["annotations"])} gt tracks, {len(results)} predictions, '
        f'{sum(len(r["segmentations"]) for r in results)} prediction frames in {time.perf_counter() - tic:.1f}s')
  with tempfile.TemporaryDirectory() as tmp:
    gt_path = os.path.join(tmp, 'gt.json')
    with open(gt_path, 'w') as f:
      json.dump(gt, f)
    json_path, zip_path = results_lib.write_results(results, tmp)
    print(f'results.json {os.path.getsize(json_path) / 2**20:.1f} MiB, results.zip '
          f'{os.path.getsize(zip_path) / 2**20:.1f} MiB')

    timings = {}
    for name, fn in (('validate_results', lambda: results_lib.validate_results(results, gt)),
                     ('evaluate (loaded json objects)', lambda: ytvis.evaluate(gt, results)),
                     ('evaluate (paths, including json parsing)', lambda: ytvis.evaluate(gt_path, json_path))):
      wall, cpu = time.perf_counter(), time.process_time()
      timings[name] = fn()
      print(f'{name}: wall {time.perf_counter() - wall:.2f} s, CPU {time.process_time() - cpu:.2f} s, '
            f'load average {os.getloadavg()[0]:.1f}')
  metrics = timings['evaluate (loaded json objects)']
  assert timings['evaluate (paths, including json parsing)'] == metrics
  print('(evaluate includes validate_results)')
  print('metrics: ' + ', '.join(f'{k}={v:.4f}' for k, v in metrics.items()))


if __name__ == '__main__':
  main()
