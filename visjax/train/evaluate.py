"""Evaluation: the method's streaming predictor over the eval split → results.json + CodaLab zip (+ metrics.json).

Every process reads its share of the videos in chunks of `config.eval.chunk_len` frames
(`eval_video_chunks(config, chunk_len, process_index, process_count)`), so a long video is never decoded whole;
each chunk goes to the video's predictor and its tracks become records (`Method.records`) when the video ends.
Shares are gathered through WORKDIR/eval_parts/ and process 0 writes WORKDIR/results.json, WORKDIR/results.zip
and, when the ground truth json (`config.dataset.valid_json`, checked before any video is read) has annotations,
WORKDIR/metrics.json with the official metrics (`AP`, `AP50`, ..., `ARl`) and `per_category_AP` (category name →
AP, −1 without gt).
"""

import json
import os
import shutil
from typing import Any

from absl import logging
from flax import nnx
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from visjax import io_utils
from visjax.evaluation import results as results_lib
from visjax.evaluation import ytvis
from visjax.inference import predictor as predictor_lib
from visjax.models import registry
from visjax.train import restore
from visjax.train import trainer

METRICS_JSON = 'metrics.json'
_PARTS = 'eval_parts'


def fill_categories(config: ml_collections.ConfigDict, gt_json: dict | None = None) -> None:
  """Fills `config.dataset.category_ids` / `category_names` from the converted eval (or train) split's manifest
  when they are empty, and checks them against the ground truth json (`gt_json` when the caller has it loaded,
  else the file `config.dataset.valid_json` if it exists)."""
  root = config.dataset.get('eval_tfrecords', '') or config.dataset.get('tfrecords', '')
  root = root.split(',')[0].strip() if isinstance(root, str) else ''
  if not config.dataset.get('category_ids', ()) and root and os.path.isfile(os.path.join(root, 'manifest.json')):
    from data_pipeline import tfrecord  # pylint: disable=g-import-not-at-top
    categories = tfrecord.load_manifest(root).categories
    config.dataset.category_ids = tuple(int(c['id']) for c in categories)
    config.dataset.category_names = tuple(str(c.get('name', '')) for c in categories)
  ids = tuple(int(i) for i in config.dataset.get('category_ids', ()))
  gt_path = config.dataset.get('valid_json', '')
  if gt_json is None and gt_path and os.path.isfile(gt_path):
    gt_json = results_lib.load_json(gt_path)
  if ids and gt_json is not None:
    gt_ids = {int(c['id']) for c in gt_json.get('categories', [])}
    if gt_ids and not set(ids) <= gt_ids:
      raise ValueError(f'config.dataset.category_ids {sorted(set(ids) - gt_ids)[:10]} are not categories of '
                       f'{gt_path}: the model\'s category table does not match the ground truth.')


def predict_split(config: ml_collections.ConfigDict, model: nnx.Module,
                  method: registry.Method | None = None) -> tuple[list[dict], list[int]]:
  """(result records, video ids) of this process's share of the eval split."""
  method = method or registry.get_method(config)
  chunks = trainer.data_source(config).eval_video_chunks(
      config, chunk_len=int(config.eval.get('chunk_len', 0)), process_index=jax.process_index(),
      process_count=jax.process_count(), max_videos=int(config.eval.get('max_videos', -1)))
  records, video_ids = [], []
  bar = tqdm.tqdm(desc='eval', unit='video', disable=jax.process_index() != 0)
  predictor = None
  for chunk in chunks:
    if chunk['start'] == 0:
      predictor = method.make_predictor(model, predictor_lib.VideoMeta(
          video_id=chunk['video_id'], length=int(chunk['length']), orig_size=tuple(chunk['orig_size'])))
    frames = chunk['frames']
    predictor.add_frames(frames, np.tile(np.asarray(chunk['image_size'], np.int32), (len(frames), 1)))
    if chunk['last']:
      records.extend(method.records(predictor.finish(), chunk['video_id']))
      video_ids.append(int(chunk['video_id']))
      predictor = None
      bar.update(1)
  bar.close()
  return records, video_ids


def _gather(workdir: str, records: list[dict], video_ids: list[int]) -> tuple[list[dict], list[int]]:
  """All processes' records on process 0 (via files; collectives would need equal shapes)."""
  if jax.process_count() == 1:
    return records, video_ids
  parts = os.path.join(workdir, _PARTS)
  os.makedirs(parts, exist_ok=True)
  io_utils.write_json(os.path.join(parts, f'{jax.process_index()}.json'), {'records': records, 'video_ids': video_ids})
  multihost_utils.sync_global_devices('visjax_eval_parts_written')
  if jax.process_index() != 0:
    return [], []
  all_records, all_ids = [], []
  for i in range(jax.process_count()):
    with open(os.path.join(parts, f'{i}.json')) as f:
      part = json.load(f)
    all_records += part['records']
    all_ids += part['video_ids']
  shutil.rmtree(parts)
  return all_records, all_ids


def _load_gt_json(config: ml_collections.ConfigDict) -> dict | None:
  """The ground truth json `config.dataset.valid_json` (None when unset)."""
  path = config.dataset.get('valid_json', '')
  if not path:
    return None
  if not os.path.exists(path):
    raise FileNotFoundError(f'config.dataset.valid_json={path!r} does not exist.')
  return results_lib.load_json(path)


def _restrict_gt(gt: dict, video_ids: list[int]) -> dict:
  keep = set(video_ids)
  return dict(gt, videos=[v for v in gt['videos'] if v['id'] in keep],
              annotations=[a for a in gt['annotations'] if a['video_id'] in keep])


def evaluate(config: ml_collections.ConfigDict, workdir: str, model: nnx.Module | None = None) -> dict[str, Any]:
  """Runs eval; returns the metrics dict ({} when the eval split has no ground truth)."""
  gt_json = _load_gt_json(config)  # a bad valid_json fails before any video is predicted
  fill_categories(config, gt_json)
  gt = gt_json if gt_json is not None and gt_json.get('annotations') else None
  if model is None:
    model = restore.load_model(config, workdir)
  records, video_ids = _gather(workdir, *predict_split(config, model))
  if jax.process_index() != 0:
    return {}
  if gt is not None and 0 <= int(config.eval.get('max_videos', -1)):
    gt = _restrict_gt(gt, video_ids)
  json_path, zip_path = results_lib.write_results(records, workdir, gt)
  logging.info('Wrote %d result records to %s and %s', len(records), json_path, zip_path)
  if gt is None:
    logging.info('No ground truth for the eval split: metrics.json not written.')
    return {}
  acc = ytvis.accumulate(gt, records)
  metrics: dict[str, Any] = dict(ytvis.summarize(acc))
  metrics['per_category_AP'] = ytvis.per_category_ap(acc)
  io_utils.write_json(os.path.join(workdir, METRICS_JSON), metrics, indent=1)
  logging.info('Eval metrics: %s', {k: v for k, v in metrics.items() if k != 'per_category_AP'})
  return metrics
