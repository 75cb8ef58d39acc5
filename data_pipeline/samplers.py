"""Clip (frame index) samplers, as stateless TensorFlow functions; which one a method uses is data
(`config.input.sampler`, see `ClipSampler`), so nothing here names a method.

Every sampler maps `(number of frames, seed)` to int32 frame indices `[T]` with `tf.random.stateless_*` ops only, so
the same seed gives the same clip in graph mode (inside tf.data) and eagerly (in tests). A one-frame record (a COCO
image) gives `[0] * T`, the pseudo-clip of `coco_pseudo`.

- kind 'reference', `reference_clip`: the detectron2 YouTube-VIS mapper rule: a uniform
  reference frame r, then T-1 further frames drawn uniformly from [r-R, r+R] ∩ [0, L) minus (r-interval,
  r+interval), with replacement (`np.random.choice`) or without (`random.sample`; cycling the candidates when there
  are fewer than T-1); all T sorted in time, then shuffled if asked. With no frame to draw from (L = 1) the
  reference is repeated.
- kind 'annotated_gaps', `annotated_gaps_clip`: the mmdet YTVOS dataset rule: over the frames that carry an
  annotation (all frames if none), cycled to at least T entries, a uniform start s in [0, n-T], then T-1 steps each
  uniform in [1, min(R, n - position - remaining steps)].
"""

from __future__ import annotations

import dataclasses

from data_pipeline import tfrecord
from visjax.models import settings

KINDS = ('reference', 'annotated_gaps')


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
                   shuffle: bool = False, replacement: bool = True):
  """detectron2 YTVIS mapper sampling; see the module docstring. Returns int32 `[T]`."""
  tf = tfrecord.import_tf()
  length = tf.cast(num_frames, tf.int32)
  ref = _randint(fold(seed, 0), 0, length - 1)
  start = tf.maximum(0, ref - frame_range)
  start_interval = tf.maximum(0, ref - interval + 1)
  end_interval = tf.minimum(length, ref + interval)
  end = tf.minimum(length, ref + frame_range + 1)
  num_left = tf.maximum(start_interval - start, 0)
  num_candidates = num_left + tf.maximum(end - end_interval, 0)
  if replacement:
    draws = tf.random.stateless_uniform([clip_len - 1], fold(seed, 1), dtype=tf.float32)
    u = tf.minimum(tf.cast(draws * tf.cast(num_candidates, tf.float32), tf.int32),
                   tf.maximum(num_candidates - 1, 0))
  else:
    order = tf.cast(tf.argsort(tf.random.stateless_uniform([num_candidates], fold(seed, 1))), tf.int32)
    order = tf.concat([order, tf.zeros([1], tf.int32)], 0)  # a valid index when there is no candidate
    u = tf.gather(order, tf.range(clip_len - 1) % tf.maximum(num_candidates, 1))
  others = tf.where(u < num_left, start + u, end_interval + (u - num_left))
  others = tf.where(num_candidates > 0, others, ref)
  clip = tf.sort(tf.concat([others, [ref]], 0))
  if shuffle:
    order = tf.argsort(tf.random.stateless_uniform([clip_len], fold(seed, 2)))
    clip = tf.gather(clip, order)
  return clip


def annotated_gaps_clip(annotated, seed, *, clip_len: int, max_gap: int):
  """mmdet YTVOS sampling over the annotated frames (bool `[L]`); see the module docstring. Returns int32 `[T]`."""
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
  """`config.input.sampler`: `__call__(num_frames, annotated [L], seed) -> int32 [T]`.

  Attributes:
    kind: 'reference' or 'annotated_gaps' (module docstring).
    clip_len: frames T per clip.
    frame_range: R: the range around the reference frame ('reference'), the largest gap ('annotated_gaps').
    interval: frames closer than this to the reference are not drawn ('reference').
    shuffle: shuffle the clip's frames after sorting them in time ('reference').
    replacement: draw the other frames with replacement ('reference').
  """
  kind: str
  clip_len: int
  frame_range: int
  interval: int = 1
  shuffle: bool = False
  replacement: bool = True

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f'config.input.sampler.kind must be one of {KINDS}, got {self.kind!r}')
    if self.clip_len < 1 or self.frame_range < 1 or self.interval < 1:
      raise ValueError(f'config.input.sampler: clip_len, frame_range and interval must be >= 1, got '
                       f'{self.clip_len}, {self.frame_range}, {self.interval}')

  def __call__(self, num_frames, annotated, seed):
    if self.kind == 'annotated_gaps':
      return annotated_gaps_clip(annotated, seed, clip_len=self.clip_len, max_gap=self.frame_range)
    return reference_clip(num_frames, seed, clip_len=self.clip_len, frame_range=self.frame_range,
                          interval=self.interval, shuffle=self.shuffle, replacement=self.replacement)


def make_sampler(spec) -> ClipSampler:
  """The `ClipSampler` of a `config.input.sampler` section (a mapping of its fields; one error names every missing
  or unknown field)."""
  return settings.from_config(ClipSampler, spec, 'config.input.sampler')
