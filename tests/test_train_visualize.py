"""visjax.visualize: distinct track colours, mask blending, and the GIF / MP4 / PNG writers round-trip."""

import os
from typing import Sequence

import numpy as np
import pytest
from PIL import Image

from visjax import visualize


def test_palette_distinct():
  colors = visualize.palette(12)
  assert colors.shape == (12, 3) and colors.dtype == np.uint8
  assert len({tuple(c) for c in colors}) == 12


def test_overlay_blends_only_mask_pixels():
  frame = np.full((20, 30, 3), 100, np.uint8)
  mask = np.zeros((1, 20, 30), bool)
  mask[0, 12:18, 5:25] = True
  color = np.array([[255, 0, 0]], np.uint8)
  out = visualize.overlay_frame(frame, mask, color, [''], alpha=0.5)
  np.testing.assert_array_equal(out[15, 10], [178, 50, 50])  # (100 + 255) / 2 rounded, 100 / 2
  np.testing.assert_array_equal(out[19, 29], [100, 100, 100])  # outside mask and label box
  with pytest.raises(ValueError, match='do not match'):
    visualize.overlay_frame(frame, mask[:, :10], color, [''])


@pytest.mark.parametrize('name', ['o.gif', 'o.mp4', 'frames'])
def test_writers_round_trip(tmp_path, name):
  if name.endswith('.mp4'):
    pytest.importorskip('imageio_ffmpeg')
  frames = np.stack([np.full((17, 23, 3), 40 * i, np.uint8) for i in range(5)])  # odd sizes
  path = visualize.write_video(frames, str(tmp_path / name))
  if name.endswith('.gif'):
    assert Image.open(path).n_frames == 5
  elif name.endswith('.mp4'):
    import imageio.v3 as iio  # pylint: disable=g-import-not-at-top
    video = iio.imread(path, index=None)
    assert video.shape[0] == 5 and video.shape[1:3] == (18, 24)  # padded to even for yuv420p
    assert abs(float(video[4, :17, :23].mean()) - 160) < 4
  else:
    assert sorted(os.listdir(path)) == [f'{i:05d}.png' for i in range(5)]
  with pytest.raises(ValueError, match='Unsupported'):
    visualize.write_video(frames, str(tmp_path / 'x.avi'))


def _square_track(t: int, h: int, w: int, box: tuple[int, int, int, int], present: Sequence[int]) -> np.ndarray:
  y0, x0, y1, x1 = box
  masks = np.zeros((t, h, w), bool)
  for i in present:
    masks[i, y0:y1, x0:x1] = True
  return masks


def _colored(frame: np.ndarray, color: np.ndarray) -> np.ndarray:
  return np.all(frame == color, axis=-1)


def test_small_video_upscaled_with_readable_label_above_the_mask():
  frames = np.full((2, 32, 48, 3), 90, np.uint8)
  track = _square_track(2, 32, 48, (12, 10, 22, 30), present=[0])  # absent from frame 1
  out = visualize.overlay_video(frames, [track], ['1 car 0.93'])
  assert out.shape == (2, 480, 720, 3)  # factor 15: short side 32 -> 480
  color = visualize.palette(1)[0]
  box = _colored(out[0], color)
  ys, xs = np.nonzero(box[:12 * 15])  # the label box: above the mask (mask rows start at 12 * 15 = 180)
  assert ys.size and ys.max() < 180 and ys.min() >= 0 and xs.min() == 10 * 15
  assert ys.max() - ys.min() + 1 >= 16  # font ~ 1/30 of the short side, plus padding
  text = out[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
  assert (np.abs(text.astype(int) - color).sum(-1) > 300).sum() > 50  # text contrasting with the label colour
  # Outline in the track colour along the mask border, dark edge just outside it, blend inside.
  np.testing.assert_array_equal(out[0, 180, 400], color)
  np.testing.assert_array_equal(out[0, 179, 400], [0, 0, 0])
  assert not _colored(out[0, 200:320, 160:440], color).any()
  # Frame 1: the track has no mask, so no label and no outline.
  assert not _colored(out[1], color).any()
  np.testing.assert_array_equal(out[1], np.full((480, 720, 3), 90, np.uint8))


@pytest.mark.parametrize('box,expect', [
    ((0, 40, 10, 60), 'below'),  # mask touches the top edge: label goes below it
    ((0, 40, 32, 60), 'inside'),  # mask fills the height: label at its top
    ((10, 44, 20, 48), 'clamped'),  # mask at the right edge: label shifted left into the frame
])
def test_label_stays_inside_the_frame(box, expect):
  frame = np.full((32, 48, 3), 90, np.uint8)
  masks = _square_track(1, 32, 48, box, present=[0])
  y0, x0, y1, x1 = box
  size = (30, 12)
  x, y = visualize.label_box((x0, y0, x1 - 1, y1 - 1), size, (32, 48))
  assert 0 <= x <= 48 - size[0] and 0 <= y <= 32 - size[1]
  assert {'below': y == y1, 'inside': y == 0, 'clamped': x == 48 - size[0]}[expect]
  out = visualize.overlay_frame(frame, masks[:1], visualize.palette(1), ['7 person 0.50'], font_size=10)
  assert out.shape == frame.shape


def test_large_frames_keep_their_size_and_side_by_side():
  frames = np.zeros((3, 500, 600, 3), np.uint8)
  track = _square_track(3, 500, 600, (100, 100, 200, 200), present=[0, 1, 2])
  pred = visualize.overlay_video(frames, [track], ['1 a 0.9'])
  gt = visualize.overlay_video(frames, [], [])
  assert pred.shape == gt.shape == (3, 500, 600, 3)
  both = visualize.side_by_side(gt, pred)
  assert both.shape[0] == 3 and both.shape[2] > 1200 and both.shape[1] > 500
  header = both.shape[1] - 500
  np.testing.assert_array_equal(both[:, header:, :600], gt)
  np.testing.assert_array_equal(both[:, header:, -600:], pred)
  assert (both[0, :header, :600] < 128).any() and (both[0, :header, -600:] < 128).any()  # the two titles
  with pytest.raises(ValueError, match='same frame count and height'):
    visualize.side_by_side(gt, pred[:2])
