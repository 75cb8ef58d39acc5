"""Synthetic moving-shapes videos written in the exact YouTube-VIS 2019 layout.

`generate(out_dir, num_videos, seed)` writes

  out_dir/JPEGImages/<video_name>/00000.jpg, 00001.jpg, ...
  out_dir/train.json
  out_dir/valid.json

Each video shows 1-4 textured shapes (one category per shape kind, each with its own colour family and texture)
that move with a velocity and a small acceleration, scale, rotate, enter and leave the frame and occlude each
other (fixed depth order) over a per-video textured background that pans slowly. Annotations hold the VISIBLE part
of each instance as RLE per frame, or null where the instance is off-frame or fully occluded. Unlike
real YouTube-VIS, valid.json also carries annotations so that local evaluation works. As in the real
train.json, each annotation's own `length` field is 1 (the video's frame count is in `videos[i].length`).

Output is a pure function of (seed, options): every video draws from its own `numpy.random.Generator` seeded
with `[seed, video_index]` and JPEGs are written with a fixed quality, so the same seed gives the same bytes.

Command line:
  python -m data_pipeline.synthetic --out DIR --num-videos N --seed S [--height 96 --width 160 ...]
"""

import argparse
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import tqdm

from visjax import io_utils

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# (name, texture, first colour, second colour). Category ids are 1-based positions in this list.
_CATEGORY_STYLES = (
    ('circle', 'rings', (220, 60, 40), (250, 170, 60)),
    ('square', 'checker', (40, 80, 210), (150, 190, 255)),
    ('triangle', 'diagonal', (40, 170, 60), (15, 80, 30)),
    ('star', 'dots', (240, 220, 40), (150, 100, 10)),
    ('ring', 'wavy', (170, 50, 190), (250, 160, 240)),
    ('cross', 'bands', (30, 200, 200), (10, 90, 110)),
)
CATEGORY_NAMES = tuple(style[0] for style in _CATEGORY_STYLES)

_INFO = {
    'description': 'visjax synthetic moving shapes (YouTube-VIS 2019 layout)',
    'url': 'https://github.com/visjax/visjax',
    'version': '1.0',
    'year': 2019,
    'contributor': 'visjax',
    'date_created': '2019-04-11 00:55:41.903902',
}
_LICENSES = [{'url': 'https://www.apache.org/licenses/LICENSE-2.0', 'id': 1, 'name': 'Apache License 2.0'}]


@dataclasses.dataclass(frozen=True)
class Options:
  """Generation options (all videos of one call share them).

  Attributes:
    height: frame height when `sizes` is not given.
    width: frame width when `sizes` is not given.
    sizes: optional list of (height, width); each video picks one at random.
    min_frames: shortest video length.
    max_frames: longest video length (inclusive).
    min_instances: fewest instances drawn per video (fully hidden ones are dropped afterwards).
    max_instances: most instances per video (inclusive).
    valid_fraction: share of videos that go to valid.json (the last ones); at least one when > 0 and
      num_videos >= 2.
    crowd_fraction: probability that an instance is marked iscrowd=1.
    traverse_fraction: probability that an instance moves fast enough to cross the frame (enter / leave).
    crossing_fraction: probability that an instance (after the first) is a smaller shape that meets an
      earlier instance at the same place and time and drifts slowly relative to it (usually behind it), so
      that it is partly or fully occluded for a while.
    min_radius: smallest shape size (circumradius at its middle frame) as a fraction of min(height, width).
    max_radius: largest shape size, same unit.
    jpeg_quality: fixed JPEG quality.
    uncompressed_rle: write RLE counts as integer lists (as YouTube-VIS 2019 train.json does) instead of
      compressed strings (as OVIS and results files do).
  """
  height: int = 96
  width: int = 160
  sizes: tuple[tuple[int, int], ...] | None = None
  min_frames: int = 8
  max_frames: int = 24
  min_instances: int = 1
  max_instances: int = 4
  valid_fraction: float = 0.25
  crowd_fraction: float = 0.0
  traverse_fraction: float = 0.4
  crossing_fraction: float = 0.35
  min_radius: float = 0.09
  max_radius: float = 0.22
  jpeg_quality: int = 90
  uncompressed_rle: bool = False

  def __post_init__(self):
    sizes = self.sizes if self.sizes is not None else ((self.height, self.width),)
    if not sizes:
      raise ValueError('sizes must not be empty')
    for size in sizes:
      if len(size) != 2 or min(size) < 16:
        raise ValueError(f'each frame size must be (height, width) with both >= 16, got {size}')
    if not 1 <= self.min_frames <= self.max_frames:
      raise ValueError(f'need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}')
    if not 1 <= self.min_instances <= self.max_instances:
      raise ValueError(
          f'need 1 <= min_instances <= max_instances, got {self.min_instances}, {self.max_instances}')
    for name in ('valid_fraction', 'crowd_fraction', 'traverse_fraction', 'crossing_fraction'):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {value}')
    if not 0 < self.min_radius <= self.max_radius <= 1:
      raise ValueError(f'need 0 < min_radius <= max_radius <= 1, got {self.min_radius}, {self.max_radius}')
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f'jpeg_quality must be in [1, 100], got {self.jpeg_quality}')


@dataclasses.dataclass(frozen=True)
class SyntheticVideo:
  """One rendered video with its ground truth.

  Attributes:
    frames: uint8 [T, H, W, 3] RGB frames.
    full_masks: bool [N, T, H, W] whole shape of each kept instance (ignoring occlusion, clipped to the frame).
    visible_masks: bool [N, T, H, W] visible part of each instance (what the annotations hold).
    category_ids: int [N] 1-based json category ids.
    iscrowd: int [N] 0/1 crowd flags.
  """
  frames: np.ndarray
  full_masks: np.ndarray
  visible_masks: np.ndarray
  category_ids: np.ndarray
  iscrowd: np.ndarray


def categories() -> list[dict[str, Any]]:
  """The json `categories` list: [{id, name, supercategory}] with ids 1..6."""
  return [{'id': i + 1, 'name': name, 'supercategory': 'shape'} for i, name in enumerate(CATEGORY_NAMES)]


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Inside test of a unit-size shape in local coordinates; u, v [T, H, W] -> bool [T, H, W]."""
  r = np.hypot(u, v)
  phi = np.arctan2(v, u)
  if kind == 'circle':
    return r <= 1.0
  if kind == 'square':
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85
  if kind == 'triangle':  # Regular polygon with circumradius 1: r * cos(angle to the nearest apothem) <= apothem.
    sector = 2 * np.pi / 3
    return r * np.cos(np.mod(phi, sector) - sector / 2) <= 0.5
  if kind == 'star':  # Five points: radius falls from 1 at the tips to 0.45 between them.
    sector = 2 * np.pi / 5
    t = np.abs(np.mod(phi + np.pi / 2, sector) - sector / 2) / (sector / 2)
    return r <= 0.45 + 0.55 * t**1.5
  if kind == 'ring':
    return (r <= 1.0) & (r >= 0.55)
  if kind == 'cross':
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
  raise ValueError(f'unknown shape {kind!r}')


def _texture(kind: str, u: np.ndarray, v: np.ndarray, freq: float, phase: float) -> np.ndarray:
  """Texture mix weight in [0, 1] in local coordinates (moves and scales with the shape); [T, H, W]."""
  if kind == 'rings':
    return 0.5 + 0.5 * np.sin(np.hypot(u, v) * freq * 2 + phase)
  if kind == 'checker':
    return np.mod(np.floor(u * freq + phase) + np.floor(v * freq), 2.0)
  if kind == 'diagonal':
    return 0.5 + 0.5 * np.sin((u + v) * freq * 1.5 + phase)
  if kind == 'dots':
    return (np.sin(u * freq * 2 + phase) * np.sin(v * freq * 2) > 0.3).astype(np.float64)
  if kind == 'wavy':
    return 0.5 + 0.5 * np.sin(u * freq * 1.5 + 2.0 * np.sin(v * freq + phase))
  if kind == 'bands':
    return 0.5 + 0.5 * np.sin(v * freq * 2 + phase)
  raise ValueError(f'unknown texture {kind!r}')


def _background(rng: np.random.Generator, t: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  """Per-video background: gradient + stripes + smooth waves + pixel noise, panning over time; [T, H, W, 3]."""
  h, w = yy.shape
  pan = rng.uniform(-1.5, 1.5, size=2)
  x = xx[None] + pan[0] * t
  y = yy[None] + pan[1] * t
  colours = rng.uniform(30, 225, size=(3, 3))
  gdir = rng.uniform(0, 2 * np.pi)
  gradient = 0.5 + 0.5 * np.clip((x / w - 0.5) * np.cos(gdir) + (y / h - 0.5) * np.sin(gdir), -1, 1)
  sdir = rng.uniform(0, np.pi)
  stripes = 0.5 + 0.5 * np.sin(rng.uniform(0.08, 0.5) * (x * np.cos(sdir) + y * np.sin(sdir))
                               + rng.uniform(0, 2 * np.pi))
  waves = np.zeros_like(x)
  for _ in range(3):
    k = rng.uniform(0.01, 0.06, size=2) * rng.choice([-1, 1], size=2)
    waves += np.sin(k[0] * x + k[1] * y + rng.uniform(0, 2 * np.pi)) / 3
  stripe_weight = rng.uniform(0.15, 0.45)
  image = (colours[0] * (1 - gradient[..., None]) + colours[1] * gradient[..., None]
           + stripe_weight * (stripes[..., None] - 0.5) * (colours[2] - colours[0])
           + 25.0 * waves[..., None])
  return image + rng.normal(0, 5.0, size=image.shape)


@dataclasses.dataclass(frozen=True)
class _Motion:
  """Trajectory of one instance: at frame t its centre is centre + v (t - t_mid) + a (t - t_mid)^2 / 2."""
  t_mid: float
  centre: np.ndarray  # [2] (x, y) in pixels at t_mid.
  radius: float  # Size at t_mid in pixels.
  velocity: np.ndarray  # [2] pixels / frame.
  acceleration: np.ndarray  # [2] pixels / frame^2.
  growth: float  # Log-scale change per frame.
  angle: float  # Rotation at t_mid.
  spin: float  # Rotation per frame.


def _sample_motion(rng: np.random.Generator, size: tuple[int, int], length: int, options: Options,
                   partner: _Motion | None) -> _Motion:
  """Samples a trajectory; with a `partner`, a smaller shape at the partner's centre at its t_mid."""
  h, w = size
  if partner is None:
    t_mid = rng.uniform(0.2, 0.8) * (length - 1)
    centre = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
    radius = rng.uniform(options.min_radius, options.max_radius) * min(h, w)
  else:
    t_mid = partner.t_mid
    centre = partner.centre + rng.normal(0, 0.2 * partner.radius, size=2)
    radius = rng.uniform(0.45, 0.8) * partner.radius
  heading = rng.uniform(0, 2 * np.pi)
  if rng.random() < options.traverse_fraction:  # Fast enough to cross a good part of the frame: enters and/or leaves.
    speed = rng.uniform(0.7, 1.4) * (w + 2 * radius) / max(length - 1, 1)
  else:
    speed = rng.uniform(0.2, 2.5)
  velocity = speed * np.array([np.cos(heading), np.sin(heading)])
  if partner is not None:  # Drift slowly relative to the partner: hidden for a while, then re-emerges.
    velocity = partner.velocity + velocity * rng.uniform(0.2, 0.6)
  return _Motion(t_mid=t_mid, centre=centre, radius=radius, velocity=velocity,
                 acceleration=rng.normal(0, 0.15, size=2), growth=rng.uniform(-0.04, 0.04),
                 angle=rng.uniform(0, 2 * np.pi), spin=rng.uniform(-0.12, 0.12))


def _render_instance(rng: np.random.Generator, motion: _Motion, style: tuple, t: np.ndarray, yy: np.ndarray,
                     xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Renders one instance over all frames: (mask bool [T, H, W], colour float [T, H, W, 3])."""
  kind, texture, colour_a, colour_b = style
  dt = t - motion.t_mid
  cx = motion.centre[0] + motion.velocity[0] * dt + 0.5 * motion.acceleration[0] * dt**2
  cy = motion.centre[1] + motion.velocity[1] * dt + 0.5 * motion.acceleration[1] * dt**2
  scale = motion.radius * np.exp(motion.growth * dt)
  theta = motion.angle + motion.spin * dt
  cos, sin = np.cos(theta), np.sin(theta)
  u = ((xx - cx) * cos + (yy - cy) * sin) / scale
  v = (-(xx - cx) * sin + (yy - cy) * cos) / scale
  mask = _shape_mask(kind, u, v)
  jitter = rng.normal(0, 12, size=(2, 3))
  first = np.clip(np.array(colour_a) + jitter[0], 0, 255)
  second = np.clip(np.array(colour_b) + jitter[1], 0, 255)
  weight = _texture(texture, u, v, rng.uniform(3.0, 6.0), rng.uniform(0, 2 * np.pi))[..., None]
  return mask, first * (1 - weight) + second * weight


def render_video(rng: np.random.Generator, size: tuple[int, int], length: int, num_instances: int,
                 options: Options) -> SyntheticVideo:
  """Renders one video of `length` frames at `size` (h, w) with up to `num_instances` instances.

  Instances never visible in any frame (fully hidden behind others) are dropped.
  """
  h, w = size
  t = np.arange(length, dtype=np.float64)[:, None, None]
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
  image = _background(rng, t, yy, xx)
  cats = rng.integers(0, len(_CATEGORY_STYLES), size=num_instances)
  crowd = (rng.random(num_instances) < options.crowd_fraction).astype(np.int64)
  motions = []
  depth_keys = rng.random(num_instances)
  for k in range(num_instances):
    partner = None
    if k > 0 and rng.random() < options.crossing_fraction:
      j = int(rng.integers(k))
      partner = motions[j]
      if rng.random() < 0.8:  # Usually behind its partner, so that it can be hidden completely.
        depth_keys[k] = depth_keys[j] - 1e-3
    motions.append(_sample_motion(rng, size, length, options, partner))
  depth = np.argsort(depth_keys, kind='stable')  # Drawing order, back to front.
  full = np.zeros((num_instances, length, h, w), dtype=bool)
  for k in depth:
    full[k], colour = _render_instance(rng, motions[k], _CATEGORY_STYLES[cats[k]], t, yy, xx)
    image = np.where(full[k][..., None], colour, image)
  visible = np.zeros_like(full)
  cover = np.zeros((length, h, w), dtype=bool)
  for k in depth[::-1]:  # Front to back: what lies in front of k hides it.
    visible[k] = full[k] & ~cover
    cover |= full[k]
  keep = visible.any(axis=(1, 2, 3))
  frames = np.clip(np.rint(image), 0, 255).astype(np.uint8)
  return SyntheticVideo(frames=frames, full_masks=full[keep], visible_masks=visible[keep],
                        category_ids=cats[keep] + 1, iscrowd=crowd[keep])


def sample_video(seed: int, index: int, options: Options = Options()) -> SyntheticVideo:
  """The video number `index` (0-based) of the set generated with `seed`."""
  rng = np.random.default_rng([seed, index])
  size = (options.height, options.width)
  if options.sizes:
    size = tuple(options.sizes[rng.integers(len(options.sizes))])
  length = int(rng.integers(options.min_frames, options.max_frames + 1))
  num_instances = int(rng.integers(options.min_instances, options.max_instances + 1))
  return render_video(rng, size, length, num_instances, options)


def _run_lengths(mask: np.ndarray) -> list[int]:
  """Uncompressed COCO RLE counts of a bool [H, W] mask (column-major runs, starting with zeros)."""
  flat = mask.ravel(order='F')
  change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  counts = np.diff(bounds).tolist()
  return [0] + counts if flat[0] else counts


def track_annotation(masks: np.ndarray, uncompressed: bool = False) -> tuple[list, list, list]:
  """Per-frame json fields of one track from bool [T, H, W] masks: (segmentations, areas, bboxes).

  Frames with an empty mask get None in all three lists. RLE counts are a compressed string, or an integer list
  when `uncompressed`.
  """
  rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
  areas = masks.sum(axis=(1, 2))
  segmentations, area_list, bboxes = [], [], []
  for t, (rle, area) in enumerate(zip(rles, areas)):
    if area == 0:
      segmentations.append(None)
      area_list.append(None)
      bboxes.append(None)
      continue
    counts = _run_lengths(masks[t]) if uncompressed else rle['counts'].decode('ascii')
    segmentations.append({'counts': counts, 'size': [int(s) for s in rle['size']]})
    area_list.append(float(area))
    bboxes.append([float(b) for b in mask_utils.toBbox(rle)])
  return segmentations, area_list, bboxes


def _empty_json() -> dict[str, Any]:
  return {'info': dict(_INFO), 'licenses': [dict(x) for x in _LICENSES], 'videos': [],
          'categories': categories(), 'annotations': []}


def _jpeg_bytes(frame: np.ndarray, quality: int) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format='JPEG', quality=quality, subsampling=0, optimize=False)
  return buffer.getvalue()


def video_name(index: int) -> str:
  return f'synth_{index:05d}'


GENERATION_FILE = 'generation.json'


def generation_record(num_videos: int, seed: int, options: Options) -> dict[str, Any]:
  """What a generated set is a pure function of, as plain json (written to `out_dir/generation.json`)."""
  fields = dataclasses.asdict(options)
  if fields['sizes'] is not None:
    fields['sizes'] = [list(s) for s in fields['sizes']]
  return {'num_videos': int(num_videos), 'seed': int(seed), 'options': fields}


def generate(out_dir: str, num_videos: int, seed: int, *, progress: bool = False, **options: Any) -> dict[str, str]:
  """Writes the synthetic set under `out_dir`.

  Args:
    out_dir: output directory (created; existing files with the same names are overwritten).
    num_videos: total number of videos over both splits.
    seed: integer seed; the output is a pure function of (seed, num_videos, options).
    progress: show a progress bar (one step per video) on stderr.
    **options: fields of `Options` (height, width, sizes, min_frames, max_frames, min_instances,
      max_instances, valid_fraction, crowd_fraction, traverse_fraction, crossing_fraction, min_radius,
      max_radius, jpeg_quality, uncompressed_rle).

  Returns:
    dict with 'root', 'images' (the JPEGImages dir), 'train' and 'valid' (json paths) and 'generation' (the
    `generation.json` recording num_videos, seed and every option, see `generation_record`).
  """
  if num_videos < 1:
    raise ValueError(f'num_videos must be >= 1, got {num_videos}')
  if options.get('sizes') is not None:
    options['sizes'] = tuple(tuple(int(v) for v in s) for s in options['sizes'])
  opts = Options(**options)
  num_valid = 0
  if opts.valid_fraction > 0 and num_videos >= 2:
    num_valid = min(num_videos - 1, max(1, int(round(num_videos * opts.valid_fraction))))
  images_dir = os.path.join(out_dir, 'JPEGImages')
  splits = {'train': _empty_json(), 'valid': _empty_json()}
  annotation_id = 0
  for index in tqdm.trange(num_videos, desc=f'synthetic videos -> {out_dir}', unit='video', disable=not progress):
    video = sample_video(seed, index, opts)
    length, h, w = video.frames.shape[:3]
    name = video_name(index)
    os.makedirs(os.path.join(images_dir, name), exist_ok=True)
    file_names = []
    for t in range(length):
      file_name = f'{name}/{t:05d}.jpg'
      with open(os.path.join(images_dir, file_name), 'wb') as f:
        f.write(_jpeg_bytes(video.frames[t], opts.jpeg_quality))
      file_names.append(file_name)
    split = splits['valid' if index >= num_videos - num_valid else 'train']
    video_id = index + 1
    split['videos'].append({
        'license': 1, 'coco_url': '', 'height': h, 'width': w, 'length': length,
        'date_captured': '2019-04-11 00:55:41.903902', 'file_names': file_names, 'flickr_url': '',
        'id': video_id,
    })
    for k in range(len(video.category_ids)):
      segmentations, areas, bboxes = track_annotation(video.visible_masks[k], opts.uncompressed_rle)
      annotation_id += 1
      split['annotations'].append({
          'height': h, 'width': w, 'length': 1, 'category_id': int(video.category_ids[k]),
          'segmentations': segmentations, 'video_id': video_id, 'areas': areas, 'bboxes': bboxes,
          'iscrowd': int(video.iscrowd[k]), 'id': annotation_id,
      })
  paths = {'root': out_dir, 'images': images_dir, 'generation': os.path.join(out_dir, GENERATION_FILE)}
  io_utils.write_json(paths['generation'], generation_record(num_videos, seed, opts), indent=1)
  for split_name, content in splits.items():
    paths[split_name] = io_utils.write_json(os.path.join(out_dir, f'{split_name}.json'), content)
  return paths


def _parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
  try:
    return tuple(tuple(int(v) for v in item.lower().split('x')) for item in text.split(','))
  except ValueError:
    raise argparse.ArgumentTypeError(f'--sizes expects HxW[,HxW...], got {text!r}') from None


def main(argv: Sequence[str] | None = None) -> None:
  defaults = Options()
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--num-videos', type=int, required=True)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--height', type=int, default=defaults.height)
  parser.add_argument('--width', type=int, default=defaults.width)
  parser.add_argument('--sizes', type=_parse_sizes, default=None, help='HxW[,HxW...]: per-video size choices')
  parser.add_argument('--min-frames', type=int, default=defaults.min_frames)
  parser.add_argument('--max-frames', type=int, default=defaults.max_frames)
  parser.add_argument('--min-instances', type=int, default=defaults.min_instances)
  parser.add_argument('--max-instances', type=int, default=defaults.max_instances)
  parser.add_argument('--valid-fraction', type=float, default=defaults.valid_fraction)
  parser.add_argument('--crowd-fraction', type=float, default=defaults.crowd_fraction)
  parser.add_argument('--traverse-fraction', type=float, default=defaults.traverse_fraction)
  parser.add_argument('--crossing-fraction', type=float, default=defaults.crossing_fraction)
  parser.add_argument('--min-radius', type=float, default=defaults.min_radius,
                      help='smallest shape size, fraction of min(height, width)')
  parser.add_argument('--max-radius', type=float, default=defaults.max_radius)
  parser.add_argument('--jpeg-quality', type=int, default=defaults.jpeg_quality)
  parser.add_argument('--uncompressed-rle', action='store_true', help='RLE counts as integer lists')
  args = parser.parse_args(argv)
  options = {k: v for k, v in vars(args).items() if k not in ('out', 'num_videos', 'seed')}
  try:
    paths = generate(args.out, args.num_videos, args.seed, progress=True, **options)
  except ValueError as e:
    parser.error(str(e))
  for split in ('train', 'valid'):
    with open(paths[split]) as f:
      content = json.load(f)
    print(f'{paths[split]}: {len(content["videos"])} videos, {len(content["annotations"])} tracks')
  print(f'frames under {paths["images"]}')


if __name__ == '__main__':
  main()
