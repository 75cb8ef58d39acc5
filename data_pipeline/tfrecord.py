"""TFRecord schema for visjax: one `tf.train.SequenceExample` per video, the shard manifest, and the parser.

Record layout (`FORMAT_VERSION` 1). `K` = number of tracks of the video, `L` = number of frames.

Context features:
  video/id            int64            dataset video id
  video/name          bytes            video name (first path component of its frames, or the COCO file name)
  video/height        int64            frame height in pixels (all frames of a video share it)
  video/width         int64            frame width
  video/num_frames    int64            L
  video/frame_offset  int64            index of this record's first frame in the video (0 unless windowed)
  video/total_frames  int64            frames of the whole video (L unless windowed)
  tracks/count        int64            K
  tracks/id           int64 [K]        track (annotation) id from the json, unique within the video
  tracks/category_id  int64 [K]        json category id
  tracks/label        int64 [K]        contiguous 0-based index into the manifest's sorted category table
  tracks/iscrowd      int64 [K]        0/1

Feature lists (one entry per frame, L entries each):
  frames/encoded      bytes [1]        the image file bytes exactly as on disk (JPEG; not re-encoded)
  frames/filename     bytes [1]        path relative to the images root, for error messages
  frames/present      int64 [K]        1 where the track has a non-empty mask in this frame
  frames/bbox         float [4K]       json box per track, (x, y, w, h) absolute pixels; 0 where absent
  frames/mask_png     bytes [K]        per-track 1-bit PNG of the full frame (decodes to 0/255); b'' where absent

A conversion with `--window W` (for training on long videos, e.g. OVIS) writes each video as consecutive records of
at most W frames, each holding only the tracks visible in it.

Shards are `<split>-SSSSS-of-NNNNN.tfrecord`; `manifest.json` (written last by the converter) lists them with record
counts, byte sizes and sha256. Readers call `load_manifest`, which refuses a directory without a manifest and
checks that every shard exists with the recorded size, so a partial conversion is never read as a finished one.
TensorFlow is imported lazily, only by the functions that need it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
from typing import Any, Sequence

import numpy as np
from PIL import Image

FORMAT_VERSION = 1
MANIFEST_NAME = 'manifest.json'


class RecordFormatError(ValueError):
  """A TFRecord directory, shard or record is missing, incomplete, corrupt or inconsistent."""


_TF = None


def import_tf():
  """Imports TensorFlow once, CPU-only and quiet (it must not grab accelerators next to JAX)."""
  global _TF
  if _TF is None:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # Also silences the oneDNN banner TF prints at import.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
      tf.config.set_visible_devices([], 'GPU')
      tf.config.set_visible_devices([], 'TPU')
    except (RuntimeError, ValueError):
      pass  # Devices already initialised (TF was configured earlier in this process).
    tf.get_logger().setLevel('ERROR')
    _TF = tf
  return _TF


@dataclasses.dataclass(frozen=True)
class TrackPayload:
  """One track of a video, ready to serialise (pure Python, no TF).

  Attributes:
    track_id: json annotation id.
    category_id: json category id.
    label: contiguous 0-based class index.
    iscrowd: crowd flag.
    bboxes: per frame `(x, y, w, h)` or None where absent, length L.
    mask_pngs: per frame 1-bit PNG bytes of the full-frame mask, b'' where absent, length L.
  """
  track_id: int
  category_id: int
  label: int
  iscrowd: bool
  bboxes: Sequence[Sequence[float] | None]
  mask_pngs: Sequence[bytes]


@dataclasses.dataclass(frozen=True)
class VideoPayload:
  """One video, ready to serialise: frame bytes as on disk plus its tracks."""
  video_id: int
  name: str
  height: int
  width: int
  filenames: Sequence[str]
  frames: Sequence[bytes]
  tracks: Sequence[TrackPayload]
  frame_offset: int = 0
  total_frames: int | None = None  # None: num_frames

  @property
  def num_frames(self) -> int:
    return len(self.frames)

  def windows(self, size: int) -> list['VideoPayload']:
    """Consecutive records of at most `size` frames (all of it when size <= 0), each with its visible tracks."""
    if size <= 0 or self.num_frames <= size:
      return [self]
    out = []
    for start in range(0, self.num_frames, size):
      end = min(start + size, self.num_frames)
      tracks = [dataclasses.replace(t, bboxes=t.bboxes[start:end], mask_pngs=t.mask_pngs[start:end])
                for t in self.tracks if any(t.mask_pngs[start:end])]
      out.append(dataclasses.replace(self, filenames=self.filenames[start:end], frames=self.frames[start:end],
                                     tracks=tracks, frame_offset=start, total_frames=self.num_frames))
    return out


def encode_mask_png(mask: np.ndarray) -> bytes:
  """Encodes a `[H, W]` 0/1 mask as a 1-bit PNG (decodes to 0/255 with `tf.io.decode_png`)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format='PNG')
  return buf.getvalue()


def serialize_video(video: VideoPayload) -> bytes:
  """Builds the `tf.train.SequenceExample` of one video (schema in the module docstring)."""
  tf = import_tf()
  length = video.num_frames
  ints = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=list(v)))
  floats = lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=list(v)))
  byts = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=list(v)))
  context = {
      'video/id': ints([video.video_id]),
      'video/name': byts([video.name.encode('utf-8')]),
      'video/height': ints([video.height]),
      'video/width': ints([video.width]),
      'video/num_frames': ints([length]),
      'video/frame_offset': ints([video.frame_offset]),
      'video/total_frames': ints([length if video.total_frames is None else video.total_frames]),
      'tracks/count': ints([len(video.tracks)]),
      'tracks/id': ints(t.track_id for t in video.tracks),
      'tracks/category_id': ints(t.category_id for t in video.tracks),
      'tracks/label': ints(t.label for t in video.tracks),
      'tracks/iscrowd': ints(int(t.iscrowd) for t in video.tracks),
  }
  encoded, filenames, present, bbox, masks = [], [], [], [], []
  for f in range(length):
    encoded.append(byts([video.frames[f]]))
    filenames.append(byts([video.filenames[f].encode('utf-8')]))
    present.append(ints(int(bool(t.mask_pngs[f])) for t in video.tracks))
    boxes = []
    for t in video.tracks:
      boxes.extend(t.bboxes[f] if t.bboxes[f] is not None else (0., 0., 0., 0.))
    bbox.append(floats(boxes))
    masks.append(byts(t.mask_pngs[f] for t in video.tracks))
  flists = {
      'frames/encoded': encoded,
      'frames/filename': filenames,
      'frames/present': present,
      'frames/bbox': bbox,
      'frames/mask_png': masks,
  }
  example = tf.train.SequenceExample(
      context=tf.train.Features(feature=context),
      feature_lists=tf.train.FeatureLists(feature_list={
          name: tf.train.FeatureList(feature=v) for name, v in flists.items()}))
  return example.SerializeToString()


def _feature_specs():
  tf = import_tf()
  context = {
      'video/id': tf.io.FixedLenFeature([], tf.int64),
      'video/name': tf.io.FixedLenFeature([], tf.string),
      'video/height': tf.io.FixedLenFeature([], tf.int64),
      'video/width': tf.io.FixedLenFeature([], tf.int64),
      'video/num_frames': tf.io.FixedLenFeature([], tf.int64),
      'video/frame_offset': tf.io.FixedLenFeature([], tf.int64, default_value=0),
      'video/total_frames': tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      'tracks/count': tf.io.FixedLenFeature([], tf.int64),
      'tracks/id': tf.io.VarLenFeature(tf.int64),
      'tracks/category_id': tf.io.VarLenFeature(tf.int64),
      'tracks/label': tf.io.VarLenFeature(tf.int64),
      'tracks/iscrowd': tf.io.VarLenFeature(tf.int64),
  }
  sequence = {
      'frames/encoded': tf.io.FixedLenSequenceFeature([], tf.string),
      'frames/filename': tf.io.FixedLenSequenceFeature([], tf.string),
      'frames/present': tf.io.VarLenFeature(tf.int64),
      'frames/bbox': tf.io.VarLenFeature(tf.float32),
      'frames/mask_png': tf.io.VarLenFeature(tf.string),
  }
  return context, sequence


def check(condition, message: str, *data):
  """An assertion op whose error names `message` and `data` (e.g. the video id and name)."""
  tf = import_tf()
  return tf.debugging.Assert(condition, [message, *data], summarize=16)


def parse_video(serialized) -> dict[str, Any]:
  """Parses one serialized video record into dense tensors (graph- and eager-safe).

  Returns:
    dict with `video_id, height, width, num_frames, frame_offset, total_frames, num_tracks` (int32 scalars),
    `name` (string),
    `track_id, category_id, label` int32 `[K]`, `iscrowd` bool `[K]`, `encoded, filename` string `[L]`,
    `present` bool `[L, K]`, `bbox` float32 `[L, K, 4]` (json xywh), `mask_png` string `[L, K]`.
    A record whose per-frame lists disagree with `tracks/count` fails with InvalidArgumentError.
  """
  tf = import_tf()
  context_spec, sequence_spec = _feature_specs()
  ctx, seq = tf.io.parse_single_sequence_example(
      serialized, context_features=context_spec, sequence_features=sequence_spec)
  k = tf.cast(ctx['tracks/count'], tf.int32)
  length = tf.shape(seq['frames/encoded'])[0]
  who = ['video id', ctx['video/id'], ctx['video/name']]
  checks = [check(tf.equal(length, tf.cast(ctx['video/num_frames'], tf.int32)),
                  'frame list length differs from video/num_frames', *who)]

  def per_track(name, default):
    dense = tf.sparse.to_dense(ctx[name], default_value=default)
    checks.append(check(tf.equal(tf.shape(dense)[0], k), f'{name}: length differs from tracks/count', *who))
    return dense

  def per_frame(name, width, default):
    sp = seq[name]
    dense = tf.sparse.to_dense(sp, default_value=default)  # [L, max entries per frame]
    row_len = tf.math.bincount(tf.cast(sp.indices[:, 0], tf.int32), minlength=length, maxlength=length)
    checks.append(check(tf.reduce_all(tf.equal(row_len, k * width)),
                        f'{name}: entries per frame differ from tracks/count', *who))
    pad = tf.maximum(k * width - tf.shape(dense)[1], 0)
    dense = tf.pad(dense, [[0, 0], [0, pad]], constant_values=default)[:, :k * width]
    return tf.reshape(dense, [length, k, width])

  track_id = per_track('tracks/id', 0)
  category_id = per_track('tracks/category_id', 0)
  label = per_track('tracks/label', 0)
  iscrowd = per_track('tracks/iscrowd', 0)
  present = per_frame('frames/present', 1, 0)[:, :, 0]
  bbox = per_frame('frames/bbox', 4, 0.)
  mask_png = per_frame('frames/mask_png', 1, '')[:, :, 0]
  with tf.control_dependencies(checks):
    return {
        'video_id': tf.cast(ctx['video/id'], tf.int32),
        'name': ctx['video/name'],
        'height': tf.cast(ctx['video/height'], tf.int32),
        'width': tf.cast(ctx['video/width'], tf.int32),
        'num_frames': tf.identity(length),
        'frame_offset': tf.cast(ctx['video/frame_offset'], tf.int32),
        'total_frames': tf.where(ctx['video/total_frames'] < 0, length, tf.cast(ctx['video/total_frames'], tf.int32)),
        'num_tracks': tf.identity(k),
        'track_id': tf.cast(track_id, tf.int32),
        'category_id': tf.cast(category_id, tf.int32),
        'label': tf.cast(label, tf.int32),
        'iscrowd': tf.cast(iscrowd, tf.bool),
        'encoded': seq['frames/encoded'],
        'filename': seq['frames/filename'],
        'present': tf.cast(present, tf.bool),
        'bbox': bbox,
        'mask_png': mask_png,
    }


def decode_masks(mask_png, height, width, *who):
  """Decodes `[...]` per-instance PNG strings (b'' = empty) into uint8 0/1 masks `[..., H, W]`."""
  tf = import_tf()
  shape = tf.shape(mask_png)
  flat = tf.reshape(mask_png, [-1])

  def one(png):
    def decode():
      mask = tf.io.decode_png(png, channels=1)[:, :, 0]
      ok = check(tf.reduce_all(tf.equal(tf.shape(mask), tf.stack([height, width]))),
                 'mask PNG size differs from the frame size', *who)
      with tf.control_dependencies([ok]):
        return tf.minimum(mask, 1)
    return tf.cond(tf.strings.length(png) > 0, decode, lambda: tf.zeros([height, width], tf.uint8))

  masks = tf.cond(  # map_fn cannot stack zero elements of unknown shape (a record or window without tracks).
      tf.size(flat) > 0,
      lambda: tf.map_fn(one, flat, fn_output_signature=tf.TensorSpec([None, None], tf.uint8)),
      lambda: tf.zeros([0, height, width], tf.uint8))
  return tf.reshape(masks, tf.concat([shape, [height, width]], 0))


def decode_frame(encoded, height, width, *who):
  """Decodes one frame's file bytes to uint8 RGB `[H, W, 3]`, checking the recorded size.

  JPEGs are decoded with the accurate integer IDCT (libjpeg's default `JDCT_ISLOW`, what PIL and OpenCV use, so
  what the official code reads); TensorFlow's default fast IDCT differs by a few grey levels on ~40% of pixels.
  """
  tf = import_tf()
  image = tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.ensure_shape(tf.io.decode_jpeg(encoded, channels=3, dct_method='INTEGER_ACCURATE'),
                              [None, None, 3]),
      lambda: tf.ensure_shape(tf.io.decode_image(encoded, channels=3, expand_animations=False), [None, None, 3]))
  checks = [check(tf.reduce_all(tf.equal(tf.shape(image)[:2], tf.stack([height, width]))),
                  'decoded frame size differs from video/height, video/width', *who)]
  with tf.control_dependencies(checks):
    return tf.ensure_shape(tf.identity(image), [None, None, 3])


# ----------------------------------------------------------------------------------------------------------------
# Shards and manifest.


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f'{split}-{index:05d}-of-{num_shards:05d}.tfrecord'


def sha256_file(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ShardInfo:
  path: str  # absolute path
  num_records: int
  num_bytes: int
  sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
  """The parsed `manifest.json` of a converted directory."""
  root: str
  raw: dict[str, Any]
  shards: tuple[ShardInfo, ...]

  @property
  def num_videos(self) -> int:
    return int(self.raw['num_videos'])

  @property
  def num_records(self) -> int:
    """Records in all shards (more than num_videos for a windowed conversion)."""
    return int(self.raw.get('num_records', self.raw['num_videos']))

  @property
  def window(self) -> int:
    """Frames per record of a windowed conversion; 0 when every record is a whole video."""
    return int(self.raw.get('window', 0))

  @property
  def categories(self) -> list[dict[str, Any]]:
    """Sorted category table: `[{'id': json id, 'name': ..., 'index': contiguous index}, ...]`."""
    return list(self.raw['categories'])

  @property
  def category_ids(self) -> tuple[int, ...]:
    return tuple(int(c['id']) for c in self.categories)

  @property
  def source_format(self) -> str:
    return str(self.raw['format'])

  @property
  def max_tracks_per_video(self) -> int:
    return int(self.raw['max_tracks_per_video'])


def load_manifest(root: str, *, verify_checksums: bool = False) -> Manifest:
  """Reads and checks `root/manifest.json`.

  Raises RecordFormatError (naming the directory or shard) when the manifest is missing (an unfinished or
  interrupted conversion), of another format version, or when a shard is missing or has another size (or, with
  `verify_checksums`, another sha256) than recorded.
  """
  path = os.path.join(root, MANIFEST_NAME)
  if not os.path.isfile(path):
    raise RecordFormatError(
        f'{root}: no {MANIFEST_NAME}; this is not a finished conversion (run data_pipeline.convert to completion)')
  try:
    with open(path) as f:
      raw = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise RecordFormatError(f'{path}: unreadable manifest ({e})') from None
  if raw.get('format_version') != FORMAT_VERSION:
    raise RecordFormatError(
        f'{path}: format_version {raw.get("format_version")!r}, this reader expects {FORMAT_VERSION}')
  for key in ('shards', 'num_videos', 'categories', 'format', 'max_tracks_per_video'):
    if key not in raw:
      raise RecordFormatError(f'{path}: missing key {key!r}')
  shards = []
  for s in raw['shards']:
    shard_path = os.path.join(root, s['file'])
    if not os.path.isfile(shard_path):
      raise RecordFormatError(f'{shard_path}: shard listed in {MANIFEST_NAME} is missing')
    size = os.path.getsize(shard_path)
    if size != s['num_bytes']:
      raise RecordFormatError(
          f'{shard_path}: {size} bytes, manifest says {s["num_bytes"]} (truncated or overwritten shard)')
    if verify_checksums and sha256_file(shard_path) != s['sha256']:
      raise RecordFormatError(f'{shard_path}: sha256 differs from {MANIFEST_NAME} (corrupt shard)')
    shards.append(ShardInfo(shard_path, int(s['num_records']), int(s['num_bytes']), str(s['sha256'])))
  expected = raw.get('num_records', raw['num_videos'])
  if sum(s.num_records for s in shards) != expected:
    raise RecordFormatError(f'{path}: shard record counts do not add up to num_records {expected}')
  return Manifest(root=root, raw=raw, shards=tuple(shards))


def error_text(error) -> str:
  """The useful part of a TensorFlow runtime error message (no function-node / op decorations)."""
  text = ' '.join((error.message or type(error).__name__).split())
  text = re.sub(r'\{\{function_node [^}]*\}\}\s*', '', text)
  text = re.sub(r'\s*\[\[\{\{node [^]]*\]\]', '', text)
  text = re.sub(r'\s*\[Op:[^\]]*\].*$', '', text)
  return text.strip()[:600]


def find_bad_record(paths: Sequence[str], *, deep: bool = False) -> tuple[str, int, str] | None:
  """Scans shards record by record; returns (path, record index, error) of the first bad record, or None.

  Every record is CRC-checked and parsed; with `deep`, its frames and masks are also decoded and their sizes checked
  (the error then names the video id and name).
  """
  tf = import_tf()
  for path in paths:
    index = 0
    try:
      for serialized in tf.data.TFRecordDataset(path):
        v = parse_video(serialized)
        if deep:
          who = ('video id', v['video_id'], v['name'])
          if int(v['num_frames']) == 0:
            return path, index, f'empty video id={int(v["video_id"])} (no frames)'
          for t in range(int(v['num_frames'])):
            decode_frame(v['encoded'][t], v['height'], v['width'], *who)
          if int(tf.size(v['mask_png'])):
            decode_masks(v['mask_png'], v['height'], v['width'], *who)
        index += 1
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
      return path, index, error_text(e)
  return None
