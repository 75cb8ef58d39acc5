"""`--mode predict`: run a trained or converted model on one video (mp4 or a folder of frames).

The video is read and fed to the method's streaming predictor in chunks of `config.eval.chunk_len` frames, resized
exactly as eval resizes its frames (`data_pipeline.input.resize_test_frames`: shortest edge `min_size_test`
capped by `max_size_test`, or `test_fixed_size`; zero padding to `size_divisibility`). Writes the overlay
(`config.predict.output`, relative to WORKDIR, default overlay.mp4; .gif / .mp4 / a directory for PNG frames) with
one colour and one label per track (its best class), and WORKDIR/tracks_<input name>.json: per track its id,
class scores, best category, score and per-frame RLE (`None` where absent). Tracks whose best score is below
`config.predict.score_threshold` are dropped; the overlay draws the best `config.predict.max_tracks` of them.
With `config.predict.ground_truth` (a YTVIS json that has the input folder as one of its videos, e.g. the demo's
validation json) the overlay shows ground truth | prediction.

The input is decoded twice: once for inference, once for the overlay, which is drawn and encoded frame by frame
(`write_overlay`), so memory does not grow with the video's length beyond the tracks' per-frame RLEs. The length the
predictor needs first comes from `frame_count` without decoding (folder listing, GIF frame table, or the video
stream's packet count by ffmpeg stream copy); a decoded count that disagrees is an error naming the file.
"""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any, Iterator

from absl import logging
import ml_collections
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
import tqdm

from visjax import io_utils
from visjax import visualize
from visjax.inference import predictor as predictor_lib
from visjax.inference import tracks as tracks_lib
from visjax.models import registry

_FRAME_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
_VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.gif')
_OUTPUT_EXTS = ('.mp4', '.gif', '')  # '' = a directory of PNG frames


def check_input(path: str) -> None:
  """Fails fast on a missing or unsupported input."""
  if not path:
    raise ValueError('--mode predict needs --config.predict.input=PATH (an mp4 or a folder of frames).')
  if os.path.isdir(path):
    if not any(f.lower().endswith(_FRAME_EXTS) for f in os.listdir(path)):
      raise ValueError(f'Folder {path} has no image frames ({", ".join(_FRAME_EXTS)}).')
  elif not os.path.isfile(path):
    raise FileNotFoundError(f'config.predict.input={path!r} does not exist.')
  elif not path.lower().endswith(_VIDEO_EXTS):
    raise ValueError(f'config.predict.input={path!r}: unsupported video type (use {", ".join(_VIDEO_EXTS)}).')


def check_output(path: str) -> None:
  """Fails fast on an overlay path of a type the writers do not produce."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in _OUTPUT_EXTS:
    raise ValueError(f'config.predict.output={path!r}: unsupported overlay type {ext!r} (use .mp4, .gif, or a '
                     'directory name for PNG frames).')


def iter_frames(path: str) -> Iterator[np.ndarray]:
  """Frames uint8 `[H, W, 3]` RGB one at a time from a video file (imageio) or a folder of images (by name)."""
  if os.path.isdir(path):
    shape = None
    for name in sorted(f for f in os.listdir(path) if f.lower().endswith(_FRAME_EXTS)):
      frame = np.asarray(Image.open(os.path.join(path, name)).convert('RGB'))
      if shape is not None and frame.shape != shape:
        raise ValueError(f'Frames in {path} have different sizes: {shape} and {frame.shape} ({name}).')
      shape = frame.shape
      yield frame
    return
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  count = 0
  for frame in iio.imiter(path):
    count += 1
    yield np.asarray(frame)[..., :3].astype(np.uint8)
  if count == 0:
    raise ValueError(f'Could not decode any frame from {path}.')


def read_video(path: str) -> np.ndarray:
  """All frames uint8 `[T, H, W, 3]` (small videos, notebooks; `predict` itself streams)."""
  return np.stack(list(iter_frames(path)))


def frame_count(path: str) -> int:
  """Number of frames of the input without decoding it: image files in a folder, GIF frames (Pillow skips the
  image data), or the video stream's packets (ffmpeg stream copy, no decode)."""
  if os.path.isdir(path):
    return sum(f.lower().endswith(_FRAME_EXTS) for f in os.listdir(path))
  if path.lower().endswith('.gif'):
    with Image.open(path) as image:
      return int(image.n_frames)
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-nostdin', '-i', path, '-map', '0:v:0', '-c', 'copy',
                        '-f', 'null', '-'], capture_output=True, text=True, check=False)
  counts = re.findall(r'frame=\s*(\d+)', out.stderr)
  if out.returncode or not counts:
    raise ValueError(f'Could not read the frame count of {path} (ffmpeg exit {out.returncode}): '
                     f'{out.stderr[-500:]}')
  return int(counts[-1])


def chunked(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
  """Stacks of at most `size` consecutive frames."""
  buf = []
  for frame in frames:
    buf.append(frame)
    if len(buf) == size:
      yield np.stack(buf)
      buf = []
  if buf:
    yield np.stack(buf)


def predict_tracks(config: ml_collections.ConfigDict, method: registry.Method, model: Any,
                   path: str) -> tuple[list[tracks_lib.Track], tuple[int, int], int]:
  """Streams the video at `path` through the method's predictor: (tracks, original (H, W), number of frames).

  Decodes the video once; its length (which the predictor needs first) comes from `frame_count`.
  """
  from data_pipeline import input as input_lib  # pylint: disable=g-import-not-at-top
  length = frame_count(path)
  resize = input_lib.resize_settings(config)
  chunk_len = max(1, int(config.eval.get('chunk_len', 0)) or length)
  predictor, orig_size, seen = None, None, 0
  with tqdm.tqdm(total=length, desc='predict', unit='frame') as bar:
    for chunk in chunked(iter_frames(path), chunk_len):
      seen += len(chunk)
      if seen > length:
        raise ValueError(f'{path}: decoded more frames than the {length} its container reports.')
      if predictor is None:
        orig_size = tuple(int(s) for s in chunk.shape[1:3])
        predictor = method.make_predictor(model, predictor_lib.VideoMeta(video_id=1, length=length,
                                                                          orig_size=orig_size))
      frames, image_size = input_lib.resize_test_frames(chunk, resize)
      predictor.add_frames(frames, np.tile(np.asarray(image_size, np.int32), (len(frames), 1)))
      bar.update(len(frames))
  if seen != length:
    raise ValueError(f'{path}: decoded {seen} frames but its container reports {length}.')
  return predictor.finish(), orig_size, length


def ground_truth_tracks(gt_json: str, video_dir: str) -> tuple[list[list[dict | None]], list[str], tuple[int, int]]:
  """Per-frame RLEs (None where absent) and labels of the annotated tracks of the video whose folder is
  `video_dir`, and its (H, W)."""
  from data_pipeline import ytvis_json  # pylint: disable=g-import-not-at-top
  dataset = ytvis_json.load(gt_json)
  name = os.path.basename(os.path.normpath(video_dir))
  video = next((v for v in dataset.videos if v.name.split('/')[-1] == name), None)
  if video is None:
    raise ValueError(f'config.predict.ground_truth={gt_json!r} has no video in a folder named {name!r}.')
  table = dataset.category_table
  tracks = dataset.tracks_of(video.id)
  labels = [f'{i} {table.names[table.to_index(t.category_id)]}' for i, t in enumerate(tracks, start=1)]
  return [list(t.segmentations) for t in tracks], labels, (video.height, video.width)


def frame_masks(tracks: list[list[dict | None]], t: int, size: tuple[int, int]) -> np.ndarray:
  """bool `[K, H, W]`: frame `t` of each track's per-frame RLEs (all False where the track is absent)."""
  masks = np.zeros((len(tracks),) + size, bool)
  for k, segmentations in enumerate(tracks):
    if segmentations[t]:
      masks[k] = mask_utils.decode(segmentations[t])
  return masks


def write_overlay(path: str, out: str, size: tuple[int, int], pred: tuple[list, list[str]],
                  ground_truth: tuple[list, list[str]] | None = None, fps: float = 6.0) -> int:
  """Reads the video at `path` again frame by frame and writes its overlay to `out` as it goes (ground truth |
  prediction when `ground_truth` is given); memory does not grow with the video's length beyond the tracks' RLEs.

  Args:
    path: the input video or folder of frames, of frames `size` (H, W).
    out: the overlay (.gif / .mp4 / a directory of PNG frames).
    size: (H, W) of the input frames.
    pred: per-frame RLEs (None where absent) of each drawn track, and their labels.
    ground_truth: the same for the annotated tracks, or None.
    fps: frames per second of the overlay.

  Returns:
    The number of frames written.
  """
  panels = [(tracks, visualize.TrackOverlay(labels, *size))
            for tracks, labels in ([pred] if ground_truth is None else [ground_truth, pred])]
  join = None
  if ground_truth is not None:
    factor = panels[0][1].factor
    join = visualize.SideBySide((size[0] * factor, size[1] * factor), (size[0] * factor, size[1] * factor))
  count = 0
  with visualize.open_writer(out, fps) as append:
    for t, frame in enumerate(iter_frames(path)):
      if frame.shape[:2] != size:
        raise ValueError(f'{path}: frame {t} is {frame.shape[:2]}, the video was {size}.')
      drawn = [draw(frame, frame_masks(tracks, t, size)) for tracks, draw in panels]
      append(join(*drawn) if join else drawn[0])
      count += 1
  return count


def predict(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Runs predict mode; returns {'overlay': path, 'tracks': path}."""
  from visjax.train import evaluate  # pylint: disable=g-import-not-at-top
  from visjax.train import restore  # pylint: disable=g-import-not-at-top
  path = config.predict.input
  check_input(path)
  out = os.path.join(workdir, config.predict.output or 'overlay.mp4')  # relative paths land in workdir
  check_output(out)
  gt_json = config.predict.get('ground_truth', '')
  if gt_json and not os.path.isfile(gt_json):
    raise FileNotFoundError(f'config.predict.ground_truth={gt_json!r} does not exist.')
  source = restore.describe_weights(config, workdir)  # raises before any heavy work
  evaluate.fill_categories(config)
  logging.info('Predicting %s with %s', path, source)
  method = registry.get_method(config)
  model = restore.load_model(config, workdir)
  tracks, (h, w), length = predict_tracks(config, method, model, path)
  table = tracks_lib.category_table(config.dataset.category_ids, int(config.dataset.num_classes))
  names = dict(zip(config.dataset.category_ids, config.dataset.get('category_names', ())))
  best = lambda t: float(np.max(t.class_scores))
  kept = sorted((t for t in tracks if best(t) >= config.predict.score_threshold), key=lambda t: -best(t))
  rows = []
  for t in kept:
    category = int(table[int(np.argmax(t.class_scores))])
    rows.append({'track_id': t.track_id, 'category_id': category, 'category_name': names.get(category, ''),
                 'score': best(t), 'class_scores': [float(x) for x in t.class_scores],
                 'frame_scores': t.frame_scores, 'segmentations': t.segmentations})
  # The overlay draws the best `max_tracks` (tracks.json keeps every kept track).
  drawn = rows[:int(config.predict.max_tracks)]
  labels = [f'{r["track_id"]} {r["category_name"] or r["category_id"]} {r["score"]:.2f}' for r in drawn]
  ground_truth = None
  if gt_json:
    gt_tracks, gt_labels, gt_size = ground_truth_tracks(gt_json, path)
    if gt_size != (h, w):
      raise ValueError(f'config.predict.ground_truth={gt_json!r}: the video is {gt_size}, the input {(h, w)}.')
    ground_truth = (gt_tracks, gt_labels)
  os.makedirs(workdir, exist_ok=True)
  write_overlay(path, out, (h, w), ([r['segmentations'] for r in drawn], labels), ground_truth,
                fps=config.predict.get('fps', 6.0))
  stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
  tracks_path = os.path.join(workdir, f'tracks_{stem}.json')
  io_utils.write_json(tracks_path, {'input': path, 'num_frames': int(length), 'height': int(h), 'width': int(w),
                                    'tracks': rows})
  logging.info('Wrote %s (%d tracks) and %s', out, len(rows), tracks_path)
  return {'overlay': out, 'tracks': tracks_path}
