"""Dataset preparation before training (the demo flow): synthetic videos → YTVIS json + JPEGs → TFRecords.

With `config.dataset.prepare = 'synthetic'`, `prepare_dataset(config)` generates the synthetic set into
`config.dataset.root` unless its train.json and valid.json exist (`data_pipeline.synthetic`, options from
`config.dataset.synthetic`), then converts train.json → `config.dataset.tfrecords` and valid.json →
`config.dataset.eval_tfrecords` unless a manifest is already there (`data_pipeline.convert`). Only process 0
writes; the others wait for it. TensorFlow is imported only here, lazily, through data_pipeline.
"""

import json
import os

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections

_MANIFEST = 'manifest.json'


def _split_jsons(root: str) -> dict[str, str]:
  return {split: os.path.join(root, f'{split}.json') for split in ('train', 'valid')}


def prepare_dataset(config: ml_collections.ConfigDict) -> None:
  """Generates and converts the dataset when `config.dataset.prepare` asks for it (no-op otherwise)."""
  d = config.dataset
  kind = d.get('prepare', '')
  if not kind:
    return
  if kind != 'synthetic':
    raise ValueError(f'config.dataset.prepare={kind!r}: only "synthetic" (or "") is supported.')
  for field in ('root', 'tfrecords', 'eval_tfrecords', 'valid_json'):
    if not d.get(field, ''):
      raise ValueError(f'config.dataset.prepare="synthetic" needs config.dataset.{field}.')
  if jax.process_index() == 0:
    _prepare_synthetic(d)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('visjax_dataset_prepared')


def _prepare_synthetic(d: ml_collections.ConfigDict) -> None:
  from data_pipeline import convert  # pylint: disable=g-import-not-at-top
  from data_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  jsons = _split_jsons(d.root)
  if not all(os.path.exists(p) for p in jsons.values()):
    options = d.synthetic.to_dict()
    num_videos, seed = options.pop('num_videos'), options.pop('seed')
    logging.info('Generating %d synthetic videos in %s', num_videos, d.root)
    synthetic.generate(d.root, num_videos, seed, **options)
  images = os.path.join(d.root, 'JPEGImages')
  for split, out in (('train', d.tfrecords), ('valid', d.eval_tfrecords)):
    if os.path.exists(os.path.join(out, _MANIFEST)):
      continue
    logging.info('Converting %s → %s', jsons[split], out)
    convert.convert(fmt='ytvis', json_path=jsons[split], images_dir=images, out_dir=out,
                    num_shards=d.get('num_shards', 1), workers=1, split=split, progress=False, overwrite=True)


def first_video_dir(config: ml_collections.ConfigDict) -> str:
  """The JPEG folder of the first video of `config.dataset.valid_json` (the demo's predict input)."""
  with open(config.dataset.valid_json) as f:
    videos = json.load(f)['videos']
  if not videos:
    raise ValueError(f'{config.dataset.valid_json} has no videos.')
  first = videos[0]['file_names'][0]
  return os.path.join(config.dataset.root, 'JPEGImages', os.path.dirname(first))
