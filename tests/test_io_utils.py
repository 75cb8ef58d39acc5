"""visjax.io_utils: outputs appear whole or not at all (a crash mid-write never leaves a torn file)."""

import json
import os

import pytest

from visjax import io_utils
from visjax.evaluation import results as results_lib


def test_atomic_write_replaces_only_on_success(tmp_path):
  path = tmp_path / 'metrics.json'
  io_utils.write_json(path, {'AP': 0.5})
  with pytest.raises(RuntimeError):
    with io_utils.atomic_write(path) as f:
      f.write('{')  # A crash after one byte ...
      raise RuntimeError('crash')
  assert json.loads(path.read_text()) == {'AP': 0.5}  # ... leaves the previous complete file
  assert os.listdir(tmp_path) == ['metrics.json']  # and no temporary file behind.
  io_utils.write_json(path, {'AP': 0.7})
  assert json.loads(path.read_text()) == {'AP': 0.7}


def test_atomic_path_keeps_extension_and_rejects_append(tmp_path):
  with io_utils.atomic_path(tmp_path / 'overlay.gif') as tmp:
    assert tmp.endswith('.gif') and os.path.dirname(tmp) == str(tmp_path)
    open(tmp, 'wb').close()
  assert os.listdir(tmp_path) == ['overlay.gif']
  with pytest.raises(ValueError, match='mode'):
    with io_utils.atomic_write(tmp_path / 'log.jsonl', 'a'):
      pass


def _record(video_id: int) -> dict:
  return {'video_id': video_id, 'category_id': 1, 'score': 0.9, 'segmentations': [None, None]}


def test_result_writer_crash_keeps_previous_results(tmp_path):
  videos = [{'id': 1, 'height': 4, 'width': 4, 'length': 2}, {'id': 2, 'height': 4, 'width': 4, 'length': 2}]
  results_lib.write_results([_record(1)], tmp_path, videos)
  with pytest.raises(RuntimeError):
    with results_lib.VideoResultWriter(tmp_path, videos) as writer:
      writer.write([_record(1), _record(2)])
      raise RuntimeError('killed mid-evaluation')
  assert sorted(os.listdir(tmp_path)) == ['results.json', 'results.zip']
  assert [r['video_id'] for r in results_lib.load_json(str(tmp_path / 'results.json'))] == [1]
  assert [r['video_id'] for r in results_lib.load_json(str(tmp_path / 'results.zip'))] == [1]
