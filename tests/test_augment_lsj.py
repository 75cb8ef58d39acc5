"""Large-scale jitter (`Recipe.lsj_size`) against a float64 NumPy / PIL port of detectron2 `RandomFlip` ->
`ResizeScale` -> `FixedSizeCrop` (the official COCO LSJ mappers, VITA `build_augmentation` with LSJ_AUG), fed the
same random draws; and the VITA COCO pretraining config's training input on a tiny COCO-format dataset."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest

pytest.importorskip('tensorflow')

from PIL import Image  # pylint: disable=g-import-not-at-top

from configs import vita_coco_pseudo  # pylint: disable=g-import-not-at-top
from data_pipeline import augment
from data_pipeline import convert
from data_pipeline import input as input_lib
from data_pipeline import samplers
from data_pipeline import tfrecord

SIZE = 64
SCALE = (0.1, 2.0)
RECTS = ((4, 14, 6, 30), (30, 38, 55, 68))  # (y0, y1, x0, x1) of two instances: top-left and bottom-right.


def _draws(seed, t, op, shape, per_frame=True):
  """The stateless uniforms of decision `op` of frame t (augment's keying: fold(seed, op, t + 1) per frame)."""
  tf = tfrecord.import_tf()
  key = samplers.fold(tf.constant(seed, tf.int64), op, t + 1) if per_frame else samplers.fold(
      tf.constant(seed, tf.int64), op)
  return tf.random.stateless_uniform(shape, key, dtype=tf.float32).numpy().astype(np.float64)


def _d2_geometry(h, w, u_scale, u_offset, size=SIZE, scale_range=SCALE):
  """detectron2 ResizeScale + FixedSizeCrop sizes in float64: ((new_h, new_w), (off_y, off_x))."""
  s = scale_range[0] + (scale_range[1] - scale_range[0]) * u_scale  # np.random.uniform(min, max)
  target = np.multiply((size, size), s)
  out_scale = min(target[0] / h, target[1] / w)
  new = np.round(np.multiply((h, w), out_scale)).astype(int)
  offset = np.round(np.maximum(new - size, 0) * u_offset).astype(int)  # One uniform for both axes.
  return (int(new[0]), int(new[1])), (int(offset[0]), int(offset[1]))


def _d2_lsj(image, masks, flip, u_scale, u_offset):
  """RandomFlip, ResizeScale (PIL bilinear image, nearest masks), FixedSizeCrop (pad 128 / 0) of one frame.

  image uint8 [H, W, 3], masks uint8 [N, H, W] -> float64 [S, S, 3], uint8 [N, S, S], (new_h, new_w), offset.
  """
  if flip:
    image, masks = image[:, ::-1], masks[:, :, ::-1]
  h, w = image.shape[:2]
  (nh, nw), (oy, ox) = _d2_geometry(h, w, u_scale, u_offset)
  img = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((nw, nh), Image.BILINEAR), np.float64)
  msk = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(m)).resize((nw, nh), Image.NEAREST))
                  for m in masks])
  out_img = np.full((SIZE, SIZE, 3), 128.0)
  out_msk = np.zeros((len(masks), SIZE, SIZE), np.uint8)
  crop = img[oy:oy + SIZE, ox:ox + SIZE]
  out_img[:crop.shape[0], :crop.shape[1]] = crop
  out_msk[:, :crop.shape[0], :crop.shape[1]] = msk[:, oy:oy + SIZE, ox:ox + SIZE]
  return out_img, out_msk, (nh, nw), (oy, ox)


def _d2_box(rect, w, flip, new, offset, h):
  """detectron2 apply_box of a rectangle mask's box (xyxy pixels) through flip, resize and crop, clipped."""
  y0, y1, x0, x1 = rect
  if flip:
    x0, x1 = w - x1, w - x0
  sy, sx = new[0] / h, new[1] / w
  box = np.array([x0 * sx - offset[1], y0 * sy - offset[0], x1 * sx - offset[1], y1 * sy - offset[0]])
  limit = min(new[1], SIZE), min(new[0], SIZE)
  return np.clip(box, 0, [limit[0], limit[1], limit[0], limit[1]])


def _frame(h=40, w=70):
  """A smooth, asymmetric RGB frame and the two rectangle masks of RECTS."""
  yy, xx = np.mgrid[:h, :w].astype(np.float64)
  image = np.stack([255 * xx / (w - 1), 255 * yy / (h - 1), 127.5 + 100 * np.sin(xx / 7 + yy / 5)], -1)
  masks = np.zeros((len(RECTS), h, w), np.uint8)
  for k, (y0, y1, x0, x1) in enumerate(RECTS):
    masks[k, y0:y1, x0:x1] = 1
  return np.round(image).astype(np.uint8), masks


def _recipe(**kwargs):
  return augment.Recipe(min_sizes=(8,), max_size=8, flip_per='frame', resize_per='frame', lsj_size=SIZE,
                        lsj_scale=SCALE, **kwargs)


def test_lsj_matches_detectron2():
  """Per frame and seed: sizes, offsets and flip exactly; masks (nearest: < 0.5% of pixels differ from PIL) and boxes
  (1 px); the image against PIL bilinear (TF antialiased bilinear: within 1 level, relative error < 0.5%); 128 in the
  padding, content size S x S; the pad (scale-down) and crop (scale-up) cases and both flips are covered."""
  tf = tfrecord.import_tf()
  image, masks = _frame()
  h, w = image.shape[:2]
  frames = 3
  images = np.repeat(image[None], frames, 0)
  clip_masks = np.repeat(masks[None], frames, 0)
  canvas = (SIZE + 32, SIZE)  # Taller than S: rows below S stay zero and outside the content size.
  cases = set()
  for seed in range(6):
    out_img, out_msk, sizes = (x.numpy() for x in augment.augment_clip(
        tf.constant(images), tf.constant(clip_masks), tf.constant([seed, 3], tf.int64), _recipe(), canvas))
    np.testing.assert_array_equal(sizes, [[SIZE, SIZE]] * frames)
    assert not out_img[:, SIZE:].any() and not out_msk[:, :, SIZE:].any()
    boxes, visible = (x.numpy() for x in input_lib.masks_to_boxes(out_msk, sizes))
    for t in range(frames):
      flip = _draws([seed, 3], t, 9, []) < 0.5
      u = _draws([seed, 3], t, 12, [2])
      ref_img, ref_msk, new, offset = _d2_lsj(image, masks, flip, u[0], u[1])
      cases.add((bool(flip), new[0] < SIZE or new[1] < SIZE, new[0] > SIZE or new[1] > SIZE))
      got_img = out_img[t, :SIZE].astype(np.float64)
      content = np.zeros((SIZE, SIZE), bool)
      content[:min(new[0], SIZE), :min(new[1], SIZE)] = True
      np.testing.assert_array_equal(got_img[~content], 128.0)
      rel = np.linalg.norm(got_img[content] - ref_img[content]) / np.linalg.norm(ref_img[content])
      assert rel < 0.005 and np.abs(got_img[content] - ref_img[content]).max() <= 1.0, (seed, t, rel)
      got_msk = out_msk[t, :, :SIZE]
      assert not got_msk[:, ~content].any()
      assert np.mean(got_msk != ref_msk) < 0.005, (seed, t)
      for k, rect in enumerate(RECTS):
        ref_box = _d2_box(rect, w, flip, new, offset, h)
        ref_visible = min(ref_box[2] - ref_box[0], ref_box[3] - ref_box[1]) > 1.0
        if ref_visible or not visible[t, k]:
          assert visible[t, k] == ref_visible, (seed, t, k, ref_box)
        if visible[t, k] and ref_visible:
          cx, cy, bw, bh = boxes[t, k] * SIZE
          got_box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
          np.testing.assert_allclose(got_box, ref_box, atol=1.0, err_msg=f'seed {seed} frame {t} instance {k}')
  flips = {c[0] for c in cases}
  assert flips == {False, True} and any(c[1] for c in cases) and any(c[2] for c in cases), cases


def test_lsj_draws_per_clip():
  """`resize_per='clip'`: one scale and offset for the clip (ResizeScaleClip / FixedSizeCropClip)."""
  tf = tfrecord.import_tf()
  image, masks = _frame()
  recipe = dataclasses.replace(_recipe(), resize_per='clip', flip_per='clip')
  out_img, _, _ = augment.augment_clip(tf.constant(np.repeat(image[None], 3, 0)),
                                       tf.constant(np.repeat(masks[None], 3, 0)),
                                       tf.constant([4, 1], tf.int64), recipe, (SIZE, SIZE))
  out_img = out_img.numpy()
  assert all(np.array_equal(out_img[0], out_img[t]) for t in (1, 2))
  u = _draws([4, 1], 0, 12, [2], per_frame=False)
  flip = _draws([4, 1], 0, 9, [], per_frame=False) < 0.5
  ref_img, _, new, _ = _d2_lsj(image, masks, flip, u[0], u[1])
  content = np.zeros((SIZE, SIZE), bool)
  content[:min(new[0], SIZE), :min(new[1], SIZE)] = True
  assert np.abs(out_img[0][content] - ref_img[content]).max() <= 1.0


@pytest.mark.parametrize('u_offset, kept', [(0.0, (True, False)), (1.0, (False, True))])
def test_instance_cropped_out_is_empty(u_offset, kept):
  """Scale 2 of a 40 x 70 frame (to 73 x 128) cropped at the top-left or bottom-right corner: the other instance
  leaves an empty mask (detectron2 `filter_empty_instances` then drops it)."""
  tf = tfrecord.import_tf()
  image, masks = _frame()
  u_scale = 1.0  # s = max_scale
  _, out_msk = augment.large_scale_jitter(tf.constant(image), tf.constant(masks.transpose(1, 2, 0)),
                                          tf.constant([u_scale, u_offset]), SIZE, SCALE)
  _, ref_msk, new, offset = _d2_lsj(image, masks, False, u_scale, u_offset)
  assert new == (73, 128) and offset == ((0, 0) if u_offset == 0 else (9, 64))
  got = out_msk.numpy().transpose(2, 0, 1)
  np.testing.assert_array_equal(got.reshape(2, -1).any(-1), kept)
  assert np.mean(got != ref_msk) < 0.005


def test_recipe_checks():
  with pytest.raises(ValueError, match='crop_prob=0'):
    _recipe(crop_prob=0.5)
  with pytest.raises(ValueError, match='post_crop=None'):
    _recipe(post_crop=(32, 32))
  with pytest.raises(ValueError, match='lsj_scale'):
    augment.Recipe(min_sizes=(8,), max_size=8, lsj_size=SIZE, lsj_scale=(0.0, 2.0))
  tf = tfrecord.import_tf()
  image, masks = _frame()
  with pytest.raises(ValueError, match=r'canvas \(64, 32\) cannot hold.*Recipe.lsj_size'):
    augment.augment_clip(tf.constant(image[None]), tf.constant(masks[None]), tf.constant([0, 0], tf.int64),
                         _recipe(), (SIZE, SIZE - 32))


# ----------------------------------------------------------------------------------------------------------------
# The COCO pretraining config on a tiny COCO-format dataset.


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
  """Three JPEGs of different shapes with rectangle polygons (one crowd), converted with --format coco."""
  tmp = tmp_path_factory.mktemp('lsj_coco')
  (tmp / 'images').mkdir()
  rng = np.random.default_rng(0)
  images, annotations = [], []
  for i, (h, w) in enumerate(((40, 70), (90, 50), (64, 64))):
    name = f'{i:03d}.jpg'
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp / 'images' / name)
    images.append({'id': 10 + i, 'file_name': name, 'height': h, 'width': w})
    for k, (y0, y1, x0, x1) in enumerate(((2, 12, 3, 20), (h - 12, h - 2, w - 18, w - 2), (5, 30, 5, 30))):
      annotations.append({'id': 100 + 10 * i + k, 'image_id': 10 + i, 'category_id': 1 + k, 'iscrowd': int(k == 2),
                          'segmentation': [[x0, y0, x1, y0, x1, y1, x0, y1]], 'bbox': [x0, y0, x1 - x0, y1 - y0],
                          'area': (x1 - x0) * (y1 - y0)})
  categories = [{'id': 1, 'name': 'a'}, {'id': 2, 'name': 'b'}, {'id': 3, 'name': 'c'}]
  path = tmp / 'instances.json'
  path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': categories}))
  out = str(tmp / 'tfr')
  assert convert.main(['--format', 'coco', '--json', str(path), '--images', str(tmp / 'images'), '--out', out,
                       '--num-shards', '1', '--workers', '1', '--no-progress']) == 0
  return out


def test_vita_coco_config_trains_on_lsj(coco_root):
  config = vita_coco_pseudo.get_config()
  assert (config.input.augment.lsj_size, tuple(config.input.augment.lsj_scale)) == (1024, (0.1, 2.0))
  assert not config.input.augment_pseudo and config.input.sampler.clip_len == 1
  config.dataset.tfrecords = coco_root
  config.input.batch_size = 2
  config.input.max_instances = 3
  config.input.shuffle_buffer = 4
  config.input.augment.lsj_size = SIZE  # Tiny frames; the official 1024 is checked above.
  spec = ml_collections.ConfigDict({k: config.input[k] for k in ('sampler', 'augment', 'augment_pseudo')})
  it = input_lib.make_train_iterator(config, spec)
  assert it.buckets == ((SIZE, SIZE),) and it.recipe.lsj_size == SIZE and it.recipe.crop_prob == 0.0
  dropped = 0
  for _ in range(6):
    batch = next(it)
    assert batch['image'].shape == (2, 1, SIZE, SIZE, 3) and batch['masks'].shape == (2, 1, 3, SIZE, SIZE)
    np.testing.assert_array_equal(batch['image_size'], SIZE)
    present = batch['masks'].reshape(2, 1, 3, -1).any(-1)
    np.testing.assert_array_equal(batch['present'], present)
    np.testing.assert_array_equal(batch['instance_valid'], present[:, 0])
    valid = batch['instance_valid']
    assert np.all(batch['labels'][~valid] == -1) and np.all(batch['track_ids'][~valid] == -1)
    assert np.all(batch['labels'][valid] < 2) and not batch['is_crowd'].any()  # Crowd (class c) dropped.
    dropped += 2 * 2 - int(valid.sum())  # Every image has 2 non-crowd instances.
  assert dropped > 0  # Some were cropped out (or shrunk away) and left the clip.
