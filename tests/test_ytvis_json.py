"""Tests for data_pipeline.ytvis_json: parsing, RLE forms, category table, and every validation error."""

import copy
import json
import os
from collections.abc import Callable

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from data_pipeline import ytvis_json
from visjax.evaluation import rle as rle_lib


def _decode(rle) -> np.ndarray:
  return mask_utils.decode([rle])[:, :, 0]


def _runs_oracle(mask: np.ndarray) -> list[int]:
  """Uncompressed COCO counts by a plain loop over the column-major pixels (independent of the code under test)."""
  runs, value, count = [], 0, 0
  for pixel in mask.ravel(order='F'):
    if pixel != value:
      runs.append(count)
      value, count = pixel, 0
    count += 1
  runs.append(count)
  return runs


@pytest.fixture(scope='module')
def train_content(synthetic_paths):
  with open(synthetic_paths['train']) as f:
    return json.load(f)


@pytest.fixture
def content(train_content):
  return copy.deepcopy(train_content)


def _first_present(ann) -> int:
  return next(t for t, s in enumerate(ann['segmentations']) if s is not None)


def test_load_synthetic(synthetic_paths, train_content):
  dataset = ytvis_json.load(synthetic_paths['train'], images_dir=synthetic_paths['images'])
  assert dataset.source == synthetic_paths['train'] and dataset.has_annotations
  assert [v.id for v in dataset.videos] == [v['id'] for v in train_content['videos']]
  assert [t.id for t in dataset.tracks] == [a['id'] for a in train_content['annotations']]
  for ann, track in zip(train_content['annotations'], dataset.tracks):
    video = dataset.video(ann['video_id'])
    assert track in dataset.tracks_of(video.id)
    assert (track.height, track.width, track.length) == (video.height, video.width, video.length)
    assert track.category_id == ann['category_id'] and track.iscrowd == bool(ann['iscrowd'])
    assert list(track.segmentations) == ann['segmentations']
    assert [None if b is None else list(b) for b in track.bboxes] == ann['bboxes']
    assert list(track.areas) == ann['areas']
    np.testing.assert_array_equal(track.present, [s is not None for s in ann['segmentations']])
  video = dataset.videos[0]
  assert video.name == video.file_names[0].split('/')[0]
  with pytest.raises(KeyError, match='no video with id 999'):
    dataset.video(999)


def test_decode_track_masks(synthetic_paths, train_content):
  dataset = ytvis_json.load(synthetic_paths['train'])
  track = dataset.tracks[0]
  masks = ytvis_json.decode_track_masks(track)
  assert masks.shape == (track.length, track.height, track.width) and masks.dtype == np.uint8
  for t, segm in enumerate(train_content['annotations'][0]['segmentations']):
    expected = np.zeros(masks.shape[1:], np.uint8) if segm is None else _decode(segm)
    np.testing.assert_array_equal(masks[t], expected)
    if segm is not None:
      np.testing.assert_array_equal(ytvis_json.rle_to_mask(segm), expected)


def test_compressed_rle_counts_matches_loop_oracle():
  rng = np.random.default_rng(0)
  for i in range(60):
    h, w = rng.integers(1, 40, size=2)
    if i % 3 == 0:
      mask = np.zeros((h, w), np.uint8)
      mask[rng.integers(h):, rng.integers(w):] = 1
    else:
      mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(mask))
    np.testing.assert_array_equal(rle_lib.compressed_rle_counts(rle['counts'].decode()), _runs_oracle(mask))
  big = np.zeros((720, 1280), np.uint8)
  big[100:600, 200:900] = 1
  rle = mask_utils.encode(np.asfortranarray(big))
  np.testing.assert_array_equal(rle_lib.compressed_rle_counts(rle['counts'].decode()), _runs_oracle(big))


def test_uncompressed_rle_and_polygons_are_normalised(content):
  video = content['videos'][0]
  h, w = video['height'], video['width']
  ann = next(a for a in content['annotations'] if a['video_id'] == video['id'])
  t = _first_present(ann)
  mask = _decode(ann['segmentations'][t])
  ann['segmentations'][t] = {'size': [h, w], 'counts': _runs_oracle(mask)}
  square = [[10.0, 12.0, 30.0, 12.0, 30.0, 40.0, 10.0, 40.0]]
  absent = next((i for i, s in enumerate(ann['segmentations']) if s is None), None)
  if absent is None:
    absent = (t + 1) % video['length']
  ann['segmentations'][absent] = square
  ann['bboxes'][absent] = None
  ann['areas'][absent] = None
  track = next(t for t in ytvis_json.parse(content, source='mem.json').tracks if t.id == ann['id'])
  assert isinstance(track.segmentations[t]['counts'], str)
  np.testing.assert_array_equal(_decode(track.segmentations[t]), mask)
  expected = _decode(mask_utils.merge(mask_utils.frPyObjects(square, h, w)))
  np.testing.assert_array_equal(_decode(track.segmentations[absent]), expected)
  # Missing boxes / areas are computed from the mask.
  rows, cols = np.nonzero(expected)
  assert track.bboxes[absent] == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
  assert track.areas[absent] == expected.sum()


def test_missing_bboxes_and_areas_are_computed(content):
  expected = ytvis_json.parse(copy.deepcopy(content)).tracks
  for ann in content['annotations']:
    del ann['bboxes'], ann['areas']
  tracks = ytvis_json.parse(content).tracks
  assert [t.bboxes for t in tracks] == [t.bboxes for t in expected]
  assert [t.areas for t in tracks] == [t.areas for t in expected]


def test_files_without_annotations(content):
  del content['annotations']
  dataset = ytvis_json.parse(content)
  assert not dataset.has_annotations and dataset.tracks == ()
  assert dataset.tracks_of(dataset.videos[0].id) == ()
  content['annotations'] = None
  assert not ytvis_json.parse(content).has_annotations
  del content['categories']
  assert len(ytvis_json.parse(content).videos) == len(content['videos'])


def test_category_table():
  categories = [ytvis_json.Category(40, 'zebra'), ytvis_json.Category(3, 'cat'), ytvis_json.Category(7, 'dog')]
  table = ytvis_json.CategoryTable.from_categories(categories)
  assert table.ids == (3, 7, 40) and table.names == ('cat', 'dog', 'zebra') and len(table) == 3
  assert [table.to_index(i) for i in (3, 7, 40)] == [0, 1, 2]
  assert [table.to_id(i) for i in range(3)] == [3, 7, 40]
  ids = np.array([[40, 3], [7, 7]])
  np.testing.assert_array_equal(table.to_indices(ids), [[2, 0], [1, 1]])
  np.testing.assert_array_equal(table.to_ids(table.to_indices(ids)), ids)
  assert table.to_json()[1] == {'index': 1, 'id': 7, 'name': 'dog'}
  with pytest.raises(KeyError, match='unknown category_id 5'):
    table.to_index(5)
  with pytest.raises(KeyError, match=r'\[41\]'):
    table.to_indices([3, 41])
  with pytest.raises(IndexError):
    table.to_id(3)
  with pytest.raises(IndexError):
    table.to_ids([-1])


def _ann(content, index=0):
  return content['annotations'][index]


def _set_segm(content, value):
  ann = _ann(content)
  ann['segmentations'][_first_present(ann)] = value


def _wrong_sum_rle(content):
  video = content['videos'][0]
  h, w = video['height'], video['width']
  rle = mask_utils.encode(np.asfortranarray(np.ones((h, w + 1), np.uint8)))
  return {'size': [h, w], 'counts': rle['counts'].decode()}


def _mutations() -> dict[str, tuple[Callable, list[str]]]:
  """name -> (mutate(content), substrings the error must contain). `{a}` is the first annotation id,
  `{v}` its video id, `{v0}` the first video's id."""

  def dup_video(c):
    c['videos'].append(copy.deepcopy(c['videos'][0]))

  def dup_annotation(c):
    c['annotations'].append(copy.deepcopy(c['annotations'][0]))

  def dup_category(c):
    c['categories'].append(dict(c['categories'][0], name='again'))

  def unknown_video(c):
    _ann(c)['video_id'] = 999

  def unknown_category(c):
    _ann(c)['category_id'] = 77

  def segm_length(c):
    _ann(c)['segmentations'].append(None)

  def rle_size(c):
    ann = _ann(c)
    ann['segmentations'][_first_present(ann)]['size'] = [7, 9]

  def bbox_length(c):
    _ann(c)['bboxes'].pop()

  def area_length(c):
    _ann(c)['areas'].append(1.0)

  def empty_video(c):
    c['videos'][0]['file_names'] = []
    c['videos'][0]['length'] = 0

  def length_mismatch(c):
    c['videos'][0]['length'] += 1

  def uncompressed_sum(c):
    video = c['videos'][0]
    _set_segm(c, {'size': [video['height'], video['width']], 'counts': [5, 3]})

  def compressed_sum(c):
    _set_segm(c, _wrong_sum_rle(c))

  def compressed_garbage(c):
    video = c['videos'][0]
    _set_segm(c, {'size': [video['height'], video['width']], 'counts': 'ab cd'})

  def compressed_non_ascii(c):
    video = c['videos'][0]
    _set_segm(c, {'size': [video['height'], video['width']], 'counts': '0\u00e90'})

  def compressed_empty(c):
    video = c['videos'][0]
    _set_segm(c, {'size': [video['height'], video['width']], 'counts': ''})

  def bad_polygon(c):
    _set_segm(c, [[1.0, 2.0, 3.0, 4.0]])

  def bad_bbox(c):
    ann = _ann(c)
    ann['bboxes'][_first_present(ann)] = [1.0, 2.0, -3.0, 4.0]

  def bad_area(c):
    ann = _ann(c)
    ann['areas'][_first_present(ann)] = 'big'

  def bad_iscrowd(c):
    _ann(c)['iscrowd'] = 2

  def no_segmentations(c):
    del _ann(c)['segmentations']

  def annotation_size(c):
    _ann(c)['height'] = 5

  def video_id_type(c):
    c['videos'][0]['id'] = '1'

  def missing_height(c):
    del c['videos'][0]['height']

  return {
      'duplicate video id': (dup_video, ['duplicate id {v0}', 'videos']),
      'duplicate annotation id': (dup_annotation, ['duplicate id {a}', 'annotations']),
      'duplicate category id': (dup_category, ['duplicate id 1', 'categories']),
      'unknown video': (unknown_video, ['annotation id={a}', 'video_id 999']),
      'unknown category': (unknown_category, ['annotation id={a}', 'unknown category_id 77']),
      'segmentations length': (segm_length, ['annotation id={a}', '"segmentations"', 'frames']),
      'rle size': (rle_size, ['annotation id={a}', 'segmentations[', 'RLE size [7, 9]']),
      'bboxes length': (bbox_length, ['annotation id={a}', '"bboxes"']),
      'areas length': (area_length, ['annotation id={a}', '"areas"']),
      'empty video': (empty_video, ['video id={v0}', 'empty video']),
      'length mismatch': (length_mismatch, ['video id={v0}', '"length"']),
      'uncompressed rle sum': (uncompressed_sum, ['annotation id={a}', 'counts sum to 8']),
      'compressed rle sum': (compressed_sum, ['annotation id={a}', 'invalid compressed RLE: decodes to']),
      'compressed rle garbage': (compressed_garbage, ['annotation id={a}', 'invalid compressed RLE']),
      'compressed rle non-ascii': (compressed_non_ascii, ['annotation id={a}', 'non-ASCII']),
      'compressed rle empty': (compressed_empty, ['annotation id={a}', 'empty counts string']),
      'bad polygon': (bad_polygon, ['annotation id={a}', 'polygon']),
      'bad bbox': (bad_bbox, ['annotation id={a}', 'bboxes[']),
      'bad area': (bad_area, ['annotation id={a}', 'areas[']),
      'bad iscrowd': (bad_iscrowd, ['annotation id={a}', '"iscrowd"']),
      'no segmentations': (no_segmentations, ['annotation id={a}', 'missing field "segmentations"']),
      'annotation size': (annotation_size, ['annotation id={a}', '"height"']),
      'video id type': (video_id_type, ['videos[0]', '"id" must be an integer']),
      'missing height': (missing_height, ['video id={v0}', 'missing field "height"']),
  }


@pytest.mark.parametrize('name', sorted(_mutations()))
def test_validation_errors_name_file_entry_and_field(name, content, tmp_path):
  mutate, expected = _mutations()[name]
  ids = {'a': _ann(content)['id'], 'v': _ann(content)['video_id'], 'v0': content['videos'][0]['id']}
  mutate(content)
  path = tmp_path / 'bad.json'
  path.write_text(json.dumps(content))
  with pytest.raises(ytvis_json.DatasetFormatError) as info:
    ytvis_json.load(str(path))
  message = str(info.value)
  assert message.startswith(f'{path}: '), message
  for part in expected:
    assert part.format(**ids) in message, message


def test_missing_frame_on_disk(synthetic_paths, train_content, tmp_path):
  images = tmp_path / 'JPEGImages'
  video = train_content['videos'][-1]
  for video_entry in train_content['videos']:
    for file_name in video_entry['file_names']:
      os.makedirs(images / os.path.dirname(file_name), exist_ok=True)
      (images / file_name).write_bytes(b'')
  ytvis_json.load(synthetic_paths['train'], images_dir=str(images))
  os.remove(images / video['file_names'][3])
  with pytest.raises(ytvis_json.DatasetFormatError, match=rf"video id={video['id']}: 1 of {video['length']} frames "
                     rf"missing .*{video['file_names'][3]}"):
    ytvis_json.load(synthetic_paths['train'], images_dir=str(images))
  with pytest.raises(ytvis_json.DatasetFormatError, match='does not exist'):
    ytvis_json.load(synthetic_paths['train'], images_dir=str(tmp_path / 'nowhere'))


def test_invalid_json_file(tmp_path):
  path = tmp_path / 'broken.json'
  path.write_text('{"videos": [')
  with pytest.raises(ytvis_json.DatasetFormatError, match='broken.json: not valid JSON'):
    ytvis_json.load(str(path))
  path.write_text('[]')
  with pytest.raises(ytvis_json.DatasetFormatError, match='top level'):
    ytvis_json.load(str(path))
