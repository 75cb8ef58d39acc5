"""COCO -> VIS category maps (data_pipeline.category_maps), `convert --category-map`, and mixing a mapped COCO
directory with a VIS directory in the train input (same labels; a mismatched table is an error naming both)."""

import importlib
import json

import pytest

pytest.importorskip('tensorflow')

from data_pipeline import category_maps  # pylint: disable=g-import-not-at-top
from data_pipeline import convert
from data_pipeline import input as input_lib
from data_pipeline import tfrecord
from data_pipeline import ytvis_json

# Tiny COCO json: the COCO ids and names of the classes used (COCO 2017 categories).
COCO_CATEGORIES = [{'id': 1, 'name': 'person'}, {'id': 2, 'name': 'bicycle'}, {'id': 3, 'name': 'car'},
                   {'id': 4, 'name': 'motorcycle'}, {'id': 10, 'name': 'traffic light'}]
# (image index, COCO category id, iscrowd) per annotation. Image 2 holds only an unmapped class, image 3 only a crowd.
ANNOTATIONS = [(0, 1, 0), (0, 10, 0), (0, 3, 0), (1, 2, 0), (1, 4, 0), (2, 10, 0), (3, 1, 1)]
# Hand-computed with COCO_TO_YTVIS_2019 (1 -> 1 person, 2 and 4 -> 21 motorbike, 3 -> 6 sedan, 10 unmapped): the
# records of images 0 and 1 with (target json id, contiguous label = id - 1); images 2 and 3 dropped.
EXPECTED = {0: [(1, 0), (6, 5)], 1: [(21, 20), (21, 20)]}


def _box_polygon(k, h, w):
  """A rectangle polygon, different per annotation k, inside an h x w image."""
  x0, y0 = 2 + 3 * k, 2 + 2 * k
  return [[x0, y0, min(w - 1, x0 + 20), y0, min(w - 1, x0 + 20), min(h - 1, y0 + 12), x0, min(h - 1, y0 + 12)]]


def _coco_json(synthetic_paths, path):
  dataset = ytvis_json.load(synthetic_paths['train'])
  images = [{'id': 500 + i, 'file_name': v.file_names[0], 'height': v.height, 'width': v.width}
            for i, v in enumerate(dataset.videos[:4])]
  annotations = []
  for k, (i, category, crowd) in enumerate(ANNOTATIONS):
    h, w = images[i]['height'], images[i]['width']
    annotations.append({'id': 900 + k, 'image_id': 500 + i, 'category_id': category, 'iscrowd': crowd,
                        'segmentation': _box_polygon(k, h, w), 'bbox': [2 + 3 * k, 2 + 2 * k, 20, 12], 'area': 240})
  content = {'images': images, 'annotations': annotations, 'categories': COCO_CATEGORIES}
  with open(path, 'w') as f:
    json.dump(content, f)
  return str(path)


def _vis_json(synthetic_paths, path, names):
  """The synthetic YTVIS train json with the category table of `names` (its ids 1..6 are kept)."""
  with open(synthetic_paths['train']) as f:
    content = json.load(f)
  content['categories'] = [{'id': i + 1, 'name': n} for i, n in enumerate(names)]
  with open(path, 'w') as f:
    json.dump(content, f)
  return str(path)


def _records(root):
  tf = tfrecord.import_tf()
  for shard in tfrecord.load_manifest(root).shards:
    for serialized in tf.data.TFRecordDataset(shard.path):
      yield tfrecord.parse_video(serialized)


def _convert(argv):
  return convert.main(argv + ['--num-shards', '1', '--workers', '1', '--no-progress'])


@pytest.fixture(scope='module')
def dirs(synthetic_paths, tmp_path_factory):
  """A COCO json converted with and without --category-map coco_to_ytvis2019, and a VIS json with YTVIS19 classes."""
  tmp = tmp_path_factory.mktemp('catmap')
  coco = _coco_json(synthetic_paths, tmp / 'coco.json')
  images = synthetic_paths['images']
  out = {'coco_json': coco, 'mapped': str(tmp / 'coco2ytvis2019'), 'unmapped': str(tmp / 'coco'),
         'vis': str(tmp / 'ytvis19')}
  assert _convert(['--format', 'coco', '--json', coco, '--images', images, '--out', out['mapped'],
                   '--category-map', 'coco_to_ytvis2019']) == 0
  assert _convert(['--format', 'coco', '--json', coco, '--images', images, '--out', out['unmapped']]) == 0
  vis = _vis_json(synthetic_paths, tmp / 'vis.json', category_maps.YTVIS_2019_NAMES)
  assert _convert(['--format', 'ytvis', '--json', vis, '--images', images, '--out', out['vis']]) == 0
  return out


def test_tables_match_the_official_facts():
  """Sizes and a few hand-checked entries (COCO names -> target names) of the three maps."""
  for m, n in (('coco_to_ytvis2019', 40), ('coco_to_ytvis2021', 40), ('coco_to_ovis', 25)):
    table = category_maps.get(m)
    assert len(table.target_names) == n
    assert all(1 <= v <= n for v in table.mapping.values())
  name = lambda m, coco_id: category_maps.get(m).target_names[category_maps.get(m).mapping[coco_id] - 1]
  assert [name('coco_to_ytvis2019', i) for i in (1, 2, 3, 35, 43)] == [
      'person', 'motorbike', 'sedan', 'snowboard', 'tennis_racket']
  assert [name('coco_to_ytvis2021', i) for i in (16, 34, 24)] == ['bird', 'flying_disc', 'zebra']
  assert [name('coco_to_ovis', i) for i in (3, 6, 8, 20)] == ['Vehical', 'Vehical', 'Vehical', 'Sheep']
  assert len(category_maps.COCO_TO_YTVIS_2019) == 21 and len(category_maps.COCO_TO_OVIS) == 17
  with pytest.raises(ValueError, match='coco_to_ovis'):
    category_maps.get('coco_to_kitti')


def test_convert_writes_target_categories_and_counts(dirs):
  manifest = tfrecord.load_manifest(dirs['mapped'])
  assert manifest.categories == [{'index': i, 'id': i + 1, 'name': n}
                                 for i, n in enumerate(category_maps.YTVIS_2019_NAMES)]
  assert manifest.categories == tfrecord.load_manifest(dirs['vis']).categories
  assert manifest.raw['category_map'] == 'coco_to_ytvis2019'
  assert manifest.raw['num_annotations_unmapped_dropped'] == 2
  assert manifest.raw['num_images_without_annotations_dropped'] == 2  # image 2 (unmapped only), image 3 (crowd only)
  got = {int(v['video_id']) - 500: list(zip(v['category_id'].numpy().tolist(), v['label'].numpy().tolist()))
         for v in _records(dirs['mapped'])}
  assert got == EXPECTED
  unmapped = tfrecord.load_manifest(dirs['unmapped'])
  assert [c['id'] for c in unmapped.categories] == [1, 2, 3, 4, 10]
  assert unmapped.raw['num_annotations_unmapped_dropped'] == 0 and unmapped.raw['category_map'] == ''


def test_convert_category_map_errors(dirs, synthetic_paths, tmp_path, capsys):
  images = synthetic_paths['images']
  assert _convert(['--format', 'ytvis', '--json', synthetic_paths['train'], '--images', images,
                   '--out', str(tmp_path / 'a'), '--category-map', 'coco_to_ovis']) == 2
  assert 'needs --format coco' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    _convert(['--format', 'coco', '--json', dirs['coco_json'], '--images', images, '--out', str(tmp_path / 'b'),
              '--category-map', 'coco_to_kitti'])
  assert 'coco_to_ytvis2021' in capsys.readouterr().err
  with open(dirs['coco_json']) as f:
    content = json.load(f)
  content['annotations'][3]['category_id'] = 77  # Not among the json's categories.
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps(content))
  assert _convert(['--format', 'coco', '--json', str(bad), '--images', images, '--out', str(tmp_path / 'c'),
                   '--category-map', 'coco_to_ytvis2019']) == 2
  assert f'{bad}: annotations[3]: category_id 77' in capsys.readouterr().err


def test_check_same_categories_names_both_directories():
  table = [{'id': 1, 'name': 'person'}, {'id': 2, 'name': 'dog'}]
  category_maps.check_same_categories(['a', 'b'], [table, [dict(c, name=c['name'].upper()) for c in table]])
  with pytest.raises(ValueError, match=r'/data/coco \(2 categories\) vs /data/vis \(1\).*\(2, \'dog\'\)'):
    category_maps.check_same_categories(['/data/coco', '/data/vis'], [table, table[:1]])
  with pytest.raises(ValueError, match='/data/vis'):
    category_maps.check_same_categories(['/data/coco', '/data/vis'], [table, [table[0], {'id': 3, 'name': 'dog'}]])


def _joint_config(name, roots):
  """A shipped joint config pointed at tiny directories, with tiny sizes."""
  config = importlib.import_module(f'configs.{name}').get_config()
  config.dataset.tfrecords = ','.join(roots)
  config.input.update(batch_size=4, min_size_train=(48,), max_size_train=80, max_instances=4, shuffle_buffer=4,
                      prefetch=1)
  config.input.augment.crop_prob = 0.0
  return config


def test_joint_config_input_mixes_coco_and_vis_with_one_label_space(dirs):
  """vita_ytvis19's joint input on a mapped COCO directory + a YTVIS19-category directory: both sources appear,
  COCO clips carry the hand-computed target labels; an unmapped COCO directory is an error naming both."""
  config = _joint_config('vita_ytvis19', (dirs['mapped'], dirs['vis']))
  it = input_lib.make_train_iterator(config, config.input)  # the default Method.input_spec()
  assert it.mix.tolist() == [571, 429]  # DATASET_RATIO [1.0, 0.75]
  assert [r.rotation_center for r in it.recipes] == [(0.4, 0.6), None]  # Pseudo-clip recipe for COCO only.
  coco_labels, vis_labels = set(), set()
  for _ in range(3):
    batch = next(it)
    assert batch['image'].shape[:2] == (4, 5)
    for i, video_id in enumerate(batch['video_id']):
      labels = batch['labels'][i][batch['instance_valid'][i]].tolist()
      (coco_labels if video_id >= 500 else vis_labels).update(labels)
  assert coco_labels and coco_labels <= {0, 5, 20}
  assert vis_labels and vis_labels <= set(range(6))
  with pytest.raises(ValueError, match=f'{dirs["unmapped"]}.*vs {dirs["vis"]}'):
    bad = _joint_config('vita_ytvis19', (dirs['unmapped'], dirs['vis']))
    input_lib.make_train_iterator(bad, bad.input)
  with pytest.raises(ValueError, match="dataset_ratios='\\(\\)'"):
    bad = _joint_config('vita_ytvis19', (dirs['vis'],))
    input_lib.make_train_iterator(bad, bad.input)
