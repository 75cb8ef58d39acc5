"""YouTube-VIS result files: per-frame RLE encoding, streaming writer, validation, CodaLab zip.

A result record (the CodaLab format of YouTube-VIS 2019/2021 and OVIS) is

  {'video_id': int, 'category_id': int, 'score': float,
   'segmentations': [{'size': [h, w], 'counts': str} or None, ... one entry per frame of the video]}

with `counts` a COCO compressed RLE string and None where the instance is absent. CodaLab expects a zip holding
`results.json` at its root.
"""

from collections.abc import Iterable, Mapping, Sequence
import json
import math
import numbers
import os
import zipfile

import numpy as np
from pycocotools import mask as mask_utils

from visjax.evaluation import rle as rle_lib

RESULT_KEYS = ('video_id', 'category_id', 'score', 'segmentations')
RESULTS_JSON = 'results.json'
RESULTS_ZIP = 'results.zip'


def load_json(path_or_obj):
  """The parsed json of a path (a CodaLab zip: its results.json), or the object itself when already loaded."""
  if not isinstance(path_or_obj, (str, os.PathLike)):
    return path_or_obj
  if zipfile.is_zipfile(path_or_obj):
    with zipfile.ZipFile(path_or_obj) as z:
      if RESULTS_JSON not in z.namelist():
        raise ValueError(f'{path_or_obj}: the zip has no {RESULTS_JSON} at its root (members: {z.namelist()[:5]})')
      return json.loads(z.read(RESULTS_JSON))
  with open(path_or_obj) as f:
    return json.load(f)


def encode_mask(mask: np.ndarray) -> dict:
  """Encodes a binary mask [H, W] as a compressed RLE `{'size': [H, W], 'counts': str}`."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise ValueError(f'encode_mask expects a [H, W] mask, got shape {mask.shape}')
  rle = mask_utils.encode(np.asfortranarray(mask != 0, dtype=np.uint8))
  return {'size': [int(s) for s in rle['size']], 'counts': rle['counts'].decode('ascii')}


def segmentation_to_rle(segmentation, height: int, width: int):
  """A frame's segmentation (polygons, uncompressed or compressed RLE) as pycocotools RLE; None when absent.

  Follows the official `YTVOS.annToRLE`: falsy entries (None, [], {}) are absent, polygons are rasterised and
  merged, uncompressed RLE (list counts) is compressed, compressed RLE is returned as is.
  """
  if not segmentation:
    return None
  if isinstance(segmentation, list):
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
  if isinstance(segmentation['counts'], list):
    return mask_utils.frPyObjects(segmentation, height, width)
  return segmentation


def _json_rle(rle) -> dict:
  counts = rle['counts']
  return {'size': [int(s) for s in rle['size']],
          'counts': counts.decode('ascii') if isinstance(counts, bytes) else counts}


def video_table(gt_or_videos) -> dict:
  """Maps video id -> (num_frames, height, width) from a gt dict, a list of video dicts, or a json path."""
  data = load_json(gt_or_videos)
  videos = data.get('videos') if isinstance(data, Mapping) else data
  if not isinstance(videos, list):
    raise ValueError("expected a YouTube-VIS gt dict with a 'videos' list, or a list of video dicts")
  table = {}
  for i, video in enumerate(videos):
    missing = [k for k in ('id', 'height', 'width') if k not in video]
    if 'length' not in video and 'file_names' not in video:
      missing.append('length')
    if missing:
      raise ValueError(f'videos[{i}]: missing key(s) {missing}')
    length = video['length'] if 'length' in video else len(video['file_names'])
    if video['id'] in table:
      raise ValueError(f"videos[{i}]: duplicate video id {video['id']!r}")
    table[video['id']] = (int(length), int(video['height']), int(video['width']))
  return table


def _category_ids(gt_or_videos) -> set | None:
  if isinstance(gt_or_videos, Mapping) and 'categories' in gt_or_videos:
    return {c['id'] for c in gt_or_videos['categories']}
  return None


def _is_real(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_record(index: int, record, table: Mapping, category_ids: set | None) -> list:
  """Raises ValueError naming results[index], its video and the field when the record is malformed.

  Returns the record's RLE counts strings (present frames, in order), which the caller decodes in bulk.
  """
  where = f'results[{index}]'
  if not isinstance(record, Mapping):
    raise ValueError(f'{where}: expected a dict, got {type(record).__name__}')
  missing = [k for k in RESULT_KEYS if k not in record]
  if missing:
    raise ValueError(f'{where} (video_id={record.get("video_id")!r}): missing key(s) {missing}')
  video_id = record['video_id']
  where = f'{where} (video_id={video_id!r})'
  try:
    num_frames, height, width = table[video_id]
  except (KeyError, TypeError):
    raise ValueError(f"{where}: field 'video_id': no video with this id in the gt") from None
  category_id = record['category_id']
  if not _is_real(category_id) or not math.isfinite(category_id) or category_id != int(category_id):
    raise ValueError(f"{where}: field 'category_id': expected an int, got {category_id!r}")
  if category_ids is not None and category_id not in category_ids:
    raise ValueError(f"{where}: field 'category_id': {category_id} is not a gt category id")
  score = record['score']
  if not _is_real(score) or not math.isfinite(score):
    raise ValueError(f"{where}: field 'score': expected a finite number, got {score!r}")
  segmentations = record['segmentations']
  if not isinstance(segmentations, list):
    raise ValueError(f"{where}: field 'segmentations': expected a list, got {type(segmentations).__name__}")
  if len(segmentations) != num_frames:
    raise ValueError(f"{where}: field 'segmentations': {len(segmentations)} frames, the video has {num_frames}")
  size = [height, width]
  # Fast path: every present frame a dict with the video's size and a string 'counts' (pycocotools accepts any
  # numbers equal to the size, e.g. 360.0).
  counts = [s['counts'] for s in segmentations
            if s is not None and type(s) is dict and s.get('size') == size and type(s.get('counts')) in (str, bytes)]
  if len(counts) != len(segmentations) - segmentations.count(None):  # Look closer, frame by frame.
    counts = []
    for t, seg in enumerate(segmentations):
      if seg is not None:
        _check_frame(f"{where}: field 'segmentations'[{t}]", seg, size)
        counts.append(seg['counts'])
  return counts


def _check_frame(field: str, seg, size: list) -> None:
  """Raises ValueError naming `field` unless `seg` is a compressed RLE dict of the given size."""
  if not isinstance(seg, dict) or 'size' not in seg or 'counts' not in seg:
    raise ValueError(f"{field}: expected None or a compressed RLE dict {{'size', 'counts'}}, got {seg!r:.80}")
  if not isinstance(seg['size'], (list, tuple)) or list(seg['size']) != size:
    raise ValueError(f"{field}: RLE size {seg['size']!r} differs from the video size {size}")
  if not isinstance(seg['counts'], (str, bytes)):
    raise ValueError(f"{field}: RLE 'counts' must be a compressed RLE string, got {type(seg['counts']).__name__}")


def _check_records(records: Sequence, table: Mapping, category_ids: set | None, first_index: int = 0) -> None:
  """Checks records (numbered from `first_index`); RLE strings of all records are decoded together (fast)."""
  counts, num_pixels, owners = [], [], []
  for i, record in enumerate(records, first_index):
    record_counts = _check_record(i, record, table, category_ids)
    _, height, width = table[record['video_id']]
    counts.extend(record_counts)
    num_pixels.append(np.full(len(record_counts), height * width, np.int64))
    owners.append(np.full(len(record_counts), i - first_index, np.int64))
  if not counts:
    return
  valid = rle_lib.compressed_rle_valid(counts, np.concatenate(num_pixels))
  if valid.all():
    return
  bad = int(np.argmin(valid))
  index = int(np.concatenate(owners)[bad])
  record = records[index]
  _, height, width = table[record['video_id']]
  present = [t for t, seg in enumerate(record['segmentations']) if seg is not None]
  t = present[bad - int(np.searchsorted(np.concatenate(owners), index))]
  raise ValueError(f"results[{index + first_index}] (video_id={record['video_id']!r}): field 'segmentations'[{t}]: "
                   f"corrupt RLE 'counts' (does not decode to runs covering {height}x{width} pixels)")


def validate_results(results, gt_or_videos) -> None:
  """Checks a results list (or json path) against the gt videos; raises ValueError naming the bad entry.

  Args:
    results: list of result records, or a path to results.json.
    gt_or_videos: the gt dict (its 'videos', and 'categories' when present), a list of video dicts, or a path.
  """
  results = load_json(results)
  gt_or_videos = load_json(gt_or_videos)
  if not isinstance(results, list):
    raise ValueError(f'results must be a list of records, got {type(results).__name__}')
  table = video_table(gt_or_videos)
  category_ids = _category_ids(gt_or_videos)
  _check_records(results, table, category_ids)


def oracle_results(gt) -> list[dict]:
  """The gt as predictions: one record with score 1.0 per non-crowd gt track (official evaluation gives AP 1.0)."""
  gt = load_json(gt)
  table = video_table(gt)
  category_ids = _category_ids(gt)
  records = []
  for ann in gt.get('annotations', []):
    if ann.get('iscrowd', 0) or ann['video_id'] not in table or (
        category_ids is not None and ann['category_id'] not in category_ids):
      continue  # As the evaluation, which ignores annotations of unlisted videos and categories.
    _, height, width = table[ann['video_id']]
    segmentations = []
    for seg in ann['segmentations']:
      rle = segmentation_to_rle(seg, height, width)
      segmentations.append(None if rle is None else _json_rle(rle))
    records.append({'video_id': ann['video_id'], 'category_id': ann['category_id'], 'score': 1.0,
                    'segmentations': segmentations})
  return records


class VideoResultWriter:
  """Streams result records into `out_dir/results.json` and, on close, zips it for CodaLab.

  Records are written as they arrive (typically one video's tracks at a time), so memory does not grow with the
  number of videos. With `gt_or_videos`, every record is validated before it is written.

    with VideoResultWriter(out_dir, gt) as writer:
      for video in videos:
        writer.write(tracker_records(video))
    writer.json_path, writer.zip_path
  """

  def __init__(self, out_dir: str | os.PathLike, gt_or_videos=None):
    os.makedirs(out_dir, exist_ok=True)
    self.json_path = os.path.join(out_dir, RESULTS_JSON)
    self.zip_path = os.path.join(out_dir, RESULTS_ZIP)
    gt_or_videos = load_json(gt_or_videos)
    self._table = None if gt_or_videos is None else video_table(gt_or_videos)
    self._category_ids = None if gt_or_videos is None else _category_ids(gt_or_videos)
    self._count = 0
    self._file = open(self.json_path, 'w')
    self._file.write('[')

  def write(self, records: Iterable[Mapping]) -> None:
    records = list(records)
    if self._table is not None:
      _check_records(records, self._table, self._category_ids, self._count)
    for record in records:
      record = dict(record)
      record['video_id'] = record['video_id'] if isinstance(record['video_id'], str) else int(record['video_id'])
      record['category_id'] = int(record['category_id'])
      record['score'] = float(record['score'])
      record['segmentations'] = [None if s is None else _json_rle(s) for s in record['segmentations']]
      self._file.write((',' if self._count else '') + json.dumps(record, separators=(',', ':')))
      self._count += 1

  def close(self) -> tuple[str, str]:
    """Finishes results.json, writes results.zip (results.json at its root); returns both paths."""
    if not self._file.closed:
      self._file.write(']')
      self._file.close()
      with zipfile.ZipFile(self.zip_path, 'w', zipfile.ZIP_DEFLATED) as z:
        z.write(self.json_path, arcname=RESULTS_JSON)
    return self.json_path, self.zip_path

  def __enter__(self) -> 'VideoResultWriter':
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()
    else:
      self._file.close()  # Leave the partial results.json for inspection; no zip.


def write_results(records: Sequence[Mapping], out_dir: str | os.PathLike, gt_or_videos=None) -> tuple[str, str]:
  """Writes `out_dir/results.json` and `out_dir/results.zip`; returns (json_path, zip_path)."""
  with VideoResultWriter(out_dir, gt_or_videos) as writer:
    writer.write(records)
  return writer.json_path, writer.zip_path
