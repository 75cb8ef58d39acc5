"""Parse and validate YouTube-VIS / OVIS json files into typed records.

`load(path)` reads a YouTube-VIS 2019/2021 or OVIS json (train files with annotations, or valid/test files
without) and checks it before anything is converted or evaluated: unique ids, every annotation on a known video
and category, one segmentation / box / area per frame, RLE sizes equal to the video's (height, width), RLE run
counts that cover exactly height * width pixels, non-empty videos, and optionally that every listed frame exists
under an images directory. A problem raises `DatasetFormatError` naming the file, the entry (video or
annotation id) and the field.

Segmentations are normalised to compressed COCO RLE dicts `{'size': [h, w], 'counts': str}`: compressed
strings are kept, uncompressed RLE (integer `counts`, as in YouTube-VIS 2019 train.json) and polygons are
converted with pycocotools. Absent frames are None.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from visjax.evaluation import rle as rle_lib

Rle = dict[str, Any]
Box = tuple[float, float, float, float]


class DatasetFormatError(ValueError):
  """A dataset json does not follow the YouTube-VIS layout; the message names file, entry and field."""


@dataclasses.dataclass(frozen=True)
class Category:
  id: int
  name: str
  supercategory: str = ''


@dataclasses.dataclass(frozen=True)
class Video:
  """One video: `file_names[t]` is frame t relative to the images directory."""
  id: int
  height: int
  width: int
  length: int
  file_names: tuple[str, ...]

  @property
  def name(self) -> str:
    """The video's folder name (directory part of its first frame's file name)."""
    return os.path.dirname(self.file_names[0]).replace('\\', '/') or str(self.id)


@dataclasses.dataclass(frozen=True)
class Track:
  """One annotated instance over a whole video; per-frame lists have the video's length.

  Attributes:
    segmentations: compressed RLE dict per frame, None where the instance is absent.
    bboxes: [x, y, w, h] per frame in pixels (None where absent); computed from the RLE when the json lacks it.
    areas: mask area per frame (None where absent); computed from the RLE when the json lacks it.
  """
  id: int
  video_id: int
  category_id: int
  iscrowd: bool
  height: int
  width: int
  segmentations: tuple[Rle | None, ...]
  bboxes: tuple[Box | None, ...]
  areas: tuple[float | None, ...]

  @property
  def length(self) -> int:
    return len(self.segmentations)

  @property
  def present(self) -> np.ndarray:
    """bool [T]: frames where the track has a segmentation."""
    return np.array([s is not None for s in self.segmentations], dtype=bool)


@dataclasses.dataclass(frozen=True)
class CategoryTable:
  """Sorted json category ids <-> contiguous 0-based class indices."""
  ids: tuple[int, ...]
  names: tuple[str, ...]

  @classmethod
  def from_categories(cls, categories: Iterable[Category]) -> 'CategoryTable':
    ordered = sorted(categories, key=lambda c: c.id)
    return cls(ids=tuple(c.id for c in ordered), names=tuple(c.name for c in ordered))

  def __len__(self) -> int:
    return len(self.ids)

  def to_index(self, category_id: int) -> int:
    """Contiguous index of a json category id; KeyError naming the id if unknown."""
    i = int(np.searchsorted(self.ids, category_id))
    if i >= len(self.ids) or self.ids[i] != category_id:
      raise KeyError(f'unknown category_id {category_id}; known ids: {list(self.ids)}')
    return i

  def to_id(self, index: int) -> int:
    """Json category id of a contiguous index."""
    if not 0 <= index < len(self.ids):
      raise IndexError(f'category index {index} out of range [0, {len(self.ids)})')
    return self.ids[index]

  def to_indices(self, category_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Vectorised `to_index`: int array of any shape -> int32 array of the same shape."""
    ids = np.asarray(category_ids)
    table = np.asarray(self.ids)
    index = np.clip(np.searchsorted(table, ids), 0, len(table) - 1)
    unknown = table[index] != ids
    if np.any(unknown):
      raise KeyError(f'unknown category_id(s) {sorted(set(ids[unknown].tolist()))}; known ids: {list(self.ids)}')
    return index.astype(np.int32)

  def to_ids(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
    """Vectorised `to_id`: int array of indices -> int array of json ids."""
    indices = np.asarray(indices)
    if np.any((indices < 0) | (indices >= len(self.ids))):
      raise IndexError(f'category indices out of range [0, {len(self.ids)}): {indices}')
    return np.asarray(self.ids)[indices]

  def to_json(self) -> list[dict[str, Any]]:
    """[{index, id, name}] for manifests."""
    return [{'index': i, 'id': c, 'name': n} for i, (c, n) in enumerate(zip(self.ids, self.names))]


@dataclasses.dataclass(frozen=True)
class YtvisDataset:
  """A parsed and validated YouTube-VIS / OVIS json.

  Attributes:
    source: the file it was read from (or a label for an in-memory object).
    videos: in file order.
    categories: in file order.
    tracks: in file order; empty for files without annotations.
    has_annotations: the json has an `annotations` key (valid/test files of real YTVIS do not).
    info: the json's `info` object ({} if absent).
  """
  source: str
  videos: tuple[Video, ...]
  categories: tuple[Category, ...]
  tracks: tuple[Track, ...]
  has_annotations: bool
  info: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @functools.cached_property
  def category_table(self) -> CategoryTable:
    return CategoryTable.from_categories(self.categories)

  @functools.cached_property
  def _videos_by_id(self) -> dict[int, Video]:
    return {v.id: v for v in self.videos}

  @functools.cached_property
  def _tracks_by_video(self) -> dict[int, tuple[Track, ...]]:
    grouped: dict[int, list[Track]] = {v.id: [] for v in self.videos}
    for track in self.tracks:
      grouped[track.video_id].append(track)
    return {k: tuple(v) for k, v in grouped.items()}

  def video(self, video_id: int) -> Video:
    try:
      return self._videos_by_id[video_id]
    except KeyError:
      raise KeyError(f'{self.source}: no video with id {video_id}') from None

  def tracks_of(self, video_id: int) -> tuple[Track, ...]:
    """Tracks of one video, in file order (empty tuple for a video without annotations)."""
    self.video(video_id)
    return self._tracks_by_video[video_id]


# ----------------------------------------------------------------------------------------------------------------
# RLE helpers.


def rle_to_mask(rle: Rle) -> np.ndarray:
  """uint8 [H, W] 0/1 mask of a (compressed or uncompressed) RLE dict."""
  if isinstance(rle['counts'], list):
    rle = mask_utils.frPyObjects(rle, *rle['size'])
  return mask_utils.decode([rle])[:, :, 0]


def decode_track_masks(track: Track) -> np.ndarray:
  """uint8 [T, H, W] 0/1 masks of a track; all-zero where the track is absent."""
  masks = np.zeros((track.length, track.height, track.width), dtype=np.uint8)
  present = [t for t, s in enumerate(track.segmentations) if s is not None]
  if present:
    decoded = mask_utils.decode([track.segmentations[t] for t in present])  # [H, W, K]
    masks[present] = decoded.transpose(2, 0, 1)
  return masks


# ----------------------------------------------------------------------------------------------------------------
# Parsing.


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and np.isfinite(
      value)


class _Checker:
  """Builds error messages that name the file and the entry."""

  def __init__(self, source: str):
    self.source = source

  def fail(self, where: str, message: str) -> None:
    raise DatasetFormatError(f'{self.source}: {where}: {message}')

  def field(self, entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
      self.fail(where, f'missing field "{key}"')
    return entry[key]

  def int_field(self, entry: Mapping[str, Any], key: str, where: str, minimum: int | None = None) -> int:
    value = self.field(entry, key, where)
    if not _is_int(value):
      self.fail(where, f'field "{key}" must be an integer, got {value!r}')
    if minimum is not None and value < minimum:
      self.fail(where, f'field "{key}" must be >= {minimum}, got {value}')
    return int(value)


def _normalise_segmentation(check: _Checker, segm: Any, height: int, width: int, where: str) -> Rle | None:
  """Validates one frame's segmentation and returns it as a compressed RLE dict (or None)."""
  if segm is None:
    return None
  if isinstance(segm, list):  # Polygons: [[x0, y0, x1, y1, ...], ...].
    if not segm:
      check.fail(where, 'empty polygon list (use null for an absent frame)')
    for polygon in segm:
      if (not isinstance(polygon, list) or len(polygon) < 6 or len(polygon) % 2
          or not all(_is_number(x) for x in polygon)):
        check.fail(where, 'polygon must be a list of an even number (>= 6) of finite coordinates')
    rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    return {'size': [height, width], 'counts': rle['counts'].decode('ascii')}
  if not isinstance(segm, dict):
    check.fail(where, f'segmentation must be an RLE dict, a polygon list or null, got {type(segm).__name__}')
  size = check.field(segm, 'size', where)
  counts = check.field(segm, 'counts', where)
  if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) for s in size)):
    check.fail(where, f'RLE "size" must be [height, width], got {size!r}')
  if list(size) != [height, width]:
    check.fail(where, f'RLE size {list(size)} != video (height, width) {[height, width]}')
  if isinstance(counts, list):
    if not all(_is_int(c) and c >= 0 for c in counts):
      check.fail(where, 'uncompressed RLE "counts" must be non-negative integers')
    if sum(counts) != height * width:
      check.fail(where, f'RLE counts sum to {sum(counts)} pixels, expected height*width = {height * width}')
    rle = mask_utils.frPyObjects({'size': [height, width], 'counts': counts}, height, width)
    return {'size': [height, width], 'counts': rle['counts'].decode('ascii')}
  if isinstance(counts, bytes):
    counts = counts.decode('ascii', errors='replace')
  if not isinstance(counts, str):
    check.fail(where, f'RLE "counts" must be a string or a list of integers, got {type(counts).__name__}')
  return {'size': [height, width], 'counts': counts}  # Its runs are checked per track by `_check_compressed`.


def _check_compressed(check: _Checker, strings: Sequence[str], frames: Sequence[int], height: int, width: int,
                      where: str) -> None:
  """Checks that each compressed RLE string decodes to non-negative runs covering height * width pixels."""
  if not strings:
    return
  try:
    runs, owner = rle_lib.decode_compressed(strings)
  except rle_lib.CompressedRleError as e:
    check.fail(f'{where}, segmentations[{frames[e.index]}]', f'invalid compressed RLE: {e}')
  first = np.searchsorted(owner, np.arange(len(strings)))
  totals = np.add.reduceat(runs, first)
  smallest = np.minimum.reduceat(runs, first)
  bad = np.flatnonzero((totals != height * width) | (smallest < 0))
  if bad.size:
    i = bad[0]
    check.fail(f'{where}, segmentations[{frames[i]}]',
               f'invalid compressed RLE: decodes to {int(totals[i])} pixels (smallest run {int(smallest[i])}), '
               f'expected height*width = {height * width}')


def _per_frame(check: _Checker, ann: Mapping[str, Any], key: str, length: int, where: str) -> list | None:
  """The per-frame list `ann[key]` (checked to have `length` entries), or None when the key is absent."""
  if key not in ann:
    return None
  values = ann[key]
  if not isinstance(values, list):
    check.fail(where, f'field "{key}" must be a list, got {type(values).__name__}')
  if len(values) != length:
    check.fail(where, f'field "{key}" has {len(values)} entries, but the video has {length} frames')
  return values


def _parse_track(check: _Checker, ann: Mapping[str, Any], index: int, videos: Mapping[int, Video],
                 category_ids: set[int]) -> Track:
  where = f'annotations[{index}]'
  if not isinstance(ann, dict):
    check.fail(where, f'must be an object, got {type(ann).__name__}')
  track_id = check.int_field(ann, 'id', where)
  video_id = check.int_field(ann, 'video_id', f'annotation id={track_id}')
  where = f'annotation id={track_id} (video_id={video_id})'
  video = videos.get(video_id)
  if video is None:
    check.fail(where, f'video_id {video_id} is not among the videos')
  category_id = check.int_field(ann, 'category_id', where)
  if category_id not in category_ids:
    check.fail(where, f'unknown category_id {category_id}; known ids: {sorted(category_ids)}')
  iscrowd = ann.get('iscrowd', 0)
  if iscrowd not in (0, 1) or isinstance(iscrowd, float):
    check.fail(where, f'field "iscrowd" must be 0 or 1, got {iscrowd!r}')
  for key in ('height', 'width'):  # Optional per-annotation copies of the video size.
    if key in ann and ann[key] != getattr(video, key):
      check.fail(where, f'field "{key}" = {ann[key]!r} differs from the video\'s {getattr(video, key)}')
  raw_segms = _per_frame(check, ann, 'segmentations', video.length, where)
  if raw_segms is None:
    check.fail(where, 'missing field "segmentations"')
  segms = tuple(_normalise_segmentation(check, s, video.height, video.width, f'{where}, segmentations[{t}]')
                for t, s in enumerate(raw_segms))
  compressed = [t for t, s in enumerate(raw_segms) if isinstance(s, dict) and not isinstance(s['counts'], list)]
  _check_compressed(check, [segms[t]['counts'] for t in compressed], compressed, video.height, video.width, where)
  raw_boxes = _per_frame(check, ann, 'bboxes', video.length, where)
  raw_areas = _per_frame(check, ann, 'areas', video.length, where)
  boxes, areas = [], []
  for t, segm in enumerate(segms):
    box = raw_boxes[t] if raw_boxes is not None else None
    if box is not None:
      if not (isinstance(box, list) and len(box) == 4 and all(_is_number(x) for x in box)) or box[2] < 0 or box[3] < 0:
        check.fail(f'{where}, bboxes[{t}]', f'must be [x, y, w, h] with finite numbers and w, h >= 0, got {box!r}')
      box = tuple(float(x) for x in box)
    elif segm is not None:
      box = tuple(float(x) for x in mask_utils.toBbox(segm))
    boxes.append(box)
    area = raw_areas[t] if raw_areas is not None else None
    if area is not None:
      if not _is_number(area) or area < 0:
        check.fail(f'{where}, areas[{t}]', f'must be a non-negative number or null, got {area!r}')
      area = float(area)
    elif segm is not None:
      area = float(mask_utils.area(segm))
    areas.append(area)
  return Track(id=track_id, video_id=video_id, category_id=category_id, iscrowd=bool(iscrowd),
               height=video.height, width=video.width, segmentations=segms, bboxes=tuple(boxes),
               areas=tuple(areas))


def _parse_video(check: _Checker, entry: Any, index: int) -> Video:
  where = f'videos[{index}]'
  if not isinstance(entry, dict):
    check.fail(where, f'must be an object, got {type(entry).__name__}')
  video_id = check.int_field(entry, 'id', where)
  where = f'video id={video_id}'
  height = check.int_field(entry, 'height', where, minimum=1)
  width = check.int_field(entry, 'width', where, minimum=1)
  file_names = check.field(entry, 'file_names', where)
  if not isinstance(file_names, list) or not all(isinstance(f, str) and f for f in file_names):
    check.fail(where, 'field "file_names" must be a list of non-empty strings')
  if not file_names:
    check.fail(where, 'empty video (no frames in "file_names")')
  length = entry.get('length', len(file_names))
  if not _is_int(length) or length != len(file_names):
    check.fail(where, f'field "length" = {length!r} but "file_names" lists {len(file_names)} frames')
  return Video(id=video_id, height=height, width=width, length=int(length), file_names=tuple(file_names))


def _check_frames_exist(check: _Checker, videos: Sequence[Video], images_dir: str) -> None:
  if not os.path.isdir(images_dir):
    check.fail('images', f'images directory {images_dir!r} does not exist')
  for video in videos:
    missing = [f for f in video.file_names if not os.path.isfile(os.path.join(images_dir, f))]
    if missing:
      check.fail(f'video id={video.id}', f'{len(missing)} of {video.length} frames missing under {images_dir!r}, '
                 f'first: {missing[0]!r}')


def _unique(check: _Checker, ids: Iterable[int], kind: str) -> None:
  seen = set()
  for i in ids:
    if i in seen:
      check.fail(kind, f'duplicate id {i}')
    seen.add(i)


def parse(content: Mapping[str, Any], *, source: str = '<json object>', images_dir: str | None = None) -> YtvisDataset:
  """Validates an already-loaded YouTube-VIS / OVIS json object (see `load`)."""
  check = _Checker(source)
  if not isinstance(content, dict):
    check.fail('top level', f'must be a json object, got {type(content).__name__}')
  raw_videos = check.field(content, 'videos', 'top level')
  raw_categories = content.get('categories') or []  # Some test/valid files carry no categories.
  for key, value in (('videos', raw_videos), ('categories', raw_categories)):
    if not isinstance(value, list):
      check.fail('top level', f'"{key}" must be a list, got {type(value).__name__}')
  videos = tuple(_parse_video(check, v, i) for i, v in enumerate(raw_videos))
  _unique(check, (v.id for v in videos), 'videos')
  categories = []
  for i, entry in enumerate(raw_categories):
    where = f'categories[{i}]'
    if not isinstance(entry, dict):
      check.fail(where, f'must be an object, got {type(entry).__name__}')
    category_id = check.int_field(entry, 'id', where)
    name = entry.get('name', str(category_id))
    if not isinstance(name, str):
      check.fail(f'category id={category_id}', f'field "name" must be a string, got {name!r}')
    categories.append(Category(id=category_id, name=name, supercategory=str(entry.get('supercategory', ''))))
  _unique(check, (c.id for c in categories), 'categories')
  has_annotations = 'annotations' in content and content['annotations'] is not None
  tracks = ()
  if has_annotations:
    raw_annotations = content['annotations']
    if not isinstance(raw_annotations, list):
      check.fail('top level', f'"annotations" must be a list, got {type(raw_annotations).__name__}')
    by_id = {v.id: v for v in videos}
    category_ids = {c.id for c in categories}
    tracks = tuple(_parse_track(check, a, i, by_id, category_ids) for i, a in enumerate(raw_annotations))
    _unique(check, (t.id for t in tracks), 'annotations')
  if images_dir is not None:
    _check_frames_exist(check, videos, images_dir)
  info = content.get('info') or {}
  return YtvisDataset(source=source, videos=videos, categories=tuple(categories), tracks=tracks,
                      has_annotations=has_annotations, info=info if isinstance(info, dict) else {})


def load(path: str | os.PathLike, *, images_dir: str | None = None) -> YtvisDataset:
  """Reads and validates a YouTube-VIS 2019/2021 or OVIS json file.

  Args:
    path: the json file.
    images_dir: if given, every `file_names` entry must exist under it (e.g. `.../train/JPEGImages`).

  Returns:
    The parsed dataset.

  Raises:
    DatasetFormatError: unreadable json or any validation failure, naming the file, entry id and field.
    FileNotFoundError: `path` does not exist.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    try:
      content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DatasetFormatError(f'{path}: not valid JSON: {e}') from None
  return parse(content, source=path, images_dir=images_dir)
