"""Clip augmentation as stateless TensorFlow ops; each method's settings are data (`config.input.augment`,
`config.input.augment_pseudo` for COCO pseudo-clips), so nothing here names a method.

`augment_clip` applies a `Recipe` to one clip (frames `[T, H, W, 3]` and instance masks `[T, N, H, W]` of the same
video) and returns each frame zero-padded (bottom/right) to a static canvas, with the content size of every frame.
Per frame the order is:

  1. rotation by an angle in [-r, r] degrees (counter-clockwise, as detectron2 `RotationTransform` / cv2), either
     about the centre with the canvas expanded to the rotated bounds (`expand=True`), or keeping the frame size
     about a centre drawn in a relative range (`expand=False, center=...`); angles per frame, or drawn per frame,
     sorted over the clip and reversed with p = 0.5 (the official `RandomRotationClip` of the
     pseudo-clip recipes, whose centre is drawn per clip).
  2. crop branch, taken with probability `crop_prob` (decided per clip or per frame): an optional shortest-edge
     resize to a choice of `crop_resize` (no max size), then a crop of `randint(min(h, lo), min(h, hi))` x
     `randint(min(w, lo), min(w, hi))` (detectron2 'absolute_range') placed per frame, once per clip, or sliding
     linearly from a start to an end position over the clip. The two resizes are fused: the window is mapped
     back to the source frame and step 3 resizes once.
  3. shortest-edge resize to a choice of `min_sizes` (per clip or per frame), capped by `max_size` (or by a choice of
     `max_size_choices`: mmdet's 'range' mode) as detectron2's `ResizeShortestEdge` / mmcv's `rescale_size` (sizes
     rounded with int(x + 0.5)), and further scaled down if needed to fit the canvas.
     Frames: bilinear with antialiasing (PIL-like); masks: nearest.
  4. optional crop to at most `post_crop` (h, w) at a random position per frame.
  5. horizontal flip, per clip or per frame.

Large-scale jitter (`lsj_size` > 0, detectron2 `RandomFlip`, `ResizeScale`, `FixedSizeCrop` as the official COCO LSJ
mappers chain them) replaces steps 2-5: the flip comes first (before any rotation), then the frame is scaled by
min(s·S / h, s·S / w) with s uniform in `lsj_scale` (sizes rounded half to even, as `np.round`), cropped to at most
S x S at offsets round(u·(size - S)) with one u for both axes, and padded bottom/right to exactly S x S with 128
(masks with 0). The grey padding is image content for the model, as in the official mappers, whose image size is
the S x S output: the frame's content size is (S, S). Scale and offset are drawn per clip or per frame
(`resize_per`).

All random decisions come from `tf.random.stateless_*` keyed on (clip seed, decision, frame), so a clip is a pure
function of its seed. `make_recipe` builds a `Recipe` from the config sections; the methods' official settings are
in `configs/input_recipes.py`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from data_pipeline import samplers
from data_pipeline import tfrecord
from visjax.models import settings

_PER = ('clip', 'frame')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Augmentation settings of one method (see the module docstring for the order of operations).

  Attributes:
    min_sizes: shortest-edge choices of the main resize.
    max_size: cap on the longer edge of the main resize (and the largest of `max_size_choices`).
    max_size_choices: longer-edge caps drawn (with the same per-clip / per-frame rule as the short side,
      independently of it) instead of `max_size`; with `min_sizes` = every integer of a range this is mmdet's
      `Resize(img_scale=[(long_lo, short_lo), (long_hi, short_hi)], multiscale_mode='range', keep_ratio=True)`.
    resize_per: draw the main resize choice per 'clip' or per 'frame'.
    flip_per: horizontal flip (p = 0.5) per 'clip', per 'frame', or 'none'.
    crop_prob: probability of the crop branch.
    crop_per: decide the crop branch (and its resize choice) per 'clip' or per 'frame'.
    crop_resize: shortest-edge choices resized to before cropping; () for none.
    crop_range: (lo, hi) of the absolute crop size range.
    crop_window: 'frame' (window drawn per frame), 'clip' (one window), 'slide' (one size, position moving
      linearly from a random start to a random end over the clip).
    rotation: max absolute rotation in degrees; 0 for none.
    rotation_per: 'frame' (independent angles and centres) or 'sorted' (angles drawn per frame, sorted over the
      clip, the order reversed with p = 0.5; one centre per clip).
    rotation_expand: expand the canvas to the rotated bounds (the centre is then the frame's) or keep the size.
    rotation_center: (lo, hi) relative range of the rotation centre's x and y (each drawn in it), or None for the
      frame's centre; only with `rotation_expand=False`.
    post_crop: (h, w) crop after the resize, or None.
    lsj_size: output size S of the large-scale jitter (S x S), or 0 for none; excludes the crop branch and
      `post_crop`, and makes `min_sizes` / `max_size` unused.
    lsj_scale: (min, max) of the large-scale jitter's scale.
  """
  min_sizes: tuple[int, ...]
  max_size: int
  max_size_choices: tuple[int, ...] = ()
  resize_per: str = 'clip'
  flip_per: str = 'clip'
  crop_prob: float = 0.0
  crop_per: str = 'clip'
  crop_resize: tuple[int, ...] = ()
  crop_range: tuple[int, int] = (384, 600)
  crop_window: str = 'frame'
  rotation: float = 0.0
  rotation_per: str = 'frame'
  rotation_expand: bool = True
  rotation_center: tuple[float, float] | None = None
  post_crop: tuple[int, int] | None = None
  lsj_size: int = 0
  lsj_scale: tuple[float, float] = (0.1, 2.0)

  def __post_init__(self):
    if not self.min_sizes or min(self.min_sizes) < 1 or self.max_size < 1:
      raise ValueError(f'Recipe needs min_sizes >= 1 and max_size >= 1, got {self.min_sizes}, {self.max_size}')
    if self.max_size_choices and not 1 <= min(self.max_size_choices) <= max(self.max_size_choices) <= self.max_size:
      raise ValueError(f'Recipe.max_size_choices must lie in [1, max_size={self.max_size}] '
                       f'(config.input.max_size_train), got {min(self.max_size_choices)}..{max(self.max_size_choices)}')
    for name, allowed in (('resize_per', _PER), ('flip_per', _PER + ('none',)), ('crop_per', _PER),
                          ('crop_window', ('frame', 'clip', 'slide')), ('rotation_per', ('frame', 'sorted'))):
      if getattr(self, name) not in allowed:
        raise ValueError(f'Recipe.{name} must be one of {allowed}, got {getattr(self, name)!r}')
    if not 0.0 <= self.crop_prob <= 1.0:
      raise ValueError(f'Recipe.crop_prob must be in [0, 1], got {self.crop_prob}')
    if not 1 <= self.crop_range[0] <= self.crop_range[1]:
      raise ValueError(f'Recipe.crop_range must be 1 <= lo <= hi, got {self.crop_range}')
    if self.rotation_center is not None and (self.rotation_expand or not
                                             0.0 <= self.rotation_center[0] <= self.rotation_center[1] <= 1.0):
      raise ValueError(f'Recipe.rotation_center needs rotation_expand=False and 0 <= lo <= hi <= 1, got '
                       f'{self.rotation_center} with rotation_expand={self.rotation_expand}')
    if self.lsj_size < 0 or not 0.0 < self.lsj_scale[0] <= self.lsj_scale[1]:
      raise ValueError(f'Recipe.lsj_size must be >= 0 and lsj_scale 0 < min <= max, got {self.lsj_size}, '
                       f'{self.lsj_scale}')
    if self.lsj_size and (self.crop_prob > 0 or self.post_crop is not None):
      raise ValueError(f'Recipe.lsj_size={self.lsj_size} replaces the crop branch and post_crop: set crop_prob=0 '
                       f'(got {self.crop_prob}) and post_crop=None (got {self.post_crop})')


def make_recipe(augment, *, min_sizes: Sequence[int], max_size: int, pseudo_overrides=None) -> Recipe:
  """The `Recipe` of `config.input.augment` (a mapping of `Recipe` fields other than the sizes), with the
  `config.input.augment_pseudo` fields on top for COCO pseudo-clips (`pseudo_overrides`, or None for real clips).
  Unknown fields fail through `settings.from_config`, naming the section.
  """
  sizes = {'min_sizes': tuple(int(s) for s in min_sizes), 'max_size': int(max_size)}
  sections = [('config.input.augment', augment or {})]
  if pseudo_overrides is not None:
    sections.append(('config.input.augment_pseudo', pseudo_overrides))
  values = {}
  for where, section in sections:
    section = dict(section.items())
    if set(section) & set(sizes):
      raise ValueError(f'{where} sets {sorted(set(section) & set(sizes))}: the sizes come from '
                       'config.input.min_size_train / max_size_train.')
    values.update(section)
    recipe = settings.from_config(Recipe, {**values, **sizes}, where)
  return recipe


# ----------------------------------------------------------------------------------------------------------------


def _uniform(seed, shape=()):
  tf = tfrecord.import_tf()
  return tf.random.stateless_uniform(shape, seed, dtype=tf.float32)


def _key(seed, op: int, per: str, t: int):
  """Seed of decision `op`: shared by the clip, or specific to frame t."""
  return samplers.fold(seed, op) if per in ('clip', 'slide', 'sorted') else samplers.fold(seed, op, t + 1)


def _choice(seed, values: Sequence[int]):
  tf = tfrecord.import_tf()
  index = tf.random.stateless_uniform([], seed, minval=0, maxval=len(values), dtype=tf.int32)
  return tf.gather(tf.constant(values, tf.float32), index)


def main_resize_choice(seed, t, recipe: Recipe):
  """(short side, longer-edge cap) float32 scalars of the main resize of frame `t` (`recipe.resize_per`)."""
  short = _choice(_key(seed, 7, recipe.resize_per, t), recipe.min_sizes)
  if not recipe.max_size_choices:
    return short, float(recipe.max_size)
  return short, _choice(_key(seed, 13, recipe.resize_per, t), recipe.max_size_choices)


def shortest_edge_size(h, w, short, max_size):
  """detectron2 `ResizeShortestEdge.get_output_shape` on float tensors; returns int32 (new_h, new_w)."""
  tf = tfrecord.import_tf()
  h, w = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  scale = short / tf.minimum(h, w)
  new_h, new_w = tf.where(h < w, short, scale * h), tf.where(h < w, scale * w, short)
  cap = tf.minimum(1.0, max_size / tf.maximum(new_h, new_w))
  new_h, new_w = new_h * cap, new_w * cap
  return tf.cast(tf.floor(new_h + 0.5), tf.int32), tf.cast(tf.floor(new_w + 0.5), tf.int32)


def rotate(image, masks, degrees, center=None, expand: bool = True):
  """Rotates a `[H, W, C]` frame (bilinear) and `[H, W, N]` masks (nearest) counter-clockwise by `degrees`.

  detectron2 `RotationTransform` geometry (cv2 `getRotationMatrix2D` at the centre - 0.5): with `expand` about the
  frame centre onto the rotated bounds, else about `center` (relative (x, y), default (0.5, 0.5)) keeping H x W.
  """
  tf = tfrecord.import_tf()
  h = tf.cast(tf.shape(image)[0], tf.float32)
  w = tf.cast(tf.shape(image)[1], tf.float32)
  theta = degrees * (math.pi / 180.0)
  c, s = tf.cos(theta), tf.sin(theta)
  if expand:
    out_w = tf.math.rint(h * tf.abs(s) + w * tf.abs(c))
    out_h = tf.math.rint(h * tf.abs(c) + w * tf.abs(s))
    cx, cy, ox, oy = (w - 1) / 2, (h - 1) / 2, (out_w - 1) / 2, (out_h - 1) / 2
  else:
    rel = (0.5, 0.5) if center is None else center
    out_w, out_h = w, h
    cx, cy = w * rel[0] - 0.5, h * rel[1] - 0.5
    ox, oy = cx, cy
  # Output pixel (x, y) samples input (c(x-ox) - s(y-oy) + cx, s(x-ox) + c(y-oy) + cy).
  transform = tf.stack([c, -s, cx - c * ox + s * oy, s, c, cy - s * ox - c * oy, 0., 0.])[None]
  shape = tf.cast(tf.stack([out_h, out_w]), tf.int32)

  def warp(x, interpolation):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None], transforms=transform, output_shape=shape, fill_value=0.0,
        interpolation=interpolation, fill_mode='CONSTANT')[0]

  return warp(image, 'BILINEAR'), warp(masks, 'NEAREST')


LSJ_PAD_VALUE = 128  # detectron2 FixedSizeCrop(pad_value=128.0) on images; masks are padded with 0.


def large_scale_jitter(image, mask, draws, size: int, scale_range: tuple[float, float]):
  """detectron2 `ResizeScale(min, max, size, size)` then `FixedSizeCrop((size, size))` on one frame.

  Args:
    image: uint8 `[H, W, C]`.
    mask: uint8 `[H, W, N]`.
    draws: float `[2]` uniforms in [0, 1): the scale's (s = min + (max - min)·u) and the crop offset's.
    size: output size S.
    scale_range: (min, max) of s.

  Returns:
    image uint8 `[S, S, C]` (bilinear, antialiased; LSJ_PAD_VALUE right of and below the resized frame) and mask
    uint8 `[S, S, N]` (nearest; 0 in the padding).
  """
  tf = tfrecord.import_tf()
  h = tf.cast(tf.shape(image)[0], tf.float64)
  w = tf.cast(tf.shape(image)[1], tf.float64)
  draws = tf.cast(draws, tf.float64)
  lo, hi = scale_range
  target = size * (lo + (hi - lo) * draws[0])
  scale = tf.minimum(target / h, target / w)
  new_h = tf.maximum(tf.math.round(h * scale), 1.)  # tf.math.round is half to even, as np.round.
  new_w = tf.maximum(tf.math.round(w * scale), 1.)
  off_y = tf.math.round(tf.maximum(new_h - size, 0.) * draws[1])
  off_x = tf.math.round(tf.maximum(new_w - size, 0.) * draws[1])
  crop_h, crop_w = tf.minimum(new_h, size), tf.minimum(new_w, size)
  y0, x0, ch, cw = (tf.cast(v, tf.int32) for v in (off_y, off_x, crop_h, crop_w))
  image = tf.image.resize(image, tf.cast(tf.stack([new_h, new_w]), tf.int32), method='bilinear', antialias=True)
  image = tf.cast(tf.clip_by_value(tf.math.round(image[y0:y0 + ch, x0:x0 + cw]), 0, 255), tf.uint8)
  # Nearest resize of the kept window only (source pixel floor((i + 0.5)·h / new_h)): the masks of all instances
  # are never materialised at the up-scaled size.
  rows = tf.minimum(tf.floor((off_y + tf.range(crop_h, dtype=tf.float64) + 0.5) * (h / new_h)), h - 1)
  cols = tf.minimum(tf.floor((off_x + tf.range(crop_w, dtype=tf.float64) + 0.5) * (w / new_w)), w - 1)
  mask = tf.gather(tf.gather(mask, tf.cast(rows, tf.int32), axis=0), tf.cast(cols, tf.int32), axis=1)
  pad = [[0, size - ch], [0, size - cw], [0, 0]]
  return tf.pad(image, pad, constant_values=LSJ_PAD_VALUE), tf.pad(mask, pad)


def _flip(flip, image, mask):
  """Horizontal flip of a `[H, W, C]` frame and its `[H, W, N]` masks where the bool `flip` holds."""
  tf = tfrecord.import_tf()
  return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
          tf.cond(flip, lambda: tf.reverse(mask, [1]), lambda: mask))


def augment_clip(images, masks, seed, recipe: Recipe, canvas: tuple[int, int]):
  """Augments one clip and pads every frame to `canvas`.

  Args:
    images: uint8 `[T, H, W, 3]` frames of one video (T static).
    masks: uint8 `[T, N, H, W]` 0/1 instance masks (N may be dynamic).
    seed: int `[2]` stateless seed of the clip.
    recipe: the method's `Recipe`.
    canvas: static (Hc, Wc); every augmented frame is scaled down if needed so that it fits.

  Returns:
    images uint8 `[T, Hc, Wc, 3]`, masks uint8 `[T, N, Hc, Wc]` (zero outside the content), and content sizes
    int32 `[T, 2]` as (h, w).
  """
  tf = tfrecord.import_tf()
  num_frames, num_instances = images.shape[0], masks.shape[1]
  canvas_h, canvas_w = canvas
  if recipe.lsj_size > min(canvas):
    raise ValueError(f'canvas {canvas} cannot hold the {recipe.lsj_size} x {recipe.lsj_size} output of '
                     'Recipe.lsj_size (config.input.size_buckets)')
  lo, hi = (float(v) for v in recipe.crop_range)
  angles = None
  if recipe.rotation > 0:
    angles = (_uniform(samplers.fold(seed, 1), [num_frames]) * 2 - 1) * recipe.rotation
    if recipe.rotation_per == 'sorted':
      angles = tf.sort(angles)
      angles = tf.where(_uniform(samplers.fold(seed, 10)) < 0.5, tf.reverse(angles, [0]), angles)

  def to_canvas(image, mask, size):  # [h, w, 3], [h, w, N] -> zero-padded [Hc, Wc, 3], [N, Hc, Wc].
    return (tf.image.pad_to_bounding_box(image, 0, 0, canvas_h, canvas_w),
            tf.transpose(tf.image.pad_to_bounding_box(mask, 0, 0, canvas_h, canvas_w), [2, 0, 1]), size)

  def one_frame(t):  # Traced once, run per frame (tf.map_fn), so the graph does not grow with T.
    image = images[t]
    mask = tf.transpose(masks[t], [1, 2, 0])  # [H, W, N]
    flip = None if recipe.flip_per == 'none' else _uniform(_key(seed, 9, recipe.flip_per, t)) < 0.5
    if recipe.lsj_size and flip is not None:
      image, mask = _flip(flip, image, mask)
    if angles is not None:
      center = None
      if recipe.rotation_center is not None:
        lo_c, hi_c = recipe.rotation_center
        center = tf.unstack(lo_c + (hi_c - lo_c) * _uniform(_key(seed, 11, recipe.rotation_per, t), [2]))
      image, mask = rotate(image, mask, angles[t], center, recipe.rotation_expand)
    if recipe.lsj_size:
      draws = _uniform(_key(seed, 12, recipe.resize_per, t), [2])
      image, mask = large_scale_jitter(image, mask, draws, recipe.lsj_size, recipe.lsj_scale)
      return to_canvas(image, mask, tf.constant([recipe.lsj_size] * 2, tf.int32))
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)

    # 2. Crop branch, in the coordinates of the (virtual) pre-crop resize.
    y0, x0, ch, cw = 0., 0., h, w
    if recipe.crop_prob > 0:
      do_crop = _uniform(_key(seed, 2, recipe.crop_per, t)) < recipe.crop_prob
      vh, vw = h, w
      if recipe.crop_resize:
        short = _choice(_key(seed, 3, recipe.crop_per, t), recipe.crop_resize)
        vh_i, vw_i = shortest_edge_size(h, w, short, float('inf'))
        vh, vw = tf.cast(vh_i, tf.float32), tf.cast(vw_i, tf.float32)
      per = recipe.crop_window
      size_u = _uniform(_key(seed, 4, per, t), [2])
      k_h = tf.minimum(vh, lo) + tf.floor(size_u[0] * (tf.minimum(vh, hi) - tf.minimum(vh, lo) + 1))
      k_w = tf.minimum(vw, lo) + tf.floor(size_u[1] * (tf.minimum(vw, hi) - tf.minimum(vw, lo) + 1))
      pos = _uniform(_key(seed, 5, per, t), [2])
      if per == 'slide':
        end = _uniform(samplers.fold(seed, 6), [2])
        frac = tf.cast(t, tf.float32) / max(num_frames - 1, 1)
        pos = pos + (end - pos) * frac
      k_y = tf.floor(pos[0] * (vh - k_h + 1))
      k_x = tf.floor(pos[1] * (vw - k_w + 1))
      sy, sx = h / vh, w / vw  # Virtual -> source pixels.
      src_y0 = tf.minimum(tf.math.round(k_y * sy), h - 1)
      src_x0 = tf.minimum(tf.math.round(k_x * sx), w - 1)
      src_h = tf.maximum(tf.minimum(tf.math.round(k_h * sy), h - src_y0), 1)
      src_w = tf.maximum(tf.minimum(tf.math.round(k_w * sx), w - src_x0), 1)
      y0, x0 = tf.where(do_crop, src_y0, 0.), tf.where(do_crop, src_x0, 0.)
      ch, cw = tf.where(do_crop, src_h, h), tf.where(do_crop, src_w, w)
      virtual_h, virtual_w = tf.where(do_crop, k_h, h), tf.where(do_crop, k_w, w)
    else:
      virtual_h, virtual_w = h, w
    y0i, x0i, chi, cwi = (tf.cast(v, tf.int32) for v in (y0, x0, ch, cw))
    image = image[y0i:y0i + chi, x0i:x0i + cwi]
    mask = mask[y0i:y0i + chi, x0i:x0i + cwi]

    # 3. Main resize (from the virtual crop size), fitted to the canvas.
    short, cap = main_resize_choice(seed, t, recipe)
    new_h, new_w = shortest_edge_size(virtual_h, virtual_w, short, cap)
    fit = tf.minimum(1.0, tf.minimum(canvas_h / tf.cast(new_h, tf.float32), canvas_w / tf.cast(new_w, tf.float32)))
    new_h = tf.maximum(tf.minimum(tf.cast(tf.floor(tf.cast(new_h, tf.float32) * fit + 0.5), tf.int32), canvas_h), 1)
    new_w = tf.maximum(tf.minimum(tf.cast(tf.floor(tf.cast(new_w, tf.float32) * fit + 0.5), tf.int32), canvas_w), 1)
    size = tf.stack([new_h, new_w])
    image = tf.image.resize(image, size, method='bilinear', antialias=True)
    image = tf.cast(tf.clip_by_value(tf.math.round(image), 0, 255), tf.uint8)
    mask = tf.image.resize(mask, size, method='nearest')

    # 4. Post-resize crop.
    if recipe.post_crop is not None:
      p_h = tf.minimum(new_h, recipe.post_crop[0])
      p_w = tf.minimum(new_w, recipe.post_crop[1])
      pos = _uniform(samplers.fold(seed, 8, t + 1), [2])
      p_y = tf.cast(tf.floor(pos[0] * tf.cast(new_h - p_h + 1, tf.float32)), tf.int32)
      p_x = tf.cast(tf.floor(pos[1] * tf.cast(new_w - p_w + 1, tf.float32)), tf.int32)
      image = image[p_y:p_y + p_h, p_x:p_x + p_w]
      mask = mask[p_y:p_y + p_h, p_x:p_x + p_w]
      size = tf.stack([p_h, p_w])

    # 5. Flip.
    if flip is not None:
      image, mask = _flip(flip, image, mask)
    return to_canvas(image, mask, size)

  return tf.map_fn(one_frame, tf.range(num_frames), fn_output_signature=(
      tf.TensorSpec([canvas_h, canvas_w, 3], tf.uint8),
      tf.TensorSpec([num_instances, canvas_h, canvas_w], tf.uint8),
      tf.TensorSpec([2], tf.int32)))
