"""`--mode predict`: run a trained or converted model on one video (mp4 or a folder of frames).

Writes the overlay (`config.predict.output`, relative to WORKDIR, default overlay.mp4; .gif / .mp4 / a directory
for PNG frames)
with one colour and label per track, and WORKDIR/tracks.json: per track its id, category, score and per-frame
RLE (`None` where absent). Tracks below `config.predict.score_threshold` are dropped. The test-time resize is
detectron2's ResizeShortestEdge(min_size_test, max_size_test) with zero padding to `size_divisibility`.
"""

import json
import os
from typing import Any

from absl import logging
import ml_collections
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from visjax import visualize
from visjax.models import registry

_FRAME_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')
_VIDEO_EXTS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.gif')
TRACKS_JSON = 'tracks.json'


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


def read_video(path: str) -> np.ndarray:
  """Frames uint8 `[T, H, W, 3]` RGB from a video file (imageio) or a folder of images (sorted by name)."""
  if os.path.isdir(path):
    names = sorted(f for f in os.listdir(path) if f.lower().endswith(_FRAME_EXTS))
    frames = [np.asarray(Image.open(os.path.join(path, n)).convert('RGB')) for n in names]
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
      raise ValueError(f'Frames in {path} have different sizes: {sorted(shapes)}.')
    return np.stack(frames)
  import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
  frames = np.asarray(iio.imread(path, index=None))
  if frames.ndim != 4 or frames.shape[0] == 0:
    raise ValueError(f'Could not decode frames from {path} (got an array of shape {frames.shape}).')
  return frames[..., :3].astype(np.uint8)


def resize_shape(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
  """detectron2 ResizeShortestEdge.get_output_shape."""
  scale = min_size / min(h, w)
  nh, nw = h * scale, w * scale
  if max(nh, nw) > max_size:
    scale = max_size / max(nh, nw)
    nh, nw = nh * scale, nw * scale
  return int(nh + 0.5), int(nw + 0.5)


def prepare_video(frames: np.ndarray, config: ml_collections.ConfigDict, video_id: int = 1) -> dict[str, Any]:
  """Frames `[T, H, W, 3]` → the eval video dict of docs/INTERFACES.md §2."""
  t, h, w, _ = frames.shape
  nh, nw = resize_shape(h, w, config.input.min_size_test, config.input.max_size_test)
  div = config.input.size_divisibility
  ph, pw = -(-nh // div) * div, -(-nw // div) * div
  out = np.zeros((t, ph, pw, 3), np.uint8)
  for i, f in enumerate(frames):
    out[i, :nh, :nw] = np.asarray(Image.fromarray(f).resize((nw, nh), Image.BILINEAR))
  return {'video_id': video_id, 'length': t, 'orig_size': (h, w), 'image_size': (nh, nw), 'frames': out}


def _label(record: dict, track: int, names: dict[int, str]) -> str:
  return f'{track} {names.get(record["category_id"], record["category_id"])} {record["score"]:.2f}'


def predict(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Runs predict mode; returns {'overlay': path, 'tracks': path}."""
  from visjax.train import restore  # pylint: disable=g-import-not-at-top
  path = config.predict.input
  check_input(path)
  source = restore.describe_weights(config, workdir)  # raises before any heavy work
  logging.info('Predicting %s with %s', path, source)
  frames = read_video(path)
  video = prepare_video(frames, config)
  model = restore.load_model(config, workdir)
  method = registry.get_method(config.method)
  records = method.predict_video(model, video, config)
  records = sorted((r for r in records if r['score'] >= config.predict.score_threshold), key=lambda r: -r['score'])
  names = dict(zip(config.dataset.category_ids, config.dataset.get('category_names', ())))
  h, w = frames.shape[1:3]
  masks, labels, tracks = [], [], []
  for track, r in enumerate(records, start=1):
    m = np.stack([mask_utils.decode(s).astype(bool) if s else np.zeros((h, w), bool) for s in r['segmentations']])
    masks.append(m)
    labels.append(_label(r, track, names))
    tracks.append(dict(r, track_id=track, category_name=names.get(r['category_id'], '')))
  os.makedirs(workdir, exist_ok=True)
  out = os.path.join(workdir, config.predict.output or 'overlay.mp4')  # relative paths land in workdir
  visualize.write_video(visualize.overlay_video(frames, masks, labels), out, fps=config.predict.get('fps', 6.0))
  tracks_path = os.path.join(workdir, TRACKS_JSON)
  with open(tracks_path, 'w') as f:
    json.dump({'input': path, 'num_frames': int(len(frames)), 'height': int(h), 'width': int(w),
               'tracks': tracks}, f)
  logging.info('Wrote %s (%d tracks) and %s', out, len(tracks), tracks_path)
  return {'overlay': out, 'tracks': tracks_path}
