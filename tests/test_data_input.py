"""tf.data training clips and eval videos (data_pipeline.input, data_pipeline.augment) on the synthetic set."""

import dataclasses
import io
import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip('tensorflow')

from PIL import Image  # pylint: disable=g-import-not-at-top

import ml_collections  # pylint: disable=g-import-not-at-top

from configs import common  # pylint: disable=g-import-not-at-top
from configs import input_recipes  # pylint: disable=g-import-not-at-top
from data_pipeline import augment
from data_pipeline import convert
from data_pipeline import input as input_lib
from data_pipeline import samplers
from data_pipeline import synthetic
from data_pipeline import tfrecord
from data_pipeline import ytvis_json

METHODS = ('idol', 'vita', 'visolo', 'iai')
SIZES = dict(min_sizes=(48, 64), max_size=128, size_divisibility=32)
# Crop ranges scaled to the tiny frames (the methods' own are 384-600 and 352x624 on ~720p frames).
TINY_AUG = {'idol': {'crop_range': (40, 80)}, 'vita': {'crop_range': (40, 80), 'crop_resize': (80, 96)},
            'visolo': {'post_crop': (56, 96)}, 'iai': {}}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  """10 synthetic videos (landscape and portrait), converted into 4 and into 3 shards."""
  root = str(tmp_path_factory.mktemp('input_synth'))
  paths = synthetic.generate(root, num_videos=10, seed=3, sizes=((72, 120), (96, 64)), min_frames=4,
                             max_frames=12, max_instances=3, valid_fraction=0.0)
  out = {}
  for shards in (4, 3):
    out[shards] = os.path.join(root, f'tfr{shards}')
    convert.convert(fmt='ytvis', json_path=paths['train'], images_dir=paths['images'], out_dir=out[shards],
                    num_shards=shards, workers=1, progress=False)
  return {'paths': paths, 'dataset': ytvis_json.load(paths['train']), 'tfr': out}


def _official(method):
  """A method's official `config.input` sampler / augment / augment_pseudo sections (configs/input_recipes.py)."""
  c = ml_collections.ConfigDict({'input': {}})
  getattr(input_recipes, method)(c)
  return c.input


def _recipe(method, *, pseudo, min_sizes, max_size, **overrides):
  """The method's augmentation recipe with the test's overrides on its real-clip settings."""
  inp = _official(method)
  return augment.make_recipe({**inp.augment.to_dict(), **overrides}, min_sizes=min_sizes, max_size=max_size,
                             pseudo_overrides=inp.augment_pseudo if pseudo else None)


def _spec(root, method, **kwargs):
  inp = _official(method)
  if method == 'vita':
    inp.sampler.clip_len = 3
  base = dict(root=root, sampler=samplers.make_sampler(inp.sampler), batch_size=2, max_instances=4, seed=0,
              shuffle_buffer=4, prefetch=1, augment={**inp.augment.to_dict(), **TINY_AUG[method]},
              augment_pseudo=inp.augment_pseudo.to_dict(), **SIZES)
  base.update(kwargs)
  return input_lib.TrainSpec(**base)


def _np_boxes(masks, sizes):
  """float64 oracle: cxcywh of [T, N, H, W] masks normalised by the frame's (w, h); 0 when empty."""
  boxes = np.zeros(masks.shape[:2] + (4,))
  for t in range(masks.shape[0]):
    h, w = sizes[t]
    for n in range(masks.shape[1]):
      ys, xs = np.nonzero(masks[t, n])
      if ys.size:
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        boxes[t, n] = ((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
  return boxes


def _check_batch(batch, data, spec, buckets):
  b, n = spec.batch_size, spec.max_instances
  t = batch['image'].shape[1]
  h, w = batch['image'].shape[2:4]
  assert (h, w) in buckets
  expected = {
      'image': (np.uint8, (b, t, h, w, 3)), 'image_size': (np.int32, (b, t, 2)), 'boxes': (np.float32, (b, t, n, 4)),
      'masks': (np.uint8, (b, t, n, h, w)), 'present': (np.bool_, (b, t, n)), 'labels': (np.int32, (b, n)),
      'track_ids': (np.int32, (b, n)), 'instance_valid': (np.bool_, (b, n)), 'is_crowd': (np.bool_, (b, n)),
      'video_id': (np.int32, (b,)), 'frame_index': (np.int32, (b, t)),
  }
  assert set(batch) == set(expected)
  for key, (dtype, shape) in expected.items():
    assert batch[key].dtype == dtype and batch[key].shape == shape, (key, batch[key].dtype, batch[key].shape)
  dataset = data['dataset']
  for i in range(b):
    video = dataset.video(int(batch['video_id'][i]))
    tracks = {tr.id: tr for tr in dataset.tracks_of(video.id)}
    sizes = batch['image_size'][i]
    assert np.all((sizes >= 1) & (sizes <= (h, w)))
    assert np.all((batch['frame_index'][i] >= 0) & (batch['frame_index'][i] < video.length))
    masks = batch['masks'][i]
    assert set(np.unique(masks).tolist()) <= {0, 1}
    for f in range(t):  # Zero padding outside the content.
      fh, fw = sizes[f]
      assert not batch['image'][i, f, fh:].any() and not batch['image'][i, f, :, fw:].any()
      assert not masks[f, :, fh:].any() and not masks[f, :, :, fw:].any()
    np.testing.assert_allclose(batch['boxes'][i], _np_boxes(masks, sizes), rtol=0, atol=1e-6)
    present = masks.reshape(t, n, -1).any(-1)
    np.testing.assert_array_equal(batch['present'][i], present)
    valid = batch['instance_valid'][i]
    np.testing.assert_array_equal(valid, present.any(0))
    assert np.all(np.diff(valid.astype(int)) <= 0), 'valid slots come first'
    assert np.all(batch['labels'][i][~valid] == -1) and np.all(batch['track_ids'][i][~valid] == -1)
    assert not batch['is_crowd'][i].any()
    ids = batch['track_ids'][i][valid]
    assert len(set(ids.tolist())) == ids.size
    for slot, track_id in enumerate(ids):
      track = tracks[int(track_id)]  # A real track of this video ...
      assert batch['labels'][i][slot] == dataset.category_table.to_index(track.category_id)
      # ... visible in the source at every frame where it is present after augmentation.
      for f in np.flatnonzero(batch['present'][i][:, slot]):
        assert track.segmentations[batch['frame_index'][i][f]] is not None


@pytest.mark.parametrize('method', METHODS)
def test_batch_contract(data, method):
  spec = _spec(data['tfr'][4], method)
  it = input_lib.TrainIterator(spec)
  expected_t = {'idol': 2, 'vita': 3, 'visolo': 3, 'iai': 5}[method]
  for _ in range(3):
    batch = next(it)
    assert batch['image'].shape[1] == expected_t
    _check_batch(batch, data, spec, it.buckets)
    if method in ('idol', 'vita'):
      assert np.all(np.diff(batch['frame_index'], axis=1) >= 0)
    if method == 'iai':
      gaps = np.diff(batch['frame_index'], axis=1)
      assert np.all(((gaps >= 1) & (gaps <= 3)) | (batch['frame_index'].max(1, keepdims=True) < 4))
  assert it.get_state()['step'] == 3


def _painted_clip(num_frames):
  """Frames whose R/G channels paint two instance masks; any geometric op must keep them aligned."""
  h, w = 96, 160
  yy, xx = np.mgrid[:h, :w]
  m0 = ((yy - 40) ** 2 / 20 ** 2 + (xx - 60) ** 2 / 35 ** 2 <= 1)
  m1 = (yy >= 50) & (yy < 85) & (xx >= 95) & (xx < 150)
  image = np.zeros((h, w, 3), np.uint8)
  image[..., 0] = 255 * m0
  image[..., 1] = 255 * m1
  masks = np.stack([m0, m1]).astype(np.uint8)
  return np.repeat(image[None], num_frames, 0), np.repeat(masks[None], num_frames, 0)


@pytest.mark.parametrize('pseudo', [False, True])
@pytest.mark.parametrize('method', METHODS)
def test_augmentation_keeps_frames_and_masks_aligned(method, pseudo):
  tf = tfrecord.import_tf()
  recipe = _recipe(method, pseudo=pseudo, min_sizes=(64, 96), max_size=160, **TINY_AUG[method])
  images, masks = _painted_clip(3)
  canvas = (160, 160)
  for seed in range(4):
    out_images, out_masks, sizes = (x.numpy() for x in augment.augment_clip(
        tf.constant(images), tf.constant(masks), tf.constant([seed, 5], tf.int64), recipe, canvas))
    assert out_images.shape == (3, 160, 160, 3) and out_masks.shape == (3, 2, 160, 160)
    for t in range(3):
      fh, fw = sizes[t]
      assert 1 <= fh <= 160 and 1 <= fw <= 160
      assert not out_masks[t, :, fh:].any() and not out_masks[t, :, :, fw:].any()
      for k in range(2):
        painted = out_images[t, ..., k] > 127
        mask = out_masks[t, k] > 0
        if mask.sum() < 40:
          continue  # Cropped away (almost) entirely.
        iou = (painted & mask).sum() / (painted | mask).sum()
        assert iou > 0.8, (method, pseudo, seed, t, k, iou)


def test_resize_matches_detectron2_rule():
  for (h, w, short, max_size), expected in [((720, 1280, 360, 1333), (360, 640)), ((720, 1280, 640, 768), (432, 768)),
                                            ((1280, 720, 480, 1333), (853, 480)), ((500, 333, 800, 1333), (1201, 800))]:
    got = tuple(int(x) for x in augment.shortest_edge_size(h, w, float(short), float(max_size)))
    assert got == expected


def test_clip_level_flip_and_resize_shared():
  """Real clips share the resize choice across frames, and the flip too except in IAI (per frame, as its code)."""
  tf = tfrecord.import_tf()
  images, masks = _painted_clip(4)
  for method in METHODS:
    recipe = _recipe(method, pseudo=False, min_sizes=(48, 64, 80, 96), max_size=160, crop_prob=0.0, rotation=0.0,
                     post_crop=None)
    frames_differ = []
    for seed in range(6):
      _, out_masks, sizes = (x.numpy() for x in augment.augment_clip(
          tf.constant(images), tf.constant(masks), tf.constant([seed, 1], tf.int64), recipe, (160, 160)))
      assert len({tuple(s) for s in sizes}) == 1
      frames_differ.append(not all(np.array_equal(out_masks[0], out_masks[t]) for t in range(1, 4)))
    assert any(frames_differ) == (method == 'iai'), method


def test_determinism_and_resume(data):
  spec = _spec(data['tfr'][4], 'vita', batch_size=3)
  first = input_lib.TrainIterator(spec)
  batches = [next(first) for _ in range(6)]  # 18 clips over 10 records: crosses an epoch boundary.
  again = input_lib.TrainIterator(spec)
  state = None
  for step in range(6):
    batch = next(again)
    if step == 1:
      state = again.get_state()
    for key in batch:
      np.testing.assert_array_equal(batch[key], batches[step][key])
  resumed = input_lib.TrainIterator(spec)
  resumed.set_state(json.loads(json.dumps(state)))  # The engine stores it as JSON.
  assert state['step'] == 2
  for step in range(2, 6):
    batch = next(resumed)
    for key in batch:
      np.testing.assert_array_equal(batch[key], batches[step][key], err_msg=f'{key} at step {step}')
  with pytest.raises(ValueError, match='batch_size'):
    input_lib.TrainIterator(dataclasses.replace(spec, batch_size=2)).set_state(state)


def test_seed_changes_clips(data):
  """Different seeds give different clips of the same record (sampling and augmentation are seeded)."""
  tf = tfrecord.import_tf()
  manifest = tfrecord.load_manifest(data['tfr'][4])
  serialized = next(iter(tf.data.TFRecordDataset(manifest.shards[0].path)))
  it = input_lib.TrainIterator(_spec(data['tfr'][4], 'vita'))
  clips = [it.builder(serialized, tf.constant([s, 0], tf.int64)) for s in range(4)]
  again = it.builder(serialized, tf.constant([0, 0], tf.int64))
  for key in clips[0]:
    np.testing.assert_array_equal(clips[0][key].numpy(), again[key].numpy())
  assert len({c['frame_index'].numpy().tobytes() + c['image'].numpy().tobytes() for c in clips}) == 4


@pytest.mark.parametrize('num_shards,count', [(4, 2), (3, 2), (4, 3)])
def test_process_records_disjoint_and_covering(data, num_shards, count):
  tf = tfrecord.import_tf()
  manifest = tfrecord.load_manifest(data['tfr'][num_shards])
  all_ids = sorted(v.id for v in data['dataset'].videos)
  shares = []
  for p in range(count):
    plan = input_lib.plan_process_shard(manifest, p, count)
    assert plan.modulo == (num_shards % count != 0)
    ds = input_lib._process_records(plan, tf.constant([0, 1], tf.int64))  # pylint: disable=protected-access
    ids = [int(tfrecord.parse_video(r)['video_id']) for r in ds]
    assert len(ids) == plan.num_records == len(set(ids))
    shares.append(set(ids))
  assert sorted(set().union(*shares)) == all_ids
  assert sum(len(s) for s in shares) == len(all_ids)


def test_train_epoch_per_process_disjoint_and_covering(data):
  """Through the whole pipeline: one epoch of each process sees each of its records once; together, all."""
  all_ids = sorted(v.id for v in data['dataset'].videos)
  seen = []
  for p in range(2):
    spec = _spec(data['tfr'][3], 'idol', batch_size=1, min_sizes=(32,), max_size=48,
                 augment={'crop_prob': 0.0}, process_index=p, process_count=2)
    it = input_lib.TrainIterator(spec)
    assert it.plan.modulo
    ids = [int(next(it)['video_id'][0]) for _ in range(it.records_per_epoch)]
    assert len(set(ids)) == len(ids) == it.records_per_epoch
    assert next(it)['image'].shape[2:4] == (64, 64), 'several processes: always the largest bucket'
    seen.append(set(ids))
  assert not seen[0] & seen[1]
  assert sorted(seen[0] | seen[1]) == all_ids


def test_make_train_iterator_from_config(data):
  config = common.base_config()
  input_recipes.idol(config)
  config.dataset.tfrecords = data['tfr'][4]
  config.input.batch_size = 4
  config.input.max_instances = 3
  config.input.min_size_train = (48,)
  config.input.max_size_train = 96
  config.input.augment.crop_range = (40, 80)
  # The recipe comes from the method's input spec (Method.input_spec()), not from config.input.
  spec = ml_collections.ConfigDict({k: config.input[k] for k in ('sampler', 'augment', 'augment_pseudo')})
  spec.sampler.clip_len = 3
  for k in ('sampler', 'augment', 'augment_pseudo'):
    del config.input[k]
  it = input_lib.make_train_iterator(config, spec, process_index=1, process_count=2)
  batch = next(it)
  assert batch['image'].shape[:2] == (2, 3) and batch['masks'].shape[2] == 3
  assert batch['image'].shape[2:4] == (96, 96)
  with pytest.raises(ValueError, match='not divisible'):
    input_lib.make_train_iterator(config, spec, process_index=0, process_count=3)
  config.dataset.eval_tfrecords = data['tfr'][3]
  config.input.min_size_test = 40
  config.input.max_size_test = 64
  video = next(input_lib.eval_videos(config, process_index=1, process_count=2))
  assert video['frames'].shape[1:3] == (-(-video['image_size'][0] // 32) * 32, -(-video['image_size'][1] // 32) * 32)
  assert min(video['image_size']) == 40 or max(video['image_size']) == 64
  config.dataset.tfrecords = os.path.dirname(data['tfr'][4])  # No manifest there.
  with pytest.raises(tfrecord.RecordFormatError, match='not a finished conversion'):
    input_lib.make_train_iterator(config, spec)


def test_make_recipe_names_the_section_of_a_bad_field():
  inp = _official('idol')
  with pytest.raises(ValueError, match=r"config.input.augment: unknown field\(s\) \['crop_prop'\]"):
    augment.make_recipe({**inp.augment.to_dict(), 'crop_prop': 0.5}, min_sizes=(48,), max_size=96)
  with pytest.raises(ValueError, match=r"config.input.augment_pseudo: unknown field\(s\) \['rotate'\]"):
    augment.make_recipe(inp.augment, min_sizes=(48,), max_size=96, pseudo_overrides={'rotate': 15.0})
  with pytest.raises(ValueError, match=r"config.input.augment sets \['max_size'\]"):
    augment.make_recipe({'max_size': 10}, min_sizes=(48,), max_size=96)
  recipe = augment.make_recipe(inp.augment, min_sizes=[48], max_size=96, pseudo_overrides=inp.augment_pseudo)
  assert recipe.crop_resize == (400, 500, 600) and recipe.resize_per == 'frame' and recipe.min_sizes == (48,)
  assert augment.make_recipe(inp.augment, min_sizes=[48], max_size=96).resize_per == 'clip'


def test_eval_videos_whole_and_chunks(data):
  root = data['tfr'][3]
  videos = list(input_lib.eval_videos(root, min_size=48, max_size=100, size_divisibility=32))
  dataset = data['dataset']
  assert sorted(v['video_id'] for v in videos) == sorted(v.id for v in dataset.videos)
  for v in videos[:4]:
    video = dataset.video(v['video_id'])
    assert v['length'] == video.length and v['orig_size'] == (video.height, video.width)
    nh, nw = v['image_size']
    assert min(nh, nw) == 48 or max(nh, nw) == 100
    assert v['frames'].shape == (video.length, -(-nh // 32) * 32, -(-nw // 32) * 32, 3)
    assert not v['frames'][:, nh:].any() and not v['frames'][:, :, nw:].any()
    for t in (0, video.length - 1):  # Against PIL's bilinear (antialiased) resize of the JPEG.
      with Image.open(os.path.join(data['paths']['images'], video.file_names[t])) as im:
        ref = np.asarray(im.convert('RGB').resize((nw, nh), Image.BILINEAR), np.float64)
      diff = np.abs(v['frames'][t, :nh, :nw].astype(np.float64) - ref)
      assert diff.mean() < 3.0, diff.mean()
  chunks = list(input_lib.eval_video_chunks(root, chunk_len=5, min_size=48, max_size=100, max_videos=2))
  by_video = {}
  for c in chunks:
    assert c['frames'].shape[0] <= 5
    by_video.setdefault(c['video_id'], []).append(c)
  assert len(by_video) == 2
  for video_id, parts in by_video.items():
    whole = next(v for v in videos if v['video_id'] == video_id)
    assert [p['start'] for p in parts] == list(range(0, whole['length'], 5)) and parts[-1]['last']
    np.testing.assert_array_equal(np.concatenate([p['frames'] for p in parts]), whole['frames'])
  fixed = next(input_lib.eval_videos(root, fixed_size=(40, 70), size_divisibility=32))  # VISOLO-style.
  assert fixed['image_size'] == (40, 70) and fixed['frames'].shape[1:3] == (64, 96)
  assert not fixed['frames'][:, 40:].any() and fixed['frames'][:, :40, :70].any()
  shares = [{v['video_id'] for v in input_lib.eval_videos(root, min_size=32, max_size=64, process_index=p,
                                                          process_count=2)} for p in range(2)]
  assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == len(videos)


def test_corrupt_shard_is_named(data, tmp_path):
  root = str(tmp_path / 'corrupt')
  shutil.copytree(data['tfr'][4], root)
  shard = tfrecord.load_manifest(root).shards[1].path
  with open(shard, 'r+b') as f:  # Same size (the manifest size check passes), broken bytes (CRC fails).
    f.seek(os.path.getsize(shard) // 2)
    f.write(b'\x00' * 64)
  with pytest.raises(tfrecord.RecordFormatError, match='sha256'):
    tfrecord.load_manifest(root, verify_checksums=True)
  spec = _spec(root, 'idol', batch_size=1, shuffle_buffer=1)
  it = input_lib.TrainIterator(spec)
  with pytest.raises(tfrecord.RecordFormatError, match=os.path.basename(shard)):
    for _ in range(it.records_per_epoch + 1):
      next(it)
  with pytest.raises(tfrecord.RecordFormatError, match=os.path.basename(shard)):
    list(input_lib.eval_videos(root, min_size=32, max_size=64))


def _write_records(root, payloads, fmt='ytvis', categories=({'index': 0, 'id': 1, 'name': 'x'},)):
  """Writes a one-shard directory with a valid manifest (category table `categories`) around hand-made records."""
  tf = tfrecord.import_tf()
  os.makedirs(root)
  path = os.path.join(root, tfrecord.shard_name('bad', 0, 1))
  with tf.io.TFRecordWriter(path) as writer:
    for p in payloads:
      writer.write(tfrecord.serialize_video(p))
  manifest = {'format_version': tfrecord.FORMAT_VERSION, 'format': fmt, 'num_videos': len(payloads),
              'max_tracks_per_video': 1, 'categories': list(categories),
              'shards': [{'file': os.path.basename(path), 'num_records': len(payloads),
                          'num_bytes': os.path.getsize(path), 'sha256': tfrecord.sha256_file(path)}]}
  with open(os.path.join(root, tfrecord.MANIFEST_NAME), 'w') as f:
    json.dump(manifest, f)


def _frame_bytes(h, w):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(buf, format='JPEG')
  return buf.getvalue()


def test_bad_records_fail_with_video_named(tmp_path):
  mask = np.zeros((40, 50), np.uint8)
  mask[5:20, 5:30] = 1
  wrong_size_png = tfrecord.encode_mask_png(np.ones((30, 50), np.uint8))
  track = tfrecord.TrackPayload(track_id=1, category_id=1, label=0, iscrowd=False, bboxes=[(5, 5, 25, 15)] * 2,
                                mask_pngs=[tfrecord.encode_mask_png(mask), wrong_size_png])
  bad_mask = tfrecord.VideoPayload(video_id=77, name='bad_mask', height=40, width=50, filenames=['a', 'b'],
                                   frames=[_frame_bytes(40, 50)] * 2, tracks=[track])
  root = str(tmp_path / 'mask')
  _write_records(root, [bad_mask])
  it = input_lib.TrainIterator(_spec(root, 'idol', batch_size=1, shuffle_buffer=1, min_sizes=(32,), max_size=64))
  with pytest.raises(tfrecord.RecordFormatError, match='mask PNG size.*77.*bad_mask'):
    next(it)

  broken = dataclasses.replace(bad_mask, video_id=79, name='broken_png', tracks=[
      dataclasses.replace(track, mask_pngs=[b'not a png', tfrecord.encode_mask_png(mask)])])
  root = str(tmp_path / 'broken')
  _write_records(root, [broken])
  it = input_lib.TrainIterator(_spec(root, 'idol', batch_size=1, shuffle_buffer=1, min_sizes=(32,), max_size=64))
  with pytest.raises(tfrecord.RecordFormatError, match='bad-00000-of-00001.tfrecord: record 0'):
    next(it)

  empty = tfrecord.VideoPayload(video_id=78, name='empty', height=40, width=50, filenames=[], frames=[], tracks=[])
  root = str(tmp_path / 'empty')
  _write_records(root, [empty])
  it = input_lib.TrainIterator(_spec(root, 'idol', batch_size=1, shuffle_buffer=1, min_sizes=(32,), max_size=64))
  with pytest.raises(tfrecord.RecordFormatError, match='empty video.*78'):
    next(it)
  with pytest.raises(tfrecord.RecordFormatError, match='empty video id=78'):
    list(input_lib.eval_videos(root))


@pytest.fixture(scope='module')
def coco_root(data, tmp_path_factory):
  """One-frame records (first frame of 3 synthetic videos, ids + 1000), as a COCO conversion writes them."""
  dataset = data['dataset']
  payloads = []
  for video in dataset.videos[:3]:
    full = convert.build_payload(video, dataset.tracks_of(video.id), data['paths']['images'],
                                 dataset.category_table.ids, video.name)
    payloads.append(dataclasses.replace(
        full, video_id=video.id + 1000, filenames=full.filenames[:1], frames=full.frames[:1],
        tracks=[dataclasses.replace(t, bboxes=t.bboxes[:1], mask_pngs=t.mask_pngs[:1]) for t in full.tracks]))
  root = str(tmp_path_factory.mktemp('coco') / 'tfr')
  _write_records(root, payloads, fmt='coco', categories=dataset.category_table.to_json())
  return root


def test_coco_pseudo_clips(coco_root):
  """One-frame records give T views of frame 0, augmented with VITA's pseudo-clip recipe (sorted rotations)."""
  spec = _spec(coco_root, 'vita', batch_size=3, shuffle_buffer=1)
  it = input_lib.TrainIterator(spec)
  assert it.recipe == _recipe('vita', pseudo=True, min_sizes=SIZES['min_sizes'], max_size=SIZES['max_size'],
                              **TINY_AUG['vita'])
  assert it.recipe.rotation == 15.0 and it.recipe.rotation_per == 'sorted'
  batch = next(it)
  assert np.all(batch['frame_index'] == 0)
  views_differ = [not np.array_equal(batch['image'][i, 0], batch['image'][i, t])
                  for i in range(3) for t in range(1, batch['image'].shape[1])]
  assert any(views_differ)


def test_mixed_sources_ratio_and_resume(data, coco_root):
  assert input_lib.mix_counts((0.75, 1.0)).tolist() == [429, 571]
  assert input_lib.mix_counts((1, 0, 1)).tolist() == [500, 0, 500]
  spec = _spec((data['tfr'][4], coco_root), 'vita', batch_size=3, ratios=(1.0, 1.0))
  first = input_lib.TrainIterator(spec)
  assert [r.rotation for r in first.recipes] == [0.0, 15.0]  # Each source keeps its own recipe.
  batches = [next(first) for _ in range(4)]
  ids = np.concatenate([b['video_id'] for b in batches])
  from_coco = ids > 1000
  assert from_coco.any() and (~from_coco).any()
  for b in batches:
    assert np.all(b['frame_index'][b['video_id'] > 1000] == 0)
  state_after_one = {'step': 1, **{k: v for k, v in first.get_state().items() if k != 'step'}}
  resumed = input_lib.TrainIterator(spec)
  resumed.set_state(state_after_one)
  for step in range(1, 4):
    batch = next(resumed)
    for key in batch:
      np.testing.assert_array_equal(batch[key], batches[step][key], err_msg=f'{key} at step {step}')
  with pytest.raises(ValueError, match='mix'):
    input_lib.TrainIterator(dataclasses.replace(spec, ratios=(1.0, 3.0))).set_state(state_after_one)


def test_eval_and_predict_give_a_model_identical_frames(data):
  """Predict reads a video's JPEG folder and resizes it with `resize_test_frames`; eval decodes the same JPEGs from
  the TFRecord and resizes them in `eval_video_chunks`: both give the model the same uint8 frames and sizes."""
  from visjax import predict  # pylint: disable=g-import-not-at-top
  root = data['tfr'][3]
  for fixed in (None, (40, 70)):
    resize = input_lib.EvalResize(min_size=48, max_size=100, size_divisibility=32, fixed=fixed)
    video = next(input_lib.eval_videos(root, min_size=48, max_size=100, size_divisibility=32, fixed_size=fixed))
    name = data['dataset'].video(video['video_id']).file_names[0].split('/')[0]
    decoded = predict.read_video(os.path.join(data['paths']['images'], name))
    frames, image_size = input_lib.resize_test_frames(decoded, resize)
    assert image_size == video['image_size']
    np.testing.assert_array_equal(frames, video['frames'])
