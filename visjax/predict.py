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
"""

from __future__ import annotations

import os
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
  """All frames uint8 `[T, H, W, 3]` (for the overlay)."""
  return np.stack(list(iter_frames(path)))


def count_frames(path: str) -> int:
  """Number of frames of the input (decodes a video file once without keeping frames)."""
  if os.path.isdir(path):
    return sum(f.lower().endswith(_FRAME_EXTS) for f in os.listdir(path))
  return sum(1 for _ in iter_frames(path))


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
  """Streams the video at `path` through the method's predictor: (tracks, original (H, W), number of frames)."""
  from data_pipeline import input as input_lib  # pylint: disable=g-import-not-at-top
  length = count_frames(path)
  resize = input_lib.resize_settings(config)
  chunk_len = max(1, int(config.eval.get('chunk_len', 0)) or length)
  predictor, orig_size = None, None
  with tqdm.tqdm(total=length, desc='predict', unit='frame') as bar:
    for chunk in chunked(iter_frames(path), chunk_len):
      if predictor is None:
        orig_size = tuple(int(s) for s in chunk.shape[1:3])
        predictor = method.make_predictor(model, predictor_lib.VideoMeta(video_id=1, length=length,
                                                                          orig_size=orig_size))
      frames, image_size = input_lib.resize_test_frames(chunk, resize)
      predictor.add_frames(frames, np.tile(np.asarray(image_size, np.int32), (len(frames), 1)))
      bar.update(len(frames))
  return predictor.finish(), orig_size, length


def ground_truth_tracks(gt_json: str, video_dir: str) -> tuple[list[np.ndarray], list[str]]:
  """bool `[T, H, W]` masks and labels of the annotated tracks of the video whose folder is `video_dir`."""
  from data_pipeline import ytvis_json  # pylint: disable=g-import-not-at-top
  dataset = ytvis_json.load(gt_json)
  name = os.path.basename(os.path.normpath(video_dir))
  video = next((v for v in dataset.videos if v.name.split('/')[-1] == name), None)
  if video is None:
    raise ValueError(f'config.predict.ground_truth={gt_json!r} has no video in a folder named {name!r}.')
  table = dataset.category_table
  tracks = dataset.tracks_of(video.id)
  masks = [ytvis_json.decode_track_masks(t).astype(bool) for t in tracks]
  labels = [f'{i} {table.names[table.to_index(t.category_id)]}' for i, t in enumerate(tracks, start=1)]
  return masks, labels


def _decode(seg: dict | None, size: tuple[int, int]) -> np.ndarray:
  return mask_utils.decode(seg).astype(bool) if seg else np.zeros(size, bool)


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
  tracks, (h, w), _ = predict_tracks(config, method, model, path)
  table = tracks_lib.category_table(config.dataset.category_ids, int(config.dataset.num_classes))
  names = dict(zip(config.dataset.category_ids, config.dataset.get('category_names', ())))
  best = lambda t: float(np.max(t.class_scores))
  kept = sorted((t for t in tracks if best(t) >= config.predict.score_threshold), key=lambda t: -best(t))
  # The overlay decodes [T, H, W] per drawn track: draw the best `max_tracks` (tracks.json keeps every kept track).
  drawn = kept[:int(config.predict.max_tracks)]
  rows = []
  for t in kept:
    category = int(table[int(np.argmax(t.class_scores))])
    rows.append({'track_id': t.track_id, 'category_id': category, 'category_name': names.get(category, ''),
                 'score': best(t), 'class_scores': [float(x) for x in t.class_scores],
                 'frame_scores': t.frame_scores, 'segmentations': t.segmentations})
  frames = read_video(path)
  masks = [np.stack([_decode(s, (h, w)) for s in t.segmentations]) for t in drawn]
  labels = [f'{r["track_id"]} {r["category_name"] or r["category_id"]} {r["score"]:.2f}'
            for r in rows[:len(drawn)]]
  overlay = visualize.overlay_video(frames, masks, labels)
  if gt_json:
    gt_masks, gt_labels = ground_truth_tracks(gt_json, path)
    overlay = visualize.side_by_side(visualize.overlay_video(frames, gt_masks, gt_labels), overlay)
  os.makedirs(workdir, exist_ok=True)
  visualize.write_video(overlay, out, fps=config.predict.get('fps', 6.0))
  stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
  tracks_path = os.path.join(workdir, f'tracks_{stem}.json')
  io_utils.write_json(tracks_path, {'input': path, 'num_frames': int(len(frames)), 'height': int(h), 'width': int(w),
                                    'tracks': rows})
  logging.info('Wrote %s (%d tracks) and %s', out, len(rows), tracks_path)
  return {'overlay': out, 'tracks': tracks_path}
