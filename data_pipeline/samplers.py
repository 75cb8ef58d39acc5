"""Clip (frame index) samplers of IDOL, VITA, VISOLO and IAI, as stateless TensorFlow functions.

Every sampler maps `(number of frames, seed)` to int32 frame indices `[T]` with `tf.random.stateless_*` ops only, so
the same seed gives the same clip in graph mode (inside tf.data) and eagerly (in tests). A one-frame record (a COCO
image) gives `[0] * T`, the pseudo-clip of `coco_pseudo`.

- `reference_clip` is the detectron2 YouTube-VIS mapper rule used by IDOL (T=2, range 10), VITA (T frames, range 20
  or 8) and VISOLO (T=3, range 20, shuffled): a uniform reference frame r, then T-1 further frames drawn uniformly
  WITH replacement from [r-R, r+R] ∩ [0, L) minus (r-interval, r+interval); all T sorted in time, then shuffled if
  asked. With no frame to draw from (L = 1) the reference is repeated.
- `iai_clip` is the IAI (mmdet YTVOS dataset) rule: over the frames that carry an annotation (all frames if none),
  cycled to at least T entries, a uniform start s in [0, n-T], then T-1 steps each uniform in
  [1, min(3, n - position - remaining steps)].
"""

from __future__ import annotations

import dataclasses

from data_pipeline import tfrecord

# Per-method defaults: (clip length T, frame range R, shuffle).
METHOD_DEFAULTS = {
    'idol': (2, 10, False),
    'vita': (5, 20, False),
    'visolo': (3, 20, True),
    'iai': (5, 3, False),  # For IAI, R is the largest gap between consecutive frames.
}


def _randint(seed, lo, hi):
  """Uniform int32 in [lo, hi] (inclusive; tensors allowed)."""
  tf = tfrecord.import_tf()
  return tf.random.stateless_uniform([], seed, minval=lo, maxval=hi + 1, dtype=tf.int32)


def fold(seed, *data):
  """Derives a new stateless seed `[2]` from `seed` and integers (the key of one random decision)."""
  tf = tfrecord.import_tf()
  seed = tf.cast(seed, tf.int64)
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def reference_clip(num_frames, seed, *, clip_len: int, frame_range: int, interval: int = 1,
                   shuffle: bool = False):
  """detectron2 YTVIS mapper sampling (IDOL / VITA / VISOLO); see the module docstring. Returns int32 `[T]`."""
  tf = tfrecord.import_tf()
  length = tf.cast(num_frames, tf.int32)
  ref = _randint(fold(seed, 0), 0, length - 1)
  start = tf.maximum(0, ref - frame_range)
  start_interval = tf.maximum(0, ref - interval + 1)
  end_interval = tf.minimum(length, ref + interval)
  end = tf.minimum(length, ref + frame_range + 1)
  num_left = tf.maximum(start_interval - start, 0)
  num_candidates = num_left + tf.maximum(end - end_interval, 0)
  draws = tf.random.stateless_uniform([clip_len - 1], fold(seed, 1), dtype=tf.float32)
  u = tf.minimum(tf.cast(draws * tf.cast(num_candidates, tf.float32), tf.int32), tf.maximum(num_candidates - 1, 0))
  others = tf.where(u < num_left, start + u, end_interval + (u - num_left))
  others = tf.where(num_candidates > 0, others, ref)
  clip = tf.sort(tf.concat([others, [ref]], 0))
  if shuffle:
    order = tf.argsort(tf.random.stateless_uniform([clip_len], fold(seed, 2)))
    clip = tf.gather(clip, order)
  return clip


def iai_clip(annotated, seed, *, clip_len: int = 5, max_gap: int = 3):
  """IAI sampling over the annotated frames (bool `[L]`); see the module docstring. Returns int32 `[T]`."""
  tf = tfrecord.import_tf()
  annotated = tf.convert_to_tensor(annotated, tf.bool)
  frames = tf.cast(tf.where(annotated)[:, 0], tf.int32)
  frames = tf.cond(tf.size(frames) > 0, lambda: frames, lambda: tf.range(tf.size(annotated, tf.int32)))
  n = tf.size(frames)
  frames = tf.gather(frames, tf.range(tf.maximum(n, clip_len)) % n)  # Cycle short videos to T entries.
  n = tf.maximum(n, clip_len)
  position = _randint(fold(seed, 0), 0, n - clip_len)
  positions = [position]
  for step, remaining in enumerate(range(clip_len - 1, 0, -1)):
    gap = _randint(fold(seed, 1, step), 1, tf.minimum(max_gap, n - position - remaining))
    position += gap
    positions.append(position)
  return tf.gather(frames, tf.stack(positions))


@dataclasses.dataclass(frozen=True)
class ClipSampler:
  """A method's sampler with its parameters; `__call__(num_frames, annotated [L], seed) -> int32 [T]`."""
  method: str
  clip_len: int
  frame_range: int
  shuffle: bool

  def __call__(self, num_frames, annotated, seed):
    if self.method == 'iai':
      return iai_clip(annotated, seed, clip_len=self.clip_len, max_gap=self.frame_range)
    return reference_clip(num_frames, seed, clip_len=self.clip_len, frame_range=self.frame_range,
                          shuffle=self.shuffle)


def make_sampler(method: str, *, clip_len: int | None = None, frame_range: int | None = None,
                 shuffle: bool | None = None) -> ClipSampler:
  """The sampler of `method` ('idol', 'vita', 'visolo', 'iai'), with optional overrides of its defaults."""
  if method not in METHOD_DEFAULTS:
    raise ValueError(f'unknown method {method!r} for clip sampling; expected one of {sorted(METHOD_DEFAULTS)}')
  default_len, default_range, default_shuffle = METHOD_DEFAULTS[method]
  clip_len = default_len if clip_len is None else int(clip_len)
  frame_range = default_range if frame_range is None else int(frame_range)
  if clip_len < 1 or frame_range < 1:
    raise ValueError(f'clip_len and frame_range must be >= 1, got {clip_len}, {frame_range}')
  return ClipSampler(method=method, clip_len=clip_len, frame_range=frame_range,
                     shuffle=default_shuffle if shuffle is None else bool(shuffle))
