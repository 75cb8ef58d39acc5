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

from data_pipeline import ytvis_json
from visjax.evaluation import ytvis
from visjax.models.idol import method
from visjax.models.idol import oracle

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))  # configs/ imports configs.*


def _load_config(path: str):
  spec = importlib.util.spec_from_file_location('ceiling_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def ceiling(path: str, config, *, soft: bool = True) -> dict[str, float]:
  """Metrics of the perfect detector on every video of the YTVIS json at `path` (it must carry annotations)."""
  dataset = ytvis_json.load(path)
  if not dataset.has_annotations:
    raise ValueError(f'{path}: no annotations, nothing to measure')
  model = nnx.eval_shape(lambda: method.build_model(config, rngs=nnx.Rngs(0)))
  m = config.model
  index = {c: i for i, c in enumerate(config.dataset.category_ids)}
  stride, div = int(m.mask_out_stride), int(m.size_divisibility)
  records = []
  for video in dataset.videos:
    h, w = video.height, video.width
    tracks = dataset.tracks_of(video.id)
    masks = np.zeros((len(tracks), video.length, -(-h // div) * div, -(-w // div) * div), bool)
    for k, track in enumerate(tracks):
      masks[k, :, :h, :w] = ytvis_json.decode_track_masks(track)
    labels = np.asarray([index[t.category_id] for t in tracks], np.int64)
    outputs = oracle.perfect_outputs(masks, labels, num_queries=m.num_queries, num_classes=m.num_classes,
                                     reid_dim=m.reid_dim, stride=stride, soft=soft)
    records += oracle.predict_from_outputs(model, config, outputs, video_id=video.id, image_size=(h, w),
                                           orig_size=(h, w))
  with open(path) as f:
    return ytvis.evaluate(json.load(f), records)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--json', required=True, help='YTVIS-format json with annotations')
  parser.add_argument('--config', default='configs/demo_synthetic.py', help='IDOL config (model sizes, tracker)')
  parser.add_argument('--hard', action='store_true', help='±10 mask logits from one pixel per stride cell')
  args = parser.parse_args()
  metrics = ceiling(args.json, _load_config(args.config), soft=not args.hard)
  print(json.dumps({k: round(v, 4) for k, v in metrics.items()}))


if __name__ == '__main__':
  main()
