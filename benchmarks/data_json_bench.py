"""Times the synthetic-set generator and the YouTube-VIS json validator.

  python benchmarks/data_json_bench.py [--num-videos 20] [--scale 1.0]

1. `data_pipeline.synthetic.generate` for --num-videos videos at the default size (96x160, 8-24 frames).
2. `data_pipeline.ytvis_json.parse` of an in-memory json shaped like YouTube-VIS 2019 train (2,238 videos of
   36 frames at 720x1280, 3,774 tracks present in 4 of 5 frames, compressed RLE), times --scale.
"""

import argparse
import tempfile
import time

import numpy as np
from pycocotools import mask as mask_utils

from data_pipeline import synthetic
from data_pipeline import ytvis_json


def _ytvis_like(scale: float, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  h, w, length = 720, 1280, 36
  pool = []
  for _ in range(64):  # Blob-like masks covering 1-15% of the frame.
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.05, 0.25) * h, rng.uniform(0.05, 0.25) * w
    mask = (((yy - cy) / ry)**2 + ((xx - cx) / rx)**2 <= 1).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(mask))
    pool.append({'size': [h, w], 'counts': rle['counts'].decode('ascii')})
  num_videos, num_tracks = int(2238 * scale), int(3774 * scale)
  videos = [{'id': i + 1, 'height': h, 'width': w, 'length': length,
             'file_names': [f'v{i:05d}/{t * 5:05d}.jpg' for t in range(length)]} for i in range(num_videos)]
  annotations = []
  for a in range(num_tracks):
    segms = [pool[(a + t) % len(pool)] if t % 5 else None for t in range(length)]
    annotations.append({'id': a + 1, 'video_id': a % num_videos + 1, 'category_id': 1, 'iscrowd': 0,
                        'segmentations': segms, 'areas': [None if s is None else 1.0 for s in segms],
                        'bboxes': [None if s is None else [0.0, 0.0, 1.0, 1.0] for s in segms]})
  return {'videos': videos, 'categories': [{'id': 1, 'name': 'thing'}], 'annotations': annotations}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--num-videos', type=int, default=20)
  parser.add_argument('--scale', type=float, default=1.0)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as root:
    start = time.perf_counter()
    synthetic.generate(root, args.num_videos, seed=0)
    print(f'synthetic.generate: {args.num_videos} videos in {time.perf_counter() - start:.2f} s')
  content = _ytvis_like(args.scale)
  num_rles = sum(s is not None for a in content['annotations'] for s in a['segmentations'])
  chars = sum(len(s['counts']) for a in content['annotations'] for s in a['segmentations'] if s is not None)
  start = time.perf_counter()
  ytvis_json.parse(content, source='ytvis-like')
  seconds = time.perf_counter() - start
  print(f'ytvis_json.parse: {len(content["videos"])} videos, {len(content["annotations"])} tracks, {num_rles} RLEs '
        f'({chars / num_rles:.0f} chars each) in {seconds:.1f} s')


if __name__ == '__main__':
  main()
