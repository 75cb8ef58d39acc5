"""Overlay instance masks and track labels on video frames; write PNG frames, GIF or MP4.

Frames are uint8 `[T, H, W, 3]` RGB; masks per track are bool `[T, H, W]` (absent frames all False). Each track
gets one colour (evenly spaced hues, so neighbouring ids differ) and one label drawn at its mask's top-left.
MP4 needs imageio with the imageio-ffmpeg plugin (the `video` extra); PNG and GIF need only Pillow.
"""

import colorsys
import os
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw


def palette(num: int) -> np.ndarray:
  """`num` distinct RGB colours uint8 `[num, 3]` (golden-ratio hue steps, full saturation)."""
  hues = (np.arange(num) * 0.618033988749895) % 1.0
  return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], np.uint8)


def overlay_frame(frame: np.ndarray, masks: np.ndarray, colors: np.ndarray, labels: Sequence[str],
                  alpha: float = 0.5) -> np.ndarray:
  """Blends `masks` bool `[K, H, W]` over `frame` uint8 `[H, W, 3]` with `colors` `[K, 3]`; draws `labels`."""
  if masks.shape[1:] != frame.shape[:2]:
    raise ValueError(f'masks {masks.shape} do not match the frame {frame.shape}.')
  out = frame.astype(np.float32)
  for mask, color in zip(masks, colors):
    out[mask] = (1 - alpha) * out[mask] + alpha * color.astype(np.float32)
  image = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(image)
  for mask, color, label in zip(masks, colors, labels):
    ys, xs = np.nonzero(mask)
    if ys.size:
      x, y = int(xs.min()), max(int(ys.min()) - 11, 0)
      draw.rectangle((x, y, x + 6 * len(label) + 2, y + 11), fill=tuple(int(c) for c in color))
      draw.text((x + 1, y), label, fill=(0, 0, 0))
  return np.asarray(image)


def overlay_video(frames: np.ndarray, track_masks: Sequence[np.ndarray], labels: Sequence[str],
                  alpha: float = 0.5) -> np.ndarray:
  """frames uint8 `[T, H, W, 3]`, one bool `[T, H, W]` per track → overlaid frames uint8 `[T, H, W, 3]`."""
  colors = palette(len(track_masks))
  stacked = np.stack(track_masks, axis=1) if track_masks else np.zeros((len(frames), 0) + frames.shape[1:3], bool)
  return np.stack([overlay_frame(f, m, colors, labels, alpha) for f, m in zip(frames, stacked)])


def write_gif(frames: np.ndarray, path: str, fps: float = 6.0) -> str:
  images = [Image.fromarray(f) for f in frames]
  images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
  return path


def write_png_frames(frames: np.ndarray, directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  for i, f in enumerate(frames):
    Image.fromarray(f).save(os.path.join(directory, f'{i:05d}.png'))
  return directory


def write_mp4(frames: np.ndarray, path: str, fps: float = 6.0) -> str:
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  # H.264 with yuv420p wants even sizes: pad by one row / column where needed.
  h, w = frames.shape[1:3]
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  with imageio.get_writer(path, fps=fps, codec='libx264', macro_block_size=1, pixelformat='yuv420p') as writer:
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
