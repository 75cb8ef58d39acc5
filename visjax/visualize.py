"""Overlay instance masks and track labels on video frames; write PNG frames, GIF or MP4.

Frames are uint8 `[T, H, W, 3]` RGB; masks per track are bool `[T, H, W]` (absent frames all False). Each track
gets one colour (evenly spaced hues, so neighbouring ids differ): its mask is blended in that colour and outlined
in it (with a dark edge outside, so the outline shows on light and dark backgrounds), and its label sits on a
box of that colour just above the mask's bounding box (below it, or inside, when there is no room), always inside
the frame; a frame where the track has no mask shows no label. `overlay_video` first upscales small videos (by an
integer factor, so mask pixels stay aligned) to at least `min_side` pixels on the short side; the label font and
the outline scale with the frame. `side_by_side(gt, pred)` puts two overlaid videos next to each other under
titles (ground truth | prediction). MP4 needs imageio with the imageio-ffmpeg plugin (the `video` extra); PNG and
GIF need only Pillow. Files are written under a temporary name and renamed when complete.
"""

import colorsys
import math
import os
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from visjax import io_utils

MIN_SIDE = 480  # Short side (pixels) `overlay_video` upscales small videos to.


def palette(num: int) -> np.ndarray:
  """`num` distinct RGB colours uint8 `[num, 3]` (golden-ratio hue steps, full saturation)."""
  hues = (np.arange(num) * 0.618033988749895) % 1.0
  return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], np.uint8)


def upscale_factor(height: int, width: int, min_side: int) -> int:
  """The integer factor that brings the short side to at least `min_side` (1 when it already is)."""
  return max(1, math.ceil(min_side / max(1, min(height, width))))


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
  """Frames `[T, H, W, 3]` uint8 bilinearly resized by an integer `factor`."""
  if factor == 1:
    return frames
  h, w = frames.shape[1:3]
  return np.stack([np.asarray(Image.fromarray(f).resize((w * factor, h * factor), Image.BILINEAR)) for f in frames])


def _shift_and(mask: np.ndarray) -> np.ndarray:
  """Pixels of `mask` whose 4 neighbours are all in `mask` (one erosion step; outside the frame counts as out)."""
  p = np.pad(mask, 1)
  return mask & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def outline(mask: np.ndarray, width: int) -> np.ndarray:
  """The band of `mask` within `width` pixels of its boundary (bool `[H, W]`)."""
  inner = mask
  for _ in range(width):
    inner = _shift_and(inner)
  return mask & ~inner


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  """Pillow's default font at `size` pixels (its fixed bitmap font when Pillow lacks FreeType)."""
  return ImageFont.load_default(size=size)


def _text_color(color: np.ndarray) -> tuple[int, int, int]:
  luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
  return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def label_box(mask_box: tuple[int, int, int, int], size: tuple[int, int],
              frame: tuple[int, int]) -> tuple[int, int]:
  """Top-left (x, y) of a label of `size` (w, h) for a mask with bounding box (x0, y0, x1, y1) in a `frame` (h, w).

  Above the box when it fits, else below it, else at the top of the box; clamped into the frame.
  """
  x0, y0, _, y1 = mask_box
  w, h = size
  fh, fw = frame
  if y0 - h >= 0:
    y = y0 - h
  elif y1 + 1 + h <= fh:
    y = y1 + 1
  else:
    y = y0
  return min(max(x0, 0), max(fw - w, 0)), min(max(y, 0), max(fh - h, 0))


def overlay_frame(frame: np.ndarray, masks: np.ndarray, colors: np.ndarray, labels: Sequence[str],
                  alpha: float = 0.5, font_size: int | None = None) -> np.ndarray:
  """Blends and outlines `masks` bool `[K, H, W]` over `frame` uint8 `[H, W, 3]` with `colors` `[K, 3]`; labels.

  `font_size` defaults to 1/30 of the frame's short side (at least 10 px); the outline is 1/240 of it (>= 1 px).
  """
  if masks.shape[1:] != frame.shape[:2]:
    raise ValueError(f'masks {masks.shape} do not match the frame {frame.shape}.')
  height, width = frame.shape[:2]
  short = min(height, width)
  font_size = font_size or max(10, round(short / 30))
  font = _font(font_size)
  line = max(1, short // 240)
  out = frame.astype(np.float32)
  for mask, color in zip(masks, colors):
    out[mask] = (1 - alpha) * out[mask] + alpha * color.astype(np.float32)
  for mask, color in zip(masks, colors):
    if mask.any():
      ring = np.pad(mask, 1)
      ring = (ring[:-2, 1:-1] | ring[2:, 1:-1] | ring[1:-1, :-2] | ring[1:-1, 2:]) & ~mask
      out[ring] = 0.0
      out[outline(mask, line)] = color.astype(np.float32)
  image = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  pad = max(1, font_size // 5)
  for mask, color, label in zip(masks, colors, labels):
    ys, xs = np.nonzero(mask)
    if not ys.size or not label:
      continue
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    x, y = label_box((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), size, (height, width))
    draw.rectangle((x, y, x + size[0] - 1, y + size[1] - 1), fill=tuple(int(c) for c in color))
    draw.text((x + pad - left, y + pad - top), label, fill=_text_color(color), font=font)
  return np.asarray(image)


def overlay_video(frames: np.ndarray, track_masks: Sequence[np.ndarray], labels: Sequence[str],
                  alpha: float = 0.5, min_side: int = MIN_SIDE) -> np.ndarray:
  """frames uint8 `[T, H, W, 3]`, one bool `[T, H, W]` per track → overlaid frames uint8 `[T, sH, sW, 3]`.

  `s = upscale_factor(H, W, min_side)` (1 for frames already that large; `min_side=0` keeps the size).
  """
  colors = palette(len(track_masks))
  t, h, w = frames.shape[:3]
  stacked = np.stack(track_masks, axis=1) if track_masks else np.zeros((t, 0, h, w), bool)
  factor = upscale_factor(h, w, min_side)
  if factor > 1:
    frames = upscale(frames, factor)
    stacked = stacked.repeat(factor, axis=2).repeat(factor, axis=3)
  return np.stack([overlay_frame(f, m, colors, labels, alpha) for f, m in zip(frames, stacked)])


def side_by_side(left: np.ndarray, right: np.ndarray,
                 titles: tuple[str, str] = ('ground truth', 'prediction')) -> np.ndarray:
  """Two videos uint8 `[T, H, W, 3]` (same T and H) next to each other under their titles → `[T, H', W', 3]`."""
  if left.shape[:2] != right.shape[:2]:
    raise ValueError(f'side_by_side needs the same frame count and height, got {left.shape} and {right.shape}.')
  t, h = left.shape[:2]
  font_size = max(10, round(h / 24))
  font = _font(font_size)
  header = font_size * 2
  gap = max(2, h // 100)
  width = left.shape[2] + gap + right.shape[2]
  canvas = np.full((t, header + h, width, 3), 255, np.uint8)
  canvas[:, header:, :left.shape[2]] = left
  canvas[:, header:, left.shape[2] + gap:] = right
  title_strip = Image.fromarray(canvas[0, :header])
  draw = ImageDraw.Draw(title_strip)
  for title, x0, w in ((titles[0], 0, left.shape[2]), (titles[1], left.shape[2] + gap, right.shape[2])):
    draw.text((x0 + w // 2, header // 2), title, fill=(0, 0, 0), font=font, anchor='mm')
  canvas[:, :header] = np.asarray(title_strip)
  return canvas


def write_gif(frames: np.ndarray, path: str, fps: float = 6.0) -> str:
  images = [Image.fromarray(f) for f in frames]
  with io_utils.atomic_path(path) as tmp:
    images[0].save(tmp, format='GIF', save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
  return path


def write_png_frames(frames: np.ndarray, directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  for i, f in enumerate(frames):
    with io_utils.atomic_path(os.path.join(directory, f'{i:05d}.png')) as tmp:
      Image.fromarray(f).save(tmp, format='PNG')
  return directory


def write_mp4(frames: np.ndarray, path: str, fps: float = 6.0) -> str:
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  # H.264 with yuv420p wants even sizes: pad by one row / column where needed.
  h, w = frames.shape[1:3]
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  with io_utils.atomic_path(path) as tmp:
    with imageio.get_writer(tmp, fps=fps, codec='libx264', macro_block_size=1, pixelformat='yuv420p') as writer:
      for f in frames:
        writer.append_data(f)
  return path


def write_video(frames: np.ndarray, path: str, fps: float = 6.0) -> str:
  """Writes by extension: .gif, .mp4, or a directory of PNGs (no extension)."""
  if len(frames) == 0:
    raise ValueError(f'No frames to write to {path}.')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.gif':
    return write_gif(frames, path, fps)
  if ext == '.mp4':
    return write_mp4(frames, path, fps)
  if not ext:
    return write_png_frames(frames, path)
  raise ValueError(f'Unsupported overlay output {path!r}: use .gif, .mp4 or a directory for PNG frames.')
