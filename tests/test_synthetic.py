"""Tests for data_pipeline.synthetic: determinism, exact YouTube-VIS layout, masks/boxes/areas, content."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data_pipeline import synthetic
from data_pipeline import ytvis_json

_TOP_KEYS = {'info', 'licenses', 'videos', 'categories', 'annotations'}
_VIDEO_KEYS = {'id', 'width', 'height', 'length', 'file_names', 'date_captured', 'license', 'flickr_url',
               'coco_url'}
_ANNOTATION_KEYS = {'id', 'video_id', 'category_id', 'iscrowd', 'segmentations', 'areas', 'bboxes', 'height',
                    'width', 'length'}
_SMALL = dict(min_frames=4, max_frames=8)


def _tree_bytes(root: str) -> dict[str, bytes]:
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def _load(paths, split):
  with open(paths[split]) as f:
    return json.load(f)


def _tight_box(mask: np.ndarray) -> list[float]:
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def test_same_seed_gives_identical_bytes(tmp_path):
  a = _tree_bytes(synthetic.generate(str(tmp_path / 'a'), 3, seed=7, **_SMALL)['root'])
  b = _tree_bytes(synthetic.generate(str(tmp_path / 'b'), 3, seed=7, **_SMALL)['root'])
  assert sorted(a) == sorted(b)
  assert any(k.endswith('.jpg') for k in a) and 'train.json' in a and 'valid.json' in a
  for key in a:
    assert a[key] == b[key], key


def test_different_seed_differs(tmp_path):
  a = _tree_bytes(synthetic.generate(str(tmp_path / 'a'), 2, seed=1, **_SMALL)['root'])
  b = _tree_bytes(synthetic.generate(str(tmp_path / 'b'), 2, seed=2, **_SMALL)['root'])
  assert a['train.json'] != b['train.json']
  first = 'JPEGImages/synth_00000/00000.jpg'
  assert a[first] != b[first]


def test_video_does_not_depend_on_set_size():
  small = synthetic.sample_video(3, 1, synthetic.Options(**_SMALL))
  again = synthetic.sample_video(3, 1, synthetic.Options(**_SMALL))
  other = synthetic.sample_video(3, 2, synthetic.Options(**_SMALL))
  np.testing.assert_array_equal(small.frames, again.frames)
  assert small.frames.shape != other.frames.shape or np.any(small.frames != other.frames)


def test_exact_ytvis_layout(synthetic_paths, synthetic_spec):
  ids = set()
  for split in ('train', 'valid'):
    content = _load(synthetic_paths, split)
    assert set(content) == _TOP_KEYS
    assert isinstance(content['info'], dict) and isinstance(content['licenses'], list)
    assert [c['id'] for c in content['categories']] == list(range(1, len(synthetic.CATEGORY_NAMES) + 1))
    for category in content['categories']:
      assert set(category) == {'id', 'name', 'supercategory'}
      assert isinstance(category['name'], str) and isinstance(category['supercategory'], str)
    videos = {}
    for video in content['videos']:
      assert set(video) == _VIDEO_KEYS
      for key in ('id', 'width', 'height', 'length', 'license'):
        assert type(video[key]) is int, key
      for key in ('date_captured', 'flickr_url', 'coco_url'):
        assert isinstance(video[key], str), key
      assert 8 <= video['length'] <= 24 and (video['height'], video['width']) == (96, 160)
      assert len(video['file_names']) == video['length']
      name = video['file_names'][0].split('/')[0]
      assert video['file_names'] == [f'{name}/{t:05d}.jpg' for t in range(video['length'])]
      for file_name in video['file_names']:
        with Image.open(os.path.join(synthetic_paths['images'], file_name)) as image:
          assert image.format == 'JPEG' and image.mode == 'RGB'
          assert image.size == (video['width'], video['height'])
      videos[video['id']] = video
    ids |= set(videos)
    assert content['annotations'], f'{split} has no annotations'
    for ann in content['annotations']:
      assert set(ann) == _ANNOTATION_KEYS
      for key in ('id', 'video_id', 'category_id', 'iscrowd', 'height', 'width', 'length'):
        assert type(ann[key]) is int, key
      video = videos[ann['video_id']]
      assert (ann['height'], ann['width']) == (video['height'], video['width'])
      assert ann['iscrowd'] == 0
      for key in ('segmentations', 'areas', 'bboxes'):
        assert isinstance(ann[key], list) and len(ann[key]) == video['length'], key
  assert ids == set(range(1, synthetic_spec['num_videos'] + 1))


def test_rle_boxes_and_areas_match_masks(synthetic_paths):
  checked = 0
  for split in ('train', 'valid'):
    content = _load(synthetic_paths, split)
    sizes = {v['id']: (v['height'], v['width']) for v in content['videos']}
    for ann in content['annotations']:
      assert any(s is not None for s in ann['segmentations'])
      for segm, area, box in zip(ann['segmentations'], ann['areas'], ann['bboxes']):
        if segm is None:
          assert area is None and box is None
          continue
        assert set(segm) == {'counts', 'size'} and isinstance(segm['counts'], str)
        assert segm['size'] == list(sizes[ann['video_id']])
        mask = mask_utils.decode([segm])[:, :, 0]
        assert mask.shape == sizes[ann['video_id']] and mask.any()
        assert isinstance(area, float) and area == float(mask.sum())
        assert box == _tight_box(mask)
        checked += 1
  assert checked > 50


def test_json_masks_equal_rendered_visible_masks(synthetic_paths, synthetic_spec):
  content = _load(synthetic_paths, 'train')
  video = content['videos'][0]
  index = int(video['file_names'][0].split('/')[0].split('_')[1])
  rendered = synthetic.sample_video(synthetic_spec['seed'], index)
  tracks = [a for a in content['annotations'] if a['video_id'] == video['id']]
  assert len(tracks) == len(rendered.visible_masks)
  for ann, visible, category in zip(tracks, rendered.visible_masks, rendered.category_ids):
    assert ann['category_id'] == category
    for t, segm in enumerate(ann['segmentations']):
      decoded = np.zeros(visible[t].shape, bool) if segm is None else mask_utils.decode([segm])[:, :, 0].astype(bool)
      np.testing.assert_array_equal(decoded, visible[t])
  # The JPEG frames are the rendered frames up to compression error.
  for t in (0, video['length'] - 1):
    with Image.open(os.path.join(synthetic_paths['images'], video['file_names'][t])) as image:
      jpeg = np.asarray(image, dtype=np.float64)
    assert np.abs(jpeg - rendered.frames[t]).mean() < 6.0


def test_motion_entering_leaving_and_occlusion():
  options = synthetic.Options(height=48, width=80, max_frames=12)
  entered = left = partly_hidden = fully_hidden = moved = 0
  for index in range(30):
    video = synthetic.sample_video(11, index, options)
    assert video.visible_masks.shape == video.full_masks.shape
    assert not np.any(video.visible_masks & ~video.full_masks)
    # Visible parts of different instances never overlap.
    assert video.visible_masks.sum(axis=0).max() <= 1
    for full, visible in zip(video.full_masks, video.visible_masks):
      present = visible.any(axis=(1, 2))
      assert present.any()
      first, last = np.flatnonzero(present)[[0, -1]]
      entered += first > 0 and not full[:first].any()
      left += last < len(present) - 1 and not full[last + 1:].any()
      hidden = full & ~visible
      partly_hidden += np.any(hidden.any(axis=(1, 2)) & present)
      fully_hidden += np.any(full.any(axis=(1, 2)) & ~present)
      ys, xs = np.nonzero(visible[first])
      ye, xe = np.nonzero(visible[last])
      moved += last > first and np.hypot(ys.mean() - ye.mean(), xs.mean() - xe.mean()) > 3
  assert entered >= 1 and left >= 1, (entered, left)
  assert partly_hidden >= 1 and fully_hidden >= 1, (partly_hidden, fully_hidden)
  assert moved >= 5


def test_categories_have_distinct_shapes_and_colours():
  video = synthetic.render_video(np.random.default_rng(0), (64, 64), 2, 4, synthetic.Options())
  assert video.frames.shape == (2, 64, 64, 3) and video.frames.dtype == np.uint8
  areas = []
  for kind in synthetic.CATEGORY_NAMES:
    u, v = np.meshgrid(np.linspace(-1.2, 1.2, 97), np.linspace(-1.2, 1.2, 97))
    areas.append(synthetic._shape_mask(kind, u[None], v[None]).mean())  # pylint: disable=protected-access
  assert len(set(np.round(areas, 3))) == len(areas) and min(areas) > 0.1


def test_options(tmp_path):
  paths = synthetic.generate(str(tmp_path / 'o'), 4, seed=5, min_frames=3, max_frames=3, crowd_fraction=1.0,
                             sizes=[(32, 48), (40, 24)], valid_fraction=0.5, uncompressed_rle=True)
  train, valid = _load(paths, 'train'), _load(paths, 'valid')
  assert len(train['videos']) == 2 and len(valid['videos']) == 2
  assert [v['id'] for v in train['videos'] + valid['videos']] == [1, 2, 3, 4]
  for content in (train, valid):
    for video in content['videos']:
      assert video['length'] == 3 and (video['height'], video['width']) in {(32, 48), (40, 24)}
    for ann in content['annotations']:
      assert ann['iscrowd'] == 1
      for segm, area in zip(ann['segmentations'], ann['areas']):
        if segm is not None:
          assert isinstance(segm['counts'], list) and sum(segm['counts']) == segm['size'][0] * segm['size'][1]
          assert mask_utils.area(mask_utils.frPyObjects(segm, *segm['size'])) == area
  with pytest.raises(ValueError, match='min_frames'):
    synthetic.generate(str(tmp_path / 'bad'), 2, seed=0, min_frames=5, max_frames=4)
  with pytest.raises(TypeError):
    synthetic.generate(str(tmp_path / 'bad'), 2, seed=0, no_such_option=1)
  with pytest.raises(ValueError, match='min_radius'):
    synthetic.generate(str(tmp_path / 'bad'), 2, seed=0, min_radius=0.3, max_radius=0.2)


def test_radius_option_scales_the_shapes():
  """Instances drawn without partners (crossing_fraction 0) have their size in [min_radius, max_radius]."""
  def mean_area(**options):
    opts = synthetic.Options(height=64, width=64, min_frames=2, max_frames=2, crossing_fraction=0.,
                             traverse_fraction=0., **options)
    areas = [synthetic.sample_video(0, i, opts).full_masks[:, 0].sum((1, 2)).mean() for i in range(12)]
    return float(np.mean(areas))
  small, large = mean_area(min_radius=0.08, max_radius=0.1), mean_area(min_radius=0.25, max_radius=0.3)
  # Areas scale with radius²: (0.275 / 0.09)² ≈ 9.3; partly off-frame shapes lower the ratio a little.
  assert 6 < large / small < 11


def test_generated_set_passes_validator(synthetic_paths):
  for split in ('train', 'valid'):
    dataset = ytvis_json.load(synthetic_paths[split], images_dir=synthetic_paths['images'])
    assert dataset.has_annotations and dataset.tracks


def test_cli(tmp_path, capsys):
  out = str(tmp_path / 'cli')
  synthetic.main(['--out', out, '--num-videos', '2', '--seed', '3', '--max-frames', '8', '--height', '40',
                  '--width', '56'])
  assert 'train.json' in capsys.readouterr().out
  with open(os.path.join(out, 'train.json')) as f:
    content = json.load(f)
  assert (content['videos'][0]['height'], content['videos'][0]['width']) == (40, 56)
  assert os.path.isfile(os.path.join(out, 'JPEGImages', content['videos'][0]['file_names'][0]))
  for bad in (['--num-videos', '0'], ['--num-videos', '1', '--sizes', '96x160x3'],
              ['--num-videos', '1', '--sizes', 'big'], ['--num-videos', '1', '--height', '8']):
    with pytest.raises(SystemExit):
      synthetic.main(['--out', out] + bad)


def test_pixels_under_masks_have_their_category_colour_family():
  styles = synthetic._CATEGORY_STYLES  # pylint: disable=protected-access
  families = np.array([(np.array(a) + np.array(b)) / 2 for _, _, a, b in styles])
  hits = total = 0
  for index in range(8):
    video = synthetic.sample_video(4, index, synthetic.Options(max_frames=10))
    frames = video.frames.astype(np.float64)
    for visible, category in zip(video.visible_masks, video.category_ids):
      for t in np.flatnonzero(visible.sum(axis=(1, 2)) >= 40):
        mean = frames[t][visible[t]].mean(axis=0)
        hits += np.argmin(np.linalg.norm(families - mean, axis=1)) == category - 1
        total += 1
  assert total > 50 and hits / total > 0.9, (hits, total)
