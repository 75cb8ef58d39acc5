"""Convert YouTube-VIS / OVIS / COCO annotations and frames into visjax TFRecord shards.

  python -m data_pipeline.convert --format ytvis|coco --json FILE --images DIR --out DIR --num-shards N
      [--workers K] [--split NAME] [--skip-bad] [--overwrite] [--window W] [--category-map NAME]
  python -m data_pipeline.convert --verify DIR     # checksums, record counts, every frame and mask decoded

The json is validated first (`ytvis_json`; a COCO instances json becomes one-frame videos, `coco_pseudo`). Videos
are then encoded in parallel worker processes (frame bytes read as on disk, RLE decoded and re-encoded as one 1-bit
PNG per instance and frame), written round-robin into `--num-shards` shards as `tfrecord.VideoPayload` records,
and `manifest.json` is written last (atomically), with counts, the category table and per-shard record counts,
sizes and sha256. Shards are written under temporary names and the manifest of an earlier conversion in `--out` is
removed before anything is written, so an interrupted run never leaves a directory that readers accept.

Bad input (invalid json, a missing or unreadable frame, a frame whose size differs from the json) stops the run with
one line naming the file / video / frame and exit status 2; with `--skip-bad`, videos with a bad frame are skipped
and counted instead (json-level errors always stop the run).

`--category-map coco_to_ytvis2019|coco_to_ytvis2021|coco_to_ovis` (with `--format coco`) writes a COCO json with the
categories of that VIS dataset (`category_maps`): annotations of other classes are dropped, then images left without
an annotation; the manifest's category table is the VIS dataset's, so the directory can be mixed with a converted
VIS split (`config.dataset.tfrecords` = both, `config.input.dataset_ratios`). Both counts go to the manifest
(`num_annotations_unmapped_dropped`, `num_images_without_annotations_dropped`) and to the last output line.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import io
import json
import logging
import multiprocessing
import os
import sys
from typing import Sequence

from PIL import Image
from pycocotools import mask as mask_utils

from data_pipeline import category_maps
from data_pipeline import coco_pseudo
from data_pipeline import tfrecord
from data_pipeline import ytvis_json


class ConvertError(ValueError):
  """Bad user input found while converting; the message names the file, video and frame."""


def _read_frame(images_dir: str, file_name: str, video: ytvis_json.Video, t: int) -> bytes:
  """Returns the frame's file bytes after checking that it exists and decodes to the json's size."""
  path = os.path.join(images_dir, file_name)
  where = f'{path} (video id={video.id}, frame {t})'
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise ConvertError(f'{where}: missing frame file') from None
  except OSError as e:
    raise ConvertError(f'{where}: cannot read frame file ({e.strerror})') from None
  try:
    with Image.open(io.BytesIO(data)) as image:
      fmt, size = image.format, image.size
      image.verify()
  except Exception as e:  # pylint: disable=broad-except  (PIL raises many types for broken files)
    raise ConvertError(f'{where}: not a readable image ({type(e).__name__}: {e})') from None
  if fmt not in ('JPEG', 'PNG'):
    raise ConvertError(f'{where}: image format {fmt}, expected JPEG (or PNG)')
  if size != (video.width, video.height):
    raise ConvertError(f'{where}: image is {size[1]}x{size[0]} (HxW), json says {video.height}x{video.width}')
  return data


def build_payload(video: ytvis_json.Video, tracks: Sequence[ytvis_json.Track], images_dir: str,
                  category_ids: Sequence[int], name: str) -> tfrecord.VideoPayload:
  """Reads one video's frames and encodes its masks (pure Python; runs in worker processes)."""
  frames = [_read_frame(images_dir, f, video, t) for t, f in enumerate(video.file_names)]
  index = {c: i for i, c in enumerate(category_ids)}
  out_tracks = []
  for track in tracks:
    pngs, boxes = [], []
    for t, rle in enumerate(track.segmentations):  # One frame at a time: memory stays flat for long videos.
      mask = mask_utils.decode(rle) if rle is not None else None
      present = mask is not None and mask.any()
      pngs.append(tfrecord.encode_mask_png(mask) if present else b'')
      boxes.append(track.bboxes[t] if present else None)
    out_tracks.append(tfrecord.TrackPayload(
        track_id=track.id, category_id=track.category_id, label=index[track.category_id],
        iscrowd=track.iscrowd, bboxes=boxes, mask_pngs=pngs))
  return tfrecord.VideoPayload(video_id=video.id, name=name, height=video.height, width=video.width,
                               filenames=video.file_names, frames=frames, tracks=out_tracks)


def _worker(job):
  """(position, video, tracks, images_dir, category_ids, name) -> (position, payload or error message)."""
  position, video, tracks, images_dir, category_ids, name = job
  try:
    return position, build_payload(video, tracks, images_dir, category_ids, name)
  except ConvertError as e:
    return position, str(e)


def _remove_previous(out_dir: str, overwrite: bool) -> None:
  manifest = os.path.join(out_dir, tfrecord.MANIFEST_NAME)
  if os.path.exists(manifest):
    if not overwrite:
      raise ConvertError(f'{out_dir}: already holds a finished conversion ({tfrecord.MANIFEST_NAME}); '
                         'pass --overwrite to replace it')
    os.remove(manifest)  # First, so that a crash below never leaves old manifest + new shards.
  for path in glob.glob(os.path.join(out_dir, '*-of-*.tfrecord*')):
    os.remove(path)


def convert(*, fmt: str, json_path: str, images_dir: str, out_dir: str, num_shards: int, workers: int = 1,
            split: str | None = None, skip_bad: bool = False, overwrite: bool = False, window: int = 0,
            category_map: str = '', progress: bool = True) -> tfrecord.Manifest:
  """Runs the conversion (see the module docstring) and returns the loaded manifest.

  `window` > 0 writes each video as records of at most that many frames (training on long videos; eval input
  needs whole-video records). `category_map` names a `category_maps.MAPS` entry (COCO only).
  """
  if num_shards < 1:
    raise ConvertError(f'--num-shards must be >= 1, got {num_shards}')
  if window < 0:
    raise ConvertError(f'--window must be >= 0, got {window}')
  if not os.path.isfile(json_path):
    raise ConvertError(f'{json_path}: annotation file not found')
  if not os.path.isdir(images_dir):
    raise ConvertError(f'{images_dir}: images directory not found')
  if category_map and fmt != 'coco':
    raise ConvertError(f'--category-map {category_map} maps COCO categories; it needs --format coco, got {fmt!r}')
  counts_dropped = coco_pseudo.CocoCounts()
  if fmt == 'ytvis':
    dataset = ytvis_json.load(json_path)
    if not dataset.has_annotations:
      logging.warning('%s has no "annotations": records will have no tracks (eval-only input)', json_path)
  elif fmt == 'coco':
    try:
      mapping = category_maps.get(category_map) if category_map else None
    except ValueError as e:
      raise ConvertError(f'--category-map: {e}') from None
    dataset, counts_dropped = coco_pseudo.load_coco(json_path, category_map=mapping)
  else:
    raise ConvertError(f'--format must be ytvis or coco, got {fmt!r}')
  if not dataset.videos:
    raise ConvertError(f'{json_path}: no videos to convert')
  split = split or os.path.splitext(os.path.basename(json_path))[0]
  table = dataset.category_table
  os.makedirs(out_dir, exist_ok=True)
  _remove_previous(out_dir, overwrite)

  jobs = [(i, v, dataset.tracks_of(v.id), images_dir, table.ids,
           v.file_names[0] if fmt == 'coco' else v.name) for i, v in enumerate(dataset.videos)]
  names = [tfrecord.shard_name(split, s, num_shards) for s in range(num_shards)]
  tmp_paths = [os.path.join(out_dir, n + '.tmp') for n in names]
  counts = [0] * num_shards
  stats = {'num_frames': 0, 'num_tracks': 0, 'num_masks': 0, 'max_tracks_per_video': 0, 'max_frames_per_video': 0}
  skipped: list[dict[str, object]] = []
  # Fork the workers before TensorFlow is imported here (serialize_video imports it); spawn if it already is.
  start = 'spawn' if 'tensorflow' in sys.modules else 'fork'
  pool = multiprocessing.get_context(start).Pool(workers) if workers > 1 else None
  try:
    results = pool.imap(_worker, jobs, chunksize=1) if pool else map(_worker, jobs)
    if progress:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      results = tqdm(results, total=len(jobs), desc=f'convert {split}', unit='video', file=sys.stderr)
    writers = []  # Opened at the first good video, so input errors stop the run before TensorFlow loads.
    written = num_records = 0
    for position, payload in results:
      if isinstance(payload, str):
        if not skip_bad:
          raise ConvertError(payload)
        skipped.append({'video_id': dataset.videos[position].id, 'error': payload})
        continue
      if not writers:
        tf = tfrecord.import_tf()
        writers = [tf.io.TFRecordWriter(p) for p in tmp_paths]
      for record in payload.windows(window):
        shard = num_records % num_shards
        writers[shard].write(tfrecord.serialize_video(record))
        counts[shard] += 1
        num_records += 1
      written += 1
      stats['num_frames'] += payload.num_frames
      stats['num_tracks'] += len(payload.tracks)
      stats['num_masks'] += sum(bool(p) for t in payload.tracks for p in t.mask_pngs)
      stats['max_tracks_per_video'] = max(stats['max_tracks_per_video'], len(payload.tracks))
      stats['max_frames_per_video'] = max(stats['max_frames_per_video'], payload.num_frames)
    for w in writers:
      w.close()
  except BaseException:
    for p in tmp_paths:
      if os.path.exists(p):
        os.remove(p)
    raise
  finally:
    if pool:
      pool.terminate()
  if skipped:
    logging.warning('skipped %d bad video(s); first: %s', len(skipped), skipped[0]['error'])
  if written == 0:
    raise ConvertError(f'{json_path}: every video was bad; nothing written')
  shards = []
  for name, tmp, count in zip(names, tmp_paths, counts):
    final = os.path.join(out_dir, name)
    os.replace(tmp, final)
    shards.append({'file': name, 'num_records': count, 'num_bytes': os.path.getsize(final),
                   'sha256': tfrecord.sha256_file(final)})
  manifest = {
      'format_version': tfrecord.FORMAT_VERSION,
      'format': fmt,
      'split': split,
      'source_json': os.path.abspath(json_path),
      'images_dir': os.path.abspath(images_dir),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'num_videos': written,
      'num_records': num_records,
      'window': window,
      **stats,
      'category_map': category_map,
      'num_images_without_annotations_dropped': counts_dropped.images_without_annotations,
      'num_annotations_unmapped_dropped': counts_dropped.unmapped_annotations,
      'categories': table.to_json(),
      'skipped': {'count': len(skipped), 'videos': skipped},
      'shards': shards,
  }
  tmp_manifest = os.path.join(out_dir, tfrecord.MANIFEST_NAME + '.tmp')
  with open(tmp_manifest, 'w') as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp_manifest, os.path.join(out_dir, tfrecord.MANIFEST_NAME))
  return tfrecord.load_manifest(out_dir)


def verify(out_dir: str) -> tfrecord.Manifest:
  """Checks a finished conversion: manifest, shard sizes and sha256, per-shard record counts, and every record
  decoded (frames and masks). Raises RecordFormatError naming the shard, record and video."""
  manifest = tfrecord.load_manifest(out_dir, verify_checksums=True)
  tf = tfrecord.import_tf()
  for shard in manifest.shards:
    count = sum(1 for _ in tf.data.TFRecordDataset(shard.path))
    if count != shard.num_records:
      raise tfrecord.RecordFormatError(f'{shard.path}: {count} records, manifest says {shard.num_records}')
  found = tfrecord.find_bad_record([s.path for s in manifest.shards], deep=True)
  if found is not None:
    path, index, message = found
    raise tfrecord.RecordFormatError(f'{path}: record {index}: {message}')
  return manifest


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--format', choices=('ytvis', 'coco'),
                      help='ytvis: YouTube-VIS 2019/2021 or OVIS json; coco: COCO instances json')
  parser.add_argument('--json', help='annotation json')
  parser.add_argument('--images', help='frames root (file_names are relative to it)')
  parser.add_argument('--out', help='output directory for shards and manifest.json')
  parser.add_argument('--num-shards', type=int)
  parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
  parser.add_argument('--split', default=None, help='shard name prefix (default: the json file stem)')
  parser.add_argument('--skip-bad', action='store_true', help='skip videos with a bad frame, log the count')
  parser.add_argument('--overwrite', action='store_true', help='replace a finished conversion in --out')
  parser.add_argument('--window', type=int, default=0,
                      help='split videos into records of at most this many frames (training only; 0: whole videos)')
  parser.add_argument('--category-map', '--category_map', dest='category_map', default='',
                      choices=('',) + tuple(sorted(category_maps.MAPS)), metavar='NAME',
                      help='with --format coco: write the categories of a VIS dataset, dropping the other classes '
                           f'(one of {", ".join(sorted(category_maps.MAPS))})')
  parser.add_argument('--no-progress', action='store_true')
  parser.add_argument('--verify', metavar='DIR', help='only check a finished conversion (checksums, full decode)')
  args = parser.parse_args(argv)
  if not args.verify:
    missing = [f'--{k.replace("_", "-")}' for k in ('format', 'json', 'images', 'out', 'num_shards')
               if getattr(args, k) is None]
    if missing:
      parser.error(f'the following arguments are required: {", ".join(missing)}')
  logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
  try:
    if args.verify:
      manifest = verify(args.verify)
      print(f'{args.verify}: OK, {manifest.num_videos} videos in {len(manifest.shards)} shards')
      return 0
    manifest = convert(fmt=args.format, json_path=args.json, images_dir=args.images, out_dir=args.out,
                       num_shards=args.num_shards, workers=args.workers, split=args.split,
                       skip_bad=args.skip_bad, overwrite=args.overwrite, window=args.window,
                       category_map=args.category_map, progress=not args.no_progress)
  except (ConvertError, ytvis_json.DatasetFormatError, tfrecord.RecordFormatError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print('error: interrupted; no manifest written, the output directory is not a finished conversion',
          file=sys.stderr)
    return 130
  print(f'wrote {manifest.num_videos} videos ({manifest.num_records} records) in {len(manifest.shards)} shards to '
        f'{args.out} '
        f'(skipped {manifest.raw["skipped"]["count"]}; dropped {manifest.raw["num_images_without_annotations_dropped"]} '
        f'images without annotations, {manifest.raw["num_annotations_unmapped_dropped"]} annotations of unmapped '
        'categories)')
  return 0


if __name__ == '__main__':
  sys.exit(main())
