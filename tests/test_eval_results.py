"""Tests of visjax.evaluation.results (encoding, validation, writer, zip, oracle), rle checks and the ytvis CLI."""

import json
import math
import subprocess
import sys
import zipfile

import numpy as np
from pycocotools import mask as mask_utils
import pytest

from visjax.evaluation import results as results_lib
from visjax.inference import tracks as tracks_lib
from visjax.evaluation import rle as rle_lib
from visjax.evaluation import ytvis

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')  # pycocotools decode under NumPy 2.

H, W = 9, 11


def _masks(rng, t, h=H, w=W):
  return [None if rng.random() < 0.3 else rng.random((h, w)) < rng.random() for _ in range(t)]


def _gt(rng):
  """Two videos with crowd, absent frames, and polygon / uncompressed / compressed RLE gt."""
  videos = [{'id': 3, 'length': 4, 'height': H, 'width': W, 'file_names': [f'a/{i}.jpg' for i in range(4)]},
            {'id': 8, 'length': 2, 'height': 20, 'width': 30, 'file_names': ['b/0.jpg', 'b/1.jpg']}]
  anns = []
  for i, (video, t, h, w, crowd) in enumerate([(3, 4, H, W, 0), (3, 4, H, W, 1), (8, 2, 20, 30, 0),
                                                (8, 2, 20, 30, 0)]):
    masks = _masks(rng, t, h, w)
    masks[0] = np.ones((h, w), bool)  # Every track is visible at least once.
    segs = [None if m is None else results_lib.encode_mask(m) for m in masks]
    anns.append({'id': i + 1, 'video_id': video, 'category_id': 1 + i % 2, 'iscrowd': crowd, 'segmentations': segs,
                 'areas': [None if m is None else int(m.sum()) for m in masks]})
  anns[2]['segmentations'][0] = [[2.0, 2.0, 25.0, 2.0, 25.0, 15.0, 2.0, 15.0]]
  anns[3]['segmentations'][0] = {'size': [20, 30], 'counts': [0, 600]}
  return {'videos': videos, 'categories': [{'id': 1, 'name': 'cat'}, {'id': 2, 'name': 'dog'}], 'annotations': anns}


def _results(rng, gt):
  res = []
  for video in gt['videos']:
    for k in range(3):
      masks = _masks(rng, video['length'], video['height'], video['width'])
      res.append({'video_id': video['id'], 'category_id': 1 + k % 2, 'score': float(rng.random()),
                  'segmentations': [None if m is None else results_lib.encode_mask(m) for m in masks]})
  return res


def test_encode_mask_round_trip():
  rng = np.random.default_rng(0)
  for h, w in [(1, 1), (5, 7), (48, 33)]:
    mask = rng.random((h, w)) < 0.4
    rle = results_lib.encode_mask(mask)
    assert rle['size'] == [h, w] and isinstance(rle['counts'], str)
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
    assert json.loads(json.dumps(rle)) == rle
  with pytest.raises(ValueError, match=r'\[H, W\]'):
    results_lib.encode_mask(np.zeros((2, 3, 1)))


def test_compressed_rle_valid_accepts_pycocotools_strings_and_rejects_corruptions():
  rng = np.random.default_rng(1)
  counts, pixels = [], []
  for _ in range(200):
    h, w = rng.integers(1, 300, 2)
    mask = rng.random((h, w)) < rng.random() if rng.random() < 0.5 else np.zeros((h, w), bool)
    if rng.random() < 0.3:
      mask[: rng.integers(0, h + 1)] = True
    counts.append(results_lib.encode_mask(mask)['counts'])
    pixels.append(int(h * w))
  assert rle_lib.compressed_rle_valid(counts, pixels).all()
  assert rle_lib.compressed_rle_valid([c.encode() for c in counts], pixels).all()
  assert not rle_lib.compressed_rle_valid(counts, [p + 1 for p in pixels]).any()
  # Truncated (the last number loses characters), a character outside '0'..'o', an extra run.
  long = [(c, p) for c, p in zip(counts, pixels) if len(c) > 2]
  assert not rle_lib.compressed_rle_valid([c[:-1] for c, _ in long], [p for _, p in long]).any()
  assert not rle_lib.compressed_rle_valid([c[:1] + '~' + c[2:] for c, _ in long], [p for _, p in long]).any()
  assert not rle_lib.compressed_rle_valid([c + '1' for c, _ in long], [p for _, p in long]).any()
  assert not rle_lib.compressed_rle_valid(['', 'é', 'P', None], [0, 1, 1, 1]).any()
  # Runs 5, 3, 2, 3 + 1, 2 + 4 (runs > 2 are stored as differences to run m - 2) are valid for 20 pixels; with
  # -9 instead of 1, run 3 is -6 and the total is still 10: rejected for the negative run.
  assert rle_lib.compressed_rle_valid([_encode_runs([5, 3, 2, 1, 4])], [20]).all()
  assert not rle_lib.compressed_rle_valid([_encode_runs([5, 3, 2, -9, 4])], [10]).any()


def _decode_ok(counts, num_pixels):
  """Plain-Python port of pycocotools' rleFrString, plus the validity conditions."""
  if not counts or any(not 48 <= ord(ch) < 112 for ch in counts):
    return False
  runs, p = [], 0
  while p < len(counts):
    x, k, more = 0, 0, True
    while more:
      if p == len(counts) or k == 7:
        return False  # Runs past the end / longer than a 32-bit number.
      c = ord(counts[p]) - 48
      x |= (c & 0x1f) << (5 * k)
      more = bool(c & 0x20)
      p += 1
      k += 1
      if not more and c & 0x10:
        x -= 1 << (5 * k)
    if len(runs) > 2:
      x += runs[-2]
    runs.append(x)
  return min(runs) >= 0 and sum(runs) == num_pixels


@pytest.mark.parametrize('chunk_chars', [7, 1000, 1 << 17])
def test_compressed_rle_valid_matches_a_python_decoder_on_corrupted_batches(chunk_chars, monkeypatch):
  monkeypatch.setattr(rle_lib, '_CHUNK_CHARS', chunk_chars)
  rng = np.random.default_rng(11)
  alphabet = [chr(c) for c in range(40, 120)]
  counts, pixels = [], []
  for _ in range(600):
    h, w = rng.integers(1, 120, 2)
    mask = np.zeros((h, w), bool)
    mask[rng.integers(0, h):rng.integers(0, h + 1), rng.integers(0, w):rng.integers(0, w + 1)] = True
    if rng.random() < 0.3:
      mask |= rng.random((h, w)) < 0.1
    c = results_lib.encode_mask(mask)['counts']
    kind = rng.integers(6)
    if kind == 1 and len(c) > 1:
      c = c[:rng.integers(1, len(c))]
    elif kind == 2:
      i = rng.integers(len(c))
      c = c[:i] + str(rng.choice(alphabet)) + c[i + 1:]
    elif kind == 3:
      i = rng.integers(len(c) + 1)
      c = c[:i] + str(rng.choice(alphabet)) + c[i:]
    counts.append(c)
    pixels.append(int(h * w) + int(kind == 4))
  expected = np.array([_decode_ok(c, p) for c, p in zip(counts, pixels)])
  assert 0.3 < expected.mean() < 0.9  # Both kinds are well represented.
  np.testing.assert_array_equal(rle_lib.compressed_rle_valid(counts, pixels), expected)


def _encode_runs(numbers):
  """pycocotools' string coding of raw (already differenced) numbers."""
  out = []
  for x in numbers:
    more = True
    while more:
      c = x & 0x1f
      x >>= 5
      more = x != -1 if c & 0x10 else x != 0
      if more:
        c |= 0x20
      out.append(chr(c + 48))
  return ''.join(out)


def test_encode_runs_helper_matches_pycocotools():
  mask = np.zeros((4, 5), bool)
  mask[1:3, 1:4] = True
  # Column-major runs: 5 zeros, 2 ones, 2 zeros, 2 ones, 2 zeros, 2 ones, 5 zeros; runs > 2 differenced.
  runs = [5, 2, 2, 2, 2, 2, 5]
  numbers = runs[:3] + [runs[m] - runs[m - 2] for m in range(3, len(runs))]
  assert _encode_runs(numbers) == results_lib.encode_mask(mask)['counts']


@pytest.mark.parametrize('mutate, message', [
    (lambda r: r[2].update(video_id=5), r"results\[2\] \(video_id=5\): field 'video_id': no video"),
    (lambda r: r[1]['segmentations'].append(None), r"results\[1\] \(video_id=3\): field 'segmentations': 5 frames, "
                                                   r'the video has 4'),
    (lambda r: r[3].update(score=math.nan), r"results\[3\] \(video_id=8\): field 'score': expected a finite"),
    (lambda r: r[0].update(score=math.inf), r"results\[0\] \(video_id=3\): field 'score'"),
    (lambda r: r[0].update(score='0.5'), r"results\[0\] \(video_id=3\): field 'score'"),
    (lambda r: r[4].pop('segmentations'), r"results\[4\] \(video_id=8\): missing key\(s\) \['segmentations'\]"),
    (lambda r: r[1].pop('video_id'), r"results\[1\] \(video_id=None\): missing key\(s\) \['video_id'\]"),
    (lambda r: r[5].update(category_id=7), r"results\[5\] \(video_id=8\): field 'category_id': 7 is not a gt"),
    (lambda r: r[5].update(category_id='1'), r"results\[5\] \(video_id=8\): field 'category_id': expected an int"),
    (lambda r: r[5].update(category_id=1.5), r"results\[5\] \(video_id=8\): field 'category_id': expected an int"),
    (lambda r: r[3]['segmentations'].__setitem__(1, {'size': [H, W], 'counts': '0'}),
     r"results\[3\] \(video_id=8\): field 'segmentations'\[1\]: RLE size \[9, 11\] differs from the video size "
     r'\[20, 30\]'),
    (lambda r: r[0]['segmentations'].__setitem__(2, {'size': [H, W], 'counts': '1%%'}),
     r"results\[0\] \(video_id=3\): field 'segmentations'\[2\]: corrupt RLE"),
    (lambda r: r[0]['segmentations'].__setitem__(3, {'size': [H, W], 'counts': [0, H * W]}),
     r"results\[0\] \(video_id=3\): field 'segmentations'\[3\]: RLE 'counts' must be a compressed RLE string"),
    (lambda r: r[0]['segmentations'].__setitem__(0, []),
     r"results\[0\] \(video_id=3\): field 'segmentations'\[0\]: expected None or a compressed RLE dict"),
    (lambda r: r.__setitem__(1, 'x'), r'results\[1\]: expected a dict'),
])
def test_validate_results_names_the_entry(mutate, message):
  rng = np.random.default_rng(2)
  gt = _gt(rng)
  res = _results(rng, gt)
  results_lib.validate_results(res, gt)
  results_lib.validate_results(res, gt['videos'])
  mutate(res)
  with pytest.raises(ValueError, match=message):
    results_lib.validate_results(res, gt)


def test_validate_results_reports_a_truncated_rle_frame():
  rng = np.random.default_rng(3)
  gt = _gt(rng)
  res = _results(rng, gt)
  frame = next(t for t, s in enumerate(res[4]['segmentations']) if s is not None)
  seg = res[4]['segmentations'][frame]
  seg['counts'] = seg['counts'][:-1] if len(seg['counts']) > 1 else 'P'
  with pytest.raises(ValueError, match=rf"results\[4\] \(video_id=8\): field 'segmentations'\[{frame}\]: corrupt"):
    results_lib.validate_results(res, gt)


def test_write_results_json_and_codalab_zip(tmp_path):
  rng = np.random.default_rng(4)
  gt = _gt(rng)
  res = _results(rng, gt)
  json_path, zip_path = results_lib.write_results(res, tmp_path / 'out', gt)
  with open(json_path) as f:
    assert json.load(f) == res
  with zipfile.ZipFile(zip_path) as z:
    assert z.namelist() == ['results.json']
    assert json.loads(z.read('results.json')) == res
  assert ytvis.evaluate(gt, json_path) == ytvis.evaluate(gt, res) == ytvis.evaluate(gt, zip_path)
  with zipfile.ZipFile(tmp_path / 'bad.zip', 'w') as z:
    z.writestr('sub/results.json', '[]')
  with pytest.raises(ValueError, match='no results.json at its root'):
    ytvis.evaluate(gt, tmp_path / 'bad.zip')


def test_streaming_writer_and_video_tracks(tmp_path):
  """Tracks accumulated frame by frame (`visjax.inference.tracks`) become records streamed by the writer."""
  rng = np.random.default_rng(5)
  gt = _gt(rng)
  expected = []
  rule = tracks_lib.RecordRule('argmax')
  with results_lib.VideoResultWriter(tmp_path, gt) as writer:
    for video in gt['videos']:
      tracks = tracks_lib.VideoTracks(video['length'])
      masks = {k: _masks(rng, video['length'], video['height'], video['width']) for k in (11, 12)}
      for t in range(video['length']):  # Frame by frame, as a tracker produces them.
        for i, (k, track) in enumerate(masks.items()):
          if track[t] is not None:
            tracks.add(k, t, results_lib.encode_mask(track[t]), np.eye(2)[i] * np.float32(0.25 * (i + 1)))
      writer.write(tracks_lib.tracks_to_records(tracks.tracks(), video_id=video['id'], rule=rule,
                                                category_ids=np.array([1, 2])))
      for k in tracks.track_ids:
        i = (11, 12).index(k)
        expected.append({'video_id': video['id'], 'category_id': 1 + i, 'score': 0.25 * (i + 1),
                         'segmentations': [None if m is None else results_lib.encode_mask(m) for m in masks[k]]})
  with open(writer.json_path) as f:
    assert json.load(f) == expected
  with zipfile.ZipFile(writer.zip_path) as z:
    assert z.namelist() == ['results.json']
  with pytest.raises(ValueError, match='frame index 4'):
    tracks_lib.VideoTracks(4).add(1, 4, None, np.zeros(2))


def test_record_rules():
  tracks = [tracks_lib.Track(7, np.array([0.5, 0.04, 0.3]), [None], [None]),
            tracks_lib.Track(9, np.array([0.1, 0.9, 0.06]), [{'size': [1, 1], 'counts': '01'}], [0.9])]
  ids = np.array([10, 20, 30])

  def run(rule):
    return [(r['category_id'], round(r['score'], 3)) for r in
            tracks_lib.tracks_to_records(tracks, video_id=1, rule=rule, category_ids=ids)]

  assert run(tracks_lib.RecordRule('threshold', threshold=0.05)) == [(10, 0.5), (30, 0.3), (10, 0.1), (20, 0.9),
                                                                      (30, 0.06)]
  assert run(tracks_lib.RecordRule('argmax')) == [(10, 0.5), (20, 0.9)]
  assert run(tracks_lib.RecordRule('topk', k=3)) == [(20, 0.9), (10, 0.5), (30, 0.3)]
  with pytest.raises(ValueError, match='kind must be one of'):
    tracks_lib.RecordRule('all')
  with pytest.raises(ValueError, match='has 2 entries but the model predicts 3'):
    tracks_lib.category_table((1, 2), 3)


def test_streaming_writer_validates_with_global_indices(tmp_path):
  rng = np.random.default_rng(6)
  gt = _gt(rng)
  res = _results(rng, gt)
  res[4]['video_id'] = 77
  with pytest.raises(ValueError, match=r'results\[4\] \(video_id=77\)'):
    with results_lib.VideoResultWriter(tmp_path, gt) as writer:
      writer.write(res[:3])
      writer.write(res[3:])
  assert not (tmp_path / 'results.zip').exists()


def test_oracle_scores_one():
  gt = _gt(np.random.default_rng(7))
  oracle = results_lib.oracle_results(gt)
  assert len(oracle) == 3  # The crowd track is left out.
  results_lib.validate_results(oracle, gt)
  metrics = ytvis.evaluate(gt, oracle)
  assert metrics['AP'] == pytest.approx(1.0, abs=1e-12)
  assert metrics['AR100'] == pytest.approx(1.0, abs=1e-12)
  assert all(v == pytest.approx(1.0, abs=1e-12) for v in ytvis.evaluate_per_category(gt, oracle).values())


def test_cli_prints_metrics(tmp_path, capsys):
  rng = np.random.default_rng(8)
  gt = _gt(rng)
  gt_path = tmp_path / 'gt.json'
  gt_path.write_text(json.dumps(gt))
  json_path, _ = results_lib.write_results(_results(rng, gt), tmp_path)
  ytvis.main(['--gt', str(gt_path), '--results', json_path, '--per-category'])
  lines = capsys.readouterr().out.splitlines()
  expected = ytvis.evaluate(gt, json_path)
  assert lines[:12] == [f'{k}: {v:.4f}' for k, v in expected.items()]
  assert lines[12:14] == [f'AP[cat]: {ytvis.evaluate_per_category(gt, json_path)["cat"]:.4f}',
                          f'AP[dog]: {ytvis.evaluate_per_category(gt, json_path)["dog"]:.4f}']
  assert lines[-1] == f"video AP: {expected['AP']:.4f}"


def test_cli_reports_bad_results_without_traceback(tmp_path):
  rng = np.random.default_rng(10)
  gt = _gt(rng)
  res = _results(rng, gt)
  res[2]['video_id'] = 42
  gt_path, res_path = tmp_path / 'gt.json', tmp_path / 'res.json'
  gt_path.write_text(json.dumps(gt))
  res_path.write_text(json.dumps(res))
  with pytest.raises(SystemExit, match=r"error: results\[2\] \(video_id=42\): field 'video_id'"):
    ytvis.main(['--gt', str(gt_path), '--results', str(res_path)])


def test_cli_oracle_subprocess_without_tensorflow_or_torch(tmp_path):
  gt_path = tmp_path / 'gt.json'
  gt_path.write_text(json.dumps(_gt(np.random.default_rng(9))))
  code = ('import sys, runpy; sys.argv = ["ytvis", "--gt", sys.argv[1], "--oracle"]; '
          'runpy.run_module("visjax.evaluation.ytvis", run_name="__main__"); '
          'assert "tensorflow" not in sys.modules and "torch" not in sys.modules, "heavy import"')
  out = subprocess.run([sys.executable, '-c', code, str(gt_path)], capture_output=True, text=True, check=True,
                       timeout=120).stdout
  assert 'video AP: 1.0000' in out.splitlines()
  assert 'AP: 1.0000' in out.splitlines()
