"""YTVIS / COCO -> TFRecord conversion: round trip, manifest, and bad-input errors (data_pipeline.convert)."""

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('tensorflow')

from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top

from data_pipeline import convert  # pylint: disable=g-import-not-at-top
from data_pipeline import samplers
from data_pipeline import tfrecord
from data_pipeline import ytvis_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv):
  return convert.main(argv + ['--no-progress'])


@pytest.fixture(scope='module')
def converted(synthetic_paths, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('tfr_train'))
  assert _run(['--format', 'ytvis', '--json', synthetic_paths['train'], '--images', synthetic_paths['images'],
               '--out', out, '--num-shards', '2', '--workers', '1']) == 0
  return out


def _records(root):
  tf = tfrecord.import_tf()
  manifest = tfrecord.load_manifest(root, verify_checksums=True)
  for shard in manifest.shards:
    for serialized in tf.data.TFRecordDataset(shard.path):
      yield tfrecord.parse_video(serialized)


def test_round_trip_masks_boxes_ids_frames(converted, synthetic_paths):
  dataset = ytvis_json.load(synthetic_paths['train'])
  seen = set()
  for v in _records(converted):
    video = dataset.video(int(v['video_id']))
    tracks = dataset.tracks_of(video.id)
    seen.add(video.id)
    assert v['name'].numpy().decode() == video.name
    assert (int(v['height']), int(v['width']), int(v['num_frames'])) == (video.height, video.width, video.length)
    assert v['track_id'].numpy().tolist() == [t.id for t in tracks]
    assert v['category_id'].numpy().tolist() == [t.category_id for t in tracks]
    assert v['label'].numpy().tolist() == [dataset.category_table.to_index(t.category_id) for t in tracks]
    assert v['iscrowd'].numpy().tolist() == [t.iscrowd for t in tracks]
    for t, name in enumerate(video.file_names):  # Frame bytes exactly as on disk.
      with open(os.path.join(synthetic_paths['images'], name), 'rb') as f:
        assert v['encoded'][t].numpy() == f.read()
    masks = tfrecord.decode_masks(v['mask_png'], v['height'], v['width']).numpy()  # [L, K, H, W]
    for k, track in enumerate(tracks):
      reference = ytvis_json.decode_track_masks(track)
      np.testing.assert_array_equal(masks[:, k], reference)
      present = reference.reshape(video.length, -1).any(1)
      np.testing.assert_array_equal(v['present'].numpy()[:, k], present)
      for t in np.flatnonzero(present):
        np.testing.assert_allclose(v['bbox'].numpy()[t, k], track.bboxes[t], rtol=0, atol=1e-4)
        # The stored json box is the tight box of the RLE.
        np.testing.assert_allclose(v['bbox'].numpy()[t, k], mask_utils.toBbox(track.segmentations[t]), atol=1e-4)
      assert np.all(v['bbox'].numpy()[~present, k] == 0)
  assert seen == {v.id for v in dataset.videos}


def test_manifest_counts_and_checksums(converted, synthetic_paths):
  manifest = tfrecord.load_manifest(converted, verify_checksums=True)
  dataset = ytvis_json.load(synthetic_paths['train'])
  raw = manifest.raw
  assert raw['format_version'] == tfrecord.FORMAT_VERSION and raw['format'] == 'ytvis'
  assert manifest.num_videos == len(dataset.videos) == sum(s.num_records for s in manifest.shards)
  assert raw['num_frames'] == sum(v.length for v in dataset.videos)
  assert raw['num_tracks'] == len(dataset.tracks)
  assert raw['max_tracks_per_video'] == max(len(dataset.tracks_of(v.id)) for v in dataset.videos)
  assert manifest.category_ids == dataset.category_table.ids
  assert [c['index'] for c in manifest.categories] == list(range(len(manifest.categories)))
  assert len(manifest.shards) == 2 and all(s.num_records > 0 for s in manifest.shards)
  assert raw['skipped']['count'] == 0
  assert not [f for f in os.listdir(converted) if f.endswith('.tmp')]


def test_cli_parallel_workers_progress(synthetic_paths, tmp_path):
  """The real command line, with worker processes and a progress bar."""
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'data_pipeline.convert', '--format', 'ytvis', '--json', synthetic_paths['valid'],
       '--images', synthetic_paths['images'], '--out', str(out), '--num-shards', '1', '--workers', '2'],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr
  assert 'Traceback' not in proc.stderr
  assert '100%' in proc.stderr  # tqdm
  manifest = tfrecord.load_manifest(str(out), verify_checksums=True)
  assert manifest.num_videos == len(ytvis_json.load(synthetic_paths['valid']).videos)


def _write_json(path, content):
  with open(path, 'w') as f:
    json.dump(content, f)
  return str(path)


@pytest.fixture
def train_content(synthetic_paths):
  with open(synthetic_paths['train']) as f:
    return json.load(f)


def _one_error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  errors = [line for line in err if line.startswith('error:')]
  assert len(errors) == 1, err
  assert not any('Traceback' in line for line in err)
  return errors[0]


def test_missing_jpeg_names_file_video_frame(train_content, synthetic_paths, tmp_path, capsys):
  content = copy.deepcopy(train_content)
  video = content['videos'][1]
  video['file_names'][3] = video['file_names'][3].replace('.jpg', '_missing.jpg')
  bad = _write_json(tmp_path / 'bad.json', content)
  out = tmp_path / 'out'
  code = _run(['--format', 'ytvis', '--json', bad, '--images', synthetic_paths['images'], '--out', str(out),
               '--num-shards', '1', '--workers', '1'])
  line = _one_error_line(capsys)
  assert code == 2
  assert '_missing.jpg' in line and f'video id={video["id"]}' in line and 'frame 3' in line
  assert not os.path.exists(out / tfrecord.MANIFEST_NAME)
  with pytest.raises(tfrecord.RecordFormatError, match='not a finished conversion'):
    tfrecord.load_manifest(str(out))

  # --skip-bad skips that video and records it.
  code = _run(['--format', 'ytvis', '--json', bad, '--images', synthetic_paths['images'], '--out', str(out),
               '--num-shards', '1', '--workers', '1', '--skip-bad'])
  assert code == 0
  manifest = tfrecord.load_manifest(str(out))
  assert manifest.num_videos == len(content['videos']) - 1
  assert manifest.raw['skipped']['count'] == 1
  assert manifest.raw['skipped']['videos'][0]['video_id'] == video['id']


def test_json_errors_one_line(train_content, synthetic_paths, tmp_path, capsys):
  images = synthetic_paths['images']
  cases = []
  content = copy.deepcopy(train_content)  # RLE size differs from the frame size.
  ann = content['annotations'][0]
  t = next(i for i, s in enumerate(ann['segmentations']) if s is not None)
  ann['segmentations'][t]['size'] = [ann['segmentations'][t]['size'][0] + 1, ann['segmentations'][t]['size'][1]]
  cases.append((content, [f'annotation id={ann["id"]}', f'segmentations[{t}]', 'RLE size']))
  content = copy.deepcopy(train_content)  # Empty video.
  content['videos'][0]['file_names'] = []
  content['videos'][0]['length'] = 0
  cases.append((content, [f'video id={content["videos"][0]["id"]}', 'empty video']))
  content = copy.deepcopy(train_content)  # Unknown category.
  content['annotations'][0]['category_id'] = 999
  cases.append((content, ['unknown category_id 999']))
  for i, (content, expected) in enumerate(cases):
    bad = _write_json(tmp_path / f'bad{i}.json', content)
    code = _run(['--format', 'ytvis', '--json', bad, '--images', images, '--out', str(tmp_path / f'o{i}'),
                 '--num-shards', '1', '--workers', '1'])
    line = _one_error_line(capsys)
    assert code == 2
    assert bad in line
    for text in expected:
      assert text in line, line


def test_frame_size_mismatch_and_not_json(train_content, synthetic_paths, tmp_path, capsys):
  content = copy.deepcopy(train_content)
  video = content['videos'][0]
  video['height'] += 2
  for ann in content['annotations']:  # Keep the json consistent so that only the frame check fails.
    if ann['video_id'] == video['id']:
      ann['segmentations'] = [None] * video['length']
      ann['bboxes'] = [None] * video['length']
      ann['areas'] = [None] * video['length']
      ann.pop('height', None)
  bad = _write_json(tmp_path / 'size.json', content)
  assert _run(['--format', 'ytvis', '--json', bad, '--images', synthetic_paths['images'],
               '--out', str(tmp_path / 'o'), '--num-shards', '1', '--workers', '1']) == 2
  line = _one_error_line(capsys)
  assert video['file_names'][0] in line and f'video id={video["id"]}' in line and 'json says' in line

  not_json = tmp_path / 'broken.json'
  not_json.write_text('{"videos": [')
  assert _run(['--format', 'ytvis', '--json', str(not_json), '--images', synthetic_paths['images'],
               '--out', str(tmp_path / 'o2'), '--num-shards', '1']) == 2
  assert 'not valid JSON' in _one_error_line(capsys)


def test_cli_subprocess_error_has_no_traceback(tmp_path, synthetic_paths):
  proc = subprocess.run(
      [sys.executable, '-m', 'data_pipeline.convert', '--format', 'ytvis', '--json', str(tmp_path / 'nope.json'),
       '--images', synthetic_paths['images'], '--out', str(tmp_path / 'o'), '--num-shards', '1'],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('error:') and 'nope.json' in proc.stderr


def test_existing_output_and_truncated_shard(converted, synthetic_paths, tmp_path, capsys):
  out = tmp_path / 'copy'
  assert _run(['--format', 'ytvis', '--json', synthetic_paths['valid'], '--images', synthetic_paths['images'],
               '--out', str(out), '--num-shards', '1', '--workers', '1']) == 0
  # A finished conversion is not overwritten by accident.
  assert _run(['--format', 'ytvis', '--json', synthetic_paths['valid'], '--images', synthetic_paths['images'],
               '--out', str(out), '--num-shards', '1', '--workers', '1']) == 2
  assert '--overwrite' in _one_error_line(capsys)
  # Truncated shard: the reader names it before reading anything.
  shard = tfrecord.load_manifest(str(out)).shards[0].path
  with open(shard, 'r+b') as f:
    f.truncate(os.path.getsize(shard) - 10)
  with pytest.raises(tfrecord.RecordFormatError, match=os.path.basename(shard) + '.*truncated'):
    tfrecord.load_manifest(str(out))
  assert convert.main(['--verify', str(out)]) == 2
  assert os.path.basename(shard) in _one_error_line(capsys)
  assert convert.main(['--verify', converted]) == 0
  assert 'OK' in capsys.readouterr().out
  # A manifest of another format version is refused.
  manifest_path = os.path.join(converted, tfrecord.MANIFEST_NAME)
  with open(manifest_path) as f:
    raw = json.load(f)
  raw['format_version'] = 99
  other = tmp_path / 'other'
  other.mkdir()
  _write_json(other / tfrecord.MANIFEST_NAME, raw)
  with pytest.raises(tfrecord.RecordFormatError, match='format_version'):
    tfrecord.load_manifest(str(other))


def test_coco_single_frame_records(synthetic_paths, tmp_path):
  """A COCO instances json (polygon + RLE + crowd) becomes one-frame records with the same masks."""
  dataset = ytvis_json.load(synthetic_paths['train'])
  images, annotations = [], []
  image_without_annotation = None
  for i, video in enumerate(dataset.videos[:3]):
    images.append({'id': 100 + i, 'file_name': video.file_names[0], 'height': video.height, 'width': video.width})
    for track in dataset.tracks_of(video.id):
      if track.segmentations[0] is None:
        continue
      annotations.append({'id': 1000 + len(annotations), 'image_id': 100 + i, 'category_id': track.category_id,
                          'segmentation': track.segmentations[0], 'bbox': list(track.bboxes[0]),
                          'area': track.areas[0], 'iscrowd': 0})
  h, w = dataset.videos[0].height, dataset.videos[0].width
  annotations.append({'id': 5000, 'image_id': 100, 'category_id': 1, 'segmentation': [[2, 2, 20, 2, 20, 12, 2, 12]],
                      'bbox': [2, 2, 18, 10], 'area': 180, 'iscrowd': 0})
  image_without_annotation = {'id': 999, 'file_name': dataset.videos[3].file_names[0], 'height': h, 'width': w}
  coco = {'images': images + [image_without_annotation], 'annotations': annotations,
          'categories': [{'id': c.id, 'name': c.name} for c in dataset.categories]}
  path = _write_json(tmp_path / 'coco.json', coco)
  out = tmp_path / 'coco_tfr'
  assert _run(['--format', 'coco', '--json', path, '--images', synthetic_paths['images'], '--out', str(out),
               '--num-shards', '1', '--workers', '1']) == 0
  manifest = tfrecord.load_manifest(str(out))
  assert manifest.source_format == 'coco'
  assert manifest.raw['num_images_without_annotations_dropped'] == 1
  by_id = {a['id']: a for a in annotations}
  count = 0
  for v in _records(str(out)):
    assert int(v['num_frames']) == 1
    masks = tfrecord.decode_masks(v['mask_png'], v['height'], v['width']).numpy()
    for k, ann_id in enumerate(v['track_id'].numpy()):
      segm = by_id[ann_id]['segmentation']
      rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w)) if isinstance(segm, list) else segm
      np.testing.assert_array_equal(masks[0, k], mask_utils.decode(rle))
      count += 1
  assert count == len(annotations)


def test_windowed_records_round_trip(synthetic_paths, tmp_path):
  """--window splits long videos into records of <= W frames that reassemble to the source; eval refuses them."""
  from data_pipeline import input as input_lib  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / 'win')
  assert _run(['--format', 'ytvis', '--json', synthetic_paths['train'], '--images', synthetic_paths['images'],
               '--out', out, '--num-shards', '2', '--workers', '1', '--window', '5']) == 0
  dataset = ytvis_json.load(synthetic_paths['train'])
  manifest = tfrecord.load_manifest(out)
  assert manifest.window == 5 and manifest.num_videos == len(dataset.videos)
  assert manifest.num_records == sum(-(-v.length // 5) for v in dataset.videos)
  pieces = {}
  for v in _records(out):
    assert int(v['num_frames']) <= 5
    pieces.setdefault(int(v['video_id']), []).append(v)
  for video in dataset.videos:
    parts = sorted(pieces[video.id], key=lambda p: int(p['frame_offset']))
    assert [int(p['frame_offset']) for p in parts] == list(range(0, video.length, 5))
    assert all(int(p['total_frames']) == video.length for p in parts)
    for part in parts:
      start, length = int(part['frame_offset']), int(part['num_frames'])
      for t in range(length):
        with open(os.path.join(synthetic_paths['images'], video.file_names[start + t]), 'rb') as f:
          assert part['encoded'][t].numpy() == f.read()
      masks = tfrecord.decode_masks(part['mask_png'], part['height'], part['width']).numpy()
      ids = part['track_id'].numpy().tolist()
      for track in dataset.tracks_of(video.id):
        reference = ytvis_json.decode_track_masks(track)[start:start + length]
        if track.id in ids:
          np.testing.assert_array_equal(masks[:, ids.index(track.id)], reference)
        else:
          assert not reference.any(), 'only tracks absent from the window are left out'
  sampler = samplers.ClipSampler(kind='reference', clip_len=3, frame_range=20)
  it = input_lib.TrainIterator(input_lib.TrainSpec(root=out, sampler=sampler, batch_size=4, max_instances=4,
                                                   min_sizes=(48,), max_size=64))
  batch = next(it)
  lengths = np.array([dataset.video(int(i)).length for i in batch['video_id']])
  assert np.all((batch['frame_index'] >= 0) & (batch['frame_index'] < lengths[:, None]))
  with pytest.raises(tfrecord.RecordFormatError, match='window'):
    next(input_lib.eval_videos(out))
