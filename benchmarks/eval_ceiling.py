"""The best video AP any IDOL model can reach on a YTVIS-format set: perfect detector outputs built from the ground
truth (`visjax.models.idol.oracle`) run through the real inference path (tracker, stride-4 masks, filters) and
evaluated. It measures what the output stride, the tracker's rules and tiny ground-truth fragments cost by
themselves, e.g. for choosing the synthetic demo's frame and object sizes.

  python benchmarks/eval_ceiling.py --json data/synthetic_demo/valid.json --config configs/demo_synthetic.py

Frames must already be at the model's input size (no test resize), as the synthetic sets are.
"""

import argparse
import importlib.util
import json
import os
import sys

from flax import nnx
import numpy as np
from pycocotools import mask as mask_utils

from visjax.evaluation import ytvis
from visjax.models.idol import method
from visjax.models.idol import oracle

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))  # configs/ imports configs.*


def _load_config(path: str):
  spec = importlib.util.spec_from_file_location('ceiling_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _decode(segmentation, height: int, width: int) -> np.ndarray:
  if segmentation is None:
    return np.zeros((height, width), bool)
  if isinstance(segmentation['counts'], list):
    segmentation = mask_utils.frPyObjects(segmentation, height, width)
  return mask_utils.decode(segmentation).astype(bool)


def ceiling(gt: dict, config, *, soft: bool = True) -> dict[str, float]:
  """Metrics of the perfect detector on every video of `gt` (a YTVIS json dict with annotations)."""
  model = nnx.eval_shape(lambda: method.build_model(config, rngs=nnx.Rngs(0)))
  m = config.model
  index = {c: i for i, c in enumerate(config.dataset.category_ids)}
  stride, div = int(m.mask_out_stride), int(m.size_divisibility)
  by_video = {}
  for ann in gt['annotations']:
    by_video.setdefault(ann['video_id'], []).append(ann)
  records = []
  for video in gt['videos']:
    h, w, t = video['height'], video['width'], video['length']
    ph, pw = -(-h // div) * div, -(-w // div) * div
    anns = by_video.get(video['id'], [])
    masks = np.zeros((len(anns), t, ph, pw), bool)
    for k, ann in enumerate(anns):
      masks[k, :, :h, :w] = [_decode(s, h, w) for s in ann['segmentations']]
    labels = np.asarray([index[a['category_id']] for a in anns], np.int64)
    outputs = oracle.perfect_outputs(masks, labels, num_queries=m.num_queries, num_classes=m.num_classes,
                                     reid_dim=m.reid_dim, stride=stride, soft=soft)
    records += oracle.predict_from_outputs(model, config, outputs, video_id=video['id'], image_size=(h, w),
                                           orig_size=(h, w))
  return ytvis.evaluate(gt, records)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--json', required=True, help='YTVIS-format json with annotations')
  parser.add_argument('--config', default='configs/demo_synthetic.py', help='IDOL config (model sizes, tracker)')
  parser.add_argument('--hard', action='store_true', help='±10 mask logits from one pixel per stride cell')
  args = parser.parse_args()
  with open(args.json) as f:
    gt = json.load(f)
  metrics = ceiling(gt, _load_config(args.config), soft=not args.hard)
  print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))


if __name__ == '__main__':
  main()
