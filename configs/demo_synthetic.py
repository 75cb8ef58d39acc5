"""The CPU demo (`make demo`): a tiny IDOL trained on synthetic moving-shapes videos, evaluated, and drawn.

  python -m visjax.main --config configs/demo_synthetic.py --workdir runs/demo

Generates the synthetic YTVIS-format set under data/synthetic (if absent) and converts it to TFRecords, trains the
`idol_tiny` model, evaluates on the synthetic validation videos (their json carries annotations) and writes
runs/demo/{metrics.json, results.json, results.zip, overlay.gif, tracks.json, train_log.jsonl}.
"""

import ml_collections

from configs import idol_tiny
from data_pipeline import synthetic


def get_config() -> ml_collections.ConfigDict:
  c = idol_tiny.get_config()
  root = 'data/synthetic'
  c.dataset.root = root
  c.dataset.train_json = f'{root}/train.json'
  c.dataset.valid_json = f'{root}/valid.json'
  c.dataset.tfrecords = f'{root}/tfrecords_train'
  c.dataset.eval_tfrecords = f'{root}/tfrecords_valid'
  c.dataset.synthetic = ml_collections.ConfigDict(dict(num_videos=48, seed=0, height=96, width=160,
                                                       valid_fraction=0.25))
  cats = synthetic.categories()
  c.dataset.num_classes = len(cats)
  c.model.num_classes = len(cats)
  c.dataset.category_ids = tuple(x['id'] for x in cats)
  c.dataset.category_names = tuple(x['name'] for x in cats)

  c.mesh.data = 1  # one CPU device
  # Randomly initialised backbone: train it at the full lr, and faster than idol_tiny's 2e-4 (the loss at step
  # 1000 is 9.8 with these settings vs 16.8 at step 300 with idol_tiny's; benchmarks/RESULTS.md, Engine / demo).
  c.train.num_steps = 1500
  c.train.lr = 5e-4
  c.train.backbone_lr_mult = 1.0
  c.train.lr_steps = (1200,)
  c.train.log_every = 25
  c.train.checkpoint_every = 250
  c.eval.max_videos = -1  # every validation video
  c.predict.after_eval = True  # overlay of the first validation video
  c.predict.output = 'overlay.gif'
  return c
