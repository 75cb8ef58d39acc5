"""tf.data input: training clips (docs/INTERFACES.md §1) and whole eval videos (§2) from visjax TFRecords.

Training (`make_train_iterator(config, input_spec, process_index=, process_count=)` or
`TrainIterator(TrainSpec(...))`):

  per-process records ─ per-epoch shuffle (seed, epoch) ─ skip to the saved position ─ parse ─ sample clip
  (samplers) ─ select instances ─ decode frames + masks ─ augment (augment) ─ boxes from masks ─ batch ─ size bucket

- Per-process sharding: when the number of shards is a multiple of `process_count` (and every process gets a
  record), process p reads shards p, p + P, ...; otherwise it reads every shard and keeps the records whose global
  index (shard order, then record order) is p mod P. Either way the processes' records are disjoint and cover the
  dataset.
- An epoch is one pass over the process's records. Epoch e shuffles the shard order and a `shuffle_buffer`-record
  window with seeds derived from (seed, process, e); the clip of the record at position i of epoch e is sampled and
  augmented with stateless ops keyed on (seed, process, e, i). The stream of batches is therefore a pure function
  of the seed and the step.
- Resume: the iterator's state is the number of batches it has produced (`get_state()` -> {'step', ...}); on
  `set_state` the pipeline is rebuilt at epoch `step*B // E` and skips `step*B mod E` raw records (reading, not
  decoding them), which reproduces the exact following batches. `E` is the process's record count from the manifest.
  (Deterministic skipping, not tf.data iterator checkpoints: the state is a few integers that fit in the orbax
  checkpoint, and it is independent of the number of tf.data threads.)
- Several directories (e.g. YTVIS and COCO pseudo-videos) are mixed with
  `ratios`: in every block of 1000 clips, source k supplies round(1000 * ratio_k / sum) clips, in an order drawn from
  (seed, process, block). Each source keeps its own epochs and its own augmentation recipe (pseudo-clip recipe for
  a COCO conversion); on resume the clips taken from each source are counted from the block pattern. The sources
  must have the same category table (a COCO directory converted with `--category-map`), so labels mean the same.
- Static shapes: the buckets are `config.input.size_buckets` or derived from the recipes (S x S for a large-scale
  jitter to S x S, else from the train sizes); every frame is augmented onto the largest size bucket; each batch is
  then cut to the smallest bucket that holds all its frames (single process) or kept at the largest bucket (several
  processes, so that all processes agree on the global shape). Instances: the first `max_instances` tracks (json
  order) visible in the clip, crowd tracks dropped by default as the detectron2 mappers do; valid instances are
  packed first.

Eval (`eval_videos`, `eval_video_chunks`): records in shard order (per-process share as above), frames resized with
the shortest edge `min_size_test` capped by `max_size_test`, zero-padded to a multiple of `size_divisibility`.

Bad input raises `tfrecord.RecordFormatError` naming the directory, shard, record index or video; it never yields
a batch built from a record that failed a check.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Any, Iterator, Sequence

import numpy as np

from data_pipeline import augment
from data_pipeline import category_maps
from data_pipeline import samplers
from data_pipeline import tfrecord

_MAX_EPOCHS = 1 << 40


@dataclasses.dataclass(frozen=True)
class ProcessShard:
  """The records one process reads: `paths` in order, and (when `modulo`) only global indices = index mod count."""
  paths: tuple[str, ...]
  modulo: bool
  index: int
  count: int
  num_records: int


def plan_process_shard(manifest: tfrecord.Manifest, process_index: int, process_count: int) -> ProcessShard:
  """Splits a converted directory between processes (disjoint, covering); see the module docstring."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'need 0 <= process_index < process_count, got {process_index}, {process_count}')
  shards = manifest.shards
  by_file = len(shards) % process_count == 0 and all(
      sum(s.num_records for s in shards[p::process_count]) > 0 for p in range(process_count))
  if by_file:
    mine = shards[process_index::process_count]
    plan = ProcessShard(tuple(s.path for s in mine), False, process_index, process_count,
                        sum(s.num_records for s in mine))
  else:
    total = sum(s.num_records for s in shards)
    plan = ProcessShard(tuple(s.path for s in shards), True, process_index, process_count,
                        len(range(process_index, total, process_count)))
  if plan.num_records == 0:
    raise tfrecord.RecordFormatError(
        f'{manifest.root}: process {process_index} of {process_count} gets no records '
        f'({manifest.num_records} records in {len(shards)} shards)')
  return plan


def _process_records(plan: ProcessShard, shuffle_seed=None, cycle_length: int = 4):
  """Dataset of serialized records of one process, shard order permuted by `shuffle_seed` if given."""
  tf = tfrecord.import_tf()
  if plan.modulo:
    ds = tf.data.TFRecordDataset(list(plan.paths))
    ds = ds.enumerate().filter(lambda i, _: i % plan.count == plan.index).map(lambda _, r: r)
    return ds
  paths = tf.constant(plan.paths)
  if shuffle_seed is not None and len(plan.paths) > 1:
    paths = tf.gather(paths, tf.argsort(tf.random.stateless_uniform([len(plan.paths)], shuffle_seed)))
  ds = tf.data.Dataset.from_tensor_slices(paths)
  return ds.interleave(tf.data.TFRecordDataset, cycle_length=min(cycle_length, len(plan.paths)), block_length=1)


# ----------------------------------------------------------------------------------------------------------------
# Training clips.


@dataclasses.dataclass(frozen=True)
class TrainSpec:
  """Everything that determines the training stream (see `make_train_iterator` for the config mapping).

  `root` is one converted directory or a tuple of them (e.g. YTVIS and COCO pseudo-videos) mixed with `ratios`.
  """
  root: str | tuple[str, ...]
  sampler: samplers.ClipSampler
  batch_size: int  # clips per process
  max_instances: int
  min_sizes: tuple[int, ...]
  max_size: int
  size_buckets: tuple[tuple[int, int], ...] = ()
  size_divisibility: int = 32
  seed: int = 0
  shuffle_buffer: int = 256
  prefetch: int = 2
  drop_crowd: bool = True
  augment: dict[str, Any] = dataclasses.field(default_factory=dict)  # Recipe fields (config.input.augment)
  augment_pseudo: dict[str, Any] = dataclasses.field(default_factory=dict)  # on top, for COCO pseudo-clips
  process_index: int = 0
  process_count: int = 1
  ratios: tuple[float, ...] = ()  # Mixing weights of the roots (default: equal).

  @property
  def roots(self) -> tuple[str, ...]:
    return (self.root,) if isinstance(self.root, str) else tuple(self.root)


_MIX_BLOCK = 1000  # The source of each clip follows a seeded permutation of blocks of this many clips.


def mix_counts(ratios: Sequence[float]) -> np.ndarray:
  """Clips per source in each block of `_MIX_BLOCK` (largest-remainder rounding of the ratios)."""
  r = np.asarray(ratios, np.float64)
  if r.ndim != 1 or r.size == 0 or np.any(r < 0) or not np.all(np.isfinite(r)) or r.sum() <= 0:
    raise ValueError(f'dataset ratios must be non-negative with a positive sum, got {list(ratios)}')
  exact = r / r.sum() * _MIX_BLOCK
  counts = np.floor(exact).astype(np.int64)
  counts[np.argsort(-(exact - counts), kind='stable')[:_MIX_BLOCK - counts.sum()]] += 1
  return counts


def _mix_pattern(base, block, counts):
  """int64 `[_MIX_BLOCK]`: the source index of each clip of block `block` (a seeded shuffle of the counts)."""
  tf = tfrecord.import_tf()
  ids = tf.repeat(tf.range(len(counts), dtype=tf.int64), tf.constant(counts, tf.int64))
  return tf.gather(ids, tf.argsort(tf.random.stateless_uniform([_MIX_BLOCK], samplers.fold(base, 3, block))))


def _round_up(x: int, m: int) -> int:
  return int(math.ceil(x / m) * m)


def derive_buckets(min_sizes: Sequence[int], max_size: int, size_divisibility: int) -> tuple[tuple[int, int], ...]:
  """Default buckets: landscape (S, M), portrait (M, S) and square (M, M); S = largest short edge, M = max size."""
  m = _round_up(max_size, size_divisibility)
  s = _round_up(min(max(min_sizes), max_size), size_divisibility)
  return tuple(sorted({(s, m), (m, s), (m, m)}, key=lambda b: (b[0] * b[1], b)))


def recipe_buckets(recipes: Sequence[augment.Recipe], size_divisibility: int) -> tuple[tuple[int, int], ...]:
  """Default buckets of the sources' recipes: (S, S) for a large-scale jitter to S x S (S rounded up to
  `size_divisibility`), `derive_buckets` of the sizes for the others."""
  buckets = set()
  for r in recipes:
    if r.lsj_size:
      buckets.add((_round_up(r.lsj_size, size_divisibility),) * 2)
    else:
      buckets.update(derive_buckets(r.min_sizes, r.max_size, size_divisibility))
  return tuple(sorted(buckets, key=lambda b: (b[0] * b[1], b)))


def masks_to_boxes(masks, sizes):
  """Boxes and visibility of uint8 masks `[T, N, H, W]`.

  Returns normalised cxcywh boxes `[T, N, 4]` with detectron2 BitMasks bounds (last index + 1), divided by the
  frame's content size (`sizes` int32 `[T, 2]` as (h, w)), 0 for empty masks; and `visible` bool `[T, N]`.
  """
  tf = tfrecord.import_tf()
  positive = masks > 0
  rows = tf.reduce_any(positive, axis=3)  # [T, N, H]
  cols = tf.reduce_any(positive, axis=2)  # [T, N, W]
  visible = tf.reduce_any(rows, axis=-1)

  def bounds(line):
    n = tf.shape(line)[-1]
    first = tf.argmax(tf.cast(line, tf.int32), axis=-1, output_type=tf.int32)
    last = n - 1 - tf.argmax(tf.cast(tf.reverse(line, [-1]), tf.int32), axis=-1, output_type=tf.int32)
    return tf.cast(first, tf.float32), tf.cast(last + 1, tf.float32)

  y0, y1 = bounds(rows)
  x0, x1 = bounds(cols)
  h = tf.cast(sizes[:, 0:1], tf.float32)
  w = tf.cast(sizes[:, 1:2], tf.float32)
  boxes = tf.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h], axis=-1)
  return tf.where(visible[..., None], boxes, 0.), visible


class ClipBuilder:
  """Turns one serialized video record into one training clip dict (INTERFACES §1 keys, without the batch dim)."""

  def __init__(self, sampler: samplers.ClipSampler, recipe: augment.Recipe, canvas: tuple[int, int],
               max_instances: int, drop_crowd: bool):
    self.sampler = sampler
    self.recipe = recipe
    self.canvas = canvas
    self.max_instances = max_instances
    self.drop_crowd = drop_crowd

  def __call__(self, serialized, seed):
    tf = tfrecord.import_tf()
    n = self.max_instances
    v = tfrecord.parse_video(serialized)
    who = ('video id', v['video_id'], v['name'])
    not_empty = tfrecord.check(v['num_frames'] > 0, 'empty video (no frames)', *who)
    usable = tf.logical_not(v['iscrowd']) if self.drop_crowd else tf.ones_like(v['iscrowd'])
    with tf.control_dependencies([not_empty]):
      num_frames = tf.identity(v['num_frames'])
      annotated = tf.identity(tf.reduce_any(v['present'] & usable[None], axis=1))
    frames = self.sampler(num_frames, annotated, samplers.fold(seed, 1))
    present = tf.gather(v['present'], frames)  # [T, K]
    candidates = tf.cast(tf.where(tf.reduce_any(present, 0) & usable)[:, 0], tf.int32)[:n]
    num_selected = tf.size(candidates)
    slot_used = tf.range(n) < num_selected
    index = tf.pad(candidates, [[0, n - num_selected]])  # [N], 0 in unused slots (masked below)
    # Only the selected instances (at least one slot, so shapes stay defined) are decoded and augmented.
    num_decoded = tf.maximum(num_selected, 1)
    pngs = tf.gather(tf.gather(v['mask_png'], frames), index[:num_decoded], axis=1)
    pngs = tf.where(slot_used[None, :num_decoded], pngs, '')
    clip_len = self.sampler.clip_len
    masks = tfrecord.decode_masks(pngs, v['height'], v['width'], *who)
    masks = tf.ensure_shape(masks, [clip_len, None, None, None])
    images = tf.map_fn(lambda f: tfrecord.decode_frame(v['encoded'][f], v['height'], v['width'], *who), frames,
                       fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
    images = tf.ensure_shape(images, [clip_len, None, None, 3])
    images, masks, sizes = augment.augment_clip(images, masks, samplers.fold(seed, 2), self.recipe, self.canvas)
    boxes, visible = masks_to_boxes(masks, sizes)  # [T, n, 4], [T, n] over the decoded slots only
    visible &= slot_used[None, :num_decoded]
    valid = tf.reduce_any(visible, axis=0)
    order = tf.argsort(tf.cast(~valid, tf.int32), stable=True)  # Valid slots first, json order kept.
    # A slot that is not valid has no mask pixel in any frame, so reordering leaves all-zero masks behind.
    masks, boxes, visible, valid, index = (
        tf.gather(masks, order, axis=1), tf.gather(boxes, order, axis=1), tf.gather(visible, order, axis=1),
        tf.gather(valid, order), tf.gather(index[:num_decoded], order))
    pad = n - num_decoded
    masks = tf.ensure_shape(tf.pad(masks, [[0, 0], [0, pad], [0, 0], [0, 0]]), [clip_len, n, *self.canvas])
    boxes = tf.pad(boxes, [[0, 0], [0, pad], [0, 0]])
    visible = tf.pad(visible, [[0, 0], [0, pad]])
    valid = tf.pad(valid, [[0, pad]])
    index = tf.pad(index, [[0, pad]])
    return {
        'image': images,
        'image_size': sizes,
        'boxes': tf.ensure_shape(boxes, [clip_len, n, 4]),
        'masks': masks,
        'present': tf.ensure_shape(visible, [clip_len, n]),
        'labels': tf.where(valid, tf.gather(v['label'], index), -1),
        'track_ids': tf.where(valid, tf.gather(v['track_id'], index), -1),
        'instance_valid': tf.ensure_shape(valid, [n]),
        'is_crowd': valid & tf.gather(v['iscrowd'], index),
        'video_id': v['video_id'],
        'frame_index': frames + v['frame_offset'],  # Index in the whole video (windowed records).
    }


def _cut_to_bucket(batch, buckets):
  """Slices a batch padded to the largest bucket down to the smallest bucket holding all of its frames."""
  tf = tfrecord.import_tf()
  table = tf.constant(buckets, tf.int32)
  need = tf.reduce_max(tf.reshape(batch['image_size'], [-1, 2]), axis=0)
  fits = tf.reduce_all(table >= need[None], axis=1)
  bucket = table[tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)]
  batch = dict(batch)
  batch['image'] = batch['image'][:, :, :bucket[0], :bucket[1]]
  batch['masks'] = batch['masks'][..., :bucket[0], :bucket[1]]
  return batch


class TrainIterator:
  """Infinite iterator of numpy training batches (INTERFACES §1), deterministic in (seed, step) and resumable.

  `get_state()` returns a small dict (store it with the checkpoint); `set_state(state)` moves to that position.
  Errors from a bad record surface as `tfrecord.RecordFormatError` naming the shard (and record index) or video.
  """

  def __init__(self, spec: TrainSpec):
    self.spec = spec
    if spec.batch_size < 1:
      raise ValueError(f'batch size per process must be >= 1, got {spec.batch_size}')
    roots = spec.roots
    if not roots:
      raise ValueError('TrainSpec.root names no converted directory')
    self.mix = mix_counts(spec.ratios or (1.0,) * len(roots))
    if len(self.mix) != len(roots):
      raise ValueError(f'config.input.dataset_ratios has {len(spec.ratios)} values for {len(roots)} TFRecord '
                       f'directories {list(roots)} (config.dataset.tfrecords); give one ratio per directory, or '
                       "--config.input.dataset_ratios='()' for equal weights")
    self.manifests = tuple(tfrecord.load_manifest(r) for r in roots)
    category_maps.check_same_categories(roots, [m.categories for m in self.manifests])  # One label space.
    self.plans = tuple(plan_process_shard(m, spec.process_index, spec.process_count) for m in self.manifests)
    self.sampler = spec.sampler
    self.recipes = []
    for root, manifest in zip(roots, self.manifests):
      pseudo = spec.augment_pseudo if manifest.source_format == 'coco' else None
      self.recipes.append(augment.make_recipe(spec.augment, min_sizes=spec.min_sizes, max_size=spec.max_size,
                                              pseudo_overrides=pseudo))
      if manifest.max_tracks_per_video > spec.max_instances:
        logging.warning('%s: videos have up to %d tracks; clips keep the first max_instances=%d visible ones',
                        root, manifest.max_tracks_per_video, spec.max_instances)
    buckets = tuple(tuple(int(x) for x in b) for b in spec.size_buckets) or recipe_buckets(
        self.recipes, spec.size_divisibility)
    self.buckets = tuple(sorted(buckets, key=lambda b: (b[0] * b[1], b)))
    self.canvas = (max(b[0] for b in self.buckets), max(b[1] for b in self.buckets))
    if self.canvas not in self.buckets:
      raise ValueError(f'size buckets {self.buckets} need one bucket that holds all others (the canvas)')
    self.builders = [ClipBuilder(self.sampler, r, self.canvas, spec.max_instances, spec.drop_crowd)
                     for r in self.recipes]
    self._step = 0
    self._iterator = None

  # Single-directory views (the common case).
  @property
  def manifest(self) -> tfrecord.Manifest:
    return self.manifests[0]

  @property
  def plan(self) -> ProcessShard:
    return self.plans[0]

  @property
  def recipe(self) -> augment.Recipe:
    return self.recipes[0]

  @property
  def builder(self) -> 'ClipBuilder':
    return self.builders[0]

  @property
  def records_per_epoch(self) -> int:
    return self.plans[0].num_records

  def _clips(self, k: int, first_record: int, base):
    """Clip dataset of source k from its record `first_record` on (epochs shuffled with seeds (seed, k, epoch))."""
    tf = tfrecord.import_tf()
    spec, plan, builder = self.spec, self.plans[k], self.builders[k]
    first_epoch, offset = divmod(first_record, plan.num_records)
    plain = tf.autograph.experimental.do_not_convert  # All control flow below is explicit tf.cond / Python.

    def epoch(e):
      records = _process_records(plan, samplers.fold(base, 0, k, e))
      records = records.shuffle(max(spec.shuffle_buffer, 1), seed=samplers.fold(base, 1, k, e)[0],
                                reshuffle_each_iteration=False)
      return records.enumerate().map(plain(lambda i, r: (e, i, r)))

    ds = tf.data.Dataset.range(first_epoch, _MAX_EPOCHS).flat_map(plain(epoch)).skip(offset)
    return ds.map(plain(lambda e, i, r: builder(r, samplers.fold(base, 2, k, e, i))),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def _dataset(self, start_step: int):
    tf = tfrecord.import_tf()
    spec = self.spec
    base = tf.constant([spec.seed, spec.process_index], tf.int64)
    first = start_step * spec.batch_size  # Clips already produced.
    if len(self.builders) == 1:
      ds = self._clips(0, first, base)
    else:
      block, within = divmod(first, _MIX_BLOCK)
      before = np.bincount(_mix_pattern(base, block, self.mix).numpy()[:within], minlength=len(self.mix))
      taken = block * self.mix + before  # Clips of each source before clip `first`.
      plain = tf.autograph.experimental.do_not_convert
      choice = tf.data.Dataset.range(block, _MAX_EPOCHS).flat_map(
          plain(lambda b: tf.data.Dataset.from_tensor_slices(_mix_pattern(base, b, self.mix)))).skip(within)
      ds = tf.data.Dataset.choose_from_datasets(
          [self._clips(k, int(taken[k]), base) for k in range(len(self.builders))], choice)
    ds = ds.batch(spec.batch_size, drop_remainder=True)
    if spec.process_count == 1 and len(self.buckets) > 1:
      ds = ds.map(tf.autograph.experimental.do_not_convert(lambda b: _cut_to_bucket(b, self.buckets)))
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options)
    return ds.prefetch(max(spec.prefetch, 1))

  def __iter__(self) -> 'TrainIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    tf = tfrecord.import_tf()
    if self._iterator is None:
      self._iterator = iter(self._dataset(self._step))
    try:
      batch = next(self._iterator)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      self._iterator = None
      raise _diagnose([p for plan in self.plans for p in plan.paths], e) from None
    self._step += 1
    return {k: v.numpy() for k, v in batch.items()}

  def get_state(self) -> dict[str, Any]:
    """Position after the last produced batch (plus the settings it is only valid for); JSON-serialisable."""
    return {'step': self._step, 'seed': self.spec.seed, 'batch_size': self.spec.batch_size,
            'process_count': self.spec.process_count, 'records_per_epoch': [p.num_records for p in self.plans],
            'mix': self.mix.tolist()}

  def set_state(self, state: dict[str, Any]) -> None:
    """Resumes at `state['step']`; the other keys must match this iterator's settings."""
    mine = self.get_state()
    for key in ('seed', 'batch_size', 'process_count', 'records_per_epoch', 'mix'):
      if key in state and np.asarray(state[key]).tolist() != mine[key]:
        raise ValueError(f'iterator state was saved with {key}={np.asarray(state[key]).tolist()}, '
                         f'this input has {mine[key]}')
    step = int(state['step'])
    if step < 0:
      raise ValueError(f'iterator state step must be >= 0, got {step}')
    self._step = step
    self._iterator = None


def _diagnose(paths: Sequence[str], error) -> tfrecord.RecordFormatError:
  """Turns a TF error from the input pipeline into a RecordFormatError naming the bad shard/record if it finds one."""
  found = tfrecord.find_bad_record(paths)
  if found is None and isinstance(error, tfrecord.import_tf().errors.InvalidArgumentError):
    logging.error('input pipeline failed (%s); decoding every record of %d shard(s) to locate it',
                  tfrecord.error_text(error), len(paths))
    found = tfrecord.find_bad_record(paths, deep=True)
  if found is not None:
    path, index, message = found
    return tfrecord.RecordFormatError(f'{path}: record {index}: {message}')
  return tfrecord.RecordFormatError(
      f'bad training record in {os.path.dirname(paths[0])}: {tfrecord.error_text(error)}')


def make_train_iterator(config, input_spec, *, process_index: int = 0, process_count: int = 1) -> TrainIterator:
  """Builds the training iterator from a visjax config and the method's input spec.

  `input_spec` is `Method.input_spec()` (docs/INTERFACES.md §1): `sampler` (`samplers.ClipSampler` fields),
  `augment` and `augment_pseudo` (`augment.Recipe` fields, the latter on top for COCO pseudo-clips) — data, so
  nothing here names a method. Reads `config.dataset.tfrecords` (one converted directory, or several separated by
  commas, e.g. YTVIS and COCO pseudo-videos), `config.seed` and `config.input.{batch_size (global), max_instances,
  min_size_train, max_size_train, size_divisibility, size_buckets, shuffle_buffer, prefetch}` plus, when present,
  `config.input.{drop_crowd, dataset_ratios}` (`dataset_ratios`: mixing weights of the directories, e.g.
  (0.75, 1.0)).
  """
  inp = config.input
  if inp.batch_size % process_count:
    raise ValueError(f'config.input.batch_size={inp.batch_size} is not divisible by process_count={process_count}')
  if not config.dataset.tfrecords:
    raise ValueError('config.dataset.tfrecords is empty: convert the dataset with data_pipeline.convert first')
  as_dict = lambda section: dict(section.to_dict() if hasattr(section, 'to_dict') else section or {})
  roots = config.dataset.tfrecords
  roots = tuple(r.strip() for r in roots.split(',') if r.strip()) if isinstance(roots, str) else tuple(roots)
  spec = TrainSpec(
      root=roots, ratios=tuple(inp.get('dataset_ratios', ()) or ()),
      sampler=samplers.make_sampler(input_spec['sampler']), batch_size=inp.batch_size // process_count,
      max_instances=inp.max_instances, min_sizes=tuple(inp.min_size_train), max_size=inp.max_size_train,
      size_buckets=tuple(tuple(b) for b in inp.size_buckets), size_divisibility=inp.size_divisibility,
      seed=config.seed, shuffle_buffer=inp.shuffle_buffer, prefetch=inp.prefetch,
      drop_crowd=inp.get('drop_crowd', True), augment=as_dict(input_spec['augment']),
      augment_pseudo=as_dict(input_spec.get('augment_pseudo')), process_index=process_index,
      process_count=process_count)
  return TrainIterator(spec)


# ----------------------------------------------------------------------------------------------------------------
# Eval videos.


@dataclasses.dataclass(frozen=True)
class EvalResize:
  """Test-time frame size: shortest edge `min_size` capped by `max_size`, or exactly `fixed` (h, w) when given
  (e.g. 352x624 for every frame); then zero padding to a multiple of `size_divisibility`."""
  min_size: int = 480
  max_size: int = 1333
  size_divisibility: int = 32
  fixed: tuple[int, int] | None = None

  def size(self, height: int, width: int) -> tuple[int, int]:
    if self.fixed:
      return int(self.fixed[0]), int(self.fixed[1])
    new_h, new_w = augment.shortest_edge_size(height, width, float(self.min_size), float(self.max_size))
    return int(new_h), int(new_w)


def _eval_settings(source, min_size, max_size, size_divisibility, fixed_size,
                   need_root: bool = True) -> tuple[str, EvalResize]:
  if isinstance(source, str):
    root, defaults = source, EvalResize()
  else:
    inp = source.input
    root = source.dataset.get('eval_tfrecords', '') or source.dataset.tfrecords  # As configs/common.py documents.
    if not root and need_root:
      raise ValueError('config.dataset.eval_tfrecords and .tfrecords are empty: convert the eval split first')
    fixed = tuple(inp.get('test_fixed_size', ()) or ()) or None
    defaults = EvalResize(inp.min_size_test, inp.max_size_test, inp.size_divisibility, fixed)
  resize = EvalResize(min_size or defaults.min_size, max_size or defaults.max_size,
                      size_divisibility or defaults.size_divisibility,
                      tuple(fixed_size) if fixed_size else defaults.fixed)
  return root, resize


def _resize_pad(image, new_h, new_w, pad_h, pad_w):
  """One frame `[H, W, 3]` uint8 → the test resize (bilinear, antialiased), rounded, zero-padded to (pad_h, pad_w)."""
  tf = tfrecord.import_tf()
  image = tf.image.resize(image, tf.stack([new_h, new_w]), method='bilinear', antialias=True)
  image = tf.cast(tf.clip_by_value(tf.math.round(image), 0, 255), tf.uint8)
  return tf.image.pad_to_bounding_box(image, 0, 0, pad_h, pad_w)


def _resize_frames_fn(encoded: bool = True):
  """tf.function `(frames, height, width, new_h, new_w, pad_h, pad_w)`: JPEG bytes `[t]` (encoded) or uint8
  `[t, H, W, 3]` frames → `[t, pad_h, pad_w, 3]` with the one test-time resize of eval and predict."""
  tf = tfrecord.import_tf()

  scalar = tf.TensorSpec([], tf.int32)
  frames_spec = tf.TensorSpec([None], tf.string) if encoded else tf.TensorSpec([None, None, None, 3], tf.uint8)

  @tf.function(input_signature=[frames_spec] + [scalar] * 6, autograph=False)
  def resize(frames, height, width, new_h, new_w, pad_h, pad_w):
    def one(data):
      image = tfrecord.decode_frame(data, height, width) if encoded else data
      return _resize_pad(image, new_h, new_w, pad_h, pad_w)
    return tf.map_fn(one, frames, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  return resize


def resize_settings(config) -> EvalResize:
  """The test-time resize of a config (`input.min_size_test`, `max_size_test`, `size_divisibility`,
  `test_fixed_size`)."""
  return _eval_settings(config, None, None, None, None, need_root=False)[1]


def resize_test_frames(frames, resize: EvalResize):
  """Decoded frames uint8 `[t, H, W, 3]` → (`[t, Hp, Wp, 3]` resized and zero-padded, `image_size (h, w)`),
  exactly as eval resizes the frames it reads from TFRecords (`eval_video_chunks`)."""
  tf = tfrecord.import_tf()
  frames = np.asarray(frames, np.uint8)
  height, width = frames.shape[1:3]
  new_h, new_w = resize.size(height, width)
  div = resize.size_divisibility
  sizes = (tf.constant(x, tf.int32) for x in (height, width, new_h, new_w, _round_up(new_h, div),
                                               _round_up(new_w, div)))
  return _resize_frames_fn(encoded=False)(tf.constant(frames), *sizes).numpy(), (new_h, new_w)


def eval_video_chunks(source, *, chunk_len: int = 0, process_index: int = 0, process_count: int = 1,
                      min_size: int | None = None, max_size: int | None = None,
                      size_divisibility: int | None = None, fixed_size: tuple[int, int] | None = None,
                      max_videos: int = -1) -> Iterator[dict[str, Any]]:
  """Yields eval videos in chunks of at most `chunk_len` frames (0 = whole video), decoding only that chunk.

  Args:
    source: a config (`config.dataset.eval_tfrecords`, or `.tfrecords` when that is empty;
      `config.input.min_size_test`, `max_size_test`, `size_divisibility` and, if present, `test_fixed_size`) or
      the path of a converted directory (defaults 480 / 1333 / 32).
    chunk_len: frames per chunk; 0 yields each video as one chunk.
    process_index, process_count: this process's share of the videos (as for training).
    min_size, max_size, size_divisibility, fixed_size: override the test resize (`EvalResize`).
    max_videos: stop after this many videos of this process (-1: all).

  Yields:
    dicts with `video_id`, `name`, `length`, `orig_size (h, w)`, `image_size (h, w)` after the test resize,
    `start` (index of the chunk's first frame), `last` (bool), and `frames` uint8 `[c, Hp, Wp, 3]`.
  """
  tf = tfrecord.import_tf()
  root, test_resize = _eval_settings(source, min_size, max_size, size_divisibility, fixed_size)
  manifest = tfrecord.load_manifest(root)
  plan = plan_process_shard(manifest, process_index, process_count)
  resize = _resize_frames_fn()
  global_index, produced = 0, 0
  # Bound now: an abandoned generator is closed at interpreter exit, when `tf.errors` may already be torn down.
  read_errors = (tf.errors.DataLossError, tf.errors.InvalidArgumentError)
  for path in plan.paths:
    record_index = 0  # Records of this shard fully handled; the index of the one being read or parsed.
    try:
      for serialized in tf.data.TFRecordDataset(path):
        mine = not plan.modulo or global_index % plan.count == plan.index
        global_index += 1
        if mine:
          if 0 <= max_videos <= produced:
            return
          yield from _video_chunks(serialized, resize, path, record_index, chunk_len, test_resize)
          produced += 1
        record_index += 1
    except read_errors as e:
      raise tfrecord.RecordFormatError(f'{path}: record {record_index}: {tfrecord.error_text(e)}') from None


def _video_chunks(serialized, resize, path, record_index, chunk_len, test_resize: EvalResize):
  """Parses one record and yields its resized, padded frames in chunks (see `eval_video_chunks`)."""
  tf = tfrecord.import_tf()
  v = tfrecord.parse_video(serialized)
  height, width, length = int(v['height']), int(v['width']), int(v['num_frames'])
  if length == 0:
    raise tfrecord.RecordFormatError(f'{path}: record {record_index}: empty video id={int(v["video_id"])}')
  if int(v['frame_offset']) != 0 or int(v['total_frames']) != length:
    raise tfrecord.RecordFormatError(
        f'{path}: record {record_index}: a window of video id={int(v["video_id"])} (converted with --window); '
        'eval input needs whole-video records')
  new_h, new_w = test_resize.size(height, width)
  div = test_resize.size_divisibility
  pad_h, pad_w = _round_up(new_h, div), _round_up(new_w, div)
  step = chunk_len if chunk_len > 0 else length
  meta = {'video_id': int(v['video_id']), 'name': v['name'].numpy().decode('utf-8'), 'length': length,
          'orig_size': (height, width), 'image_size': (new_h, new_w)}
  for start in range(0, length, step):
    sizes = (tf.constant(x, tf.int32) for x in (height, width, new_h, new_w, pad_h, pad_w))
    frames = resize(v['encoded'][start:start + step], *sizes)
    yield {**meta, 'start': start, 'last': start + step >= length, 'frames': frames.numpy()}


def eval_videos(source, **kwargs) -> Iterator[dict[str, Any]]:
  """Yields whole eval videos (INTERFACES §2): `video_id, name, length, orig_size, image_size, frames [T, Hp, Wp, 3]`.

  Same arguments as `eval_video_chunks` (without `chunk_len`).
  """
  for chunk in eval_video_chunks(source, chunk_len=0, **kwargs):
    chunk.pop('start')
    chunk.pop('last')
    yield chunk
