"""Overlay instance masks and track labels on video frames; write PNG frames, GIF or MP4 frame by frame.

Frames are uint8 `[H, W, 3]` RGB; masks per track are bool `[H, W]` (absent frames all False). Each track gets one
colour (evenly spaced hues, so neighbouring ids differ): its mask is blended in that colour and outlined in it (with
a dark edge outside, so the outline shows on light and dark backgrounds), and its label sits on a box of that colour
just above the mask's bounding box (below it, or inside, when there is no room), always inside the frame; a frame
where the track has no mask shows no label. `TrackOverlay` draws one frame at a time, first upscaling small videos
(by an integer factor, so mask pixels stay aligned) to at least `min_side` pixels on the short side; the label font
and the outline scale with the frame. `SideBySide` puts two overlaid frames next to each other under titles (ground
truth | prediction). `open_writer` encodes frames as they come, so a long video is never held in memory
(`predict` reads, draws and writes frame by frame); `overlay_video` / `side_by_side` / `write_video` are the
whole-video forms for small videos and notebooks. MP4 needs imageio with the imageio-ffmpeg plugin (the `video`
extra); PNG and GIF need only Pillow. Files are written under a temporary name and renamed when complete.
"""

import colorsys
import contextlib
import math
import os
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import GifImagePlugin
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


class TrackOverlay:
  """Draws one video's tracks frame by frame (the per-frame form of `overlay_video`; keeps no frames).

  Each of the `len(labels)` tracks gets one colour; frames `[H, W, 3]` are upscaled by
  `upscale_factor(H, W, min_side)` (1 for frames already that large; `min_side=0` keeps the size).
  """

  def __init__(self, labels: Sequence[str], height: int, width: int, alpha: float = 0.5, min_side: int = MIN_SIDE):
    self.labels = tuple(labels)
    self.colors = palette(len(self.labels))
    self.size = (height, width)
    self.factor = upscale_factor(height, width, min_side)
    self.alpha = alpha

  def __call__(self, frame: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """frame uint8 `[H, W, 3]`, masks bool `[K, H, W]` (one per track) → overlaid frame uint8 `[sH, sW, 3]`."""
    if frame.shape[:2] != self.size or masks.shape != (len(self.labels),) + self.size:
      raise ValueError(f'frame {frame.shape} / masks {masks.shape} do not match {len(self.labels)} tracks on '
                       f'{self.size} frames.')
    if self.factor > 1:
      h, w = self.size
      frame = np.asarray(Image.fromarray(frame).resize((w * self.factor, h * self.factor), Image.BILINEAR))
      masks = masks.repeat(self.factor, axis=1).repeat(self.factor, axis=2)
    return overlay_frame(frame, masks, self.colors, self.labels, self.alpha)


def overlay_video(frames: np.ndarray, track_masks: Sequence[np.ndarray], labels: Sequence[str],
                  alpha: float = 0.5, min_side: int = MIN_SIDE) -> np.ndarray:
  """frames uint8 `[T, H, W, 3]`, one bool `[T, H, W]` per track → overlaid frames uint8 `[T, sH, sW, 3]`.

  The whole video in memory (small videos, notebooks); `predict` draws frame by frame with `TrackOverlay`.
  """
  t, h, w = frames.shape[:3]
  draw = TrackOverlay(labels, h, w, alpha, min_side)
  stacked = np.stack(track_masks, axis=1) if track_masks else np.zeros((t, 0, h, w), bool)
  return np.stack([draw(f, m) for f, m in zip(frames, stacked)])


class SideBySide:
  """Puts two frames (same height) next to each other under their titles, frame by frame."""

  def __init__(self, left: tuple[int, int], right: tuple[int, int],
               titles: tuple[str, str] = ('ground truth', 'prediction')):
    """`left` / `right`: (H, W) of the two panels."""
    if left[0] != right[0]:
      raise ValueError(f'side_by_side needs panels of the same height, got {left} and {right}.')
    h = left[0]
    font_size = max(10, round(h / 24))
    font = _font(font_size)
    self.header = font_size * 2
    self.gap = max(2, h // 100)
    self.shapes = (tuple(left), tuple(right))
    title_strip = Image.new('RGB', (left[1] + self.gap + right[1], self.header), (255, 255, 255))
    draw = ImageDraw.Draw(title_strip)
    for title, x0, w in ((titles[0], 0, left[1]), (titles[1], left[1] + self.gap, right[1])):
      draw.text((x0 + w // 2, self.header // 2), title, fill=(0, 0, 0), font=font, anchor='mm')
    self.title_strip = np.asarray(title_strip)

  def __call__(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """left uint8 `[H, Wl, 3]`, right `[H, Wr, 3]` → `[header + H, Wl + gap + Wr, 3]` on white."""
    if (left.shape[:2], right.shape[:2]) != self.shapes:
      raise ValueError(f'side_by_side panels {left.shape} and {right.shape}, expected {self.shapes}.')
    h, wl = self.shapes[0]
    canvas = np.full((self.header + h, self.title_strip.shape[1], 3), 255, np.uint8)
    canvas[:self.header] = self.title_strip
    canvas[self.header:, :wl] = left
    canvas[self.header:, wl + self.gap:] = right
    return canvas


def side_by_side(left: np.ndarray, right: np.ndarray,
                 titles: tuple[str, str] = ('ground truth', 'prediction')) -> np.ndarray:
  """Two videos uint8 `[T, H, W, 3]` (same T and H) next to each other under their titles → `[T, H', W', 3]`."""
  if left.shape[:2] != right.shape[:2]:
    raise ValueError(f'side_by_side needs the same frame count and height, got {left.shape} and {right.shape}.')
  join = SideBySide(left.shape[1:3], right.shape[1:3], titles)
  return np.stack([join(a, b) for a, b in zip(left, right)])


# Writers: `open_writer(path, fps)` yields `append(frame)`; frames are encoded as they come (nothing is kept).

AppendFrame = Callable[[np.ndarray], None]


@contextlib.contextmanager
def _gif_writer(path: str, fps: float) -> Iterator[AppendFrame]:
  """GIF frame by frame: the first frame's palette is the global colour table, later frames carry their own.

  Pillow's `save_all` keeps every frame until the end; this writes each one as it comes (Pillow's GIF block
  encoders `getheader` / `getdata`, the same adaptive palette per frame, no delta frames).
  """
  duration = int(1000 / fps)
  with io_utils.atomic_path(path) as tmp, open(tmp, 'wb') as f:
    first = True

    def append(frame: np.ndarray) -> None:
      nonlocal first
      image = Image.fromarray(frame).convert('P', palette=Image.Palette.ADAPTIVE)
      if first:
        header, _ = GifImagePlugin.getheader(image, info={'loop': 0, 'duration': duration})
        f.writelines(header)
      f.writelines(GifImagePlugin.getdata(image, duration=duration, include_color_table=not first))
      first = False

    yield append
    f.write(b';')


@contextlib.contextmanager
def _mp4_writer(path: str, fps: float) -> Iterator[AppendFrame]:
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  with io_utils.atomic_path(path) as tmp:
    with imageio.get_writer(tmp, fps=fps, codec='libx264', macro_block_size=1, pixelformat='yuv420p') as writer:
      # H.264 with yuv420p wants even sizes: pad by one row / column where needed.
      yield lambda f: writer.append_data(np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0))))


@contextlib.contextmanager
def _png_writer(directory: str, fps: float) -> Iterator[AppendFrame]:
  del fps
  count = 0

  def append(frame: np.ndarray) -> None:
    nonlocal count
    os.makedirs(directory, exist_ok=True)
    with io_utils.atomic_path(os.path.join(directory, f'{count:05d}.png')) as tmp:
      Image.fromarray(frame).save(tmp, format='PNG')
    count += 1

  yield append


_WRITERS = {'.gif': _gif_writer, '.mp4': _mp4_writer, '': _png_writer}


@contextlib.contextmanager
def open_writer(path: str, fps: float = 6.0) -> Iterator[AppendFrame]:
  """`with open_writer(path) as append: append(frame uint8 [H, W, 3])...` by extension: .gif, .mp4 (written under
  a temporary name, renamed when complete) or a directory of PNGs (no extension). Every frame has the first's size;
  no frame at all is an error (and leaves no file)."""
  writer = _WRITERS.get(os.path.splitext(path)[1].lower())
  if writer is None:
    raise ValueError(f'Unsupported overlay output {path!r}: use .gif, .mp4 or a directory for PNG frames.')
  shape = None
  with writer(path, fps) as append:

    def checked(frame: np.ndarray) -> None:
      nonlocal shape
      shape = shape or frame.shape
      if frame.shape != shape or frame.dtype != np.uint8:
        raise ValueError(f'{path}: frame {frame.shape} {frame.dtype}, expected uint8 {shape}.')
      append(frame)

    yield checked
    if shape is None:
      raise ValueError(f'No frames to write to {path}.')


def write_video(frames: np.ndarray, path: str, fps: float = 6.0) -> str:
  """Writes frames uint8 `[T, H, W, 3]` by extension (`open_writer`); returns `path`."""
  with open_writer(path, fps) as append:
    for f in frames:
      append(f)
  return path
